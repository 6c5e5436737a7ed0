"""A fixed, data-free probe set: inputs optimised so the teacher predicts each class, with its BatchNorm
statistics matched and, for images, a total-variation prior (DeepInversion). Agreement with the teacher on it
needs no real data and does not move with the generator, so it is comparable across steps, seeds and replay
modes.

Where the teacher's labels on that set do not survive mild noise, its probes are not inputs any other model
reads as the teacher does, and the set is made again robustly: each probe standardised (zero mean, unit
spread) and read through a random one-pixel shift and noise at every step. A teacher that normalises each input
itself (GroupNorm, LayerNorm) is the case in point: nothing pins its probes' scale, the priors shrink them to a
faint pattern, and a student that follows the teacher on real inputs reads them at chance."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stages.distill import augment
from stages.distill.criteria import BNStatistics

# Weight of the probes' total variation per pixel of image side (see total_variation). Without the prior, probes
# are high-frequency patterns: a BatchNorm teacher's are read by no student (agreement far below real accuracy),
# a teacher without BatchNorm's are read by every student (agreement 1.0 whatever it learnt).
TV_PER_SIDE = 0.1
# Optimisation steps per probe set. Probes stopped earlier already carry the teacher's class, but students of
# another architecture then read many of them otherwise while agreeing with the teacher on real inputs, so a
# converged student reads as a failed one (benchmarks/README.md, probe agreement against real accuracy).
STEPS = 300
# The set holds `per_class` probes of each class for up to this many classes; a teacher with more classes gets
# the same number of probes in all, spread evenly over its classes (at least one each). Agreement is a fraction
# of the whole set, so its precision depends on the set's size, not on the probes per class, while the set's
# memory and time grow with its size: a 100-class teacher would otherwise pay ten times a 10-class one's.
CLASSES_AT_FULL_SIZE = 10
# Steps timed (after a warm-up one) before the whole set's time is announced.
ANNOUNCE_AFTER = 3
# A probe set is fragile when the teacher's label changes on more than this fraction of it under Gaussian noise of
# FRAGILITY_NOISE (normalised input units); the zoo's teachers stay at or below 0.10, a GroupNorm CNN's set at 0.48.
FRAGILE = 0.25
FRAGILITY_NOISE = 0.2
# What a robust set's probes are read through at every step: a shift of up to this many pixels, and noise.
ROBUST_SHIFT = 1
ROBUST_NOISE = 0.1


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, times the image's side: neighbours of a smooth
    picture differ less the finer it is sampled, so this weighs the same at 8x8 and at 32x32."""
    side = (x.shape[-1] + x.shape[-2]) / 2
    return side * ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def probes_per_class(num_classes: int, per_class: int) -> int:
    """How many probes of each class a set for `num_classes` holds (CLASSES_AT_FULL_SIZE)."""
    if num_classes <= CLASSES_AT_FULL_SIZE:
        return per_class
    return max(1, per_class * CLASSES_AT_FULL_SIZE // num_classes)


@dataclass
class ProbeSet:
    inputs: torch.Tensor
    labels: torch.Tensor  # the teacher's own
    robust: bool  # made again robustly: the first set's labels broke under noise (FRAGILE)


def make_probes(teacher: nn.Module, shape: tuple[int, ...], num_classes: int, per_class: int, steps: int = STEPS,
                seed: int = 1234, device: torch.device | str = "cpu", tv: float = TV_PER_SIDE,
                announce: Callable[[float, bool], None] | None = None) -> ProbeSet:
    """`announce(seconds, again)` is told, after the first steps, how long the set will take (`again` False), and
    how long making it again robustly will take where the first set is fragile (`again` True)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    targets = torch.arange(num_classes).repeat_interleave(probes_per_class(num_classes, per_class)).to(device)
    tv = tv if len(shape) == 3 else 0.0  # images only
    x, labels = _optimise(teacher, shape, targets, steps, gen, tv, announce, robust=False)
    if fragility(teacher, x, labels, gen) <= FRAGILE:
        return ProbeSet(x, labels, robust=False)
    return ProbeSet(*_optimise(teacher, shape, targets, steps, gen, tv, announce, robust=True), robust=True)


def synthesize_probes(teacher: nn.Module, shape: tuple[int, ...], num_classes: int, per_class: int,
                      steps: int = STEPS, seed: int = 1234, device: torch.device | str = "cpu",
                      tv: float = TV_PER_SIDE, announce: Callable[[float, bool], None] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The probes and the teacher's labels on them (make_probes)."""
    probes = make_probes(teacher, shape, num_classes, per_class, steps, seed, device, tv, announce)
    return probes.inputs, probes.labels


def _standardised(v: torch.Tensor) -> torch.Tensor:
    flat = v.flatten(1)
    return ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)).view_as(v)


def _optimise(teacher: nn.Module, shape: tuple[int, ...], targets: torch.Tensor, steps: int, gen: torch.Generator,
              tv: float, announce: Callable[[float, bool], None] | None, robust: bool) -> tuple[torch.Tensor, torch.Tensor]:
    device = targets.device
    v = torch.randn((len(targets), *shape), generator=gen).to(device).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=0.1)
    bn = BNStatistics(teacher)
    try:
        for step in range(steps):
            if step == 1:
                started = time.perf_counter()
            if announce is not None and step == 1 + ANNOUNCE_AFTER:
                announce((time.perf_counter() - started) / ANNOUNCE_AFTER * steps, robust)
            x = _standardised(v) if robust else v
            seen = _jittered(x, gen) if robust else x
            with bn:
                logits = teacher(seen)
                loss = F.cross_entropy(logits, targets) + bn.loss() + 1e-3 * x.pow(2).mean()
                if tv:
                    loss = loss + tv * total_variation(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        bn.remove()
    with torch.no_grad():
        x = _standardised(v) if robust else v.detach()
        return x, teacher(x).argmax(1)


def _jittered(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """`x` shifted by up to ROBUST_SHIFT pixels (images) and with ROBUST_NOISE of Gaussian noise."""
    if x.dim() == 4:
        x = augment.translate(x, ROBUST_SHIFT, gen)
    return x + ROBUST_NOISE * torch.randn(x.shape, generator=gen).to(x.device)


@torch.no_grad()
def fragility(teacher: nn.Module, x: torch.Tensor, labels: torch.Tensor, gen: torch.Generator) -> float:
    """The fraction of `x` whose teacher label changes under Gaussian noise of FRAGILITY_NOISE."""
    noisy = x + FRAGILITY_NOISE * torch.randn(x.shape, generator=gen).to(x.device)
    return float((teacher(noisy).argmax(1) != labels).float().mean())


@torch.no_grad()
def _outputs(model: nn.Module, probes: torch.Tensor, batch: int) -> list[torch.Tensor]:
    """The model's logits on the probes, batch by batch, in eval mode (its mode comes back)."""
    was_training = model.training
    model.eval()
    try:
        return [model(probes[i : i + batch]) for i in range(0, len(probes), batch)]
    finally:
        model.train(was_training)


def _hits(outputs: list[torch.Tensor], teacher_labels: torch.Tensor) -> int:
    labels = torch.split(teacher_labels, [len(o) for o in outputs])
    return sum(int((o.argmax(1) == t).sum()) for o, t in zip(outputs, labels))


def _kl_sum(outputs: list[torch.Tensor], teacher_log_probs: torch.Tensor) -> float:
    targets = torch.split(teacher_log_probs, [len(o) for o in outputs])
    return sum(float((t.exp() * (t - F.log_softmax(o, dim=1))).sum()) for o, t in zip(outputs, targets))


def agreement(model: nn.Module, probes: torch.Tensor, teacher_labels: torch.Tensor, batch: int = 512) -> float:
    return _hits(_outputs(model, probes, batch), teacher_labels) / max(1, len(probes))


def divergence(model: nn.Module, probes: torch.Tensor, teacher_log_probs: torch.Tensor, batch: int = 512) -> float:
    """Mean KL(teacher || model) over the probes, in nats. Agreement saturates once the student reads every probe as
    the teacher does; the divergence still falls while the student learns the teacher's whole output."""
    return _kl_sum(_outputs(model, probes, batch), teacher_log_probs) / max(1, len(probes))


def fit(model: nn.Module, probes: torch.Tensor, teacher_labels: torch.Tensor, teacher_log_probs: torch.Tensor,
        batch: int = 512) -> tuple[float, float]:
    """Agreement and divergence from one pass of the model over the probes (each evaluation of a run needs both)."""
    outputs = _outputs(model, probes, batch)
    n = max(1, len(probes))
    return _hits(outputs, teacher_labels) / n, _kl_sum(outputs, teacher_log_probs) / n
