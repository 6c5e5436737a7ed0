"""Latency benchmark: (a) harness overhead vs a bare ONNX Runtime loop; (b) ResNet-18 FP32 vs NNCF
INT8 at batch 1, one thread, with the variants that explain the INT8 speed-up (or its absence).

Run from the project root:  python benchmarks/latency.py [--runs N] [--rounds R] [--out DIR]
Writes benchmarks/results/latency.json and prints its tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/models.py beside this file

import results  # noqa: E402
from models import fold_batchnorm, resnet18_with_stats  # noqa: E402

from targets.runners import bare_loop_ms, harness_overhead, input_feed, measure_onnx, session_options  # noqa: E402

console = Console(width=170, stderr=True)  # progress only: the tables go to stdout from the results JSON


# ---------- (a) harness overhead ----------

def _export(model: torch.nn.Module, x: torch.Tensor, path: Path, opset: int = 17) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, x, str(path), dynamo=False, opset_version=opset,
                          input_names=["input"], output_names=["logits"])
    return path


def tiny_model(path: Path) -> Path:
    """A model of a few microseconds, where per-call overhead is most visible."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).eval()
    return _export(m, torch.randn(1, 64), path)


def binding_vs_plain(model_path: Path, runs: int, rounds: int) -> tuple[float, float]:
    """Bare-loop mean with pre-bound IOBinding vs plain sess.run, interleaved; medians over rounds."""
    bound, plain = [], []
    for r in range(rounds):
        pair = [(bound, True), (plain, False)]
        for acc, iob in (pair if r % 2 == 0 else pair[::-1]):
            acc.append(bare_loop_ms(model_path, 1, 1, runs, iobinding=iob))
    return float(np.median(bound)), float(np.median(plain))


def overhead_table(models: dict[str, Path], runs: dict[str, int], rounds: int) -> dict:
    rows = []
    for name, path in models.items():
        res = harness_overhead(path, runs=runs[name], rounds=rounds)
        _, plain = binding_vs_plain(path, runs[name], rounds)
        rows.append([name, f"{runs[name]} x {rounds}", f"{res['harness_mean_ms']:.4f}", f"{res['bare_mean_ms']:.4f}",
                     f"{res['overhead_pct']:+.2f}%", f"{plain:.4f}"])
    return results.table(
        "(a) Harness vs bare ONNX Runtime loop (batch 1, 1 thread, interleaved rounds)",
        ["Model", "Runs x rounds", "Harness mean ms", "Bare loop mean ms", "Overhead", "Bare plain sess.run ms"], rows,
        notes="The harness times each pre-bound `run_with_iobinding` call with `perf_counter_ns`; the bare loop "
              "makes the same calls under one clock. Overhead compares the medians of the round means (target: "
              "under 3%). The last column is the bare loop with plain `sess.run`, which wraps inputs and allocates "
              "outputs on every call: why the harness binds them once.")


# ---------- (b) FP32 vs INT8 ----------

def use_reference_quantizer() -> None:
    """Keep NNCF from compiling its C++ quantizer extension (a minute, and it can time out)."""
    try:
        from stages.quantize.qat import use_reference_quantizer as stage_fn  # the stage's own switch, once written
    except (ImportError, AttributeError):
        stage_fn = None
    if stage_fn is not None:
        stage_fn()
        return
    from nncf.torch.quantization import extensions as ext
    from nncf.torch.quantization.reference import ReferenceBackendType, ReferenceQuantize

    ref = ReferenceQuantize(ReferenceBackendType.TORCH)

    class _Plain:
        Quantize_forward = staticmethod(ref.forward)
        Quantize_backward = staticmethod(ref.backward)

    ext.QuantizedFunctionsCPU._loaded_namespace = _Plain


class _Wrap(torch.nn.Module):
    # nncf.quantize wants a module with its own forward, not a bare nn.Sequential.
    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@dataclass
class Variant:
    name: str
    fold_bn: bool = True
    preset: str | None = None  # None = NNCF's default for the model
    per_channel: bool | None = None
    activations: str | None = None  # "symmetric" | "asymmetric" | None
    opset: int = 17
    graph_opt: str = "all"
    notes: str = ""
    extra: dict = field(default_factory=dict)


VARIANTS = [
    Variant("int8 default", notes="BN folded, NNCF defaults, opset 17, ORT ALL"),
    Variant("int8 no BN fold", fold_bn=False),
    Variant("int8 per-tensor w", per_channel=False),
    Variant("int8 preset MIXED", preset="mixed"),
    Variant("int8 sym activations", preset="mixed", activations="symmetric"),
    Variant("int8 opset 13", opset=13),
    Variant("int8 ORT EXTENDED", graph_opt="extended"),
]


def quantize_int8(model: torch.nn.Module, v: Variant, calib: list[torch.Tensor], path: Path) -> Path:
    import nncf
    from nncf.common.quantization.structs import QuantizationScheme
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    kwargs = {}
    if v.preset:
        kwargs["preset"] = nncf.QuantizationPreset(v.preset)
    adv = {}
    if v.per_channel is not None:
        adv["weights_quantization_params"] = QuantizationParameters(per_channel=v.per_channel)
    if v.activations:
        adv["activations_quantization_params"] = QuantizationParameters(mode=QuantizationScheme(v.activations))
    if adv:
        kwargs["advanced_parameters"] = AdvancedQuantizationParameters(**adv)
    x = calib[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = nncf.quantize(_Wrap(model), nncf.Dataset(calib), subset_size=len(calib), **kwargs)
        stripped = nncf.strip(q, example_input=x)
    return _export(stripped, x, path, v.opset)


def optimized_ops(model_path: Path, graph_opt: str, out: Path) -> Counter:
    """Op types in the graph ONNX Runtime actually runs (after its fusions), e.g. QLinearConv vs Conv."""
    so = session_options(1, graph_opt)
    so.optimized_model_filepath = str(out)
    ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    return Counter(n.op_type for n in onnx.load(str(out)).graph.node)


def profile_ops(model_path: Path, graph_opt: str, runs: int, prefix: Path) -> dict[str, float]:
    """Share of node time per op type from ORT's profiler, over `runs` inferences."""
    so = session_options(1, graph_opt)
    so.enable_profiling = True
    so.profile_file_prefix = str(prefix)
    sess = ort.InferenceSession(str(model_path), so, providers=["CPUExecutionProvider"])
    feed = input_feed(sess, 1)
    for _ in range(runs):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    per_op: Counter = Counter()
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1
    return {op: 100.0 * d / total for op, d in per_op.most_common()}


def interleaved(models: list[tuple[str, Path, str]], runs: int, rounds: int) -> dict[str, dict]:
    """Measure every model once per round, rotating the order; keep each model's median-p50 row."""
    rows: dict[str, list[dict]] = {name: [] for name, _, _ in models}
    for r in range(rounds):
        order = models[r % len(models):] + models[: r % len(models)]
        for name, path, opt in order:
            rows[name].append(measure_onnx(path, runs=runs, warmup=10, label=name, graph_optimization=opt))
    return {name: sorted(rs, key=lambda x: x["p50_ms"])[len(rs) // 2] for name, rs in rows.items()}


def latency_table(measured: list[tuple[str, Path, str]], rows: dict[str, dict], runs: int, rounds: int,
                  out: Path) -> dict:
    fp32_p50 = rows["fp32"]["p50_ms"]
    table_rows = []
    for name, path, opt in measured:
        r = rows[name]
        ops = optimized_ops(path, opt, out / f"{path.stem}.{opt}.optimized.onnx")
        prof = profile_ops(path, opt, 30, out / f"prof-{path.stem}")
        top = ", ".join(f"{op} {pct:.0f}%" for op, pct in list(prof.items())[:3])
        qdq = ops.get("QuantizeLinear", 0) + ops.get("DequantizeLinear", 0)
        table_rows.append([name, f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}",
                           f"{fp32_p50 / r['p50_ms']:.2f}x", f"{r['size_bytes'] / 2**20:.1f}", ops.get("QLinearConv", 0),
                           ops.get("Conv", 0) + ops.get("FusedConv", 0), qdq, top])
    speedup = fp32_p50 / rows["int8 default"]["p50_ms"]
    return results.table(
        f"(b) ResNet-18 3x32x32, batch 1, 1 thread, ORT CPU ({runs} runs x {rounds} rounds, median-p50 round)",
        ["Model", "p50 ms", "p90 ms", "p99 ms", "Speed-up vs FP32", "Size MB", "QLinearConv", "Conv", "Q/DQ left",
         "Top ops by time"], table_rows,
        notes=f"INT8 (default) vs FP32 at batch 1, 1 thread: {speedup:.2f}x ({'meets' if speedup >= 2 else 'misses'} "
              "the 2x target). Op counts are of the graph ONNX Runtime runs after its fusions; the op shares come "
              "from its profiler.")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=100, help="timed runs per measurement of ResNet-18")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement")
    ap.add_argument("--calib", type=int, default=32, help="calibration samples for NNCF")
    ap.add_argument("--out", type=Path, default=None, help="keep the ONNX files and ORT's profiles here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    ort.set_default_logger_severity(3)  # the "optimized model is hardware specific" warning is expected here
    out = args.out or Path(tempfile.mkdtemp(prefix="latency-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"files in {out}")

    # ResNet-18 FP32 (BN folded, which is also what ORT does to FP32 itself) and INT8 variants.
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    calib = [torch.randn(1, 3, 32, 32) for _ in range(args.calib)]
    fp32_path = _export(fold_batchnorm(resnet18_with_stats()), x, out / "resnet18-fp32.onnx")
    use_reference_quantizer()
    int8: dict[str, tuple[Variant, Path]] = {}
    for v in VARIANTS:
        t0 = time.perf_counter()
        model = resnet18_with_stats()
        model = fold_batchnorm(model) if v.fold_bn else model.eval()
        path = quantize_int8(model, v, calib, out / f"resnet18-{v.name.replace(' ', '-')}.onnx")
        int8[v.name] = (v, path)
        console.print(f"quantized {v.name!r} in {time.perf_counter() - t0:.1f} s")

    # The NNCF export keeps FP32 weights behind QuantizeLinear/DequantizeLinear, so the file is as big
    # as FP32; ORT's BASIC level constant-folds those into int8 initializers and keeps a portable QDQ
    # graph, so saving it gives the same model at about a quarter of the size.
    basic = out / "resnet18-int8-default-basic-saved.onnx"
    so = session_options(1, "basic")
    so.optimized_model_filepath = str(basic)
    ort.InferenceSession(str(int8["int8 default"][1]), so, providers=["CPUExecutionProvider"])
    int8["int8 ORT-BASIC-saved"] = (Variant("int8 ORT-BASIC-saved"), basic)

    # (a) harness overhead: a microsecond model (worst case for per-call overhead) and ResNet-18 INT8.
    ov_models = {"tiny MLP (64-64-10)": tiny_model(out / "tiny.onnx"), "resnet18 int8": int8["int8 default"][1]}
    overhead = overhead_table(ov_models, {"tiny MLP (64-64-10)": 5000, "resnet18 int8": args.runs}, max(args.rounds, 5))

    # (b) latency, all models interleaved so background load hits each alike.
    measured = [("fp32", fp32_path, "all")] + [(n, p, v.graph_opt) for n, (v, p) in int8.items()]
    rows = interleaved(measured, args.runs, args.rounds)
    latency = latency_table(measured, rows, args.runs, args.rounds, out)
    settings = {"runs": args.runs, "rounds": args.rounds, "calib": args.calib}
    results.show(results.write("latency", [overhead, latency], results.command_line(__file__, argv), settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
