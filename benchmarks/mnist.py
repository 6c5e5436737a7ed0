"""MNIST for the distillation benchmark only: LeNet-5 teacher, LeNet-5-half student (as in DAFL, DFAD and
PRE-DFKD), the 10k-sample MNIST file split 80/20, and a cached teacher trained on the train split.

Inputs are 1x32x32: the 28x28 digits padded by 2 pixels, then normalised with MNIST's mean and std.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist10k.npz"
CACHE = Path(__file__).resolve().parent / ".cache"
MEAN, STD = 0.1307, 0.3081
INPUT_SHAPE = (1, 32, 32)


class LeNet5(nn.Module):
    """conv(c1, 5x5) - pool - conv(c2, 5x5) - pool - conv(c3, 5x5) - fc(f) - fc(classes); no BatchNorm."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int, int] = (6, 16, 120, 84)):
        super().__init__()
        c1, c2, c3, f = widths
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 5), nn.ReLU(), nn.Flatten(),
            nn.Linear(c3, f), nn.ReLU(),
        )
        self.classifier = nn.Linear(f, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def lenet5(num_classes: int = 10) -> LeNet5:
    return LeNet5(num_classes)


def lenet5_half(num_classes: int = 10) -> LeNet5:
    return LeNet5(num_classes, (3, 8, 60, 42))


def lenet5_quarter(num_classes: int = 10) -> LeNet5:
    """A deliberately tiny student, where forgetting between generator phases shows."""
    return LeNet5(num_classes, (2, 4, 30, 21))


def load_split(path: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(x_train, x_test, y_train, y_test), normalised 1x32x32 tensors, with the suggested stratified split."""
    from sklearn.model_selection import train_test_split

    if not Path(path).is_file():
        raise SystemExit(f"MNIST file not found: {path} (pass --mnist PATH)")
    data = np.load(path)
    xtr, xte, ytr, yte = train_test_split(data["images"], data["labels"], test_size=0.2, stratify=data["labels"],
                                          random_state=0)
    return _prep(xtr), _prep(xte), torch.as_tensor(ytr, dtype=torch.long), torch.as_tensor(yte, dtype=torch.long)


def _prep(images: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(images, dtype=torch.float32).div(255.0).unsqueeze(1)
    x = F.pad(x, (2, 2, 2, 2))
    return (x - MEAN) / STD


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    acc = sum((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item() for i in range(0, len(x), 1000)) / len(x)
    model.train(was)
    return acc


def teacher(path: Path, epochs: int = 30, seed: int = 0) -> tuple[nn.Module, float]:
    """The LeNet-5 teacher trained on the train split, cached under benchmarks/.cache/ by data hash."""
    xtr, xte, ytr, yte = load_split(path)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]
    cached = CACHE / f"lenet5-mnist-{digest}-e{epochs}-s{seed}.pt"
    model = lenet5()
    if cached.is_file():
        model.load_state_dict(torch.load(cached, map_location="cpu", weights_only=True))
    else:
        g = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        model = lenet5()
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(xtr), generator=g)
            for i in range(0, len(xtr), 64):
                idx = perm[i:i + 64]
                xb = xtr[idx]
                # light augmentation: random shifts of up to 2 pixels
                dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
                xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
                loss = F.cross_entropy(model(xb), ytr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
        CACHE.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), cached)
    model.eval()
    return model, accuracy(model, xte, yte)
