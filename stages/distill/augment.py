"""Perturbations of inputs, chiefly of the student's KD batch (`translate` also serves the generator's objective
and the robust probes). The teacher labels the perturbed KD inputs, so the student learns
the teacher in a neighbourhood of each synthetic sample rather than on the sample alone: the synthetic
distribution is narrow, the real one is not, and a student that matches the teacher only on the
generator's points generalises worse to real data than one that matches it around them.

All draws come from torch's global generator unless one is given, so a checkpointed RNG state resumes them exactly.
`toward_disagreement` draws nothing: it moves samples along the gradient of the student's disagreement.
"""

from __future__ import annotations

import torch
from torch import nn

from stages.distill import criteria


def translate(x: torch.Tensor, shift: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A batch of images rolled by one random translation of at most `shift` pixels along each axis."""
    if shift == 0:
        return x
    dy, dx = torch.randint(-shift, shift + 1, (2,), generator=generator).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def perturb(x: torch.Tensor, noise: float) -> torch.Tensor:
    """The student's batch as the teacher will label it: with Gaussian noise of std `noise`."""
    if noise > 0:
        x = x + noise * torch.randn_like(x)
    return x


@torch.no_grad()
def label_safe_reach(x: torch.Tensor, teacher: nn.Module, noise: float, max_flips: float, halvings: int = 6) -> float:
    """The largest fraction of `noise` (found by bisection, never above 1) at which the teacher's top class
    changes on at most `max_flips` of the clean samples `x`. Teachers differ by an order of magnitude in how
    far their labels hold around synthetic samples; noise past that gives the student labels of nothing."""
    labels = teacher(x).argmax(1)

    def flips(reach: float) -> float:
        return float((teacher(perturb(x, reach * noise)).argmax(1) != labels).float().mean())

    if noise <= 0 or flips(1.0) <= max_flips:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(halvings):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if flips(mid) <= max_flips else (lo, mid)
    return lo


def toward_disagreement(x: torch.Tensor, student: nn.Module, teacher: nn.Module, size: float, steps: int,
                        fraction: float) -> torch.Tensor:
    """Move the batch's first `fraction` of rows (fresh generator samples come before replayed ones) in `steps`
    signed-gradient steps of `size / steps` each, per input element, up the student-teacher Jensen-Shannon
    divergence. Random perturbations rarely land where the student is wrong; these go there, next to the
    synthetic samples (boundary-supporting samples, Heo et al., AAAI 2019), and the teacher labels them."""
    n = round(fraction * x.shape[0])
    if size <= 0 or n == 0:
        return x
    was_training = student.training
    student.eval()  # the probing passes must not move the student's BatchNorm statistics
    moved = x[:n].detach()
    try:
        with torch.enable_grad():
            for _ in range(steps):
                moved.requires_grad_(True)
                gap = criteria.js_divergence(student(moved), teacher(moved))
                (grad,) = torch.autograd.grad(gap, moved)
                moved = (moved + (size / steps) * grad.sign()).detach()
    finally:
        student.train(was_training)
    return torch.cat([moved, x[n:]])
