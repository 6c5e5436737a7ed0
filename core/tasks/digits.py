"""The embedded default task: scikit-learn's 8x8 digits, a small CNN teacher with BatchNorm.

The pipeline itself never reads these images; only the teacher's training script and `--eval digits`
(which scores models on the held-out test split for the report) do.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from core.tasks import SHAPES

INPUT_SHAPE, NUM_CLASSES = SHAPES["digits"]
CLASSES = [str(i) for i in range(10)]
SCALE = 1.0 / 16.0  # raw pixel values are 0..16
# Mean and std of the training split after scaling; fixed here so the contract never drifts.
MEAN = [0.3059]
STD = [0.3782]
WEIGHTS = Path(__file__).resolve().parent.parent / "assets" / "digits_teacher.safetensors"


class DigitsTeacher(nn.Module):
    """About 100k parameters: three conv blocks with BatchNorm, global pooling, a linear head."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_teacher() -> nn.Module:
    return DigitsTeacher()


def split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The contract's split: (x_train, x_test, y_train, y_test), raw 0..16 images of shape [N, 8, 8]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    return train_test_split(d.images, d.target, test_size=0.2, stratify=d.target, random_state=0)


def normalize(raw: np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(raw, dtype=torch.float32).reshape(-1, *INPUT_SHAPE)
    return (x * SCALE - MEAN[0]) / STD[0]


def test_set() -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised test images and labels, for reporting accuracy only."""
    _, x_test, _, y_test = split()
    return normalize(x_test), torch.as_tensor(y_test, dtype=torch.long)


def fine_tune(model: nn.Module, relabel: dict[int, int], epochs: int = 5, seed: int = 0) -> nn.Module:
    """A changed teacher for update experiments: `model` fine-tuned on the training split with some
    labels remapped (e.g. {1: 7, 7: 1} swaps two classes). Returns a new model in eval mode."""
    import copy

    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = copy.deepcopy(model)
    for p in model.parameters():
        p.requires_grad_(True)
    x_train, _, y_train, _ = split()
    xs = normalize(x_train)
    ys = torch.as_tensor([relabel.get(int(y), int(y)) for y in y_train])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(xs))
        for i in range(0, len(xs), 64):
            idx = perm[i : i + 64]
            loss = F.cross_entropy(model(xs[idx]), ys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
