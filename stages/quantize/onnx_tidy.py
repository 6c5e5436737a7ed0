"""Post-export clean-up of Q/DQ graphs, in plain onnx + numpy.

The legacy exporter writes zero points behind Cast or Identity nodes and keeps FP32 weights behind a
QuantizeLinear, so the "INT8" file is as large as the FP32 one. Folding both gives the standard
QDQ form (INT8 weight initializer -> DequantizeLinear) that onnxruntime and TensorRT both take,
at about a quarter of the size, with identical outputs (ONNX QuantizeLinear rounds half to even,
as numpy.rint does).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def fold_casts(model: onnx.ModelProto) -> int:
    """Replace Cast(constant) and Identity(constant) by an initializer (the exporter deduplicates
    equal zero points through Identity nodes)."""
    graph = model.graph
    values = _constants(graph)
    folded = 0
    for node in list(graph.node):
        if node.op_type in ("Cast", "Identity") and node.input[0] in values:
            arr = values[node.input[0]]
            if node.op_type == "Cast":
                to = next(a.i for a in node.attribute if a.name == "to")
                arr = arr.astype(helper.tensor_dtype_to_np_dtype(to))
            graph.initializer.append(numpy_helper.from_array(arr, node.output[0]))
            graph.node.remove(node)
            values[node.output[0]] = arr
            folded += 1
    return folded


def quantize_weights(model: onnx.ModelProto) -> int:
    """QuantizeLinear(FP32 initializer) -> an INT8 initializer feeding the DequantizeLinear directly."""
    graph = model.graph
    values = _constants(graph)
    inits = {i.name for i in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    done = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] not in inits or len(node.input) < 3:
            continue
        if node.input[1] not in values or node.input[2] not in values:
            continue
        w, scale, zp = values[node.input[0]], values[node.input[1]], values[node.input[2]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * w.ndim
            shape[axis] = -1
            scale_b, zp_b = scale.reshape(shape), zp.astype(np.int32).reshape(shape)
        else:
            scale_b, zp_b = scale, zp.astype(np.int32)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(w / scale_b) + zp_b, info.min, info.max).astype(zp.dtype)
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        graph.node.remove(node)
        if consumers.get(node.input[0], 0) == 1:  # the FP32 copy is no longer needed
            for init in list(graph.initializer):
                if init.name == node.input[0]:
                    graph.initializer.remove(init)
        done += 1
    return done


def remove_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    for init in list(model.graph.initializer):
        if init.name not in used:
            model.graph.initializer.remove(init)


def tidy_qdq(path) -> dict:
    """Fold zero-point casts and pre-quantize weights in place; returns what was done."""
    model = onnx.load(str(path))
    casts = fold_casts(model)
    weights = quantize_weights(model)
    remove_unused_initializers(model)
    onnx.checker.check_model(model)
    from core.fileio import write_bytes

    write_bytes(path, model.SerializeToString())
    return {"folded_casts": casts, "int8_weights": weights}
