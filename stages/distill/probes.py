"""A fixed, data-free probe set: inputs optimised so the teacher predicts each class, with its BatchNorm
statistics matched and, for images, a total-variation prior (DeepInversion). Agreement with the teacher on it
needs no real data and does not move with the generator, so it is comparable across steps, seeds and replay
modes."""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from stages.distill.criteria import BNStatistics

# Weight of the probes' total variation per pixel of image side (see total_variation). Without the prior, probes
# are high-frequency patterns: a BatchNorm teacher's are read by no student (agreement far below real accuracy),
# a teacher without BatchNorm's are read by every student (agreement 1.0 whatever it learnt).
TV_PER_SIDE = 0.1
# Optimisation steps per probe set. Probes stopped earlier already carry the teacher's class, but students of
# another architecture then read many of them otherwise while agreeing with the teacher on real inputs, so a
# converged student reads as a failed one (benchmarks/README.md, probe agreement against real accuracy).
STEPS = 300
# Steps timed (after a warm-up one) before the whole set's time is announced.
ANNOUNCE_AFTER = 3


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, times the image's side: neighbours of a smooth
    picture differ less the finer it is sampled, so this weighs the same at 8x8 and at 32x32."""
    side = (x.shape[-1] + x.shape[-2]) / 2
    return side * ((x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean())


def synthesize_probes(teacher: nn.Module, shape: tuple[int, ...], num_classes: int, per_class: int,
                      steps: int = STEPS, seed: int = 1234, device: torch.device | str = "cpu",
                      tv: float = TV_PER_SIDE, announce: Callable[[float], None] | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """`announce(seconds)` is told, after the first steps, how long the whole set will take."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    targets = torch.arange(num_classes).repeat_interleave(per_class).to(device)
    x = torch.randn((len(targets), *shape), generator=gen).to(device).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.1)
    bn = BNStatistics(teacher)
    tv = tv if len(shape) == 3 else 0.0  # images only
    try:
        for step in range(steps):
            if step == 1:
                started = time.perf_counter()
            if announce is not None and step == 1 + ANNOUNCE_AFTER:
                announce((time.perf_counter() - started) / ANNOUNCE_AFTER * steps)
            with bn:
                logits = teacher(x)
                loss = F.cross_entropy(logits, targets) + bn.loss() + 1e-3 * x.pow(2).mean()
                if tv:
                    loss = loss + tv * total_variation(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        bn.remove()
    x = x.detach()
    with torch.no_grad():
        labels = teacher(x).argmax(1)
    return x, labels


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
