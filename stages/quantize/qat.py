"""Stage 2: INT8 with NNCF, calibrated and fine-tuned on synthetic data only.

fold BatchNorm -> nncf.quantize (calibration on synthetic samples) -> per-layer sensitivity on synthetic probes,
and with quantize.max_drop nncf.quantize again with the most sensitive layers in float
(stages.quantize.sensitivity) -> short QAT of the quantizers' ranges by KD from the teacher, the weights
frozen -> nncf.strip -> ONNX with QuantizeLinear/DequantizeLinear.

Schemes per runtime:
  tensorrt     symmetric signed INT8 everywhere, zero point 0 (TensorRT's explicit quantization rules);
               NNCF would emit uint8 after ReLU, so signedness is forced for activations.
  onnxruntime  NNCF's performance preset: int8 symmetric per-channel weights, uint8 activations after
               ReLU, which onnxruntime's CPU kernels fuse into QLinearConv / QGemm (U8S8).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from stages.distill.criteria import kd_loss as kd_divergence
from stages.quantize.config import QuantizeConfig
from core.errors import RunError, UsageError
from core.fileio import atomic_path
from stages.quantize.sensitivity import find_layers, keep_in_float, rank_layers, whole_units


SUPPORTED_SCHEMES = ("tensorrt", "onnxruntime")


def use_reference_quantizer() -> None:
    """Run NNCF's fake quantization in plain torch ops.

    NNCF otherwise compiles a C++ extension on first use (about a minute here, at its own 60 s
    timeout, in a cache shared between environments), and its fallback wraps the reference in
    torch.compile, which recompiles for every tensor rank. Neither is needed for small students.
    """
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import ReferenceBackendType, ReferenceQuantize

    ref = ReferenceQuantize(ReferenceBackendType.TORCH)

    class _PlainTorch:
        Quantize_forward = staticmethod(ref.forward)
        Quantize_backward = staticmethod(ref.backward)

    extensions.QuantizedFunctionsCPU._loaded_namespace = _PlainTorch
    # torchao (needed by nncf.strip) logs a deprecation notice through torch's pytree logger on import.
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)


class _Wrapped(nn.Module):
    """NNCF wants a module with its own forward, not a bare nn.Sequential."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every BatchNorm that directly follows a Conv or Linear into it (eval mode, on a copy), and split the
    scale and shift off every GroupNorm and LayerNorm (split_norm_affines).

    Unfolded, onnxruntime runs float Conv + BatchNormalization around the Q/DQ pairs and INT8
    ends up slower than FP32. The pairs are found by tracing (torch.fx) but replaced inside the
    original module tree: NNCF cannot build its graph from an fx.GraphModule.
    """
    model = copy.deepcopy(model).eval()
    try:
        pairs = _conv_bn_pairs(model)
    except Exception:  # not symbolically traceable: adjacent pairs inside Sequentials
        pairs = _sequential_pairs(model)
    from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

    for first_name, bn_name in pairs:
        first, bn = model.get_submodule(first_name), model.get_submodule(bn_name)
        fused = fuse_linear_bn_eval(first, bn) if isinstance(first, nn.Linear) else fuse_conv_bn_eval(first, bn)
        _set_submodule(model, first_name, fused)
        _set_submodule(model, bn_name, nn.Identity())
    split_norm_affines(model)
    if isinstance(model, nn.Sequential):
        model = _Wrapped(model)
    return model.eval()


_FOLDABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


class NormThenAffine(nn.Module):
    """A GroupNorm or LayerNorm computed as its normalisation alone, then its scale and shift as a multiply and an
    add: the same function. NNCF takes the scale vector of a GroupNorm or LayerNorm for a weight to quantize and,
    per channel, fails on it ("shape '[C]' is invalid for input of size 1"); split off, the vectors stay float, as
    ONNX Runtime and TensorRT run normalisations, and the convolution before the norm still ends in a quantizer
    (an integer kernel on ONNX Runtime)."""

    def __init__(self, norm: nn.GroupNorm | nn.LayerNorm):
        super().__init__()
        self.norm = norm  # taken over: it lives on in here only (split_norm_affines works on fold_batchnorm's copy)
        self.weight, self.bias = norm.weight, norm.bias
        norm.weight, norm.bias = None, None  # the parameters live here now

    def __getattr__(self, name: str):
        # The norm's other attributes (eps, normalized_shape, num_groups...) read through: a parent module may
        # consult them, as nn.TransformerEncoderLayer does its norms' eps in every forward.
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ("weight", "bias"):  # this module's own, never the taken-over norm's (None there)
                raise
            return getattr(super().__getattr__("norm"), name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x)
        if isinstance(self.norm, nn.GroupNorm):  # per channel, the channels on axis 1
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return x * self.weight.view(shape) + (0 if self.bias is None else self.bias.view(shape))
        return x * self.weight + (0 if self.bias is None else self.bias)  # over the trailing normalised_shape


def split_norm_affines(model: nn.Module) -> nn.Module:
    """Replace (in place) every plain nn.GroupNorm and nn.LayerNorm with a scale and shift by NormThenAffine. A
    subclass may normalise along other axes in its own forward and is left as it is (see _unsplit_norms)."""
    for name, child in model.named_children():
        if type(child) in (nn.GroupNorm, nn.LayerNorm) and child.weight is not None:
            setattr(model, name, NormThenAffine(child))
        else:
            split_norm_affines(child)
    return model


def _unsplit_norms(model: nn.Module) -> list[str]:
    """NNCF operator types to leave in float: GroupNorm and LayerNorm where some module of those kinds still holds
    its scale vector (a subclass split_norm_affines left), which NNCF could not quantize."""
    left = any(isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and getattr(m, "weight", None) is not None
               for m in model.modules())
    return ["group_norm", "layer_norm"] if left else []


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    import torch.fx

    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    users: dict[str, int] = {}
    for node in graph.nodes:
        for arg in node.all_input_nodes:
            users[arg.name] = users.get(arg.name, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.modules.batchnorm._BatchNorm):
            continue
        src = node.args[0] if node.args else None
        if (getattr(src, "op", None) == "call_module" and isinstance(modules.get(src.target), _FOLDABLE)
                and users.get(src.name) == 1 and modules[node.target].track_running_stats):
            pairs.append((src.target, node.target))
    return pairs


def _sequential_pairs(model: nn.Module) -> list[tuple[str, str]]:
    pairs = []
    for name, module in model.named_modules():
        if isinstance(module, nn.Sequential):
            keys = list(module._modules)
            for a, b in zip(keys, keys[1:]):
                if isinstance(module._modules[a], _FOLDABLE) and isinstance(module._modules[b], nn.modules.batchnorm._BatchNorm):
                    prefix = f"{name}." if name else ""
                    pairs.append((prefix + a, prefix + b))
    return pairs


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


def count_batchnorm(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@dataclass
class QuantizeResult:
    model: nn.Module  # stripped: real Q/DQ ops, ready for ONNX export
    folded_fp32: nn.Module  # the BN-folded float model that was quantized
    scheme: str
    calibration: str
    calibration_samples: int
    qat_steps: int
    qat_losses: list[float]
    wall_s: float
    sensitivity: dict | None = None  # ranking, layers kept in float and the estimated drop (with probes)


def _advanced_parameters(bias_correction: bool):
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    # Activations per tensor: NNCF's CPU rules would quantize a depthwise convolution's input per channel, which
    # ONNX Runtime's integer convolution refuses at run time and TensorRT does not take.
    return AdvancedQuantizationParameters(weights_quantization_params=QuantizationParameters(per_channel=True),
                                          activations_quantization_params=QuantizationParameters(per_channel=False),
                                          disable_bias_correction=not bias_correction)


def force_signed(qmodel: nn.Module) -> int:
    """Make every unsigned symmetric quantizer signed, before QAT so fine-tuning adapts the scales.

    TensorRT takes only signed INT8 Q/DQ with zero point 0; NNCF picks uint8 after ReLU, and its
    signedness constraint conflicts with the generic hardware config, so it is set here instead.
    """
    from nncf.torch.quantization.layers import SymmetricQuantizer

    changed = 0
    for module in qmodel.modules():
        if isinstance(module, SymmetricQuantizer) and not module.signed:
            module.signed = True
            changed += 1
    return changed


def quantizer_parameters(qmodel: nn.Module, fixed: list[nn.Module] = ()) -> list[nn.Parameter]:
    """The trainable ranges (scales, or low and range) of every quantizer NNCF inserted, but the `fixed` ones."""
    from nncf.torch.quantization.layers import BaseQuantizer

    return [p for m in qmodel.modules() if isinstance(m, BaseQuantizer) and not any(m is f for f in fixed)
            for p in m.parameters() if p.requires_grad]


def input_quantizers(qmodel: nn.Module, example_input: torch.Tensor) -> list[nn.Module]:
    """The quantizers that read the model's input itself (or a view of it), found by one forward pass."""
    from nncf.torch.quantization.layers import BaseQuantizer

    x = example_input.clone()
    found: list[nn.Module] = []

    def seen(module, args):
        if args and isinstance(args[0], torch.Tensor) and args[0].data_ptr() == x.data_ptr() and module not in found:
            found.append(module)

    hooks = [m.register_forward_pre_hook(seen) for m in qmodel.modules() if isinstance(m, BaseQuantizer)]
    was_training = qmodel.training
    try:
        with torch.no_grad():
            qmodel.eval()(x)
    finally:
        qmodel.train(was_training)
        for h in hooks:
            h.remove()
    return found


def input_grid(low: float, high: float, signed: bool) -> float:
    """The symmetric quantizer's scale (its largest level) for inputs in [low, high]: the narrowest that holds the
    range, narrowed further until `low` (the black pixel, most of an image) falls on a level itself, so the
    commonest input value is read without rounding error. Nothing in the contract's range is clipped."""
    below, above = max(0.0, -low), max(0.0, high)
    if not signed or below == 0.0:
        return above  # zero, the lowest input, is a level of any symmetric grid
    top = max(above, below * 127 / 128)  # levels -128..127: the lowest reaches 128/127 of the scale
    steps = min(128, int(below * 127 / top))  # levels from 0 down to `low` at the narrowest step
    return below / steps * 127 if steps else top


def hold_input_range(qmodel: nn.Module, example_input: torch.Tensor, low: float, high: float) -> None:
    """Set the input's quantizers to [low, high], the range the input contract gives, on a grid that has `low`
    on a level (input_grid). Calibrated on synthetic samples instead, the range clipped the ink of real images
    where samples never reached it, and where they overshot it the coarser grid rounded every background pixel
    of a real image the same way, a bias the first layer sums over its whole window."""
    from nncf.torch.quantization.layers import AsymmetricQuantizer, SymmetricQuantizer

    with torch.no_grad():
        for q in input_quantizers(qmodel, example_input):
            if isinstance(q, SymmetricQuantizer):
                scale = torch.full_like(q.scale, input_grid(low, high, q.signed))
                q.scale = torch.nn.Parameter(scale, requires_grad=True)
            elif isinstance(q, AsymmetricQuantizer):
                q.input_low.fill_(low)
                q.input_range.fill_(high - low)


def calibrate(folded: nn.Module, calibration_batches: list[torch.Tensor], cfg: QuantizeConfig, scheme: str,
              ignored: list[str] | None = None, input_range: tuple[float, float] | None = None,
              bias_correction: bool = False) -> nn.Module:
    """NNCF's post-training quantization of the BN-folded model in `scheme`, the `ignored` layers left in float;
    with `input_range`, the input's quantizers hold that range (hold_input_range).

    NNCF's bias correction (on by default there) is off: fitted to synthetic samples, the shifted biases moved
    the INT8 student further from its FP32 self on every input measured, the real test images included."""
    import nncf

    n_calib = sum(len(b) for b in calibration_batches)
    # NNCF draws its own progress bars on stdout; the pipeline reports progress itself.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            qmodel = nncf.quantize(copy.deepcopy(folded), nncf.Dataset(calibration_batches),
                                   preset=nncf.QuantizationPreset.PERFORMANCE, subset_size=n_calib,
                                   advanced_parameters=_advanced_parameters(bias_correction),
                                   ignored_scope=nncf.IgnoredScope(names=ignored or [], types=_unsplit_norms(folded),
                                                                   validate=False))
        except Exception as exc:
            raise RunError(f"quantize: NNCF could not quantize the model: {str(exc).splitlines()[0][:200]}") from exc
    if scheme == "tensorrt":
        force_signed(qmodel)
    if input_range is not None:
        hold_input_range(qmodel, calibration_batches[0][:1], *input_range)
    return qmodel


def _sensitive_layers_in_float(qmodel: nn.Module, folded: nn.Module, calibration_batches: list[torch.Tensor],
                               cfg: QuantizeConfig, scheme: str, example_input: torch.Tensor,
                               probes: torch.Tensor, input_range: tuple[float, float] | None
                               ) -> tuple[nn.Module, dict]:
    """Rank the layers by sensitivity on `probes`; with `cfg.max_drop`, quantize again without the most
    sensitive ones. Returns the model to fine-tune and the sensitivity summary."""
    layers = find_layers(qmodel, folded, example_input)
    ranking = rank_layers(qmodel, layers, probes)
    kept: list[str] = []
    estimated = None
    if cfg.max_drop is not None:
        # TensorRT runs an INT8 layer whose output stays float; ONNX Runtime does not (see whole_units).
        expand = whole_units if scheme == "onnxruntime" else None
        kept, estimated = keep_in_float(qmodel, layers, ranking, probes, cfg.max_drop, expand)
        if kept:
            qmodel = calibrate(folded, calibration_batches, cfg, scheme, kept, input_range)
    summary = {"ranking": [s.to_json() for s in ranking], "max_drop": cfg.max_drop, "kept_float": kept,
               "estimated_drop_points": estimated}
    return qmodel, summary


def quantize(student: nn.Module, teacher: nn.Module, calibration_batches: list[torch.Tensor],
             qat_batch: Callable[[], torch.Tensor], cfg: QuantizeConfig, scheme: str, calibration: str,
             example_input: torch.Tensor, kd_loss: str = "l1", kd_temperature: float = 1.0,
             progress: Callable[[int], None] | None = None, probes: torch.Tensor | None = None,
             input_range: tuple[float, float] | None = None) -> QuantizeResult:
    """Quantize `student` for `scheme` on synthetic batches; fine-tune by KD from the teacher. With `probes`,
    rank the layers by sensitivity and keep the most sensitive in float as `cfg.max_drop` asks. With
    `input_range` (what the input contract lets real inputs span), the input's quantizers hold it and
    fine-tuning leaves them there: synthetic samples would pull them back in."""
    import nncf

    if scheme not in SUPPORTED_SCHEMES:
        raise UsageError(f"unknown INT8 scheme '{scheme}'; choose one of: {', '.join(SUPPORTED_SCHEMES)}")
    if cfg.max_drop is not None and probes is None:
        raise UsageError("quantize: max_drop needs synthetic probes to measure the layers' sensitivity")
    t0 = time.perf_counter()
    use_reference_quantizer()
    logging.getLogger("nncf").setLevel(logging.ERROR)
    folded = fold_batchnorm(student)
    qmodel = calibrate(folded, calibration_batches, cfg, scheme, input_range=input_range)
    sensitivity = None
    if probes is not None:
        qmodel, sensitivity = _sensitive_layers_in_float(qmodel, folded, calibration_batches, cfg, scheme,
                                                         example_input, probes, input_range)
    fixed = input_quantizers(qmodel, example_input) if input_range is not None else []
    # Quantization-aware fine-tuning: the teacher is the only label source. Only the quantizers' ranges move:
    # weights fitted further to synthetic samples drifted from what the student does on real inputs.
    losses: list[float] = []
    if cfg.qat_steps:
        qmodel.train()
        opt = torch.optim.Adam(quantizer_parameters(qmodel, fixed), lr=cfg.qat_lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.qat_steps)
        for step in range(cfg.qat_steps):
            x = qat_batch()
            with torch.no_grad():
                target = teacher(x)
            out = qmodel(x)
            loss = kd_divergence(kd_loss, out, target, kd_temperature)
            if not torch.isfinite(loss):
                raise RunError(f"quantize: QAT loss became {loss.item()} at step {step}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            if progress:
                progress(step + 1)
    qmodel.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stripped = nncf.strip(qmodel, example_input=example_input)
    return QuantizeResult(stripped, folded, scheme, calibration, sum(len(b) for b in calibration_batches),
                          cfg.qat_steps, losses, time.perf_counter() - t0, sensitivity)


def export_onnx(model: nn.Module, path: Path, example_input: torch.Tensor, opset: int = 17) -> Path:
    """ONNX with a dynamic batch axis; the legacy exporter keeps NNCF's quantizers as Q/DQ pairs."""
    model = model.eval().cpu()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, example_input.cpu(), str(tmp), dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, do_constant_folding=True)
        except Exception as exc:  # an operator the exporter has no ONNX form for, at this opset or any
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise RunError(f"export: the model could not be written as ONNX (opset {opset}): {first}") from exc
    return Path(path)


def qdq_summary(onnx_path: Path) -> dict:
    """How many quantizers the graph holds, and of which integer types (after tidy_qdq)."""
    import onnx

    model = onnx.load(str(onnx_path))
    types = {i.name: onnx.helper.tensor_dtype_to_np_dtype(i.data_type).name for i in model.graph.initializer}
    counts: dict[str, int] = {}
    n_q = n_dq = 0
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            n_q += node.op_type == "QuantizeLinear"
            n_dq += node.op_type == "DequantizeLinear"
            if node.op_type == "DequantizeLinear":
                name = types.get(node.input[2], "unknown") if len(node.input) > 2 else "uint8"
                counts[name] = counts.get(name, 0) + 1
    return {"quantize_linear": n_q, "dequantize_linear": n_dq, "zero_point_types": counts}
