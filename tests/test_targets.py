"""Targets end to end on tiny real models: mobile .ort export, benchmarks, registry, profiles."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from core.bundle import Manifest, write_manifest
from core.errors import UsageError
from qdq_models import float_conv_model, qdq_conv_model
from core.target import BenchmarkRequest, ExportContext
from targets.profiles import default_profile, get_profile, profile_names
from targets import TARGET_NAMES
from targets.registry import TARGETS, get_target


def _bundle(tmp_path: Path, target: str) -> tuple[Path, ExportContext]:
    d = tmp_path / "bundle"
    d.mkdir()
    onnx.save(qdq_conv_model(batch="batch"), d / "student_int8.onnx")
    onnx.save(float_conv_model(batch="batch"), d / "student_fp32.onnx")
    ctx = ExportContext(bundle_dir=d, fp32_onnx=d / "student_fp32.onnx", int8_onnx=d / "student_int8.onnx",
                        input_name="input", input_shape=(1, 8, 8))
    return d, ctx


def _manifest(d: Path, target: str, arts) -> None:
    m = Manifest(target=target, input={"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32"}, num_classes=10)
    m.add(d, d / "student_fp32.onnx", "student-fp32-onnx")
    m.add(d, d / "student_int8.onnx", "student-int8-onnx")
    for a in arts:
        m.add(d, a.path, a.role)
    write_manifest(d, m)


def test_mobile_export_writes_ort_models_that_match_the_onnx(tmp_path):
    d, ctx = _bundle(tmp_path, "mobile")
    arts = get_target("mobile").export(ctx)
    roles = {a.role: Path(a.path) for a in arts}
    assert {"ort-model", "ort-model-fp32", "ort-session-config", "mobile-readme"} <= set(roles)
    assert roles["ort-model"].name == "student_int8.ort" and roles["ort-model"].parent == d

    x = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32) * 4
    for src, role in (("student_int8.onnx", "ort-model"), ("student_fp32.onnx", "ort-model-fp32")):
        want = ort.InferenceSession(str(d / src), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        got = ort.InferenceSession(str(roles[role]), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert not np.allclose(x[0], 0)  # a non-trivial input

    # the INT8 .ort carries the fused integer kernels, not float Conv
    with open(roles["ort-model"], "rb") as f:
        blob = f.read()
    assert b"QLinearConv" in blob


def test_mobile_session_config_and_readme(tmp_path):
    d, ctx = _bundle(tmp_path, "mobile")
    get_target("mobile").export(ctx)
    cfg = json.loads((d / "ort_session.json").read_text())
    eps = {e["name"]: e for e in cfg["execution_providers"]}
    assert list(eps) == ["XNNPACK", "NNAPI", "CoreML", "CPU"]
    threads = get_profile("phone-big-core").threads
    assert eps["XNNPACK"]["provider_options"]["intra_op_num_threads"] == str(threads)
    assert eps["XNNPACK"]["session_options"]["intra_op_num_threads"] == 1
    assert eps["XNNPACK"]["session_options"]["config_entries"]["session.intra_op.allow_spinning"] == "0"
    assert "NNAPI_FLAG_USE_FP16" not in eps["NNAPI"]["flags"]
    assert eps["CoreML"]["provider_options"]["MLComputeUnits"] == "ALL"
    assert cfg["input"] == {"name": "input", "shape": [1, 1, 8, 8]}
    for e in eps.values():
        assert (d / e["model"]).is_file()
    md = (d / "MOBILE.md").read_text()
    assert "addXnnpack" in md and "appendCoreMLExecutionProvider" in md and "student_int8.ort" in md


def test_session_config_settings_load_in_onnxruntime(tmp_path):
    """The CPU-side settings in ort_session.json are real ORT session options (XNNPACK/NNAPI/CoreML
    are not in this desktop build, so only their shared session settings are exercised)."""
    d, ctx = _bundle(tmp_path, "mobile")
    get_target("mobile").export(ctx)
    cfg = json.loads((d / "ort_session.json").read_text())
    for e in cfg["execution_providers"]:
        so = ort.SessionOptions()
        so.intra_op_num_threads = e["session_options"]["intra_op_num_threads"]
        for k, v in e["session_options"].get("config_entries", {}).items():
            so.add_session_config_entry(k, v)
        sess = ort.InferenceSession(str(d / e["model"]), so, providers=["CPUExecutionProvider"])
        assert sess.run(None, {"input": np.zeros((1, 1, 8, 8), np.float32)})[0].shape == (1, 10)


def test_mobile_benchmark_rows_cover_onnx_and_ort_and_threads(tmp_path):
    d, ctx = _bundle(tmp_path, "mobile")
    arts = get_target("mobile").export(ctx)
    _manifest(d, "mobile", arts)
    rows = get_target("mobile").benchmark(BenchmarkRequest(bundle_dir=d, batches=(1,), threads=(1, 2), runs=5, warmup=1))
    assert len(rows) == 4 * 2
    labels = {r["model"] for r in rows}
    assert any("int8 .ort" in m for m in labels) and any("fp32 onnx" in m for m in labels)
    assert {r["threads"] for r in rows} == {1, 2}
    for r in rows:
        assert r["runtime"] == "onnxruntime" and r["p50_ms"] > 0 and r["p50_ms"] <= r["p99_ms"]


def test_jetson_benchmark_without_tensorrt_gives_host_cpu_rows(tmp_path, capsys):
    d, ctx = _bundle(tmp_path, "jetson")
    arts = get_target("jetson").export(ctx)
    _manifest(d, "jetson", arts)
    rows = get_target("jetson").benchmark(BenchmarkRequest(bundle_dir=d, batches=(1, 2), threads=(1,), runs=5, warmup=1))
    assert [r["batch"] for r in rows] == [1, 2, 1, 2]
    assert all(r["runtime"] == "onnxruntime" for r in rows)
    assert {"host cpu" in r["model"] for r in rows} == {True}


def test_check_method_on_targets(tmp_path):
    d, ctx = _bundle(tmp_path, "jetson")
    assert get_target("jetson").check(ctx) == []
    assert get_target("mobile").check(ctx) == []
    onnx.save(qdq_conv_model(extra_op="Unique"), d / "student_int8.onnx")
    assert [f.rule for f in get_target("jetson").check(ctx)] == ["unsupported-op"]


def test_registry_serves_every_named_target_with_a_quantization_scheme():
    from stages.quantize.qat import SUPPORTED_SCHEMES

    for name in TARGET_NAMES:
        target = get_target(name)
        assert target.name == name and target.scheme in SUPPORTED_SCHEMES
    assert tuple(TARGETS) == TARGET_NAMES
    with pytest.raises(UsageError, match="unknown target 'tpu'; choose one of: jetson, mobile"):
        get_target("tpu")


def test_profiles():
    assert default_profile("jetson").name == "orin-nano"
    assert default_profile("mobile").name == "phone-big-core"
    assert {"orin-nano", "orin-nx", "agx-orin", "phone-big-core"} <= set(profile_names())
    with pytest.raises(UsageError, match="unknown device profile 'pixel'; choose one of: .*orin-nano"):
        get_profile("pixel")
    with pytest.raises(UsageError, match="is for target mobile"):
        get_profile("phone-big-core", "jetson")
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_profile("orin-nano").workspace_mib = 1
