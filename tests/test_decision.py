"""The deploy decision: INT8 only where it pays on the host it was measured on."""

from __future__ import annotations

import json

import pytest

from stages.export.decision import deploy_decision

QUANT = {"teacher_agreement_fp32": 0.97, "teacher_agreement_int8": 0.95}
NO_EVAL = {"teacher": None, "student_fp32": None, "student_int8": None, "evaluated_on": None}
SIZES = {"student_fp32.onnx": 100_000, "student_int8.onnx": 30_000}


def _rows(fp32_ms: float, int8_ms: float) -> list[dict]:
    def row(path, what, ms):
        return {"runtime": "onnxruntime", "model": f"{path}: {what} (host cpu)", "batch": 1, "threads": 1,
                "p50_ms": ms, "measured_on": "host: h, cpu"}
    return [row("student_fp32.onnx", "fp32 onnx", fp32_ms), row("student_int8.onnx", "int8 onnx", int8_ms),
            row("student_int8.ort", "int8 .ort", 0.001)]  # another file's row must not count


def test_int8_slower_on_the_host_chooses_fp32_for_mobile():
    d = deploy_decision("mobile", _rows(0.04, 0.10), QUANT, NO_EVAL, SIZES)
    assert (d["model"], d["role"], d["precision"]) == ("student_fp32.onnx", "student-fp32-onnx", "fp32")
    assert "0.100 ms" in d["reason"] and "0.040 ms" in d["reason"] and "host CPU" in d["reason"]
    assert d["p50_ms"] == 0.04 and d["bytes"] == 100_000 and d["probe_agreement"] == 0.97


def test_int8_faster_chooses_int8():
    acc = {"teacher": 0.99, "student_fp32": 0.98, "student_int8": 0.975, "evaluated_on": "digits"}
    d = deploy_decision("mobile", _rows(0.40, 0.20), QUANT, acc, SIZES)
    assert (d["model"], d["precision"], d["accuracy"], d["teacher_accuracy"]) == ("student_int8.onnx", "int8", 0.975, 0.99)
    assert "0.200 ms" in d["reason"] and "0.400 ms" in d["reason"]


def test_jetson_keeps_int8_and_states_the_host_measurement():
    d = deploy_decision("jetson", _rows(0.04, 0.10), QUANT, NO_EVAL, SIZES)
    assert d["model"] == "student_int8.onnx"
    assert "TensorRT" in d["reason"] and "0.100 ms" in d["reason"] and "0.040 ms" in d["reason"]


def test_without_latency_int8_is_kept():
    d = deploy_decision("mobile", [], QUANT, NO_EVAL, SIZES)
    assert d["model"] == "student_int8.onnx" and d["p50_ms"] is None and "no host latency" in d["reason"]


@pytest.mark.parametrize("fixture", ["jetson_bundle", "mobile_bundle"])
def test_bundle_manifest_and_report_open_with_the_decision(fixture, request):
    bundle = request.getfixturevalue(fixture)
    manifest = json.loads((bundle / "manifest.json").read_text())
    report = json.loads((bundle / "report.json").read_text())
    deploy = manifest["deploy"]
    assert deploy["model"] in {a["path"] for a in manifest["artifacts"]}
    assert deploy == {k: report["deploy"][k] for k in ("model", "role", "reason")}
    assert deploy == {k: v for k, v in deploy_decision(report["target"], report["latency"], report["quantization"],
                                                       report["accuracy"], {a["path"]: a["bytes"] for a in manifest["artifacts"]}).items()
                      if k in deploy}
    md = (bundle / "report.md").read_text().splitlines()
    first_section = md[md.index("## Deploy") + 1: md.index("## Deploy") + 12]
    assert md.index("## Deploy") == min(i for i, line in enumerate(md) if line.startswith("## "))
    text = "\n".join(first_section)
    assert f"| Model | {deploy['model']}" in text and "| Why |" in text and "| Host latency | p50" in text
    assert "teacher" in text  # accuracy against the teacher (the smoke bundles are evaluated on digits)
