"""benchmarks/scale.py counts the samples that go through the teacher, forward and backward, by part of the loop."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch
from torch import nn

from stages.distill.config import DistillConfig

from tests.bench_modules import BENCH, load

scale = load("scale")


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


def test_a_row_runs_the_stages_loop_and_attributes_its_parts(tmp_path):
    """One row in its own process, as the benchmark spawns it: the recorder's patches reach the loop as it is now
    (a renamed function it wraps fails the row), every part of an iteration gets its teacher passes, and the probe
    synthesis is timed."""
    out = tmp_path / "row.json"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, str(BENCH / "scale.py"), "--row", "digits", "--threads", "1", "--device",
                        "cpu", "--iterations", "4", "--row-out", str(out)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(out.read_text())
    assert row["iterations"] == 4 and row["timed"] == 3
    assert row["probe_s"] > 0
    for part in ("generator step", "attack", "KD labelling", "VAE memory"):
        assert row["forward"][part] > 0, part
    assert row["backward"]["generator step"] > 0 and row["backward"]["attack"] > 0
    assert row["forward"]["KD labelling"] == DistillConfig.kd_steps * DistillConfig.batch_size
