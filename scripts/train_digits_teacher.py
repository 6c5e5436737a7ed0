"""Train the embedded digits teacher reproducibly and save it as safetensors.

    python scripts/train_digits_teacher.py [--out core/assets/digits_teacher.safetensors]

Uses only the training split of the contract (see pipeline/tasks/digits.py); prints test accuracy.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from core.tasks import digits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(digits.WEIGHTS))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    x_train, x_test, y_train, y_test = digits.split()
    xs, ys = digits.normalize(x_train), torch.as_tensor(y_train)
    xt, yt = digits.normalize(x_test), torch.as_tensor(y_test)
    print(f"train mean {xs.mean():.4f} std {xs.std():.4f} (fixed in the task: {digits.MEAN}, {digits.STD})")

    model = digits.build_teacher()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=args.epochs * ((len(xs) + 63) // 64))
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(xs))
        for i in range(0, len(xs), 64):
            idx = perm[i : i + 64]
            x = xs[idx]
            # Light augmentation: one-pixel shifts keep the 8x8 digits legible.
            dx, dy = torch.randint(-1, 2, (2,)).tolist()
            x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
            loss = F.cross_entropy(model(x), ys[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if (epoch + 1) % 10 == 0:
            model.eval()
            with torch.no_grad():
                acc = (model(xt).argmax(1) == yt).float().mean().item()
            print(f"epoch {epoch + 1}: loss {loss.item():.4f} test accuracy {acc:.4f}")
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, args.out)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
