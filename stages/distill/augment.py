"""Perturbations of the student's KD batch. The teacher labels the perturbed inputs, so the student learns
the teacher in a neighbourhood of each synthetic sample rather than on the sample alone: the synthetic
distribution is narrow, the real one is not, and a student that matches the teacher only on the
generator's points generalises worse to real data than one that matches it around them.

All draws come from torch's global generator, so a checkpointed RNG state resumes them exactly.
`toward_disagreement` draws nothing: it moves samples along the gradient of the student's disagreement.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.distill import criteria


def translate(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each image of an [N, C, H, W] batch by its own random integer offset in [-max_shift, max_shift]
    along both axes; the border is replicated (synthetic backgrounds are not zero in normalised units)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dy, dx = torch.randint(0, 2 * p + 1, (2, n, 1), device=x.device)
    rows = (torch.arange(h, device=x.device) + dy)[:, :, None]  # [N, H, 1]
    cols = (torch.arange(w, device=x.device) + dx)[:, None, :]  # [N, 1, W]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def mix(x: torch.Tensor, fraction: float) -> torch.Tensor:
    """Replace a random `fraction` of the batch by convex mixes of two of its samples (weight uniform in
    [0, 1]): points between the generator's modes, where the teacher's decision boundaries are."""
    if fraction <= 0:
        return x
    n = x.shape[0]
    chosen = torch.rand(n, device=x.device) < fraction
    partner = torch.randint(0, n, (n,), device=x.device)
    lam = torch.rand(n, *([1] * (x.dim() - 1)), device=x.device)
    mixed = lam * x + (1 - lam) * x[partner]
    return torch.where(chosen.view(n, *([1] * (x.dim() - 1))), mixed, x)


def perturb(x: torch.Tensor, shift: int, mix_fraction: float, noise: float) -> torch.Tensor:
    """The student's batch as the teacher will label it: shifted, mixed, then Gaussian noise."""
    if x.dim() == 4:  # shifts are for images; the config refuses them for anything else
        x = translate(x, shift)
    x = mix(x, mix_fraction)
    if noise > 0:
        x = x + noise * torch.randn_like(x)
    return x


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
