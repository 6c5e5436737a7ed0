"""Static ONNX checker and ONNX Runtime fusion report on tiny hand-built Q/DQ models."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.errors import UsageError
from qdq_models import float_conv_model, qdq_conv_model
from targets.check import Finding, check_model, format_findings, fuse_report, optimized_op_counts

UINT8 = dict(act_type=TensorProto.UINT8, weight_type=TensorProto.UINT8, act_zero_point=128)


def rules(findings: list[Finding]) -> set[str]:
    return {f.rule for f in findings}


def test_int8_symmetric_model_is_clean_for_both_targets():
    m = qdq_conv_model()
    assert check_model(m, "jetson") == []
    assert check_model(m, "mobile") == []
    assert format_findings([]) == "no findings"


def test_jetson_flags_uint8_and_nonzero_zero_point(tmp_path):
    p = tmp_path / "u8.onnx"
    onnx.save(qdq_conv_model(**UINT8), p)
    found = check_model(p, "jetson")  # from a path, too
    assert {"qdq-uint8", "qdq-zero-point"} <= rules(found)
    assert {f.node for f in found if f.rule == "qdq-uint8"} >= {"in_q", "in_dq", "conv_w_dq", "fc_w_dq"}
    text = format_findings(found)
    assert "qdq-uint8" in text and "in_q" in text and "signed int8" in text


def test_jetson_flags_uint8_with_zero_point_zero_but_not_zero_point_rule():
    found = check_model(qdq_conv_model(act_type=TensorProto.UINT8, act_zero_point=0), "jetson")
    assert "qdq-uint8" in rules(found)
    assert "qdq-zero-point" not in rules(found)


def test_mobile_accepts_uint8_activations_but_flags_uint8_weights_for_xnnpack():
    found = check_model(qdq_conv_model(**UINT8), "mobile")
    assert rules(found) == {"xnnpack-uint8-weights"}
    assert {f.node for f in found} == {"conv_w_dq", "fc_w_dq"}
    found = check_model(qdq_conv_model(act_type=TensorProto.UINT8, act_zero_point=128), "mobile")
    assert found == []


def test_dynamic_spatial_dim_flagged_batch_allowed_by_choice():
    found = check_model(qdq_conv_model(spatial=("height", 8)), "jetson")
    assert [(f.rule, f.node) for f in found] == [("dynamic-shape", "input")]
    assert "dimension 2" in found[0].message and "height" in found[0].message
    assert rules(check_model(qdq_conv_model(spatial=("height", 8)), "mobile")) == {"dynamic-shape"}

    dyn_batch = qdq_conv_model(batch="N")
    assert check_model(dyn_batch, "jetson") == []
    assert rules(check_model(dyn_batch, "jetson", allow_dynamic_batch=False)) == {"dynamic-shape"}


def test_unsupported_op_flagged_per_target():
    m = qdq_conv_model(extra_op="Unique")
    jet = check_model(m, "jetson")
    assert [(f.rule, f.op_type) for f in jet] == [("unsupported-op", "Unique")]
    assert "runs-in-float" in rules(check_model(m, "mobile"))


def test_float_op_between_dq_and_q_is_not_flagged_for_jetson_but_runs_in_float_on_mobile():
    m = qdq_conv_model(extra_op="Erf")
    assert check_model(m, "jetson") == []
    mob = check_model(m, "mobile")
    assert ("runs-in-float", "Erf") in {(f.rule, f.op_type) for f in mob}
    assert ("qdq-unfused", "Conv") in {(f.rule, f.op_type) for f in mob}


def test_custom_domain_op_flagged_for_jetson():
    m = qdq_conv_model()
    m.graph.node.append(helper.make_node("Gelu", ["logits"], ["g"], name="gelu", domain="com.microsoft"))
    assert ("unsupported-op", "gelu") in {(f.rule, f.node) for f in check_model(m, "jetson")}


def test_per_channel_weight_axis_checked_against_consumer():
    m = qdq_conv_model()
    for n in m.graph.node:
        if n.name == "conv_w_dq":
            n.attribute[0].i = 1  # per-channel scale claimed on the input-channel axis
    found = check_model(m, "jetson")
    assert ("qdq-axis", "conv_w_dq") in {(f.rule, f.node) for f in found}


def test_not_quantized_model_reported_for_mobile():
    assert rules(check_model(float_conv_model(), "mobile")) == {"not-quantized"}
    assert check_model(float_conv_model(), "jetson") == []


def test_unknown_target_and_missing_file(tmp_path):
    with pytest.raises(UsageError, match="unknown target 'tpu'"):
        check_model(qdq_conv_model(), "tpu")
    with pytest.raises(UsageError, match="not found"):
        check_model(tmp_path / "nope.onnx", "jetson")


def test_optimized_op_counts_show_integer_kernels(tmp_path):
    p = tmp_path / "q.onnx"
    onnx.save(qdq_conv_model(), p)
    for level in ("all", "extended"):
        counts = optimized_op_counts(p, level)
        assert counts["QLinearConv"] == 1 and counts["QGemm"] == 1
        assert counts["Conv"] == 0
    rep = fuse_report(p)
    assert rep["integer"] == 2 and rep["float"] == 0 and rep["integer_fraction"] == 1.0


def test_fuse_report_counts_float_conv_when_q_does_not_follow(tmp_path):
    p = tmp_path / "erf.onnx"
    onnx.save(qdq_conv_model(extra_op="Erf"), p)
    rep = fuse_report(p, "extended")
    assert rep["level"] == "extended"
    assert rep["integer_kernels"] == {"QGemm": 1}
    assert rep["float"] == 1


def test_fuse_report_on_fp32_model_is_all_float(tmp_path):
    p = tmp_path / "f.onnx"
    onnx.save(float_conv_model(), p)
    rep = fuse_report(p)
    assert rep["integer"] == 0 and rep["float"] >= 2


def test_optimized_op_counts_rejects_bad_level(tmp_path):
    p = tmp_path / "q.onnx"
    onnx.save(qdq_conv_model(), p)
    with pytest.raises(UsageError, match="optimization level"):
        optimized_op_counts(p, "max")


def _conv_then(m, op: str | None, float_weights: bool = False):
    """The tiny model with `op` between the Conv and the Q after it, and optionally float Conv weights."""
    g = m.graph
    if op:
        g.node.append(helper.make_node(op, ["c"], ["c_act"], name="conv_act"))
        next(n for n in g.node if n.name == "r_q").input[0] = "c_act"
    if float_weights:
        g.initializer.append(numpy_helper.from_array(np.zeros((4, 1, 3, 3), np.float32), "conv_w_float"))
        next(n for n in g.node if n.name == "conv").input[1] = "conv_w_float"
    return m


def test_conv_relu_q_is_fused_by_ort_and_a_float_conv_is_not_an_unfused_unit():
    assert check_model(_conv_then(qdq_conv_model(), "Relu"), "mobile") == []
    unfused = check_model(_conv_then(qdq_conv_model(), "Sigmoid"), "mobile")
    assert ("qdq-unfused", "Conv") in {(f.rule, f.op_type) for f in unfused}
    assert check_model(_conv_then(qdq_conv_model(extra_op="Erf"), None, float_weights=True), "mobile") == [
        f for f in check_model(qdq_conv_model(extra_op="Erf"), "mobile") if f.rule != "qdq-unfused"]
