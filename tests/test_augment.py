"""Perturbations of the student's KD batch: shifts, mixes, and that they reach the student but not the memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import load_config
from pipeline.errors import UsageError
from stages.distill.augment import mix, perturb, translate
from stages.distill.engine import distill
from stages.distill.memory import NoReplay
from stages.distill.networks import build_student, student_spec

SHAPE = (1, 8, 8)


def _all_shifts(x: torch.Tensor, p: int) -> list[torch.Tensor]:
    """Every shift of one [C, H, W] image by offsets in [-p, p]^2, border replicated (the reference)."""
    padded = F.pad(x[None], (p, p, p, p), mode="replicate")[0]
    h, w = x.shape[1:]
    return [padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * p + 1) for dx in range(2 * p + 1)]


def test_translate_shifts_each_image_by_its_own_offset_within_range():
    torch.manual_seed(0)
    x = torch.randn(64, 2, 9, 7)
    y = translate(x, 2)
    assert y.shape == x.shape
    matches = [[torch.equal(yi, s) for s in _all_shifts(xi, 2)] for xi, yi in zip(x, y)]
    assert all(sum(m) == 1 for m in matches)  # each output is exactly one shift of its own input
    offsets = {m.index(True) for m in matches}
    assert len(offsets) > 10  # drawn per image, not one offset for the batch
    assert torch.equal(translate(x, 0), x)


def test_mix_replaces_about_the_fraction_by_convex_pairs():
    torch.manual_seed(0)
    n = 2000
    x = torch.eye(n)  # one-hot rows: a mix shows as two positive weights summing to one
    y = mix(x, 0.3)
    changed = (y != x).any(1)
    assert abs(changed.float().mean().item() - 0.3) < 0.04
    rows = y[changed]
    assert torch.allclose(rows.sum(1), torch.ones(len(rows)))
    assert (rows >= 0).all() and ((rows > 0).sum(1) <= 2).all()
    assert (rows[torch.arange(len(rows)), changed.nonzero()[:, 0]] > 0).all()  # each keeps part of itself
    assert torch.equal(mix(x, 0.0), x)


def test_perturb_without_any_perturbation_is_the_identity():
    x = torch.randn(16, *SHAPE)
    assert torch.equal(perturb(x, 0, 0.0, 0.0), x)


class RecordingReplay(NoReplay):
    """Replays a fixed batch and records what the engine asks it to learn."""

    def __init__(self, batch: torch.Tensor):
        self.batch = batch
        self.observed: list[torch.Tensor] = []

    def sample(self, n):
        return self.batch[:n]

    def observe(self, x, *args, **kwargs):
        self.observed.append(x.detach().clone())
        return {}


class LinearTeacher(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))

    def forward(self, x):
        return self.net(x)


def test_shifted_batch_reaches_the_student_and_the_memory_learns_the_clean_samples(tmp_path):
    cfg = dataclasses.replace(load_config(overrides={"preset": "smoke"}).distill, iterations=1, kd_steps=1,
                              vae_steps=1, batch_size=16, replay_batch=8, eval_every=1, checkpoint_every=100,
                              input_noise=0.0, input_mix=0.0, input_shift=2)
    seen: list[torch.Tensor] = []
    student = build_student(student_spec(SHAPE, 10, 4000, 0.5))
    student.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    memory = RecordingReplay(torch.full((8, *SHAPE), 3.0))  # a constant image is its own shift
    distill(cfg, LinearTeacher().eval(), student, SHAPE, tmp_path, torch.device("cpu"), memory=memory)
    batch = next(x for x in seen if x.shape[0] == 16 + 8)
    assert torch.equal(batch[16:], memory.batch)
    clean = memory.observed[0]
    assert clean.shape[0] == 16 and not torch.equal(batch[:16], clean)
    assert all(any(torch.equal(b, s) for s in _all_shifts(c, 2)) for b, c in zip(batch[:16], clean))


@pytest.mark.parametrize("shape", [(4,), (1, 2, 8)])
def test_shift_is_refused_for_vectors_and_for_images_smaller_than_the_shift(tmp_path, shape):
    cfg = dataclasses.replace(load_config(overrides={"preset": "smoke"}).distill, input_shift=2)
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(shape).prod()), 3))
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(int(torch.tensor(shape).prod()), 3))
    with pytest.raises(UsageError, match="distill.input_shift"):
        distill(cfg, teacher.eval(), student, shape, tmp_path, torch.device("cpu"))
