"""The distillation loop: generator exploration, student KD with replay, VAE memory updates.

One outer iteration (as in the PRE-DFKD reference):
  1. synthesizer step: a batch the teacher finds plausible but the student gets wrong;
  2. `kd_steps` batches of fresh synthetic samples, mixed with a replay batch where the memory holds what the
     generator no longer makes (an update's shipped VAE; see Session.replays), each labelled once by the
     teacher and learnt in `steps_per_batch` student steps,
  3. the memory learning the newest samples during the first `vae_steps` of them.
No validation data: the shipped student is the last one (with `ema_decay`, the moving average of the
student's weights; see averaging.py). Resume, several processes and the memory layout are set up around
the loop (`_Session`), not inside it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from core.world import SINGLE, World
from stages.distill import augment, criteria
from stages.distill.config import DistillConfig
from stages.distill.session import (DistillResult, Layout, Session, TeacherFrozen, build_memory, build_vae,
                                    student_optimizer, vae_memory)

# What callers build around the loop comes from here too: one import for a distillation.
__all__ = ["distill", "DistillResult", "build_memory", "build_vae", "vae_memory", "student_optimizer",
           "expected_accuracy", "largest_drop"]


def distill(cfg: DistillConfig, teacher: nn.Module, student: nn.Module, shape: tuple[int, ...], out_dir: Path,
            device: torch.device, seed: int = 0, evaluate: Callable[[nn.Module], float] | None = None,
            resume: bool = False, progress: Callable[[int, dict], None] | None = None,
            memory=None, world: World = SINGLE, inform: Callable[[str], None] | None = None,
            steer: Callable[[int], list[int] | None] | None = None, constant_lr: bool = False) -> DistillResult:
    """Distil `teacher` into `student` without data. `memory` may carry an existing (shipped) VAE memory, which
    the student then replays; a VAE memory the run builds itself learns the stream without being replayed.
    Under torchrun (`world` of several processes) every rank calls this; rank 0 evaluates and checkpoints.
    Two stresses for measuring forgetting, which the pipeline never applies (benchmarks/replay.py does):
    `steer(it)` names the classes the generator is steered to at iteration `it` (None: all of them), and
    `constant_lr` keeps the student's learning rate where it starts instead of annealing it."""
    device = torch.device(device)
    layout = Layout(enabled=len(shape) == 3 and device.type == "cpu")
    frozen = TeacherFrozen(teacher)
    session = None
    try:
        session = Session(cfg, teacher, student, shape, out_dir, device, seed, memory, world, layout, steer,
                          constant_lr, inform)
        if resume:
            session.restore()
        session.wrap()
        _train(session, cfg, evaluate, progress, inform)
        return session.result()
    finally:
        if session is not None:
            session.synth.close()
        frozen.restore()
        layout.restore()


def _train(s: Session, cfg: DistillConfig, evaluate, progress, inform) -> None:
    """The algorithm: explore, learn with replay, remember; evaluation, stopping and checkpoints around it."""
    t0 = time.perf_counter()
    for it in range(s.start, cfg.iterations):
        started = time.perf_counter()
        if s.perturbed and it % cfg.eval_every == 0:
            s.size_perturbation()  # as far around each sample as the teacher's labels hold
        # 1. Explore: the generator learns to make what the teacher finds plausible and the student gets wrong.
        loss_g = s.synth.step(s.student, s.batch, s.focus(it))
        s.finite(loss_g, "generator loss", it)
        # 2. Learn: the student matches the teacher on fresh samples and replayed memories.
        s.student.train()
        for k in range(cfg.kd_steps):
            x_new = s.synth.sample(s.batch)
            replay = s.memory.sample(s.replay_batch) if s.replays else None
            x_all = x_new if replay is None else torch.cat([x_new, replay])
            if s.perturbed:
                x_all = _around(x_all, s.student, s.teacher, cfg, s.reach)
            with torch.no_grad():
                t_all = s.teacher(x_all)  # one teacher pass serves the student and the memory
            for _ in range(cfg.steps_per_batch):  # the teacher's answers serve several student steps
                out = s.student_train(x_all)
                loss_s = criteria.kd_loss(cfg.kd_loss, out, t_all, cfg.kd_temperature)
                s.finite(loss_s, "student loss", it)
                s.opt.zero_grad(set_to_none=True)
                loss_s.backward()
                s.opt.step()
                if s.average is not None:
                    s.average.update(s.student)
            # 3. Remember: the memory learns the newest clean samples.
            if k < cfg.vae_steps:
                s.remember(x_new, replay, None if s.perturbed else t_all)
        s.anneal()
        fitted = float((out.argmax(1) == t_all.argmax(1)).float().mean())  # on its own last training batch
        if s.after_iteration(it + 1, started, t0, evaluate, progress, inform, loss_s, loss_g, fitted):
            break


def _around(x: torch.Tensor, student: nn.Module, teacher: nn.Module, cfg: DistillConfig, reach: float) -> torch.Tensor:
    """The KD batch moved around its samples (noise, toward disagreement), `reach` of the configured sizes: the
    teacher labels the moved inputs, so the student learns the teacher around each sample, not only on it."""
    x = augment.perturb(x, reach * cfg.input_noise)
    return augment.toward_disagreement(x, student, teacher, reach * cfg.input_attack, cfg.attack_steps,
                                       cfg.attack_fraction)


def expected_accuracy(history: list[dict]) -> float | None:
    """Mean accuracy over the second half of training: the paper's robustness measure."""
    vals = [r["accuracy"] for r in history[len(history) // 2:] if r.get("accuracy") is not None]
    return sum(vals) / len(vals) if vals else None


def largest_drop(history: list[dict], key: str = "accuracy") -> float | None:
    vals = [r[key] for r in history[len(history) // 2:] if r.get(key) is not None]
    drops = [a - b for a, b in zip(vals, vals[1:])]
    return max([0.0] + drops) if vals else None

