"""Perturbations of the student's KD batch: shifts, mixes, and that they reach the student but not the memory."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import load_config
from core.errors import UsageError
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
                              input_noise=0.0, input_mix=0.0, input_shift=2, input_attack=0.0)
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


def _disagreeing_pair():
    torch.manual_seed(0)
    student = build_student(student_spec(SHAPE, 10, 4000, 0.5))  # has BatchNorm: its statistics must not move
    return student.train(), LinearTeacher().eval()


def test_toward_disagreement_moves_the_fraction_within_size_and_raises_the_divergence():
    from stages.distill.augment import toward_disagreement
    from stages.distill.criteria import js_divergence

    student, teacher = _disagreeing_pair()
    x = torch.randn(32, *SHAPE)
    stats = [b.clone() for b in student.buffers()]
    y = toward_disagreement(x, student, teacher, size=0.5, steps=2, fraction=0.25)
    assert torch.equal(y[8:], x[8:])  # only the first quarter moves
    step = (y[:8] - x[:8]).abs()
    assert step.max() <= 0.5 + 1e-6 and step.max() > 0.49  # two steps of 0.25, each along the gradient's sign
    student.eval()
    with torch.no_grad():
        before, after = js_divergence(student(x[:8]), teacher(x[:8])), js_divergence(student(y[:8]), teacher(y[:8]))
    assert after > 1.5 * before
    student.train()
    assert student.training and all(torch.equal(a, b) for a, b in zip(stats, student.buffers()))
    assert torch.equal(toward_disagreement(x, student, teacher, size=0.0, steps=2, fraction=0.5), x)


def test_attacked_batch_reaches_the_student_and_the_memory_learns_the_clean_samples(tmp_path):
    cfg = dataclasses.replace(load_config(overrides={"preset": "smoke"}).distill, iterations=1, kd_steps=1,
                              vae_steps=1, batch_size=16, replay_batch=8, eval_every=1, checkpoint_every=100,
                              input_noise=0.0, input_attack=0.5, attack_steps=1, attack_fraction=0.5)
    seen: list[torch.Tensor] = []
    student, teacher = _disagreeing_pair()
    student.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    memory = RecordingReplay(torch.full((8, *SHAPE), 3.0))
    distill(cfg, teacher, student, SHAPE, tmp_path, torch.device("cpu"), memory=memory)
    batch = next(x for x in seen if x.shape[0] == 16 + 8)  # the training pass; the probing passes see 12 rows
    clean = memory.observed[0]
    assert clean.shape[0] == 16
    moved = (batch[:12] - clean[:12]).abs()
    assert torch.allclose(moved.amax((1, 2, 3)), torch.full((12,), 0.5))  # half of the 24 rows, by the full size
    assert torch.equal(batch[12:16], clean[12:])
    assert torch.equal(batch[16:], memory.batch)
