"""Tiny hand-built Q/DQ ONNX models for the target tests (real models: ONNX Runtime runs them)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def qdq_conv_model(
    act_type: int = TensorProto.INT8,
    weight_type: int = TensorProto.INT8,
    act_zero_point: int = 0,
    spatial: tuple = (8, 8),
    batch: int | str = 1,
    extra_op: str | None = None,
    channels: int = 4,
    classes: int = 10,
) -> onnx.ModelProto:
    """input[N,1,H,W] -> Q/DQ -> Conv(Q/DQ weights, per-channel axis 0) -> Q/DQ -> Relu
    -> GlobalAveragePool -> Flatten -> Q/DQ -> Gemm(Q/DQ weights) -> Q/DQ -> logits[N,classes].

    Each Conv/Gemm sits in a DQ -> op -> Q unit, so ONNX Runtime fuses them to QLinearConv/QGemm.

    `extra_op` inserts one float op (e.g. "Erf", "Unique") after the conv block.
    """
    rng = np.random.default_rng(0)
    np_act = np.int8 if act_type == TensorProto.INT8 else np.uint8
    np_w = np.int8 if weight_type == TensorProto.INT8 else np.uint8
    w_zp = 0 if weight_type == TensorProto.INT8 else 128
    inits = [
        numpy_helper.from_array(np.array(0.05, np.float32), "act_scale"),
        numpy_helper.from_array(np.array(act_zero_point, np_act), "act_zp"),
        numpy_helper.from_array(np.array(0.1, np.float32), "out_scale"),
        numpy_helper.from_array(rng.integers(-100, 100, (channels, 1, 3, 3)).astype(np.int8).astype(np_w) if np_w == np.int8
                                else rng.integers(28, 228, (channels, 1, 3, 3)).astype(np_w), "conv_w_q"),
        numpy_helper.from_array(np.full(channels, 0.01, np.float32), "conv_w_scale"),
        numpy_helper.from_array(np.full(channels, w_zp, np_w), "conv_w_zp"),
        numpy_helper.from_array(np.zeros(channels, np.float32), "conv_b"),
        numpy_helper.from_array(rng.integers(-100, 100, (classes, channels)).astype(np.int8).astype(np_w) if np_w == np.int8
                                else rng.integers(28, 228, (classes, channels)).astype(np_w), "fc_w_q"),
        numpy_helper.from_array(np.array(0.01, np.float32), "fc_w_scale"),
        numpy_helper.from_array(np.array(w_zp, np_w), "fc_w_zp"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "act_scale", "act_zp"], ["x_q"], name="in_q"),
        helper.make_node("DequantizeLinear", ["x_q", "act_scale", "act_zp"], ["x_dq"], name="in_dq"),
        helper.make_node("DequantizeLinear", ["conv_w_q", "conv_w_scale", "conv_w_zp"], ["conv_w"], name="conv_w_dq", axis=0),
        helper.make_node("Conv", ["x_dq", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
    ]
    last = "c"
    if extra_op:
        nodes.append(helper.make_node(extra_op, [last], ["extra"], name="extra"))
        last = "extra"
    nodes += [
        helper.make_node("QuantizeLinear", [last, "act_scale", "act_zp"], ["r_q"], name="r_q"),
        helper.make_node("DequantizeLinear", ["r_q", "act_scale", "act_zp"], ["r_dq"], name="r_dq"),
        helper.make_node("Relu", ["r_dq"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("QuantizeLinear", ["f", "act_scale", "act_zp"], ["f_q"], name="f_q"),
        helper.make_node("DequantizeLinear", ["f_q", "act_scale", "act_zp"], ["f_dq"], name="f_dq"),
        helper.make_node("DequantizeLinear", ["fc_w_q", "fc_w_scale", "fc_w_zp"], ["fc_w"], name="fc_w_dq"),
        helper.make_node("Gemm", ["f_dq", "fc_w", "fc_b"], ["fc_out"], name="fc", transB=1),
        helper.make_node("QuantizeLinear", ["fc_out", "out_scale", "act_zp"], ["out_q"], name="out_q"),
        helper.make_node("DequantizeLinear", ["out_q", "out_scale", "act_zp"], ["logits"], name="out_dq"),
    ]
    graph = helper.make_graph(
        nodes, "qdq_tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 1, *spatial])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def float_conv_model(batch: int | str = 1) -> onnx.ModelProto:
    """The same network without Q/DQ: the FP32 twin."""
    m = qdq_conv_model(batch=batch)
    g = m.graph
    consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
    conv_w = (consts["conv_w_q"].astype(np.float32) * consts["conv_w_scale"][:, None, None, None]).astype(np.float32)
    fc_w = (consts["fc_w_q"].astype(np.float32) * consts["fc_w_scale"]).astype(np.float32)
    inits = [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(consts["conv_b"], "conv_b"),
             numpy_helper.from_array(fc_w, "fc_w"), numpy_helper.from_array(consts["fc_b"], "fc_b")]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "fp32_tiny", list(g.input), list(g.output), inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
