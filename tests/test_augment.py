"""Perturbations of the student's KD batch: noise, moves toward disagreement, and that they reach the student but
not the memory."""

from __future__ import annotations

import dataclasses

import torch

from pipeline.config import load_config
from stages.distill.augment import perturb
from stages.distill.engine import distill
from stages.distill.memory import NoReplay
from stages.distill.networks import build_student, student_spec

SHAPE = (1, 8, 8)


def test_perturb_without_any_perturbation_is_the_identity():
    x = torch.randn(16, *SHAPE)
    assert torch.equal(perturb(x, 0.0), x)


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


class MarginTeacher(torch.nn.Module):
    """Two classes split by the first input element: a sample's label holds under noise of std `s` on every
    element with probability Phi(margin / s), so the noise that flips a given fraction is known in closed form."""

    def forward(self, x):
        u = x.flatten(1)[:, :1]
        return torch.cat([u, -u], 1)


def test_label_safe_reach_is_the_noise_that_flips_the_allowed_fraction():
    from statistics import NormalDist

    from stages.distill.augment import label_safe_reach

    torch.manual_seed(0)
    x = torch.zeros(4000, *SHAPE)
    x[:, 0, 0, 0] = 0.2  # every sample 0.2 from the boundary
    # flips(reach) = Phi(-0.2 / (reach * 0.3)): 10% flips at reach = 0.2 / (0.3 * z(0.9)) = 0.52
    expected = 0.2 / (0.3 * NormalDist().inv_cdf(0.9))
    assert abs(label_safe_reach(x, MarginTeacher(), noise=0.3, max_flips=0.1, halvings=8) - expected) < 0.03
    assert label_safe_reach(x, MarginTeacher(), noise=0.3, max_flips=0.5) == 1.0  # never grows past the setting
    x[:, 0, 0, 0] = 5.0  # far from the boundary: the labels hold under the full noise
    assert label_safe_reach(x, MarginTeacher(), noise=0.3, max_flips=0.1) == 1.0
    x[:, 0, 0, 0] = 0.0  # on the boundary: any noise flips half the labels
    assert label_safe_reach(x, MarginTeacher(), noise=0.3, max_flips=0.1) < 0.02


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
