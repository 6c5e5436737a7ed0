"""Per-layer INT8 sensitivity on probes, and the most sensitive layers kept in float by quantize.max_drop."""

from __future__ import annotations

import onnx
import pytest
import torch
from torch import nn

from pipeline.config import QuantizeConfig
from stages.quantize.onnx_tidy import tidy_qdq
from stages.quantize.qat import export_onnx, quantize
from targets.check import check_model
from tests import int8_breaker

SENSITIVE = "inner/2/linear/0"  # NNCF's name for the middle Linear of the bare Sequential below


def _student() -> nn.Module:
    """Three Linear layers; the middle one breaks in INT8 and only there (tests/int8_breaker.py says why)."""
    m = int8_breaker.sensitive()
    m.load_state_dict(int8_breaker.weights())
    return m.eval()


def _probes(n: int = 60) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    x = 0.05 * torch.randn(n, 16, generator=g)
    x[torch.arange(n), torch.arange(n) % 10] += 3.0  # one dominant class per probe
    return x


def _quantize(max_drop, scheme: str):
    torch.manual_seed(0)
    student = _student()
    calib = [_probes(32)]
    cfg = QuantizeConfig(qat_steps=0, max_drop=max_drop)
    return quantize(student, student, calib, lambda: _probes(32), cfg, scheme, "noise", torch.randn(1, 16), probes=_probes())


@pytest.fixture(scope="module")
def ranked():
    return _quantize(None, "onnxruntime")


def test_one_entry_per_quantized_layer_sorted_most_sensitive_first(ranked):
    ranking = ranked.sensitivity["ranking"]
    assert sorted(r["layer"] for r in ranking) == ["inner/0/linear/0", "inner/2/linear/0", "inner/4/linear/0"]
    assert [r["agreement"] for r in ranking] == sorted(r["agreement"] for r in ranking)
    assert ranking[0]["layer"] == SENSITIVE and ranking[0]["drop_points"] > 50
    assert all(r["drop_points"] == 0 for r in ranking[1:])
    assert ranked.sensitivity["kept_float"] == [] and ranked.sensitivity["estimated_drop_points"] is None


def _weight_dequantized(path, op: str) -> list[bool]:
    """For each `op` node in graph order: is its weight input a DequantizeLinear output?"""
    g = onnx.load(str(path)).graph
    dq = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear"}
    return [n.input[1] in dq for n in g.node if n.op_type == op]


# TensorRT keeps the first layer INT8 with a float output; ONNX Runtime would run it in float anyway
# once its output is no longer quantized for the middle layer, so the mobile scheme keeps it in float too.
@pytest.mark.parametrize("scheme, target, kept, weights_int8", [
    ("tensorrt", "jetson", [SENSITIVE], [True, False, True]),
    ("onnxruntime", "mobile", [SENSITIVE, "inner/0/linear/0"], [False, False, True]),
])
def test_max_drop_zero_keeps_the_sensitive_layer_in_float(tmp_path, scheme, target, kept, weights_int8):
    res = _quantize(0.0, scheme)
    assert res.sensitivity["kept_float"] == kept
    assert res.sensitivity["estimated_drop_points"] == 0
    with torch.no_grad():
        x = _probes()
        assert torch.equal(res.model(x).argmax(1), _student()(x).argmax(1))
    path = export_onnx(res.model, tmp_path / "q.onnx", torch.randn(1, 16))
    tidy_qdq(path)
    ops = [n.op_type for n in onnx.load(str(path)).graph.node if n.op_type in ("Gemm", "MatMul")]
    assert _weight_dequantized(path, ops[0]) == weights_int8
    assert check_model(path, target) == []


@pytest.mark.parametrize("scheme, target, weights_int8", [("tensorrt", "jetson", [True, False, True]),
                                                           ("onnxruntime", "mobile", [False, False, True])])
def test_a_conv_kept_in_float_still_passes_the_target_check(tmp_path, scheme, target, weights_int8):
    import nncf

    from stages.distill.networks import build_student
    from stages.quantize.qat import calibrate, fold_batchnorm, use_reference_quantizer
    from stages.quantize.sensitivity import find_layers, whole_units

    use_reference_quantizer()
    torch.manual_seed(0)
    folded = fold_batchnorm(build_student({"family": "conv", "shape": [1, 8, 8], "num_classes": 10, "widths": [8, 16, 32]}))
    example, calib = torch.randn(1, 1, 8, 8), [torch.randn(32, 1, 8, 8)]
    kept = ["features/4/conv2d/0"]
    if scheme == "onnxruntime":
        kept = whole_units(find_layers(calibrate(folded, calib, QuantizeConfig(), scheme), folded, example), kept)
        assert kept == ["features/4/conv2d/0", "features/0/conv2d/0"]
    qmodel = calibrate(folded, calib, QuantizeConfig(), scheme, ignored=kept)
    path = export_onnx(nncf.strip(qmodel.eval(), example_input=example), tmp_path / "q.onnx", example)
    tidy_qdq(path)
    assert _weight_dequantized(path, "Conv") == weights_int8
    assert check_model(path, target) == []


@pytest.mark.parametrize("target", ["mobile", "jetson"])
def test_cli_max_drop_ranks_keeps_the_most_sensitive_in_float_and_passes_check(mobile_bundle, tmp_path, target):
    import json
    import shutil

    from tests.conftest import run_cli

    out = tmp_path / "run"
    shutil.copytree(mobile_bundle, out)
    for args in (("quantize", str(out), "--target", target, "--max-drop", "5"), ("export", str(out), "--target", target),
                 ("check", str(out / "student_int8.onnx"), "--target", target)):
        r = run_cli(*args)
        assert r.returncode == 0, (args, r.stdout[-2000:], r.stderr[-2000:])
    sens = json.loads((out / "report.json").read_text())["quantization"]["sensitivity"]
    assert sens["max_drop"] == 5 and len(sens["ranking"]) == 4  # three convolutions and the classifier
    assert sens["kept_float"][:1] == [sens["ranking"][0]["layer"]]
    assert sens["estimated_drop_points"] <= 5 and sens["measured_drop_points"] is not None
    md = (out / "report.md").read_text()
    assert "## Layer sensitivity" in md and f"| 1 | {sens['ranking'][0]['layer']} |" in md
    assert json.loads((out / "run.json").read_text())["config"]["quantize"]["max_drop"] == 5
