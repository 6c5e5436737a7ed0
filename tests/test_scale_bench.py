"""benchmarks/scale.py counts the samples that go through the teacher, forward and backward, by part of the loop."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
# Imported from benchmarks/, which then leaves sys.path: its models.py must not shadow other tests' imports.
saved = list(sys.path)
sys.path.insert(0, str(BENCH))
try:
    import scale
finally:
    sys.path[:] = saved


def test_teacher_passes_count_samples_forward_and_backward_by_part():
    teacher = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).requires_grad_(False)
    parts = scale.Parts()
    passes = scale.TeacherPasses(teacher, parts)
    with parts.inside("labels"), torch.no_grad():
        teacher(torch.randn(5, 4))  # no graph: a forward pass only
    with parts.inside("attack"):
        x = torch.randn(3, 4, requires_grad=True)
        torch.autograd.grad(teacher(x).sum(), x)
    with parts.inside("generator"):
        z = torch.randn(2, 4, requires_grad=True)
        out = teacher(z)
        teacher(z)  # a forward pass nothing differentiates: no backward
        out.pow(2).sum().backward()
    passes.remove()
    teacher(torch.randn(7, 4))
    assert passes.forward == {"labels": 5, "attack": 3, "generator": 4}
    assert passes.backward == {"attack": 3, "generator": 2}

