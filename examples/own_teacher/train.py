"""Train the two example teachers on data the pipeline never sees, and keep their test splits.

    python train.py      # writes tabular_teacher.safetensors, image_teacher.safetensors,
                         # tabular_test.npz and image_test.npz next to this file (a few seconds)

- tabular: scikit-learn's breast-cancer biopsies, 30 raw features, 2 classes;
- image: scikit-learn's 8x8 digits upsampled to 3x16x16 colour images (uint8 pixels), 10 classes,
  each drawn in a random colour on a random background (fixed seed: the same images every time).

Inputs are normalised exactly as the TOML files tell the pipeline: (raw * scale - mean) / std.
The .npz test files hold raw inputs `x` and labels `y` for `[eval] data = ...` (report only).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.model_selection import train_test_split

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from models import build_image_teacher, build_tabular_teacher  # noqa: E402


def tabular_data():
    d = load_breast_cancer()
    return train_test_split(d.data.astype(np.float32), d.target, test_size=0.25, stratify=d.target, random_state=0)


def colour_digits(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """[N, 3, 16, 16] uint8 images: digit strokes in one random colour over a random darker background."""
    d = load_digits()
    ink = torch.as_tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # [N, 1, 8, 8], 0..1
    ink = F.interpolate(ink, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)
    rng = np.random.default_rng(seed)
    fg = torch.as_tensor(rng.uniform(0.45, 1.0, (len(ink), 3, 1, 1)), dtype=torch.float32)
    bg = torch.as_tensor(rng.uniform(0.0, 0.35, (len(ink), 3, 1, 1)), dtype=torch.float32)
    img = bg * (1 - ink) + fg * ink
    return (img * 255).round().to(torch.uint8).numpy(), d.target


def image_data():
    x, y = colour_digits()
    return train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)


def normaliser(config: Path, ndim: int):
    t = tomllib.loads(config.read_text())["teacher"]
    view = (1, -1) + (1,) * (ndim - 1)
    mean = torch.tensor(t.get("mean", [0.0]), dtype=torch.float32).reshape(view)
    std = torch.tensor(t.get("std", [1.0]), dtype=torch.float32).reshape(view)
    scale = float(t.get("scale", 1.0))
    return lambda raw: (torch.as_tensor(raw, dtype=torch.float32) * scale - mean) / std


def train(model, x_train, y_train, x_test, y_test, epochs: int, lr: float, batch: int = 64, augment=None) -> float:
    g = torch.Generator().manual_seed(0)
    y_train = torch.as_tensor(y_train, dtype=torch.long)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * -(-len(x_train) // batch))
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x_train), generator=g).split(batch):
            xb = x_train[idx] if augment is None else augment(x_train[idx], g)
            loss = F.cross_entropy(model(xb), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        return float((model(x_test).argmax(1).numpy() == y_test).mean())


def shift(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel: a little augmentation for the image teacher."""
    dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def main() -> None:
    torch.manual_seed(0)
    torch.set_num_threads(1)

    x_tr, x_te, y_tr, y_te = tabular_data()
    norm = normaliser(HERE / "tabular.toml", 1)
    model = build_tabular_teacher()
    acc = train(model, norm(x_tr), y_tr, norm(x_te), y_te, epochs=40, lr=3e-3)
    save_file(model.state_dict(), str(HERE / "tabular_teacher.safetensors"))
    np.savez_compressed(HERE / "tabular_test.npz", x=x_te, y=y_te)
    print(f"tabular teacher: test accuracy {acc:.4f} on {len(y_te)} held-out biopsies")

    x_tr, x_te, y_tr, y_te = image_data()
    norm = normaliser(HERE / "image.toml", 3)
    model = build_image_teacher()
    acc = train(model, norm(x_tr), y_tr, norm(x_te), y_te, epochs=8, lr=3e-3, augment=shift)
    save_file(model.state_dict(), str(HERE / "image_teacher.safetensors"))
    np.savez_compressed(HERE / "image_test.npz", x=x_te, y=y_te)
    print(f"image teacher: test accuracy {acc:.4f} on {len(y_te)} held-out colour digits")


if __name__ == "__main__":
    main()
