"""INT8 of a user's own model without distillation (`pipeline quantize --config`), through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests import int8_breaker
from tests.conftest import digits_test_split, onnx_test_accuracy, run_cli

SENSITIVE = "inner/2/linear/0"  # NNCF's name for the middle Linear of the bare Sequential


def _ok(*args: str) -> str:
    r = run_cli(*args)
    assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-3000:])
    return r.stdout


def _passes_verify_and_check(out: Path, target: str) -> None:
    assert "artifacts match their sha256" in _ok("verify", str(out))
    assert "no findings" in _ok("check", str(out / "student_int8.onnx"), "--target", target)


def _own_model_run(out: Path) -> tuple[dict, dict]:
    run, report = (json.loads((out / name).read_text()) for name in ("run.json", "report.json"))
    assert run["source"] == report["source"] == "own model"
    assert "distill" not in run["stages"] and "distillation" not in report  # no distillation numbers claimed
    assert report["samples"]["generator_steps"] == 8  # the smoke preset's generator rounds
    assert json.loads((out / "student.json").read_text())["family"] == "teacher"
    md = (out / "report.md").read_text()
    assert "the model itself, quantized without distillation" in md and "## Distillation" not in md
    return run, report


def test_digits_model_itself_in_int8_verifies_passes_check_and_reports_its_accuracy(tmp_path):
    from core.tasks import digits

    (tmp_path / "model.toml").write_text('[teacher]\nbuiltin = "digits"\n')
    out = tmp_path / "bundle"
    _ok("quantize", "--config", str(tmp_path / "model.toml"), "--target", "jetson", "--out", str(out),
        "--preset", "smoke", "--eval", "digits")
    _passes_verify_and_check(out, "jetson")
    _, report = _own_model_run(out)

    # The student is the model itself: the same FP32 weights, and the same predictions once exported.
    shipped, original = load_file(str(out / "student.safetensors")), load_file(str(digits.WEIGHTS))
    assert shipped.keys() == original.keys() and all(torch.equal(shipped[k], original[k]) for k in original)
    x, y = digits_test_split()
    acc = report["accuracy"]
    assert acc["teacher"] == pytest.approx(onnx_test_accuracy(out / "student_fp32.onnx", x, y))
    assert acc["student_int8"] == pytest.approx(onnx_test_accuracy(out / "student_int8.onnx", x, y))
    assert acc["student_int8"] >= acc["teacher"] - 0.1
    quant = report["quantization"]
    assert quant["calibration_source"] == "generator" and 0.9 <= quant["int8_fp32_agreement"] <= 1.0
    assert "INT8 ONNX vs PyTorch model agreement" in (out / "report.md").read_text()

    # The run directory quantizes again like a distilled one (here keeping layers in float if any cost).
    _ok("quantize", str(out), "--max-drop", "0")
    _ok("export", str(out))
    assert json.loads((out / "run.json").read_text())["stages"]["quantize"]["sensitivity"]["max_drop"] == 0
    _own_model_run(out)


def test_max_drop_zero_keeps_the_layer_int8_breaks_in_float(tmp_path):
    shutil.copy(Path(int8_breaker.__file__), tmp_path / "models.py")  # the user's factory file
    save_file(int8_breaker.weights(), str(tmp_path / "model.safetensors"))
    (tmp_path / "model.toml").write_text('[teacher]\nfactory = "models.py:sensitive"\nweights = "model.safetensors"\n'
                                         'input_shape = [16]\nnum_classes = 10\n')
    out = tmp_path / "bundle"
    _ok("quantize", "--config", str(tmp_path / "model.toml"), "--target", "mobile", "--out", str(out),
        "--preset", "smoke", "--max-drop", "0")
    _passes_verify_and_check(out, "mobile")
    _, report = _own_model_run(out)
    assert report["samples"]["bn_prior"] is False  # the model has no BatchNorm

    sens = report["quantization"]["sensitivity"]
    assert sens["ranking"][0]["layer"] == SENSITIVE and sens["ranking"][0]["drop_points"] > 50
    assert SENSITIVE in sens["kept_float"] and sens["estimated_drop_points"] == 0
    graph = onnx.load(str(out / "student_int8.onnx")).graph
    dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    weight_int8 = [n.input[1] in dequantized for n in graph.node if n.op_type in ("Gemm", "MatMul")]
    assert weight_int8[1] is False and any(weight_int8)  # the middle layer ships in float, not every layer

    probes = np.eye(10, 16, dtype=np.float32) * 3  # one dominant feature per class
    assert onnx_test_accuracy(out / "student_int8.onnx", probes, np.arange(10)) == 1.0


@pytest.mark.parametrize("args, message", [
    (["quantize"], "needs a run DIRECTORY"),
    (["quantize", "{dir}", "--config", "{dir}/model.toml"], "not both"),
    (["quantize", "{dir}", "--out", "{dir}/x"], "--out goes with --config"),
    (["quantize", "--config", "{dir}/missing.toml"], "config file not found"),
    (["quantize", "--config", "{dir}/program.toml"], "needs the model's code"),
    (["quantize", "--config", "{dir}/model.toml", "--target", "phone"], "unknown target 'phone'"),
    (["quantize", "--config", "{dir}/model.toml", "--set", "quantize.generator_steps=0"], "generator_steps must be > 0"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    (tmp_path / "model.toml").write_text('[teacher]\nbuiltin = "digits"\n')
    (tmp_path / "teacher.pt2").write_bytes(b"not read: refused before loading")
    (tmp_path / "program.toml").write_text('[teacher]\nprogram = "teacher.pt2"\ninput_shape = [4]\nnum_classes = 2\n')
    r = run_cli(*(a.format(dir=tmp_path) for a in args))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr


BATCH_STATISTICS_MODEL = """from torch import nn

def build(running_statistics=False):
    return nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32, track_running_stats=running_statistics), nn.ReLU(),
                         nn.Linear(32, 10))

def plain():
    return build(True)
"""


@pytest.mark.parametrize("command", ["quantize", "run"])
def test_batchnorm_without_running_statistics_is_refused_before_any_work(tmp_path, command):
    """Such a layer normalises each batch by its own statistics at inference too: no ONNX graph holds it, so the
    model (quantized as itself) or a factory student with it is refused at once, not after the training."""
    (tmp_path / "models.py").write_text(BATCH_STATISTICS_MODEL)
    namespace: dict = {}
    exec(BATCH_STATISTICS_MODEL, namespace)
    save_file(namespace["build"]().state_dict(), str(tmp_path / "model.safetensors"))
    save_file(namespace["plain"]().state_dict(), str(tmp_path / "plain.safetensors"))
    shape = "input_shape = [16]\nnum_classes = 10\n"
    if command == "quantize":  # the model itself has the layer
        toml = f'[teacher]\nfactory = "models.py:build"\nweights = "model.safetensors"\n{shape}'
    else:  # a teacher that can be distilled, into a factory student that has it
        toml = f'[teacher]\nfactory = "models.py:plain"\nweights = "plain.safetensors"\n{shape}[student]\narch = "models.py:build"\n'
    (tmp_path / "model.toml").write_text(toml)
    out = tmp_path / "out"
    target = ["--target", "mobile"] if command == "run" else []
    r = run_cli(command, "--config", str(tmp_path / "model.toml"), "--preset", "smoke", "--out", str(out), *target)
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "BatchNorm layers without running statistics (1)" in lines[0], r.stderr
    assert not (out / "run.json").exists()
