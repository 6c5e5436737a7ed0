"""The whole product through its real CLI (smoke preset): the bundle contract of docs/bundle.md."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tests.conftest import digits_test_split, onnx_test_accuracy, run_cli

COMMON_ROLES = {"student-checkpoint", "vae", "student-fp32-onnx", "student-int8-onnx"}


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


@pytest.mark.parametrize("fixture, roles", [("jetson_bundle", {"engine-build-script"}), ("mobile_bundle", {"ort-model"})])
def test_bundle_contract(request, fixture, roles):
    bundle = request.getfixturevalue(fixture)
    m = _manifest(bundle)
    for key in ("format_version", "pipeline_version", "target", "created", "input", "num_classes", "classes", "artifacts", "parent"):
        assert key in m, key
    assert m["parent"] is None
    assert m["input"]["name"] == "input" and m["input"]["shape"][1:] == [1, 8, 8]
    assert m["input"]["scale"] == pytest.approx(1 / 16)
    assert m["num_classes"] == 10 and m["classes"] == [str(i) for i in range(10)]
    present = {a["role"] for a in m["artifacts"]}
    assert COMMON_ROLES | roles <= present
    for a in m["artifacts"]:  # every hash and size matches its file
        data = (bundle / a["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == a["sha256"], a["path"]
        assert len(data) == a["bytes"]
    for name in ("report.json", "report.md", "report.html"):
        assert (bundle / name).is_file()


def test_report_has_accuracy_history_and_latency(jetson_bundle):
    r = json.loads((jetson_bundle / "report.json").read_text())
    acc = r["accuracy"]
    assert acc["teacher"] == pytest.approx(1.0)
    x, y = digits_test_split()
    for key, model in (("student_fp32", "student_fp32.onnx"), ("student_int8", "student_int8.onnx")):
        assert acc[key] == pytest.approx(onnx_test_accuracy(jetson_bundle / model, x, y), abs=1e-9)
    # a dozen smoke iterations learn little; what a longer run reaches is asserted in test_distributed.py
    assert "digits test split" in acc["evaluated_on"]
    hist = r["distillation"]["history"]
    assert [h["step"] for h in hist] == [4, 8, 12]
    assert all(0.0 <= h["agreement"] <= 1.0 and h["accuracy"] is not None for h in hist)
    assert r["distillation"]["replay_memory_bytes"] > 0
    rows = r["latency"]
    assert {row["model"].split(":")[0] for row in rows} == {"student_fp32.onnx", "student_int8.onnx"}
    for row in rows:
        assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
        assert row["measured_on"].startswith("host")
    assert r["quantization"]["calibration_source"] == "generator"


def test_int8_onnx_runs_and_holds_signed_qdq_for_tensorrt(jetson_bundle):
    path = jetson_bundle / "student_int8.onnx"
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = onnx.numpy_helper.to_array(inits[node.input[2]])
            assert zp.dtype == np.int8 and not zp.any(), node.name  # TensorRT: signed, zero point 0
    x = np.random.default_rng(0).standard_normal((3, 1, 8, 8)).astype(np.float32)
    out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert out.shape == (3, 10) and np.isfinite(out).all()
    # INT8 weights are stored as INT8: the file is much smaller than the FP32 one.
    assert path.stat().st_size < 0.5 * (jetson_bundle / "student_fp32.onnx").stat().st_size


def test_jetson_build_script_and_missing_tensorrt(jetson_bundle):
    script = (jetson_bundle / "build_engine.sh").read_text()
    assert "trtexec" in script and "student_int8.onnx" in script
    r = run_cli("build-engine", str(jetson_bundle))
    assert r.returncode == 1
    assert "TensorRT" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_mobile_ort_model_matches_onnx(mobile_bundle):
    x = np.random.default_rng(1).standard_normal((4, 1, 8, 8)).astype(np.float32)
    a = ort.InferenceSession(str(mobile_bundle / "student_int8.onnx")).run(None, {"input": x})[0]
    b = ort.InferenceSession(str(mobile_bundle / "student_int8.ort")).run(None, {"input": x})[0]
    np.testing.assert_allclose(a, b, atol=1e-5)
    cfg = json.loads((mobile_bundle / "ort_session.json").read_text())
    assert "XNNPACK" in json.dumps(cfg)


def test_benchmark_command_saves_rows(mobile_bundle, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(mobile_bundle, copy)
    r = run_cli("benchmark", str(copy), "--batch", "1,4", "--threads", "1", "--runs", "15")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = json.loads((copy / "report.json").read_text())["latency"]
    assert {row["batch"] for row in rows} == {1, 4}
    assert len(rows) == 8  # 4 models x 2 batch sizes


def test_stages_run_alone(tmp_path):
    out = tmp_path / "staged"
    r = run_cli("distill", "--out", str(out), "--preset", "smoke", "--set", "distill.iterations=6")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (out / "student.safetensors").is_file() and (out / "vae.safetensors").is_file()
    r = run_cli("export", str(out))
    assert r.returncode == 2 and "quantize" in r.stderr
    r = run_cli("quantize", str(out), "--target", "mobile")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("export", str(out), "--target", "mobile")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _manifest(out)["target"] == "mobile"
    r = run_cli("export", str(out), "--target", "jetson")
    assert r.returncode == 2 and "quantized for" in r.stderr


def test_check_command_flags_uint8_for_jetson(mobile_bundle, jetson_bundle):
    # The mobile scheme keeps uint8 activations after ReLU, which TensorRT refuses.
    r = run_cli("check", str(mobile_bundle / "student_int8.onnx"), "--target", "jetson")
    assert r.returncode == 1 and "uint8" in r.stdout.lower()
    r = run_cli("check", str(jetson_bundle / "student_int8.onnx"), "--target", "jetson")
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("args, code, needle", [
    (["run", "--target", "android"], 2, "unknown target 'android'"),
    (["run", "--preset", "huge"], 2, "unknown preset 'huge'"),
    (["run", "--config", "/nonexistent/cfg.toml"], 2, "config file not found"),
])
def test_bad_input_one_line(args, code, needle, tmp_path):
    r = run_cli(*args, "--out", str(tmp_path / "o"))
    assert r.returncode == code
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
