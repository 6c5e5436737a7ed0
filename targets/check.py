"""Static checks of an INT8 ONNX model against what each target's runtime can run well.

`check_model` reads the graph only (no runtime needed); `optimized_op_counts` and `fuse_report`
ask ONNX Runtime on this machine which Conv/Gemm/MatMul it really turned into integer kernels.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from core.errors import UsageError
from core.target import ExportContext, Target
from targets import TARGET_NAMES


@dataclass(frozen=True)
class Finding:
    node: str
    op_type: str
    rule: str
    message: str


QDQ = ("QuantizeLinear", "DequantizeLinear")

# TensorRT ONNX parser support matrix (onnx-tensorrt docs/operators.md, TensorRT 10 and 11):
# operators the parser rejects. Ops in a non-standard domain need a plugin and are flagged too.
TRT_UNSUPPORTED = frozenset({
    "BitShift", "Compress", "ConcatFromSequence", "ConvInteger", "Det", "DynamicQuantizeLinear",
    "ImageDecoder", "MatMulInteger", "MaxRoiPool", "MaxUnpool", "Multinomial",
    "NegativeLogLikelihoodLoss", "Optional", "OptionalGetElement", "OptionalHasElement",
    "QLinearConv", "QLinearMatMul", "RegexFullMatch", "SequenceAt", "SequenceConstruct",
    "SequenceEmpty", "SequenceErase", "SequenceInsert", "SequenceLength", "SequenceMap",
    "SoftmaxCrossEntropyLoss", "SplitToSequence", "StringConcat", "StringNormalizer", "StringSplit",
    "TfIdfVectorizer", "Unique",
})

# ONNX Runtime quantization docs ("Quantize ONNX models", QDQ format) and its QDQ selector/action
# transformers: ops whose DQ -> op -> Q unit ORT runs as an integer kernel (QLinearConv, QGemm,
# QLinearAdd, ...) or as pure data movement on 8-bit tensors. Anything else computes in float.
ORT_QDQ_SUPPORTED = frozenset({
    "Conv", "ConvTranspose", "MatMul", "Gemm", "Add", "Mul", "AveragePool", "GlobalAveragePool",
    "MaxPool", "LeakyRelu", "Sigmoid", "Softmax", "Concat", "Where", "Resize", "ArgMax",
    "Relu", "Clip",  # folded into the following Q's range
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Gather", "GatherElements", "Slice",
    "Split", "Pad", "DepthToSpace", "SpaceToDepth", "Tile", "Expand", "Identity", "ReduceMin", "ReduceMax",
})
# Ops that cost nothing or only shape bookkeeping: never worth a finding.
NEUTRAL = frozenset({"Constant", "ConstantOfShape", "Shape", "Size", "Cast", "Dropout", *QDQ})

_INT8 = TensorProto.INT8
_UINT8 = TensorProto.UINT8


def _type_name(elem: int | None) -> str:
    return TensorProto.DataType.Name(elem).lower() if elem else "unknown"


class _Graph:
    """Lookup tables over one graph: constants, element types, consumers."""

    def __init__(self, model: onnx.ModelProto):
        try:
            model = onnx.shape_inference.infer_shapes(model)
        except Exception:  # inference is a help for typing, not a requirement
            pass
        g = model.graph
        self.graph = g
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        self.elem: dict[str, int] = {}
        for vi in (*g.input, *g.output, *g.value_info):
            if vi.type.HasField("tensor_type"):
                self.elem[vi.name] = vi.type.tensor_type.elem_type
        for i in g.initializer:
            self.elem[i.name] = i.data_type
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.producer: dict[str, onnx.NodeProto] = {}
        for n in g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
            for o in n.output:
                self.producer[o] = n

    def is_weight(self, name: str) -> bool:
        """A constant tensor, directly or through a Constant/Identity/Transpose chain."""
        if name in self.consts:
            return True
        p = self.producer.get(name)
        return p is not None and p.op_type in ("Identity", "Transpose", "Reshape") and self.is_weight(p.input[0])


def _attr(node: onnx.NodeProto, name: str, default):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _quant_type(g: _Graph, node: onnx.NodeProto) -> int | None:
    """The 8-bit side's element type of a Q or DQ node."""
    if len(node.input) > 2 and node.input[2]:
        zp = node.input[2]
        if zp in g.elem:
            return g.elem[zp]
        if zp in g.consts:
            return onnx.helper.np_dtype_to_tensor_dtype(g.consts[zp].dtype)
    if node.op_type == "QuantizeLinear":
        # ONNX spec: without a zero point, Q outputs uint8 unless opset-21 output_dtype says otherwise.
        return _attr(node, "output_dtype", 0) or g.elem.get(node.output[0]) or _UINT8
    return g.elem.get(node.input[0])


def _zero_point(g: _Graph, node: onnx.NodeProto) -> np.ndarray | None:
    if len(node.input) > 2 and node.input[2] in g.consts:
        return g.consts[node.input[2]]
    return None


def _scale_size(g: _Graph, node: onnx.NodeProto) -> int:
    s = g.consts.get(node.input[1])
    return 1 if s is None else int(np.asarray(s).size)


def _out_channel_axes(consumer: onnx.NodeProto, rank: int) -> set[int]:
    """Axes TensorRT accepts for per-channel weight scales: the consumer's output-channel axis."""
    if consumer.op_type == "Conv":
        return {0}
    if consumer.op_type == "ConvTranspose":
        return {1}
    if consumer.op_type == "MatMul":
        return {rank - 1, -1}
    if consumer.op_type == "Gemm":
        return {0, -rank} if _attr(consumer, "transB", 0) else {1, -1}
    return {0}


def _dynamic_inputs(g: _Graph, allow_dynamic_batch: bool) -> list[Finding]:
    out = []
    init = set(g.consts)
    for vi in g.graph.input:
        if vi.name in init or not vi.type.HasField("tensor_type"):
            continue
        dims = vi.type.tensor_type.shape.dim
        for axis, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if axis == 0 and allow_dynamic_batch:
                continue
            label = d.dim_param or "?"
            what = "batch dimension" if axis == 0 else f"dimension {axis}"
            out.append(Finding(vi.name, "graph-input", "dynamic-shape",
                               f"input '{vi.name}' has a dynamic {what} ('{label}'); export with a fixed size"))
    return out


def _check_jetson(g: _Graph) -> list[Finding]:
    # TensorRT developer guide, "Working with Quantized Types" / explicit quantization:
    # INT8 Q/DQ must be symmetric (zero point 0) and signed; activations per-tensor,
    # weights per-tensor or per-channel along the output-channel axis.
    out = []
    for n in g.graph.node:
        name = n.name or n.output[0]
        if n.domain not in ("", "ai.onnx"):
            out.append(Finding(name, n.op_type, "unsupported-op",
                               f"op {n.domain}::{n.op_type} is not in TensorRT's ONNX parser (needs a plugin)"))
            continue
        if n.op_type in TRT_UNSUPPORTED:
            out.append(Finding(name, n.op_type, "unsupported-op", f"TensorRT's ONNX parser does not support {n.op_type}"))
            continue
        if n.op_type not in QDQ:
            continue  # float ops between DQ and Q run fine, just unfused: informational, not flagged
        qt = _quant_type(g, n)
        if qt == _UINT8:
            out.append(Finding(name, n.op_type, "qdq-uint8",
                               "uint8 quantization: TensorRT explicit quantization needs signed int8 (re-quantize symmetric int8)"))
        elif qt not in (_INT8, None):
            out.append(Finding(name, n.op_type, "qdq-type",
                               f"{_type_name(qt)} quantization: this pipeline builds INT8 engines; expected int8"))
        zp = _zero_point(g, n)
        if zp is not None and np.any(zp != 0):
            out.append(Finding(name, n.op_type, "qdq-zero-point",
                               "non-zero zero point: TensorRT supports only symmetric quantization (zero point 0)"))
        if _scale_size(g, n) > 1:
            x = n.input[0]
            if n.op_type == "DequantizeLinear" and g.is_weight(x):
                axis = _attr(n, "axis", 1)
                rank = np.asarray(g.consts.get(x, np.zeros((1,) * 4))).ndim
                for c in g.consumers.get(n.output[0], []):
                    if axis not in _out_channel_axes(c, rank):
                        out.append(Finding(name, n.op_type, "qdq-axis",
                                           f"per-channel weight scale on axis {axis}; TensorRT needs the output-channel axis for {c.op_type}"))
                        break
            else:
                out.append(Finding(name, n.op_type, "qdq-per-channel-activation",
                                   "per-channel scale on an activation: TensorRT quantizes activations per-tensor"))
    return out


def _check_mobile(g: _Graph) -> list[Finding]:
    # ONNX Runtime quantization docs: the CPU EP runs QDQ with uint8 or int8 activations;
    # XNNPACK EP docs: its QDQ kernels take int8 weights (signed, symmetric), uint8 weights stay on the CPU EP.
    out = []
    nodes = list(g.graph.node)
    if not any(n.op_type in QDQ for n in nodes):
        return [Finding("", "", "not-quantized", "no QuantizeLinear/DequantizeLinear nodes: the model runs entirely in float")]
    for n in nodes:
        name = n.name or n.output[0]
        if n.op_type in QDQ:
            qt = _quant_type(g, n)
            if qt not in (_INT8, _UINT8, None):
                out.append(Finding(name, n.op_type, "qdq-type",
                                   f"{_type_name(qt)} quantization: XNNPACK and NNAPI take only 8-bit Q/DQ; it runs on the CPU EP"))
            elif qt == _UINT8 and n.op_type == "DequantizeLinear" and g.is_weight(n.input[0]):
                out.append(Finding(name, n.op_type, "xnnpack-uint8-weights",
                                   "uint8 weights: XNNPACK's QDQ kernels need int8 weights; this op stays on the CPU EP"))
            continue
        if n.op_type in NEUTRAL:
            continue
        if n.domain not in ("", "ai.onnx") or n.op_type not in ORT_QDQ_SUPPORTED:
            out.append(Finding(name, n.op_type, "runs-in-float",
                               f"{n.op_type} has no QDQ kernel in ONNX Runtime: it dequantizes, runs in float and re-quantizes"))
        elif n.op_type in ("Conv", "MatMul") and _dequantized(g, n) and not _feeds_quantize(g, n.output[0]):
            # ORT fuses DQ -> Conv/MatMul -> Q into QLinearConv/QLinearMatMul only with the Q right after.
            # A layer whose weights are float was kept in float on purpose (quantize.max_drop): no unit to fuse.
            out.append(Finding(name, n.op_type, "qdq-unfused",
                               f"{n.op_type} output is not quantized right away, so ONNX Runtime cannot fuse it into an integer kernel"))
    return out


def _dequantized(g: _Graph, node: onnx.NodeProto) -> bool:
    """Whether the op's weight (its second input) comes out of a DequantizeLinear."""
    producer = g.producer.get(node.input[1]) if len(node.input) > 1 else None
    return producer is not None and producer.op_type == "DequantizeLinear"


def _feeds_quantize(g: _Graph, tensor: str) -> bool:
    """Whether `tensor` is quantized right away, or through one Relu/Clip, which ORT folds into the Q's range."""
    users = g.consumers.get(tensor, [])
    if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
        users = g.consumers.get(users[0].output[0], [])
    return bool(users) and all(u.op_type == "QuantizeLinear" for u in users)


def _load(model: str | os.PathLike | onnx.ModelProto) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    p = Path(model)
    if not p.is_file():
        raise UsageError(f"ONNX model not found: {p}")
    return onnx.load(str(p))


def check_model(model: str | os.PathLike | onnx.ModelProto, target: str, allow_dynamic_batch: bool = True) -> list[Finding]:
    """Findings (empty when clean) of what `target`'s runtime will reject or run slowly."""
    if target not in TARGET_NAMES:
        raise UsageError(f"unknown target '{target}'; choose one of: {', '.join(TARGET_NAMES)}")
    g = _Graph(_load(model))
    body = _check_jetson(g) if target == "jetson" else _check_mobile(g)
    return _dynamic_inputs(g, allow_dynamic_batch) + body


def format_findings(findings: list[Finding]) -> str:
    if not findings:
        return "no findings"
    counts = Counter(f.rule for f in findings)
    head = f"{len(findings)} finding(s): " + ", ".join(f"{r} x{n}" for r, n in sorted(counts.items()))
    lines = [f"  [{f.rule}] {f.op_type} {f.node}: {f.message}" for f in findings]
    return "\n".join([head, *lines])


# ---- what ONNX Runtime actually does on this machine -------------------------------------------

INTEGER_KERNELS = frozenset({
    "QLinearConv", "QLinearMatMul", "QGemm", "ConvInteger", "MatMulInteger",
    "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "NhwcQLinearConv",
})
FLOAT_KERNELS = frozenset({"Conv", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"})

_LEVELS = {"basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def _optimized_model(path: Path, level: str) -> onnx.ModelProto:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, _LEVELS[level])
    so.log_severity_level = 3
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "optimized.onnx"
        so.optimized_model_filepath = str(out)
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx.load(str(out))


def optimized_op_counts(path: str | os.PathLike, level: str = "all") -> Counter:
    """Op types of the graph ONNX Runtime's CPU EP runs after optimizing at `level`.

    At "all", ORT adds layout transforms (NCHWc) tuned to this CPU; saving such a graph can fail
    on some builds, so we fall back to "extended", which already contains the QDQ -> QLinear*
    fusions we want to see. The level actually used is under the key "__level__:<name>".
    """
    if level not in _LEVELS:
        raise UsageError(f"unknown optimization level '{level}'; choose one of: {', '.join(_LEVELS)}")
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"ONNX model not found: {p}")
    used = level
    try:
        model = _optimized_model(p, level)
    except Exception:
        if level != "all":
            raise
        used = "extended"
        model = _optimized_model(p, used)
    counts = Counter(n.op_type for n in model.graph.node)
    counts[f"__level__:{used}"] = 1
    return counts


def fuse_report(path: str | os.PathLike, level: str = "all") -> dict:
    """How many Conv/Gemm/MatMul ONNX Runtime runs as integer kernels versus in float."""
    counts = optimized_op_counts(path, level)
    used = next(k.split(":", 1)[1] for k in counts if k.startswith("__level__:"))
    integer = {k: v for k, v in sorted(counts.items()) if k in INTEGER_KERNELS}
    flt = {k: v for k, v in sorted(counts.items()) if k in FLOAT_KERNELS}
    total = sum(integer.values()) + sum(flt.values())
    return {
        "level": used,
        "integer_kernels": integer,
        "float_kernels": flt,
        "integer": sum(integer.values()),
        "float": sum(flt.values()),
        "integer_fraction": (sum(integer.values()) / total) if total else None,
    }


class StaticCheckTarget(Target):
    """A target whose runtime's INT8 rules `check_model` knows: its export runs the static check by name."""

    def check(self, ctx: ExportContext) -> list[Finding]:
        return check_model(ctx.int8_onnx, self.name)
