"""Generators, the VAE memory and built-in student families, chosen from the input shape.

Images are [C, H, W]; anything else is treated as a flat feature vector.
Generated samples end in a non-affine BatchNorm, so they live in the teacher's normalised input space.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UsageError


def _is_image(shape: tuple[int, ...]) -> bool:
    return len(shape) == 3


class ImageDecoder(nn.Module):
    """latent -> [C, H, W]: a linear stem at a quarter resolution, two upsampling conv blocks."""

    def __init__(self, latent_dim: int, shape: tuple[int, int, int], width: int = 64, spectral: bool = False):
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.h0, self.w0 = max(1, math.ceil(h / 4)), max(1, math.ceil(w / 4))
        self.width = width
        sn = nn.utils.spectral_norm if spectral else (lambda m: m)
        self.stem = nn.Linear(latent_dim, width * self.h0 * self.w0)
        self.bn0 = nn.BatchNorm2d(width)
        self.block1 = nn.Sequential(sn(nn.Conv2d(width, width, 3, padding=1)), nn.BatchNorm2d(width), nn.LeakyReLU(0.2))
        self.block2 = nn.Sequential(sn(nn.Conv2d(width, width // 2, 3, padding=1)), nn.BatchNorm2d(width // 2), nn.LeakyReLU(0.2))
        self.head = sn(nn.Conv2d(width // 2, c, 3, padding=1))
        self.out_bn = nn.BatchNorm2d(c, affine=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.bn0(self.stem(z).view(z.shape[0], self.width, self.h0, self.w0))
        x = self.block1(F.interpolate(x, scale_factor=2))
        x = self.block2(F.interpolate(x, scale_factor=2))
        if x.shape[-2:] != self.shape[1:]:
            x = F.interpolate(x, size=self.shape[1:], mode="bilinear", align_corners=False)
        return self.out_bn(torch.tanh(self.head(x)))


class NoisyEmbedding(nn.Module):
    """Class embedding and noise -> a generator's latent, through a layer the conditional synthesizer draws afresh
    every round (NAYER's noisy layer)."""

    def __init__(self, num_classes: int, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim
        self.embedding = nn.Embedding(num_classes, latent_dim)
        self.noisy = nn.Sequential(nn.Linear(2 * latent_dim, latent_dim), nn.BatchNorm1d(latent_dim))

    def redraw(self) -> None:
        for m in self.noisy:
            m.reset_parameters()

    def forward(self, labels: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            noise = torch.randn(len(labels), self.latent_dim, device=labels.device)
        return self.noisy(torch.cat([self.embedding(labels), noise], 1))


class ConditionalSampler(nn.Module):
    """noise -> samples as the conditional synthesizer draws them: each asks for a class, every class equally
    (in a random order), through the round's noisy layer. What its runs save as their generator, so that stage 2
    calibrates on the samples the student learnt from, not on the bare generator fed noise it never saw."""

    def __init__(self, condition: NoisyEmbedding, generator: nn.Module, num_classes: int):
        super().__init__()
        self.condition, self.generator, self.num_classes = condition, generator, num_classes

    def labels(self, n: int, device: torch.device, classes: list[int] | None = None) -> torch.Tensor:
        """`n` requested classes, balanced over `classes` (default: all of them)."""
        group = torch.as_tensor(classes if classes else range(self.num_classes), device=device)
        return group[torch.arange(n, device=device) % len(group)]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        labels = self.labels(len(z), z.device)[torch.randperm(len(z), device=z.device)]
        return self.generator(self.condition(labels, z))


def build_sampler(synthesizer: str, latent_dim: int, shape: tuple[int, ...], num_classes: int,
                  width: int = 64) -> nn.Module:
    """The module a run of `synthesizer` saves as its generator (noise -> samples), for stage 2 to rebuild."""
    generator = build_generator(latent_dim, shape, width=width)
    if synthesizer == "conditional":
        return ConditionalSampler(NoisyEmbedding(num_classes, latent_dim), generator, num_classes)
    return generator


class VectorDecoder(nn.Module):
    """latent -> [D]: an MLP with BatchNorm1d."""

    def __init__(self, latent_dim: int, shape: tuple[int, ...], width: int = 256, spectral: bool = False):
        super().__init__()
        self.shape = shape
        d = math.prod(shape)
        sn = nn.utils.spectral_norm if spectral else (lambda m: m)
        self.net = nn.Sequential(
            sn(nn.Linear(latent_dim, width)), nn.BatchNorm1d(width), nn.LeakyReLU(0.2),
            sn(nn.Linear(width, width)), nn.BatchNorm1d(width), nn.LeakyReLU(0.2),
            sn(nn.Linear(width, d)), nn.BatchNorm1d(d, affine=False),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.shape)


def build_generator(latent_dim: int, shape: tuple[int, ...], spectral: bool = True, width: int = 64) -> nn.Module:
    """The novel-sample generator; spectral norm on its convolutions as in the reference code."""
    if _is_image(shape):
        return ImageDecoder(latent_dim, shape, width=width, spectral=spectral)
    return VectorDecoder(latent_dim, shape, width=4 * width, spectral=spectral)


class ImageEncoder(nn.Module):
    def __init__(self, shape: tuple[int, int, int], latent_dim: int, width: int = 32):
        super().__init__()
        c = shape[0]
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1), nn.BatchNorm2d(width), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        )
        self.mu = nn.Linear(8 * width, latent_dim)
        self.log_var = nn.Linear(8 * width, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)
        return self.mu(h), self.log_var(h)


class VectorEncoder(nn.Module):
    def __init__(self, shape: tuple[int, ...], latent_dim: int, width: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(shape), width), nn.BatchNorm1d(width), nn.LeakyReLU(0.2),
                                 nn.Linear(width, width), nn.LeakyReLU(0.2))
        self.mu = nn.Linear(width, latent_dim)
        self.log_var = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)
        return self.mu(h), self.log_var(h)


def auto_vae_width(shape: tuple[int, ...]) -> int:
    """The VAE's width for `distill.vae_width = 0`: 32 for images of at most 16x16 pixels (faster at the same
    accuracy), 64 otherwise (larger images need the capacity)."""
    return 32 if _is_image(shape) and shape[1] * shape[2] <= 256 else 64


class VAE(nn.Module):
    """The replay memory: learns the stream of synthetic samples; only its decoder is needed to replay."""

    def __init__(self, shape: tuple[int, ...], latent_dim: int, width: int = 64):
        super().__init__()
        self.latent_dim, self.width = latent_dim, width
        if _is_image(shape):
            self.encoder = ImageEncoder(shape, latent_dim, width=max(8, width // 2))
            self.decoder = ImageDecoder(latent_dim, shape, width=width)
        else:
            self.encoder = VectorEncoder(shape, latent_dim, width=4 * width)
            self.decoder = VectorDecoder(latent_dim, shape, width=4 * width)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Files written while distill.vae_prior_decay existed carry its latent prior. Never fitted, it is the
        # N(0, I) replay draws from; a fitted one would have to be replayed from, which this version cannot.
        count = state_dict.pop(prefix + "prior_count", None)
        for name in ("prior_mean", "prior_cov"):
            state_dict.pop(prefix + name, None)
        if count is not None and int(count) > 0:
            raise UsageError("this VAE was trained to replay from a latent prior fitted by distill.vae_prior_decay, "
                             "a setting this version no longer has; distil afresh for a VAE it can replay")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, log_var = self.encoder(x)
        log_var = log_var.clamp(-10, 10)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * log_var)
        return self.decoder(z), mu, log_var


# ---- students -------------------------------------------------------------------------------------

# The side of the grid the built-in conv student's head reads: the classifier sees where on the image each feature
# fired, not only how much. A global-average head (a bag of local features) matches a teacher only on what it sees
# position-free, and a teacher whose head reads positions (LeNet's, an MLP's) it matches on synthetic samples
# without following it on real ones.
HEAD_GRID = 4


class ConvStudent(nn.Module):
    """Conv-BN-ReLU stages with a 2x max-pooling between two of them wherever the resolution stays >= 4 pixels,
    then a linear head on the last feature map averaged to a grid of at most `HEAD_GRID` cells a side
    (`head = "grid"`), or to one cell (`"gap"`: specs written by older versions, rebuilt as they were trained).

    `pooling = "late"` (the built-in students) puts the poolings between the last stages, as the digits teacher
    does, so a small image keeps its full resolution through the first two convolutions; `"early"` (specs
    written by older versions) puts them between the first ones. The two differ only for images under 16 pixels
    a side."""

    def __init__(self, shape: tuple[int, int, int], num_classes: int, widths: list[int], pooling: str = "late",
                 head: str = "grid"):
        super().__init__()
        if pooling not in ("late", "early"):
            raise ValueError(f"unknown pooling {pooling!r}: late or early")
        if head not in ("grid", "gap"):
            raise ValueError(f"unknown head {head!r}: grid or gap")
        c, h, w = shape
        gaps = len(widths) - 1
        pools, size = 0, min(h, w)
        while size >= 8 and pools < gaps:
            pools, size = pools + 1, size // 2
        pooled_after = set(range(gaps - pools, gaps)) if pooling == "late" else set(range(pools))
        layers: list[nn.Module] = []
        for i, width in enumerate(widths):
            layers += [nn.Conv2d(c, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            c = width
            if i in pooled_after:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        pool, cells = _grid_pooling(h, w, HEAD_GRID) if head == "grid" else ([nn.AdaptiveAvgPool2d(1)], 1)
        self.features = nn.Sequential(*layers, *pool, nn.Flatten())
        self.classifier = nn.Linear(c * cells, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _grid_pooling(h: int, w: int, grid: int) -> tuple[list[nn.Module], int]:
    """Layers averaging an h x w map to at most grid x grid cells, and the number of cells. A side the grid does
    not divide is zero-padded at its end first: ONNX has no adaptive pooling to a size that does not divide the
    input."""
    gh, gw = min(grid, h), min(grid, w)
    pad_h, pad_w = -h % gh, -w % gw
    layers: list[nn.Module] = [nn.ZeroPad2d((0, pad_w, 0, pad_h))] if pad_h or pad_w else []
    kh, kw = (h + pad_h) // gh, (w + pad_w) // gw
    return layers + ([nn.AvgPool2d((kh, kw))] if kh * kw > 1 else []), gh * gw


class MLPStudent(nn.Module):
    def __init__(self, shape: tuple[int, ...], num_classes: int, widths: list[int]):
        super().__init__()
        d = math.prod(shape)
        layers: list[nn.Module] = [nn.Flatten()]
        for width in widths:
            layers += [nn.Linear(d, width, bias=False), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            d = width
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(d, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def student_spec(shape: tuple[int, ...], num_classes: int, teacher_params: int, ratio: float,
                 convolutional: bool = True) -> dict:
    """Pick the width of a built-in student so its size is about `ratio` times the teacher's. Images get a conv
    student unless the teacher never convolves (`convolutional=False`): an MLP on flattened pixels weighs each
    pixel where it is, and an MLP student follows it on real inputs where a conv student matched it on the
    synthetic ones only, at many times the teacher's cost."""
    family = "conv" if _is_image(shape) and convolutional else "mlp"
    base = [16, 32, 64] if family == "conv" else [128, 64]
    target = max(1, int(teacher_params * ratio))
    best = None
    for mult in [x / 8 for x in range(1, 129)]:
        widths = [max(4, int(round(b * mult))) for b in base]
        n = param_count(build_student({"family": family, "shape": list(shape), "num_classes": num_classes, "widths": widths}))
        if best is None or abs(n - target) < abs(best[0] - target):
            best = (n, widths)
        if n > target:
            break
    spec = {"family": family, "shape": list(shape), "num_classes": num_classes, "widths": best[1]}
    return {**spec, "pooling": "late", "head": "grid"} if family == "conv" else spec


def build_student(spec: dict) -> nn.Module:
    """Rebuild a student from its JSON spec (stored beside its weights)."""
    if spec["family"] == "conv":
        # A spec without "pooling" was written before late pooling, one without "head" before the grid head:
        # its weights were trained that way
        return ConvStudent(tuple(spec["shape"]), spec["num_classes"], spec["widths"], spec.get("pooling", "early"),
                           spec.get("head", "gap"))
    if spec["family"] == "mlp":
        return MLPStudent(tuple(spec["shape"]), spec["num_classes"], spec["widths"])
    raise ValueError(f"unknown student family {spec['family']!r}")
