"""TensorRT engines from the INT8 Q/DQ ONNX: build settings per TensorRT version, the build itself,
a trtexec script for the device, and engine latency.

TensorRT is imported inside functions only: this module loads (and its pure parts are tested)
on machines without TensorRT or a GPU. Engines are built on the device that runs them: a plan file
is tied to the GPU model and the TensorRT version.

Version rules, from NVIDIA's TensorRT docs (migration guides 8.x->10.x and 10.x->11.x, "Working with
DLA", "Strongly Typed Networks"):
- 10.x: networks are always explicit-batch (EXPLICIT_BATCH is deprecated and ignored, so we never
  set it); STRONGLY_TYPED is opt-in and takes precisions from the Q/DQ and tensor types, with no
  INT8/FP16 builder flags (they are refused in strongly typed mode).
- 11.x: every network is strongly typed (the flag is deprecated and ignored; EXPLICIT_BATCH and the
  INT8/FP16 builder flags are gone; trtexec dropped --int8/--fp16 and --stronglyTyped is a no-op).
- DLA: on Jetson Orin up to TensorRT 10.7 (JetPack 6 ships 10.3), absent in 11.0-11.4.0, back in
  11.4.1 on AGX Orin only (JetPack 7.2.2+), strongly typed. For DLA on 10.x we build weakly typed
  with INT8+FP16: the Q/DQ still fix the INT8 scales, and FP16 lets the layers between them run on
  the DLA (which has no FP32) instead of falling back to the GPU.
"""

from __future__ import annotations

import functools
import re
import shlex
import socket
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from core.errors import RunError, UsageError
from core.fileio import write_bytes
from core.target import RuntimeMissing
from targets.profiles import JetsonProfile

TRTEXEC_PATHS = ("/usr/src/tensorrt/bin/trtexec",)
SUPPORTED_MAJORS = (10, 11)
# The TensorRT each script branch is written for: JetPack 6.x ships 10.3; 11.4.1 brought DLA back.
SCRIPT_VERSIONS = {10: "10.3.0", 11: "11.4.1"}
_PARTIAL = "@PARTIAL@"


# ---- what this machine has ----------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def tensorrt_status() -> tuple[bool, str]:
    """(usable, message): whether TensorRT and a CUDA GPU are here; the message names what is missing."""
    try:
        import tensorrt as trt  # noqa: F401
    except ImportError:
        return False, "TensorRT is not installed (on a Jetson it comes with JetPack: python3-libnvinfer; elsewhere: pip install tensorrt)"
    gpu = _gpu_name()
    if gpu is None:
        return False, f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible"
    return True, f"TensorRT {trt.__version__} on {gpu}"


def _gpu_name() -> str | None:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    rt = _cudart()
    if rt is not None:
        err, n = rt.cudaGetDeviceCount()
        if int(err) == 0 and n > 0:
            err, prop = rt.cudaGetDeviceProperties(0)
            name = prop.name
            return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)
    return None


def _cudart():
    """cuda-python's runtime module (new and old import paths), or None."""
    try:
        from cuda.bindings import runtime as rt
    except ImportError:
        try:
            from cuda import cudart as rt
        except ImportError:
            return None
    return rt


# ---- build settings: pure -------------------------------------------------------------------

@dataclass(frozen=True)
class BuildSettings:
    profile: str
    trt_version: str
    trt_major: int
    input_name: str
    input_shape: tuple[int, ...]  # with batch; min = opt = max
    model_dynamic_batch: bool  # the ONNX input has a symbolic batch, so a shape profile is needed
    workspace_mib: int
    strongly_typed: bool
    network_flags: tuple[str, ...]  # NetworkDefinitionCreationFlag names to set
    builder_flags: tuple[str, ...]  # BuilderFlag names to set
    use_dla: bool
    dla_core: int | None
    gpu_fallback: bool
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict:
        d = asdict(self)
        for k in ("input_shape", "network_flags", "builder_flags", "notes"):
            d[k] = list(d[k])
        return d

    @staticmethod
    def from_json(d: dict) -> "BuildSettings":
        d = dict(d)
        for k in ("input_shape", "network_flags", "builder_flags", "notes"):
            d[k] = tuple(d.get(k, ()))
        return BuildSettings(**d)


def parse_version(v: str) -> tuple[int, int, int]:
    m = re.match(r"^\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(v))
    if not m:
        raise UsageError(f"cannot read a TensorRT version from '{v}'")
    return tuple(int(x or 0) for x in m.groups())  # type: ignore[return-value]


def _dla_supported(ver: tuple[int, int, int], profile: JetsonProfile) -> str | None:
    """None when DLA builds work on this TensorRT and device, else why not."""
    if ver[0] == 10:
        return None if ver[:2] <= (10, 7) else f"TensorRT {'.'.join(map(str, ver))} has no DLA support (10.7 was the last 10.x with DLA; JetPack 6 ships 10.3)"
    if ver < (11, 4, 1):
        return f"TensorRT {'.'.join(map(str, ver))} has no DLA support on Jetson (DLA returned in 11.4.1)"
    if not profile.name.startswith("agx-orin"):
        return f"TensorRT 11 supports DLA on Jetson AGX Orin only, not on {profile.name}"
    return None


def build_settings(
    profile: JetsonProfile,
    trt_version: str,
    input_shape_with_batch: tuple[int, ...] | list[int],
    input_name: str = "input",
    model_dynamic_batch: bool = True,
) -> BuildSettings:
    """Choose network/builder flags for `profile` under TensorRT `trt_version` (10.x or 11.x)."""
    if not isinstance(profile, JetsonProfile):
        raise UsageError(f"device profile '{getattr(profile, 'name', profile)}' is not a Jetson profile")
    ver = parse_version(trt_version)
    if ver[0] < 10:
        raise UsageError(
            f"TensorRT {trt_version} is too old: this pipeline builds strongly typed INT8 engines with "
            f"TensorRT 10 or 11 (JetPack 6 or later)"
        )
    shape = tuple(int(d) for d in input_shape_with_batch)
    if not shape or any(d <= 0 for d in shape):
        raise UsageError(f"TensorRT engines here are built for one static input shape; got {list(input_shape_with_batch)}")
    notes: list[str] = []
    if ver[0] > max(SUPPORTED_MAJORS):
        notes.append(f"TensorRT {ver[0]} is newer than this pipeline knows; using the 11.x rules")
    major = min(ver[0], max(SUPPORTED_MAJORS))

    if profile.use_dla:
        why = _dla_supported(ver, profile)
        if why:
            raise UsageError(f"{why}; pick a GPU profile (e.g. '{profile.name.removesuffix('-dla')}') or another TensorRT")
    if major == 10 and profile.use_dla:
        strongly_typed, network_flags = False, ()
        builder_flags = ("INT8", "FP16")
        notes.append("DLA on TensorRT 10: weakly typed INT8+FP16 so layers between Q/DQ pairs can stay on the DLA")
    elif major == 10:
        strongly_typed, network_flags, builder_flags = True, ("STRONGLY_TYPED",), ()
    else:  # 11: strongly typed always; no flag needed and no precision flags exist
        strongly_typed, network_flags, builder_flags = True, (), ()
    if profile.use_dla and profile.gpu_fallback:
        builder_flags += ("GPU_FALLBACK",)
    return BuildSettings(
        profile=profile.name,
        trt_version=".".join(map(str, ver)),
        trt_major=major,
        input_name=input_name,
        input_shape=shape,
        model_dynamic_batch=model_dynamic_batch,
        workspace_mib=profile.workspace_mib,
        strongly_typed=strongly_typed,
        network_flags=network_flags,
        builder_flags=builder_flags,
        use_dla=profile.use_dla,
        dla_core=profile.dla_core if profile.use_dla else None,
        gpu_fallback=profile.use_dla and profile.gpu_fallback,
        notes=tuple(notes),
    )


def trtexec_command(onnx_name: str, engine_name: str, settings: BuildSettings) -> list[str]:
    """The trtexec invocation (TensorRT 10/11) equivalent to `build_engine` with `settings`."""
    cmd = ["trtexec", f"--onnx={onnx_name}", f"--saveEngine={engine_name}"]
    if settings.strongly_typed and settings.trt_major == 10:
        cmd.append("--stronglyTyped")  # 11.x: always on, the flag is a no-op
    if "INT8" in settings.builder_flags:
        cmd.append("--int8")
    if "FP16" in settings.builder_flags:
        cmd.append("--fp16")
    cmd.append(f"--memPoolSize=workspace:{settings.workspace_mib}M")
    if settings.model_dynamic_batch:
        # trtexec refuses --shapes for a model whose inputs are all static
        cmd.append(f"--shapes={settings.input_name}:{'x'.join(map(str, settings.input_shape))}")
    if settings.use_dla:
        cmd.append(f"--useDLACore={settings.dla_core}")
        if settings.gpu_fallback:
            cmd.append("--allowGPUFallback")
    return cmd


def build_script(
    onnx_name: str,
    engine_name: str,
    onnx_sha256: str,
    profile: JetsonProfile,
    input_shape_with_batch: tuple[int, ...],
    input_name: str = "input",
    model_dynamic_batch: bool = True,
) -> str:
    """A bash script, run beside the bundle's ONNX on the device, that builds the engine with trtexec.

    It verifies the ONNX sha256 first, finds trtexec, picks the command for the installed TensorRT
    major version (override with TRT_MAJOR=10|11) and writes the engine atomically.
    """
    branches = []
    for major, version in SCRIPT_VERSIONS.items():
        try:
            s = build_settings(profile, version, input_shape_with_batch, input_name, model_dynamic_batch)
        except UsageError as exc:
            branches.append(f"  {major}) echo {shlex.quote(f'error: {exc}')} >&2; exit 2 ;;")
            continue
        cmd = trtexec_command(onnx_name, _PARTIAL, s)[1:]
        # quote every argument, except that the engine path stays a shell variable
        args = " ".join('--saveEngine="$PARTIAL"' if a == f"--saveEngine={_PARTIAL}" else shlex.quote(a) for a in cmd)
        branches.append(f"  {major}) ARGS=({args}) ;;")
    lines = [
        "#!/usr/bin/env bash",
        f"# Build the TensorRT engine for device profile '{profile.name}' on the Jetson itself:",
        "# an engine only runs on the GPU model and TensorRT version that built it.",
        "# Python alternative (same settings, plus latency): pipeline build-engine BUNDLE",
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        f"ONNX={shlex.quote(onnx_name)}",
        f"ENGINE={shlex.quote(engine_name)}",
        f"EXPECTED_SHA256={shlex.quote(onnx_sha256)}",
        'PARTIAL="$ENGINE.partial"',
        "",
        'TRTEXEC="${TRTEXEC:-}"',
        'if [ -z "$TRTEXEC" ]; then',
        *[f'  if [ -x {p} ]; then TRTEXEC={p}; fi' for p in TRTEXEC_PATHS],
        '  if [ -z "$TRTEXEC" ] && command -v trtexec >/dev/null 2>&1; then TRTEXEC="$(command -v trtexec)"; fi',
        "fi",
        'if [ -z "$TRTEXEC" ]; then',
        f'  echo "error: trtexec not found at {" or ".join(TRTEXEC_PATHS)} or on PATH (install TensorRT / JetPack, or set TRTEXEC=/path/to/trtexec)" >&2',
        "  exit 127",
        "fi",
        "",
        'if ! echo "$EXPECTED_SHA256  $ONNX" | sha256sum --check --status; then',
        '  echo "error: $ONNX does not match the sha256 in manifest.json ($EXPECTED_SHA256); refusing to build from a changed model" >&2',
        "  exit 1",
        "fi",
        "",
        'TRT_MAJOR="${TRT_MAJOR:-}"',
        'if [ -z "$TRT_MAJOR" ]; then',
        "  TRT_MAJOR=\"$(python3 -c 'import tensorrt; print(tensorrt.__version__.split(\".\")[0])' 2>/dev/null || true)\"",
        "fi",
        'if [ -z "$TRT_MAJOR" ]; then',
        "  # trtexec's banner reads [TensorRT v100300] for 10.3.0",
        '  V="$("$TRTEXEC" --help 2>&1 | sed -n \'s/.*TensorRT v\\([0-9][0-9]*\\).*/\\1/p\' | head -n 1 || true)"',
        '  if [ -n "$V" ]; then TRT_MAJOR=$((V / 10000)); fi',
        "fi",
        'case "$TRT_MAJOR" in',
        *branches,
        '  *) echo "error: could not find TensorRT 10 or 11 (found: \'${TRT_MAJOR:-none}\'); set TRT_MAJOR=10 or 11" >&2; exit 2 ;;',
        "esac",
        "",
        'echo "building $ENGINE with TensorRT $TRT_MAJOR: $TRTEXEC ${ARGS[*]}"',
        'rm -f "$PARTIAL"',
        'trap \'rm -f "$PARTIAL"\' EXIT',
        '"$TRTEXEC" "${ARGS[@]}"',
        'mv -f "$PARTIAL" "$ENGINE"',
        "trap - EXIT",
        'echo "engine written to $(pwd)/$ENGINE"',
        'echo "record it in the bundle and measure it with: pipeline build-engine BUNDLE (rebuilds with the Python API)"',
        "",
    ]
    return "\n".join(lines)


# ---- build and time (TensorRT needed) ------------------------------------------------------

def _require_tensorrt():
    ok, msg = tensorrt_status()
    if not ok:
        raise RuntimeMissing(msg)
    import tensorrt as trt

    return trt


def _parser_errors(parser) -> list[str]:
    out = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = _call(e, "node_name") or str(_call(e, "node"))
        op = _call(e, "node_operator") or "?"
        out.append(f"node '{node}' ({op}): {e.desc()}")
    return out


def _call(obj, name):
    f = getattr(obj, name, None)
    try:
        return f() if callable(f) else None
    except Exception:
        return None


def build_engine(onnx_path: str | Path, engine_path: str | Path, settings: BuildSettings) -> dict:
    """Build and write (atomically) a TensorRT engine from the Q/DQ ONNX with `settings`."""
    trt = _require_tensorrt()
    here = parse_version(trt.__version__)
    if min(here[0], max(SUPPORTED_MAJORS)) != settings.trt_major:
        raise UsageError(f"settings were made for TensorRT {settings.trt_version} but this machine has {trt.__version__}; recompute them")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    for name in settings.network_flags:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise RunError(f"TensorRT could not parse {Path(onnx_path).name}:\n  " + "\n  ".join(_parser_errors(parser)))

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_mib << 20)
    for name in settings.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if settings.use_dla:
        if builder.num_DLA_cores <= (settings.dla_core or 0):
            raise RuntimeMissing(f"profile {settings.profile} wants DLA core {settings.dla_core} but this device has {builder.num_DLA_cores} DLA cores")
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core

    dynamic = [network.get_input(i) for i in range(network.num_inputs) if any(d < 0 for d in network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for t in dynamic:
            if t.name != settings.input_name or len(t.shape) != len(settings.input_shape):
                raise UsageError(f"input '{t.name}' {tuple(t.shape)} is dynamic but settings fix '{settings.input_name}' {settings.input_shape}")
            profile.set_shape(t.name, settings.input_shape, settings.input_shape, settings.input_shape)  # static: min = opt = max
        config.add_optimization_profile(profile)

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    build_s = time.perf_counter() - t0
    if plan is None:
        raise RunError("TensorRT failed to build the engine (see the TensorRT log above)")
    data = bytes(plan)
    write_bytes(engine_path, data)
    return {
        "engine": str(engine_path),
        "bytes": len(data),
        "build_s": round(build_s, 2),
        "tensorrt_version": trt.__version__,
        "device": _gpu_name(),
        "settings": settings.to_json(),
    }


class _TorchCuda:
    """Device buffers, a stream and events through torch.cuda."""

    def __init__(self):
        import torch

        self.torch = torch
        self.stream = torch.cuda.Stream()
        self.keep = []

    def alloc(self, shape, np_dtype) -> int:
        import numpy as np

        t = self.torch.from_numpy(np.zeros(shape, dtype=np_dtype)).cuda()
        self.keep.append(t)
        return t.data_ptr()

    @property
    def handle(self) -> int:
        return self.stream.cuda_stream

    def timed(self, enqueue) -> float:
        start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
        start.record(self.stream)
        enqueue()
        end.record(self.stream)
        end.synchronize()
        return start.elapsed_time(end)


class _CudaPython:
    """The same through cuda-python's runtime API, for a Jetson without a CUDA torch."""

    def __init__(self, rt):
        self.rt = rt
        self.stream = self._ok(rt.cudaStreamCreate())
        self.keep = []

    @staticmethod
    def _ok(res):
        err, *rest = res if isinstance(res, tuple) else (res,)
        if int(err) != 0:
            raise RunError(f"CUDA error {err}")
        return rest[0] if len(rest) == 1 else rest

    def alloc(self, shape, np_dtype) -> int:
        import numpy as np

        nbytes = int(np.prod(shape)) * np.dtype(np_dtype).itemsize
        ptr = self._ok(self.rt.cudaMalloc(max(nbytes, 1)))
        self._ok(self.rt.cudaMemset(ptr, 0, max(nbytes, 1)))
        self.keep.append(ptr)
        return int(ptr)

    @property
    def handle(self) -> int:
        return int(self.stream)

    def timed(self, enqueue) -> float:
        rt = self.rt
        start, end = self._ok(rt.cudaEventCreate()), self._ok(rt.cudaEventCreate())
        self._ok(rt.cudaEventRecord(start, self.stream))
        enqueue()
        self._ok(rt.cudaEventRecord(end, self.stream))
        self._ok(rt.cudaEventSynchronize(end))
        ms = self._ok(rt.cudaEventElapsedTime(start, end))
        rt.cudaEventDestroy(start)
        rt.cudaEventDestroy(end)
        return float(ms)


def _cuda_backend():
    try:
        import torch

        if torch.cuda.is_available():
            return _TorchCuda()
    except ImportError:
        pass
    rt = _cudart()
    if rt is None:
        raise RuntimeMissing("timing a TensorRT engine needs torch with CUDA or cuda-python (pip install cuda-python)")
    return _CudaPython(rt)


def benchmark_engine(
    engine_path: str | Path,
    batch: int = 1,
    warmup: int = 10,
    runs: int | None = None,
    duration_s: float | None = None,
    dla_core: int | None = None,
) -> dict:
    """Latency of a TensorRT engine: host wall time per synchronous inference, and GPU time from CUDA events."""
    from targets.runners import latency_row, time_calls

    trt = _require_tensorrt()
    import numpy as np

    engine_path = Path(engine_path)
    if not engine_path.is_file():
        raise UsageError(f"engine not found: {engine_path}")
    logger = trt.Logger(trt.Logger.WARNING)
    runtime = trt.Runtime(logger)
    if dla_core is not None:
        runtime.DLA_core = dla_core
    engine = runtime.deserialize_cuda_engine(engine_path.read_bytes())
    if engine is None:
        raise RunError(f"TensorRT could not load {engine_path.name} (built by another TensorRT version or for another GPU?)")
    context = engine.create_execution_context()
    cuda = _cuda_backend()

    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    for n in inputs:
        shape = list(engine.get_tensor_shape(n))
        if shape and shape[0] < 0:
            shape[0] = batch
        elif shape and shape[0] != batch:
            raise UsageError(f"engine input '{n}' has a fixed batch of {shape[0]}; cannot time batch {batch}")
        context.set_input_shape(n, shape)
    for n in names:
        shape = tuple(context.get_tensor_shape(n))
        context.set_tensor_address(n, cuda.alloc(shape, trt.nptype(engine.get_tensor_dtype(n))))

    def enqueue():
        if not context.execute_async_v3(cuda.handle):
            raise RunError("TensorRT execute_async_v3 failed")

    wall, gpu = time_calls(lambda: cuda.timed(enqueue), runs, duration_s, warmup, keep=True)
    return latency_row("tensorrt", "dla" if dla_core is not None else "gpu", engine_path.name, batch, None, wall,
                       f"{socket.gethostname()}, {_gpu_name()}, TensorRT {trt.__version__}",
                       gpu_compute_ms=float(np.mean(gpu)))
