"""Latency runners: one timing loop and one row format for every runtime (ONNX Runtime here, TensorRT in
tensorrt_engine.py), and the role x batch x threads sweep the targets share.

The row is the report contract (docs/bundle.md): runtime, provider, model, batch, threads, p50/p90/p99/mean
in ms, throughput, runs, measured_on, plus what a runtime adds (memory, size, GPU time). `bare_loop_ms` and
`harness_overhead` exist so the harness can prove it does not distort what it measures.
"""

from __future__ import annotations

import os
import platform
import resource
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from functools import partial
from typing import Callable

import numpy as np
import onnxruntime as ort

from core.errors import UsageError

DEFAULT_RUNS = 200
MIN_DURATION_RUNS = 10

_GRAPH_OPT = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

_ONNX_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def percentiles(samples_ms) -> dict:
    """p50/p90/p99 (numpy linear interpolation) and mean of latency samples in ms."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("percentiles: no samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99], method="linear")
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(a.mean())}


def time_calls(call: Callable[[], object], runs: int | None = None, duration_s: float | None = None,
               warmup: int = 10, keep: bool = False) -> tuple[list[float], list]:
    """Time `runs` calls (default 200), or as many as fit in `duration_s` (at least 10, and at least `runs`
    if both are given), after `warmup` untimed ones. Returns the wall times in ms and, with `keep`, what each
    call returned (a runtime's own device time)."""
    for _ in range(warmup):
        call()
    clock = time.perf_counter_ns
    samples_ns: list[int] = []
    returned: list = []
    append = samples_ns.append
    if duration_s is None:
        for _ in range(runs or DEFAULT_RUNS):
            t0 = clock()
            out = call()
            append(clock() - t0)
            if keep:
                returned.append(out)
    else:
        min_runs = max(MIN_DURATION_RUNS, runs or 0)
        deadline = clock() + int(duration_s * 1e9)
        while True:
            t0 = clock()
            out = call()
            t1 = clock()
            append(t1 - t0)
            if keep:
                returned.append(out)
            if t1 >= deadline and len(samples_ns) >= min_runs:
                break
    return [ns / 1e6 for ns in samples_ns], returned


def latency_row(runtime: str, provider: str, model: str, batch: int, threads: int | None, samples_ms: list[float],
                measured_on: str, **extra) -> dict:
    """The one row every runtime reports."""
    stats = percentiles(samples_ms)
    return {"runtime": runtime, "provider": provider, "model": model, "batch": batch, "threads": threads, **stats,
            "throughput_per_s": batch * 1000.0 / stats["mean_ms"] if stats["mean_ms"] > 0 else None,
            **extra, "runs": len(samples_ms), "measured_on": measured_on}


def onnx_rows(bundle: Path, manifest, roles: list[tuple[str, str]], req) -> list[dict]:
    """Host rows for each of the bundle's models named by `roles` ((role, label) pairs) that it carries,
    at every batch and thread count of the request (a core.target.BenchmarkRequest)."""
    rows = []
    for role, what in roles:
        art = manifest.artifact(role)
        if art is None:
            continue
        for b in req.batches:
            for t in req.threads:
                rows.append(measure_onnx(bundle / art.path, batch=b, threads=t, runs=req.runs,
                                         duration_s=req.duration_s, warmup=req.warmup,
                                         label=f"{Path(art.path).name}: {what}"))
    return rows


def session_options(threads: int = 1, graph_optimization: str = "all") -> ort.SessionOptions:
    """The one configuration every measurement uses, so harness and bare loop compare like for like."""
    if graph_optimization not in _GRAPH_OPT:
        raise UsageError(f"graph_optimization must be one of {sorted(_GRAPH_OPT)}, got {graph_optimization!r}")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = _GRAPH_OPT[graph_optimization]
    return so


def input_feed(sess: ort.InferenceSession, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs of each declared shape with the batch dim set to `batch`."""
    rng = np.random.default_rng(seed)
    feed = {}
    for inp in sess.get_inputs():
        shape = list(inp.shape)
        if shape:
            first = shape[0]
            if isinstance(first, int) and first != batch:
                raise UsageError(
                    f"model input '{inp.name}' has a fixed batch of {first}; cannot measure batch {batch} "
                    f"(export the model with a dynamic batch axis to measure other batch sizes)"
                )
            shape[0] = batch
        for i, d in enumerate(shape[1:], start=1):
            if not isinstance(d, int) or d < 0:
                raise UsageError(f"model input '{inp.name}' has a symbolic dimension {d!r} at axis {i}; only the batch axis may be dynamic")
        dtype = _ONNX_DTYPES.get(inp.type)
        if dtype is None:
            raise UsageError(f"model input '{inp.name}' has unsupported type {inp.type}")
        if np.issubdtype(dtype, np.floating):
            feed[inp.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype is np.bool_:
            feed[inp.name] = rng.integers(0, 2, shape).astype(np.bool_)
        else:
            feed[inp.name] = rng.integers(0, 10, shape).astype(dtype)
    return feed


def _current_rss_mb() -> float | None:
    """Current (not peak) resident set size; Linux only, None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


# The widest vector instructions a CPU offers, by its /proc/cpuinfo flag, widest first.
_VECTOR_ISA = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sve", "SVE"), ("asimd", "NEON"))


def describe_cpu(cpuinfo: str, fallback: str) -> str:
    """The model name in /proc/cpuinfo's text (`fallback` where it has none, as on many ARM kernels) and its widest
    vector instructions: a VM shows one name ("AMD EPYC") for hosts with and without AVX-512, which differ in pace
    and in the rounding of the kernels torch and ONNX Runtime pick, so a run repeats exactly only on the same kind."""
    name, flags = None, set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and name is None:
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    isa = next((label for flag, label in _VECTOR_ISA if flag in flags), None)
    return f"{name or fallback}, {isa}" if isa else (name or fallback)


def cpu_model() -> str:
    fallback = platform.processor() or platform.machine() or "unknown cpu"
    try:
        with open("/proc/cpuinfo") as f:
            return describe_cpu(f.read(), fallback)
    except OSError:
        return fallback


def measured_on() -> str:
    return f"host: {socket.gethostname()}, {cpu_model()}, onnxruntime {ort.__version__}"


def _make_session(model_path, threads, providers, provider_options, graph_optimization) -> ort.InferenceSession:
    if threads < 1:
        raise UsageError(f"threads must be >= 1, got {threads}")
    providers = list(providers or ["CPUExecutionProvider"])
    return ort.InferenceSession(
        str(model_path),
        sess_options=session_options(threads, graph_optimization),
        providers=providers,
        provider_options=provider_options,
    )


@dataclass
class _Bound:
    """A session with inputs and outputs bound once, so each timed call is only the inference."""

    sess: ort.InferenceSession
    binding: ort.IOBinding
    keep: list  # OrtValues the binding points at; held so they outlive the loop


def _bind(sess: ort.InferenceSession, feed: dict[str, np.ndarray]) -> _Bound:
    # One plain run learns the output shapes (they may be symbolic in the model) so outputs can be
    # preallocated; it also doubles as the first warm-up run.
    outs = sess.run(None, feed)
    binding = sess.io_binding()
    keep = []
    for name, arr in feed.items():
        v = ort.OrtValue.ortvalue_from_numpy(arr)
        binding.bind_ortvalue_input(name, v)
        keep.append(v)
    for meta, arr in zip(sess.get_outputs(), outs):
        v = ort.OrtValue.ortvalue_from_shape_and_type(list(arr.shape), arr.dtype, "cpu", 0)
        binding.bind_ortvalue_output(meta.name, v)
        keep.append(v)
    return _Bound(sess, binding, keep)


def measure_onnx(
    model_path: str | os.PathLike,
    batch: int = 1,
    threads: int = 1,
    runs: int | None = None,
    duration_s: float | None = None,
    warmup: int = 10,
    providers: list | None = None,
    provider_options: list | None = None,
    label: str | None = None,
    *,
    keep_samples: bool = False,
    graph_optimization: str = "all",
    seed: int = 0,
) -> dict:
    """Time `runs` inferences (default 200), or as many as fit in `duration_s` (at least 10 and at
    least `runs` if both are given), after `warmup` untimed ones. Returns one latency row."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise UsageError(f"model not found: {model_path}")
    if batch < 1:
        raise UsageError(f"batch must be >= 1, got {batch}")
    if runs is not None and runs < 1:
        raise UsageError(f"runs must be >= 1, got {runs}")
    if duration_s is not None and duration_s <= 0:
        raise UsageError(f"duration_s must be > 0, got {duration_s}")
    if warmup < 0:
        raise UsageError(f"warmup must be >= 0, got {warmup}")

    rss_before = _current_rss_mb()
    sess = _make_session(model_path, threads, providers, provider_options, graph_optimization)
    rss_after = _current_rss_mb()
    feed = input_feed(sess, batch, seed)
    bound = _bind(sess, feed)

    # Pre-bound run_with_iobinding rather than sess.run: sess.run builds a dict lookup, wraps the
    # numpy input and allocates and converts fresh output arrays on every call, while the binding reuses
    # the same input and preallocated output buffers, so the timed region is the inference and nothing else.
    run, io = bound.sess.run_with_iobinding, bound.binding
    samples_ms, _ = time_calls(partial(run, io), runs, duration_s, max(warmup - 1, 0))  # _bind ran once already
    row = latency_row("onnxruntime", sess.get_providers()[0], label or model_path.name, batch, threads, samples_ms,
                      measured_on(), peak_rss_mb=round(_peak_rss_mb(), 1),
                      session_mem_mb=(round(rss_after - rss_before, 1)
                                      if rss_before is not None and rss_after is not None else None),
                      size_bytes=model_path.stat().st_size)
    if keep_samples:
        row["samples_ms"] = samples_ms
    return row


def bare_loop_ms(model_path, batch: int = 1, threads: int = 1, runs: int = DEFAULT_RUNS, *, warmup: int = 10, iobinding: bool = True) -> float:
    """Mean ms per inference from the least code that does the same work: one clock around the loop."""
    sess = _make_session(model_path, threads, None, None, "all")
    feed = input_feed(sess, batch)
    # Two spelled-out loops, no wrapper function: a lambda per call would itself cost ~0.3 us.
    if iobinding:
        b = _bind(sess, feed)
        run, io = b.sess.run_with_iobinding, b.binding
        for _ in range(warmup):
            run(io)
        t0 = time.perf_counter_ns()
        for _ in range(runs):
            run(io)
    else:
        run = sess.run
        for _ in range(warmup):
            run(None, feed)
        t0 = time.perf_counter_ns()
        for _ in range(runs):
            run(None, feed)
    return (time.perf_counter_ns() - t0) / 1e6 / runs


def harness_overhead(model_path, runs: int = 200, rounds: int = 5, batch: int = 1, threads: int = 1) -> dict:
    """Interleave harness and bare loop for `rounds` rounds (alternating which goes first so drift
    and neighbours' load hit both alike); overhead_pct compares the medians of the per-round means."""
    if rounds < 1:
        raise UsageError(f"rounds must be >= 1, got {rounds}")
    harness, bare = [], []
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for which in order:
            if which == 0:
                harness.append(measure_onnx(model_path, batch=batch, threads=threads, runs=runs)["mean_ms"])
            else:
                bare.append(bare_loop_ms(model_path, batch, threads, runs))
    h, b = float(np.median(harness)), float(np.median(bare))
    pct = (h - b) / b * 100.0
    return {
        "model": Path(model_path).name,
        "runs": runs,
        "rounds": rounds,
        "harness_mean_ms": h,
        "bare_mean_ms": b,
        "overhead_pct": pct,
        "within_3pct": abs(pct) <= 3.0,
        "harness_round_means_ms": harness,
        "bare_round_means_ms": bare,
    }
