"""When distillation stops and how a failed run says so: the rules, then real runs through them."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from core.tasks import digits
from core.teacher import load_weights
from pipeline.config import load_config
from stages.distill.engine import distill
from stages.distill.networks import build_student, student_spec
from stages.distill.stopping import (AGREEMENT_FLOOR, RISING_OVER, Pace, cool_down_end, fitting_iterations, plateaued,
                                     verdict)
from tests.conftest import run_cli


def test_plateau_needs_a_gain_within_patience():
    flat = [None] * 4  # no divergence measured (a history from before it was kept): agreement alone decides
    assert not plateaued([0.5, 0.6, 0.7, 0.8], flat, patience=2, min_gain=0.01)
    assert plateaued([0.5, 0.8, 0.805, 0.79], flat, patience=2, min_gain=0.01)  # 0.805 gains less than 0.01
    assert not plateaued([0.5, 0.8, 0.82, 0.79], flat, patience=2, min_gain=0.01)
    assert not plateaued([0.8, 0.8], [None] * 2, patience=2, min_gain=0.0)  # too few evaluations to judge
    assert not plateaued([0.9] * 10, [None] * 10, patience=0, min_gain=0.0)  # patience 0: never


def test_a_falling_divergence_is_progress_where_agreement_has_saturated():
    saturated = [1.0, 1.0, 1.0, 1.0]
    assert not plateaued(saturated, [0.40, 0.30, 0.29, 0.27], patience=2, min_gain=0.005)  # 0.27 < 0.95 * 0.30
    assert plateaued(saturated, [0.40, 0.30, 0.29, 0.288], patience=2, min_gain=0.005)  # 4% is not enough
    assert plateaued(saturated, [0.40, 0.30, 0.29, None], patience=2, min_gain=0.005)  # partly measured: agreement
    assert not plateaued([0.5, 0.8, 0.82, 0.79], [0.4, 0.3, 0.3, 0.3], patience=2, min_gain=0.01)  # agreement gained


def test_a_cool_down_is_a_quarter_of_the_run_within_the_schedule():
    assert cool_down_end(240, eval_every=20, scheduled_end=400) == 300
    assert cool_down_end(40, eval_every=20, scheduled_end=400) == 60  # at least one evaluation period
    assert cool_down_end(380, eval_every=20, scheduled_end=400) == 400  # never past the cap or a budget's plan
    assert cool_down_end(300, eval_every=20, scheduled_end=250) == 250  # a plan already ended: stop at once


def test_pace_skips_the_warm_up_and_the_budget_caps_iterations():
    pace = Pace()
    for s in (5.0, 1.0, 3.0):
        pace.add(s)
    assert pace.per_iteration == pytest.approx(2.0)
    assert fitting_iterations(2.0, budget_s=30, elapsed_s=10, done=3, cap=100) == 13
    assert fitting_iterations(2.0, budget_s=1000, elapsed_s=10, done=3, cap=100) == 100


def _history(*agreements: float, train: float | None = None) -> list[dict]:
    """Evaluations every 20 iterations with these probe agreements; `train` on the last one."""
    out = [{"step": 20 * (i + 1), "agreement": a} for i, a in enumerate(agreements)]
    out[-1]["train_agreement"] = train
    return out


def test_verdict_flags_low_or_overfitted_agreement():
    assert verdict(_history(0.95, train=0.97), "plateau")["converged"] is True
    low = verdict(_history(0.4, train=0.5), "plateau")
    assert low["converged"] is False and f"below {AGREEMENT_FLOOR:.2f}" in low["reason"] and "try" in low
    gap = verdict(_history(0.82, train=0.99), "plateau")
    assert gap["converged"] is False and "own training samples" in gap["reason"]
    assert verdict(_history(0.85, train=0.9), "plateau", minimum=0.9)["converged"] is False
    assert verdict([], None)["converged"] is None
    assert verdict([{"step": 20, "agreement": None}], None)["converged"] is None


def test_verdict_flags_a_run_cut_while_agreement_still_rose():
    # The BN CNN's student 40 iterations in: 0.78 agreement, above the floor, 0.78 of the teacher on real digits
    cut = verdict(_history(0.49, 0.78, train=0.6), "time-budget")
    assert cut["converged"] is False and "still rising" in cut["reason"] and "time budget" in cut["reason"]
    assert "0.490 at iteration 20, 0.780 at 40" in cut["reason"]
    # The trend is read over the last RISING_OVER evaluations only: a slow climb is a converged student's
    slow = [0.5] + [0.76 + 0.01 * i for i in range(RISING_OVER + 1)]
    assert verdict(_history(*slow), "iterations")["converged"] is True
    assert verdict(_history(*slow[:2]), "iterations")["converged"] is False  # 0.5 to 0.76 in one evaluation
    # A plateau's cool-down may lift agreement as the learning rate anneals: not a run cut short
    assert verdict(_history(0.49, 0.78), "plateau")["converged"] is True
    assert verdict(_history(0.78), "iterations")["converged"] is True  # one evaluation: no trend


def test_probes_made_robustly_get_no_verdict_unless_the_user_set_a_minimum():
    # The GroupNorm teacher's case: good students at 0.68 on its robust set, with a low agreement on their
    # attacked training batches too; the ordinary set's floor would call them failed.
    robust = verdict(_history(0.68, train=0.62), "plateau", robust=True)
    assert robust["converged"] is None and "not judged" in robust["reason"] and "0.680" in robust["reason"]
    assert verdict(_history(0.6, train=0.62), "plateau")["converged"] is False
    assert verdict(_history(0.68, train=0.99), "plateau", robust=True)["converged"] is None  # nor the training gap
    assert verdict(_history(0.5, 0.68), "iterations", robust=True)["converged"] is None  # nor the trend
    assert verdict(_history(0.68, train=0.62), "plateau", minimum=0.7, robust=True)["converged"] is False
    assert verdict(_history(0.75, train=0.62), "plateau", minimum=0.7, robust=True)["converged"] is True


def _digits_run(tmp_path, **settings):
    teacher = digits.build_teacher()
    load_weights(teacher, digits.WEIGHTS)
    cfg = dataclasses.replace(load_config(overrides={"preset": "smoke"}).distill, **settings)
    student = build_student(student_spec((1, 8, 8), 10, 24000, 0.25))
    torch.set_num_threads(1)
    lines = []
    result = distill(cfg, teacher.eval(), student, (1, 8, 8), tmp_path, torch.device("cpu"), inform=lines.append)
    return result, lines


def test_a_plateau_anneals_the_learning_rate_then_ends_the_run_before_the_cap(tmp_path):
    # min_gain 1.0 cannot be reached and a student that barely moves does not fall in divergence either: the
    # plateau is found at the third evaluation (iteration 6), the learning rate then falls to the schedule's floor
    # over the cool-down (one evaluation period here) and the run stops there
    result, lines = _digits_run(tmp_path, iterations=40, eval_every=2, patience=2, min_gain=1.0, lr_student=1e-9)
    assert result.stopped_by == "plateau" and result.plateau_at == 6 and result.iterations == 8
    assert [r["step"] for r in result.history] == [2, 4, 6, 8]
    lrs = [r["lr_student"] for r in result.history]
    assert lrs[0] > lrs[2] > lrs[3] == 0.0  # the cap's cosine, then its tail squeezed into the cool-down
    assert lrs[2] > 0.9e-9  # 6 of 40 iterations into the cap's schedule, the rate was still near its start
    assert result.estimate["planned_iterations"] == 40 and any("s per iteration" in ln for ln in lines)
    # the probe set is announced before it is made and its time is kept apart from the loop's
    assert [ln for ln in lines if "held-out probes" in ln] == [lines[0]] and result.probes_s > 0


def test_a_time_budget_ends_the_run_and_is_planned_for(tmp_path):
    result, _ = _digits_run(tmp_path, iterations=10_000, eval_every=1000, patience=0, time_budget=2.0)
    assert result.stopped_by == "time-budget" and 4 < result.iterations < 10_000
    assert 2.0 <= result.wall_s < 6.0
    assert result.history[-1]["step"] == result.iterations  # the shipped state is evaluated
    assert result.estimate["planned_iterations"] < 10_000


def test_min_agreement_fails_the_run_and_keeps_the_student(tmp_path):
    out = tmp_path / "run"
    r = run_cli("distill", "--preset", "smoke", "--device", "cpu", "--min-agreement", "1", "--out", str(out))
    assert r.returncode == 1
    assert r.stderr.strip().splitlines()[-1].startswith("error: distill: probe agreement")
    assert (out / "student.safetensors").is_file()
    summary = json.loads((out / "run.json").read_text())["stages"]["distill"]
    assert summary["stopped_by"] == "iterations" and summary["verdict"]["converged"] is False
    assert summary["probes_s"] > 0 and "held-out probes" in r.stderr + r.stdout


@pytest.mark.parametrize("synthesizer", ["meta", "conditional"])
def test_every_synthesizer_resumes_bit_for_bit(tmp_path, synthesizer):
    """The synthesizers beside the default keep their state in the checkpoint: a run interrupted after its
    checkpoint and resumed ends with the uninterrupted run's student."""
    from tests.test_distill import SHAPE, TinyTeacher, _smoke_cfg, _stop_at, _student

    cfg = _smoke_cfg(iterations=6, checkpoint_every=3, eval_every=2, batch_size=16, replay_batch=8,
                     synthesizer=synthesizer, synthesis_steps=2, patience=0)
    teacher = TinyTeacher().eval()
    torch.manual_seed(123)
    full = distill(cfg, teacher, _student(), SHAPE, tmp_path / "full", torch.device("cpu"), seed=5)
    torch.manual_seed(123)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, teacher, _student(), SHAPE, tmp_path / "part", torch.device("cpu"), seed=5, progress=_stop_at(4))
    resumed = distill(cfg, teacher, _student(), SHAPE, tmp_path / "part", torch.device("cpu"), seed=5, resume=True)
    assert resumed.resumed_from == 3
    for (name, a), b in zip(full.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), name
    assert [r["agreement"] for r in resumed.history] == [r["agreement"] for r in full.history]



def test_a_run_interrupted_in_its_cool_down_resumes_it(tmp_path):
    """The plateau and the cool-down's end are in the checkpoint: a run stopped during its cool-down and resumed
    ends where, and with the student, the uninterrupted run does."""
    from tests.test_distill import SHAPE, TinyTeacher, _smoke_cfg, _stop_at, _student

    # min_gain 1.0 and a student too slow to move its divergence: the plateau at the second evaluation (8), the
    # cool-down to 8 + 4; the checkpoint at 10 lies within it
    cfg = _smoke_cfg(iterations=40, eval_every=4, patience=1, min_gain=1.0, lr_student=1e-9, checkpoint_every=10,
                     batch_size=16, replay_batch=8)
    teacher = TinyTeacher().eval()
    torch.manual_seed(123)
    full = distill(cfg, teacher, _student(), SHAPE, tmp_path / "full", torch.device("cpu"), seed=5)
    assert (full.stopped_by, full.plateau_at, full.iterations) == ("plateau", 8, 12)
    torch.manual_seed(123)
    with pytest.raises(KeyboardInterrupt):
        distill(cfg, teacher, _student(), SHAPE, tmp_path / "part", torch.device("cpu"), seed=5, progress=_stop_at(11))
    resumed = distill(cfg, teacher, _student(), SHAPE, tmp_path / "part", torch.device("cpu"), seed=5, resume=True)
    assert resumed.resumed_from == 10
    assert (resumed.stopped_by, resumed.plateau_at, resumed.iterations) == ("plateau", 8, 12)
    assert [r["lr_student"] for r in resumed.history] == [r["lr_student"] for r in full.history]
    for (name, a), b in zip(full.student.state_dict().items(), resumed.student.state_dict().values()):
        assert torch.equal(a, b), name
