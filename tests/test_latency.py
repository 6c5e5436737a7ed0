"""measure_onnx against real onnxruntime sessions on tiny exported models."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from core.errors import UsageError
from targets.runners import bare_loop_ms, describe_cpu, harness_overhead, measure_onnx, percentiles

ROW_KEYS = {
    "runtime", "provider", "model", "batch", "threads", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
    "throughput_per_s", "peak_rss_mb", "session_mem_mb", "size_bytes", "runs", "measured_on",
}


def _export(path, dynamic: bool):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(8 * 8 * 8, 10)
    ).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, torch.randn(1, 3, 8, 8), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}} if dynamic else None,
        )
    return path


@pytest.fixture(scope="module")
def dyn_model(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("m") / "dyn.onnx", dynamic=True)


@pytest.fixture(scope="module")
def fixed_model(tmp_path_factory):
    return _export(tmp_path_factory.mktemp("m") / "fixed.onnx", dynamic=False)


def test_percentiles_linear_and_mean():
    p = percentiles([1.0, 2.0, 3.0, 4.0, 5.0])
    assert p == {"p50_ms": 3.0, "p90_ms": pytest.approx(4.6), "p99_ms": pytest.approx(4.96), "mean_ms": 3.0}
    with pytest.raises(ValueError):
        percentiles([])


def test_row_contract(dyn_model):
    row = measure_onnx(dyn_model, runs=50, warmup=3)
    assert set(row) == ROW_KEYS
    assert row["runtime"] == "onnxruntime"
    assert row["provider"] == "CPUExecutionProvider"
    assert row["model"] == "dyn.onnx"
    assert row["runs"] == 50 and row["batch"] == 1 and row["threads"] == 1
    assert 0 < row["p50_ms"] <= row["p90_ms"] <= row["p99_ms"]
    assert row["mean_ms"] > 0
    assert row["throughput_per_s"] == pytest.approx(1000.0 / row["mean_ms"])
    assert row["size_bytes"] == dyn_model.stat().st_size
    assert row["peak_rss_mb"] > 0
    assert row["measured_on"].startswith("host: ") and "onnxruntime 1." in row["measured_on"]


def test_default_runs_label_and_samples(dyn_model):
    row = measure_onnx(dyn_model, warmup=0, label="student-int8", keep_samples=True)
    assert row["runs"] == 200 and len(row["samples_ms"]) == 200
    assert row["model"] == "student-int8"
    assert row["p50_ms"] == pytest.approx(float(np.percentile(row["samples_ms"], 50)))
    assert row["mean_ms"] == pytest.approx(float(np.mean(row["samples_ms"])))


def test_symbolic_batch_is_filled(dyn_model):
    row = measure_onnx(dyn_model, batch=4, runs=20)
    assert row["batch"] == 4
    assert row["throughput_per_s"] == pytest.approx(4 * 1000.0 / row["mean_ms"])


def test_duration_mode_runs_at_least_ten(dyn_model):
    row = measure_onnx(dyn_model, duration_s=1e-6, warmup=1)
    assert row["runs"] >= 10
    row = measure_onnx(dyn_model, duration_s=0.05, warmup=1, keep_samples=True)
    # ran until the time passed: the timed samples alone add up to most of the 50 ms window
    assert sum(row["samples_ms"]) > 0.5 * 50 and row["runs"] >= 10


def test_fixed_batch_refuses_larger_batch(fixed_model):
    assert measure_onnx(fixed_model, runs=5)["batch"] == 1
    with pytest.raises(UsageError, match="fixed batch of 1"):
        measure_onnx(fixed_model, batch=2, runs=5)


@pytest.mark.parametrize("kwargs", [{"runs": 0}, {"batch": 0}, {"threads": 0}, {"duration_s": 0}])
def test_bad_arguments_are_usage_errors(dyn_model, kwargs):
    with pytest.raises(UsageError):
        measure_onnx(dyn_model, **kwargs)


def test_missing_model_is_usage_error(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        measure_onnx(tmp_path / "nope.onnx")


def test_bare_loop_and_overhead(dyn_model):
    assert bare_loop_ms(dyn_model, 1, 1, 20) > 0
    res = harness_overhead(dyn_model, runs=50, rounds=2)
    assert np.isfinite(res["overhead_pct"])
    assert res["harness_mean_ms"] > 0 and res["bare_mean_ms"] > 0
    assert len(res["harness_round_means_ms"]) == len(res["bare_round_means_ms"]) == 2
    assert res["within_3pct"] == (abs(res["overhead_pct"]) <= 3.0)


X86 = """processor\t: 0
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma
processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma avx512f
"""
ARM = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes
CPU part\t: 0xd42
"""


@pytest.mark.parametrize("text, expected", [
    (X86, "AMD EPYC, AVX2"),  # the first processor's flags: every core of one host has the same
    (X86.replace("avx2 fma\n", "avx2 fma avx512f\n", 1), "AMD EPYC, AVX-512"),
    (ARM, "aarch64, NEON"),  # no model name: the platform's, with the features the kernels use
    ("model name\t: Old CPU\nflags\t\t: fpu sse2\n", "Old CPU"),
    ("", "aarch64"),
])
def test_cpu_description_names_the_vector_instructions(text, expected):
    assert describe_cpu(text, "aarch64") == expected


def test_measured_on_names_this_hosts_cpu():
    from targets.runners import cpu_model, measured_on

    assert cpu_model() in measured_on()
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert cpu_model().endswith(("AVX2", "AVX-512"))
