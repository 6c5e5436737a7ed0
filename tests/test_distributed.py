"""Distillation across processes: torchrun with DDP (gloo on CPU) reaches the single-process quality."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from core.errors import RunError, UsageError
from core.world import World, world_from_env
from tests.conftest import ROOT, run_cli

# Long enough for the digits student to converge, short enough for two runs in about two minutes.
QUALITY = ["--preset", "smoke", "--device", "cpu", "--eval", "digits", "--set", "distill.iterations=200", "--set", "distill.batch_size=128",
           "--set", "distill.eval_every=50"]


def _torchrun(nproc: int, *args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    assert torchrun, "torchrun comes with torch"
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.run([torchrun, "--standalone", f"--nproc-per-node={nproc}", "-m", "pipeline.cli", *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def test_world_from_env_and_batch_shares():
    assert world_from_env({}) == World(0, 1, 0)
    w = world_from_env({"RANK": "1", "WORLD_SIZE": "3", "LOCAL_RANK": "1"})
    assert (w.rank, w.size, w.is_main, w.distributed) == (1, 3, False, True)
    for n in (1, 2, 64, 127, 128):
        shares = [World(r, 3, r).share(n) for r in range(3)]
        assert sum(shares) == n and max(shares) - min(shares) <= 1
    for bad in ({"WORLD_SIZE": "two"}, {"WORLD_SIZE": "2", "RANK": "2"}, {"WORLD_SIZE": "0"}):
        with pytest.raises(UsageError):
            world_from_env(bad)


def _sync_worker(rank: int, init_file: str, same: bool, results) -> None:
    from stages.distill.parallel import check_in_sync

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0 if same else rank)
        check_in_sync({"student": nn.Linear(4, 3)}, World(rank, 2, rank))
        results[rank] = "ok"
    except RunError as exc:
        results[rank] = str(exc)
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("same", [True, False])
def test_ranks_holding_different_weights_are_detected(tmp_path, same):
    results = mp.Manager().dict()
    mp.spawn(_sync_worker, args=(str(tmp_path / f"init-{same}"), same, results), nprocs=2, join=True)
    if same:
        assert dict(results) == {0: "ok", 1: "ok"}
    else:
        assert all("student weights differ between ranks" in results[r] for r in (0, 1))


def _step_worker(rank: int, init_file: str, results) -> None:
    """One SGD step of a DDP-wrapped model on this rank's half of a fixed batch."""
    from stages.distill.parallel import wrap

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model, x, y = _step_problem()
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        trained = wrap(model, World(rank, 2, rank), torch.device("cpu"))
        half = slice(rank * 4, rank * 4 + 4)
        nn.functional.mse_loss(trained(x[half]), y[half]).backward()
        opt.step()
        results[rank] = [p.detach().clone() for p in model.parameters()]
    finally:
        dist.destroy_process_group()


def _step_problem():
    torch.manual_seed(0)
    return nn.Linear(5, 3), torch.randn(8, 5), torch.randn(8, 3)


def test_two_processes_average_their_gradients(tmp_path):
    """Each rank steps on half of the batch; DDP's averaged gradient must give the weights one process
    gets from the whole batch (the mean loss over 8 rows is the mean of the two halves' mean losses)."""
    results = mp.Manager().dict()
    mp.spawn(_step_worker, args=(str(tmp_path / "init-step"), results), nprocs=2, join=True)
    model, x, y = _step_problem()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    for ranked, whole, old in zip(zip(results[0], results[1]), model.parameters(), before):
        assert not torch.allclose(whole, old)  # the step moved the weights
        for r in ranked:
            torch.testing.assert_close(r, whole.detach(), rtol=1e-5, atol=1e-6)


def _group_worker(rank: int, init_file: str, fail: bool, results) -> None:
    from stages.distill.parallel import process_group

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        with process_group(World(rank, 2, rank), torch.device("cpu")):
            dist.all_reduce(torch.ones(1))
            if fail:
                raise RunError("stopped on purpose")
    except RunError as exc:
        results[rank] = str(exc)
    results[(rank, "still joined")] = dist.is_initialized()


@pytest.mark.parametrize("fail", [False, True])
def test_every_way_out_of_distillation_leaves_the_process_group(tmp_path, fail):
    # A process that exits while still in a gloo group can abort in the library's teardown.
    results = mp.Manager().dict()
    mp.spawn(_group_worker, args=(str(tmp_path / "init"), fail, results), nprocs=2, join=True)
    assert [results[(r, "still joined")] for r in (0, 1)] == [False, False]
    assert [results.get(r) for r in (0, 1)] == (["stopped on purpose"] * 2 if fail else [None, None])


def test_two_processes_reach_single_process_quality(tmp_path):
    single = run_cli("distill", *QUALITY, "--out", str(tmp_path / "single"), timeout=400)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = _torchrun(2, "run", "--target", "mobile", *QUALITY, "--out", str(tmp_path / "ddp"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "Traceback" not in ddp.stderr
    assert ddp.stdout.count("bundle:") == 1  # rank 0 alone quantizes, exports and reports

    one = json.loads((tmp_path / "single" / "run.json").read_text())["stages"]["distill"]
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    two = report["distillation"]
    assert (one["processes"], two["processes"]) == (1, 2)
    acc1, acc2 = one["history"][-1]["accuracy"], two["history"][-1]["accuracy"]
    assert acc1 > 0.85, f"the single-process reference itself did not converge: {acc1}"
    assert acc2 >= acc1 - 0.03, f"2 processes: {acc2:.4f}, 1 process: {acc1:.4f}"
    # The shipped student is the one that was evaluated, and the bundle is complete.
    assert report["accuracy"]["student_fp32"] == pytest.approx(acc2, abs=0.003)  # ONNX vs torch: one sample at most
    assert (tmp_path / "ddp" / "manifest.json").is_file() and (tmp_path / "ddp" / "student_int8.ort").is_file()


def test_later_stages_refuse_to_run_under_torchrun(jetson_bundle):
    r = run_cli("benchmark", str(jetson_bundle), env={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr
    assert "only run and distill run under torchrun" in r.stderr


def test_the_meta_synthesizer_runs_across_processes_and_the_conditional_one_is_refused(tmp_path):
    """The meta synthesizer's round copy learns through DDP and its meta-weights follow by Reptile: every rank
    must end with the same generator (the stage checks all models are in sync before it writes)."""
    short = ["--preset", "smoke", "--device", "cpu", "--set", "distill.iterations=6", "--set", "distill.eval_every=3"]
    meta = _torchrun(2, "distill", *short, "--set", "distill.synthesizer=meta", "--out", str(tmp_path / "meta"))
    assert meta.returncode == 0, meta.stderr[-3000:]
    summary = json.loads((tmp_path / "meta" / "run.json").read_text())["stages"]["distill"]
    assert summary["processes"] == 2 and summary["steps"] == 6
    refused = _torchrun(2, "distill", *short, "--set", "distill.synthesizer=conditional", "--out", str(tmp_path / "c"))
    # torchrun reports the failed children with a traceback of its own; each child says one line
    assert refused.returncode != 0
    assert "error: distill.synthesizer 'conditional' runs in one process" in refused.stderr
