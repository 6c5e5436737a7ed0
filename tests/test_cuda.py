"""The GPU paths through the real CLI: skipped where torch sees no CUDA GPU (CI), run on GPU machines.

Tests that name no device use `--device auto`, so on a GPU machine they exercise CUDA too (those that
check CPU behaviour, such as byte-identical reruns, name `--device cpu`). These name `--device cuda`,
cover the update flow and the nccl process group, and check that a CUDA run writes a complete bundle.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, digits_test_split, onnx_test_accuracy, run_cli

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")


@pytest.fixture(scope="module")
def cuda_bundle(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda") / "jetson"
    r = run_cli("run", "--target", "jetson", "--preset", "smoke", "--device", "cuda", "--eval", "digits", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def test_run_on_cuda_writes_a_complete_bundle(cuda_bundle):
    report = json.loads((cuda_bundle / "report.json").read_text())
    assert json.loads((cuda_bundle / "run.json").read_text())["config"]["device"] == "cuda"
    assert report["accuracy"]["teacher"] == pytest.approx(1.0)
    x, y = digits_test_split()
    assert report["accuracy"]["student_int8"] == pytest.approx(onnx_test_accuracy(cuda_bundle / "student_int8.onnx", x, y))
    assert report["quantization"]["num_quantizers"] > 0
    assert (cuda_bundle / "student_int8.onnx").is_file() and (cuda_bundle / "manifest.json").is_file()


def test_update_on_cuda(cuda_bundle, tmp_path):
    shutil.copy(ROOT / "core" / "assets" / "digits_teacher.safetensors", tmp_path / "t2.safetensors")
    cfg = tmp_path / "t2.toml"
    cfg.write_text('[teacher]\nfactory = "core.tasks.digits:build_teacher"\nweights = "t2.safetensors"\n'
                   "input_shape = [1, 8, 8]\nnum_classes = 10\nmean = [0.3059]\nstd = [0.3782]\nscale = 0.0625\n")
    out = tmp_path / "updated"
    r = run_cli("update", str(cuda_bundle), "--config", str(cfg), "--device", "cuda", "--preset", "smoke", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "manifest.json").read_text())["parent"]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl across processes needs one GPU per process")
def test_torchrun_nccl_distill(tmp_path):
    out = tmp_path / "ddp"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                        "-m", "pipeline.cli", "distill", "--device", "cuda", "--preset", "smoke", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "run.json").read_text())["stages"]["distill"]
    # The ranks compared their weights at the end (a difference fails the run); both trained on the GPU.
    assert summary["processes"] == 2 and summary["device"].startswith("cuda")
