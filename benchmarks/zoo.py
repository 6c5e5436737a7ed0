"""A zoo of ordinary teachers for testing data-free distillation across architectures.

Self-contained (torch, numpy, scikit-learn and the standard library only). Every entry carries its
architecture, its input contract (shape, scale, mean, std: model_input = (raw * scale - mean) / std),
an ordinary training recipe on the train split, and its test split for evaluation. Trained weights are
cached under benchmarks/.cache/zoo/ keyed by entry name, recipe and data file.

    python benchmarks/zoo.py                 # train (or load) every entry, print test accuracies
    python benchmarks/zoo.py bn_cnn lenet5   # only these

Library use:

    from zoo import ZOO
    teacher, acc = ZOO["bn_cnn"].train()
    x_test, y_test = ZOO["bn_cnn"].test_set()
"""

from __future__ import annotations

import argparse
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache" / "zoo"
MNIST_PATH = HERE.parent.parent / "shared" / "data" / "mnist10k.npz"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
DIGITS_MEAN, DIGITS_STD = 0.3059, 0.3782


# ---- architectures ----------------------------------------------------------------------------------

def conv_bn_act(cin: int, cout: int, stride: int = 1,
                activation: Callable[[], nn.Module] = lambda: nn.ReLU(inplace=True)) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), activation()]


class LeNet5(nn.Module):
    """The classic LeNet-5 on 32x32 inputs, without BatchNorm."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 120, 5), nn.ReLU(), nn.Flatten(),
            nn.Linear(120, 84), nn.ReLU(),
        )
        self.classifier = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BNCNN(nn.Module):
    """Four conv-BN-ReLU blocks, two max-pools, global average pooling, a linear head (~100k parameters)."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int, int] = (32, 48, 64, 96)):
        super().__init__()
        a, b, c, d = widths
        self.features = nn.Sequential(
            *conv_bn_act(1, a), *conv_bn_act(a, b), nn.MaxPool2d(2),
            *conv_bn_act(b, c), nn.MaxPool2d(2), *conv_bn_act(c, d),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class ResidualBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn_act(cin, cout, stride), nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(cout))
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A 3x3 stem and three residual blocks (16, 32, 64 channels, the last two strided), with BatchNorm."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn_act(1, 16), ResidualBlock(16, 16, 1), ResidualBlock(16, 32, 2), ResidualBlock(32, 64, 2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def strided_cnn(num_classes: int = 10) -> nn.Module:
    """Downsampling by stride-2 convolutions instead of pooling, with BatchNorm."""
    return nn.Sequential(
        *conv_bn_act(1, 32), *conv_bn_act(32, 64, 2), *conv_bn_act(64, 64), *conv_bn_act(64, 96, 2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, num_classes),
    )


def wide_shallow_cnn(num_classes: int = 10) -> nn.Module:
    """One wide 5x5 convolution with BatchNorm, pooled hard, then a linear head."""
    return nn.Sequential(
        nn.Conv2d(1, 128, 5, padding=2, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True), nn.MaxPool2d(4),
        nn.Conv2d(128, 128, 3, padding=1, bias=False), nn.BatchNorm2d(128), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, num_classes),
    )


def separable(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.GroupNorm(4, cin), nn.SiLU(),
        nn.Conv2d(cin, cout, 1, bias=False), nn.GroupNorm(4, cout), nn.SiLU(),
    )


def groupnorm_separable_cnn(num_classes: int = 10) -> nn.Module:
    """A small CNN of today's kind: GroupNorm (no BatchNorm, so no running statistics to match), depthwise-separable
    blocks, SiLU, dropout before the head."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.GroupNorm(4, 32), nn.SiLU(),
        separable(32, 64, 2), separable(64, 64), separable(64, 128, 2), separable(128, 128),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, num_classes),
    )


def layernorm_mlp(num_classes: int = 10) -> nn.Module:
    """An MLP of today's kind on flattened 28x28 pixels: LayerNorm (each input normalised by itself) and GELU."""
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 256), nn.LayerNorm(256), nn.GELU(),
                         nn.Linear(256, 128), nn.LayerNorm(128), nn.GELU(), nn.Linear(128, num_classes))


def elu_avgpool_cnn(num_classes: int = 10) -> nn.Module:
    """A CNN without normalisation layers for 32x32 inputs: 5x5 then 3x3 valid convolutions, ELU, average pooling,
    a flattened map and dropout before the head."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 5), nn.ELU(), nn.AvgPool2d(2), nn.Conv2d(32, 64, 3), nn.ELU(), nn.AvgPool2d(2),
        nn.Conv2d(64, 64, 3), nn.ELU(), nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 4 * 4, num_classes),
    )


class GELUStridedGAP(nn.Module):
    """A CNN of a more recent recipe: GELU, strided convolutions instead of pooling, global average pooling."""

    def __init__(self, num_classes: int = 10):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(*conv_bn_act(cin, cout, stride, nn.GELU))

        self.features = nn.Sequential(block(1, 24, 1), block(24, 48, 2), block(48, 48, 1), block(48, 96, 2),
                                      block(96, 96, 1))
        self.head = nn.Linear(96, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


def mlp(input_shape: tuple[int, ...], num_classes: int = 10, widths: tuple[int, ...] = (256, 128),
        batchnorm: bool = False) -> nn.Module:
    """Flattens its (image) input inside, so its input shape stays the image's."""
    layers: list[nn.Module] = [nn.Flatten()]
    d = int(np.prod(input_shape))
    for w in widths:
        layers += [nn.Linear(d, w)] + ([nn.BatchNorm1d(w)] if batchnorm else []) + [nn.ReLU(inplace=True)]
        d = w
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


def digits_cnn(num_classes: int = 10) -> nn.Module:
    """A small BN CNN for 8x8 digits."""
    return nn.Sequential(
        *conv_bn_act(1, 32), *conv_bn_act(32, 64), nn.MaxPool2d(2), *conv_bn_act(64, 64),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(64, num_classes),
    )


def instance_norm_cnn(num_classes: int = 10) -> nn.Module:
    """A CNN normalised by InstanceNorm (each channel of each input by itself, as style and small-batch models
    do), PReLU, dropout and global max pooling."""
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.InstanceNorm2d(32, affine=True), nn.PReLU(32),
        nn.Conv2d(32, 64, 3, padding=1), nn.InstanceNorm2d(64, affine=True), nn.PReLU(64), nn.Dropout2d(0.1),
        nn.MaxPool2d(2), nn.Conv2d(64, 64, 3, padding=1), nn.InstanceNorm2d(64, affine=True), nn.PReLU(64),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, num_classes),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2's block: a 1x1 expansion, a depthwise 3x3, a linear 1x1 projection, and the skip."""

    def __init__(self, c: int, expand: int, act: type[nn.Module]):
        super().__init__()
        e = c * expand
        self.block = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), act(),
                                   nn.Conv2d(e, e, 3, padding=1, groups=e, bias=False), nn.BatchNorm2d(e), act(),
                                   nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class MobileStyle(nn.Module):
    """A small mobile network: a hard-swish stem, inverted residual blocks (ReLU6, then SiLU), a 1x1 head conv and
    global average pooling."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(*conv_bn_act(1, 24, activation=nn.Hardswish))
        self.blocks = nn.Sequential(InvertedResidual(24, 4, nn.ReLU6), InvertedResidual(24, 4, nn.ReLU6),
                                    InvertedResidual(24, 4, nn.SiLU))
        self.head = nn.Sequential(nn.Conv2d(24, 96, 1, bias=False), nn.BatchNorm2d(96), nn.Hardswish(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


class TinyViT(nn.Module):
    """A vision transformer: 2x2 patches, learned positions, two pre-norm encoder layers (LayerNorm, GELU,
    dropout), mean-pooled tokens and a LayerNorm before the head."""

    def __init__(self, num_classes: int = 10, dim: int = 48, tokens: int = 16):
        super().__init__()
        self.patch = nn.Conv2d(1, dim, 2, stride=2)
        self.position = nn.Parameter(torch.zeros(1, tokens, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, 2 * dim, dropout=0.1, activation="gelu", batch_first=True,
                                           norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.position
        return self.head(self.norm(self.encoder(tokens)).mean(1))


# ---- data -------------------------------------------------------------------------------------------

def _split(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, ...]:
    from sklearn.model_selection import train_test_split

    return train_test_split(images, labels, test_size=0.2, stratify=labels, random_state=0)


def mnist_split(pad: int = 0, path: Path = MNIST_PATH, mean: float = MNIST_MEAN,
                std: float = MNIST_STD) -> tuple[torch.Tensor, ...]:
    """(x_train, x_test, y_train, y_test): [N, 1, 28 + 2 pad, 28 + 2 pad] tensors normalised by mean and std."""
    data = np.load(path)
    xtr, xte, ytr, yte = _split(data["images"], data["labels"])
    return _mnist_prep(xtr, pad, mean, std), _mnist_prep(xte, pad, mean, std), _labels(ytr), _labels(yte)


def _mnist_prep(images: np.ndarray, pad: int, mean: float, std: float) -> torch.Tensor:
    x = torch.as_tensor(images, dtype=torch.float32).div(255.0).unsqueeze(1)
    # Padding happens on raw pixels (0 = background), before normalising
    x = F.pad(x, (pad, pad, pad, pad))
    return (x - mean) / std


def digits_split() -> tuple[torch.Tensor, ...]:
    from sklearn.datasets import load_digits

    d = load_digits()
    xtr, xte, ytr, yte = _split(d.images, d.target)
    prep = lambda a: (torch.as_tensor(a, dtype=torch.float32).unsqueeze(1) / 16.0 - DIGITS_MEAN) / DIGITS_STD
    return prep(xtr), prep(xte), _labels(ytr), _labels(yte)


def _labels(y: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.long)


# ---- training ---------------------------------------------------------------------------------------

@dataclass
class Recipe:
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    epochs: int = 3
    batch: int = 64
    max_shift: int = 0  # random whole-batch shifts in pixels: light augmentation
    label_smoothing: float = 0.0  # softer targets, so a less confident teacher


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    hits = sum((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum().item() for i in range(0, len(x), 1000))
    model.train(was)
    return hits / len(x)


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe, seed: int = 0) -> nn.Module:
    """Ordinary supervised training with a cosine learning-rate schedule."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    if recipe.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    steps = recipe.epochs * ((len(x) + recipe.batch - 1) // recipe.batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps) if recipe.optimizer == "sgd" \
        else torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    model.train()
    for _ in range(recipe.epochs):
        perm = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), recipe.batch):
            idx = perm[i:i + recipe.batch]
            xb = _shift(x[idx], recipe.max_shift, g)
            loss = F.cross_entropy(model(xb), y[idx], label_smoothing=recipe.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def _shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    if max_shift <= 0:
        return x
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


# ---- the zoo ----------------------------------------------------------------------------------------

@dataclass
class Entry:
    name: str
    builder: Callable[[], nn.Module]
    input_shape: tuple[int, int, int]
    scale: float
    mean: float
    std: float
    dataset: str  # mnist | mnist32 | digits
    recipe: Recipe = field(default_factory=Recipe)
    num_classes: int = 10

    def split(self) -> tuple[torch.Tensor, ...]:
        if self.dataset == "digits":
            return digits_split()
        return mnist_split(pad=2 if self.dataset == "mnist32" else 0, mean=self.mean, std=self.std)

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised test inputs and labels, for evaluation only."""
        _, xte, _, yte = self.split()
        return xte, yte

    def cache_path(self, cache_dir: Path) -> Path:
        src = MNIST_PATH.read_bytes() if self.dataset != "digits" else b"sklearn-digits"
        key = hashlib.sha256(src + repr((self.name, self.recipe)).encode()).hexdigest()[:12]
        return Path(cache_dir) / f"{self.name}-{key}.pt"

    def train(self, cache_dir: Path = CACHE, seed: int = 0) -> tuple[nn.Module, float]:
        """The trained teacher (eval mode) and its test accuracy; trained once, then read from the cache."""
        xtr, xte, ytr, yte = self.split()
        torch.manual_seed(seed)
        model = self.builder()
        path = self.cache_path(cache_dir)
        if path.is_file():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            fit(model, xtr, ytr, self.recipe, seed)
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
        model.eval()
        return model, accuracy(model, xte, yte)


MNIST28 = dict(input_shape=(1, 28, 28), scale=1 / 255, mean=MNIST_MEAN, std=MNIST_STD, dataset="mnist")
MNIST32 = dict(input_shape=(1, 32, 32), scale=1 / 255, mean=MNIST_MEAN, std=MNIST_STD, dataset="mnist32")
DIGITS = dict(input_shape=(1, 8, 8), scale=1 / 16, mean=DIGITS_MEAN, std=DIGITS_STD, dataset="digits")

ZOO: dict[str, Entry] = {e.name: e for e in [
    Entry("lenet5", LeNet5, **MNIST32, recipe=Recipe("adam", 1e-3, epochs=8, max_shift=2)),
    Entry("bn_cnn", BNCNN, **MNIST28, recipe=Recipe("adam", 2e-3, epochs=3)),
    Entry("resnet_small", SmallResNet, **MNIST28, recipe=Recipe("sgd", 0.05, epochs=3)),
    Entry("strided_cnn", strided_cnn, **MNIST28, recipe=Recipe("adam", 2e-3, epochs=3)),
    Entry("wide_shallow", wide_shallow_cnn, **MNIST28, recipe=Recipe("adam", 2e-3, epochs=3)),
    Entry("mlp", lambda: mlp((1, 28, 28)), **MNIST28, recipe=Recipe("adam", 1e-3, epochs=8)),
    Entry("gn_separable", groupnorm_separable_cnn, **MNIST28, recipe=Recipe("adam", 2e-3, epochs=10)),
    Entry("gelu_ls", GELUStridedGAP, **MNIST28, recipe=Recipe("sgd", 0.1, epochs=6, batch=128, label_smoothing=0.1)),
    Entry("layernorm_mlp", layernorm_mlp, **MNIST28, recipe=Recipe("adam", 1e-3, epochs=6)),
    # Pixels to [-1, 1] (mean 0.5, std 0.5), the other common contract
    Entry("elu_avgpool32", elu_avgpool_cnn, **{**MNIST32, "mean": 0.5, "std": 0.5},
          recipe=Recipe("adam", 1e-3, epochs=5, max_shift=2)),
    Entry("digits_cnn", digits_cnn, **DIGITS, recipe=Recipe("adam", 2e-3, epochs=30, batch=32)),
    Entry("digits_mlp_bn", lambda: mlp((1, 8, 8), widths=(128, 64), batchnorm=True), **DIGITS,
          recipe=Recipe("adam", 2e-3, epochs=40, batch=32)),
    Entry("digits_instnorm", instance_norm_cnn, **DIGITS, recipe=Recipe("adam", 2e-3, epochs=30, batch=32)),
    Entry("digits_mobile", MobileStyle, **DIGITS, recipe=Recipe("adam", 2e-3, epochs=30, batch=32)),
    Entry("digits_vit", TinyViT, **DIGITS, recipe=Recipe("adam", 1e-3, epochs=60, batch=32)),
]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Train (or load from the cache) the zoo's teachers.")
    ap.add_argument("names", nargs="*", help=f"entries (default: all): {', '.join(ZOO)}")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=CACHE)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    for name in args.names or list(ZOO):
        entry = ZOO[name]
        t0 = time.perf_counter()
        model, acc = entry.train(args.cache)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:14s} {str(entry.input_shape):12s} {params:>8,} params  test {acc:.4f}  "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
