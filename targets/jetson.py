"""Jetson target: TensorRT INT8 from the Q/DQ ONNX.

The engine is built on the Jetson (an engine is tied to its GPU and TensorRT version), so export
writes what the device needs to build it: `build_engine.sh` (trtexec) and `tensorrt_build.json`
(the settings per TensorRT version). Where TensorRT and a GPU are present, export builds it too.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import onnx

from core.bundle import Manifest, verify_bundle, write_manifest
from core.errors import UsageError
from core.fileio import sha256_file, write_json, write_text
from core.target import BenchmarkRequest, ExportContext, ExportedArtifact, RuntimeMissing
from targets.check import StaticCheckTarget
from targets.profiles import JetsonProfile, resolve_profile
from targets.tensorrt_engine import (
    SCRIPT_VERSIONS,
    BuildSettings,
    benchmark_engine,
    build_engine,
    build_script,
    build_settings,
    tensorrt_status,
    trtexec_command,
)

BUILD_SCRIPT = "build_engine.sh"
SETTINGS_FILE = "tensorrt_build.json"
ENGINE_SUFFIX = ".engine"

_said: set[str] = set()


def say_once(msg: str) -> None:
    """Tell the user about a missing runtime once per process, not once per model or batch."""
    if msg not in _said:
        _said.add(msg)
        print(msg, file=sys.stderr)


def input_has_dynamic_batch(onnx_path: Path, input_name: str | None = None) -> bool:
    model = onnx.load(str(onnx_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name in inits or (input_name and vi.name != input_name):
            continue
        dims = vi.type.tensor_type.shape.dim
        return bool(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0)
    return False


def _rel(bundle_dir: Path, path: Path) -> str:
    try:
        return Path(path).resolve().relative_to(Path(bundle_dir).resolve()).as_posix()
    except ValueError:
        raise UsageError(f"{path} is not inside the bundle {bundle_dir}") from None


def _static_shape(shape: list | tuple, batch: int) -> tuple[int, ...]:
    """The manifest's input shape (with batch, maybe symbolic) made static at `batch`."""
    dims = list(shape)
    if dims:
        dims[0] = batch
    if any(not isinstance(d, int) or d <= 0 for d in dims):
        raise UsageError(f"input shape {list(shape)} has dynamic dimensions beyond the batch; TensorRT engines here are static")
    return tuple(dims)


def engine_name(onnx_rel: str) -> str:
    return Path(onnx_rel).with_suffix(ENGINE_SUFFIX).name


def _installed_settings(profile: JetsonProfile, shape: tuple[int, ...], input_name: str, dynamic: bool) -> BuildSettings:
    import tensorrt as trt

    return build_settings(profile, trt.__version__, shape, input_name, dynamic)


class JetsonTarget(StaticCheckTarget):
    name = "jetson"
    scheme = "tensorrt"
    description = "NVIDIA Jetson: TensorRT INT8 engine from the Q/DQ ONNX, built on the device (trtexec script included)"

    def export(self, ctx: ExportContext) -> list[ExportedArtifact]:
        profile = resolve_profile(ctx.profile, "jetson")
        bundle = Path(ctx.bundle_dir)
        onnx_rel = _rel(bundle, ctx.int8_onnx)
        dynamic = input_has_dynamic_batch(ctx.int8_onnx, ctx.input_name)
        shape = (profile.batch, *ctx.input_shape)
        onnx_sha = sha256_file(ctx.int8_onnx)
        engine = engine_name(onnx_rel)

        per_version: dict[str, dict] = {}
        for major, version in SCRIPT_VERSIONS.items():
            try:
                s = build_settings(profile, version, shape, ctx.input_name, dynamic)
                per_version[str(major)] = {"settings": s.to_json(), "trtexec": trtexec_command(onnx_rel, engine, s)}
            except UsageError as exc:
                per_version[str(major)] = {"error": str(exc)}
        settings_path = write_json(bundle / SETTINGS_FILE, {
            "profile": profile.name,
            "onnx": onnx_rel,
            "onnx_sha256": onnx_sha,
            "engine": engine,
            "by_tensorrt_major": per_version,
        })
        script_path = write_text(bundle / BUILD_SCRIPT, build_script(onnx_rel, engine, onnx_sha, profile, shape, ctx.input_name, dynamic))
        os.chmod(script_path, 0o755)
        arts = [ExportedArtifact(script_path, "engine-build-script"), ExportedArtifact(settings_path, "tensorrt-build-settings")]

        ok, msg = tensorrt_status()
        if ok:
            s = _installed_settings(profile, shape, ctx.input_name, dynamic)
            build_engine(ctx.int8_onnx, bundle / engine, s)
            arts.append(ExportedArtifact(bundle / engine, "tensorrt-engine"))
        else:
            say_once(f"jetson: no engine built here ({msg}); run {BUILD_SCRIPT} or `pipeline build-engine BUNDLE` on the Jetson")
        return arts

    def build(self, bundle_dir: Path, profile: str | None = None) -> list[ExportedArtifact]:
        bundle = Path(bundle_dir)
        manifest: Manifest = verify_bundle(bundle)
        ok, msg = tensorrt_status()
        if not ok:
            raise RuntimeMissing(
                f"cannot build a TensorRT engine on this machine: {msg}. Copy the bundle to the Jetson and run "
                f"`pipeline build-engine BUNDLE` (or `bash {BUILD_SCRIPT}`) there"
            )
        prof = resolve_profile(profile, "jetson")
        art = manifest.artifact("student-int8-onnx")
        if art is None:
            raise UsageError(f"bundle {bundle} has no student-int8-onnx artifact to build an engine from")
        onnx_path = bundle / art.path
        name = manifest.input.get("name", "input")
        shape = _static_shape(manifest.input.get("shape", []), prof.batch)
        s = _installed_settings(prof, shape, name, input_has_dynamic_batch(onnx_path, name))
        engine = bundle / engine_name(art.path)
        info = build_engine(onnx_path, engine, s)
        manifest.add(bundle, engine, "tensorrt-engine")
        # record what was built (benchmark needs the DLA core); the file is re-hashed in the manifest
        settings_path = bundle / SETTINGS_FILE
        data = json.loads(settings_path.read_text(encoding="utf-8")) if settings_path.is_file() else {}
        data["built"] = info
        write_json(settings_path, data)
        manifest.add(bundle, settings_path, "tensorrt-build-settings")
        write_manifest(bundle, manifest)
        say_once(f"jetson: engine built in {info['build_s']} s with TensorRT {info['tensorrt_version']}: {engine}")
        return [ExportedArtifact(engine, "tensorrt-engine")]

    def benchmark(self, req: BenchmarkRequest) -> list[dict]:
        from targets.runners import onnx_rows

        bundle = Path(req.bundle_dir)
        manifest = verify_bundle(bundle)
        rows: list[dict] = []
        engine = manifest.artifact("tensorrt-engine")
        if engine is not None:
            ok, msg = tensorrt_status()
            if ok:
                dla_core = _engine_dla_core(bundle)
                for b in req.batches:
                    rows.append(benchmark_engine(bundle / engine.path, b, req.warmup, req.runs, req.duration_s, dla_core))
            else:
                say_once(f"jetson: skipping the TensorRT engine ({msg})")
        # Host CPU numbers always: they show the INT8 model runs, and compare FP32 with INT8.
        return rows + onnx_rows(bundle, manifest, [("student-fp32-onnx", "fp32 onnx (host cpu)"),
                                                   ("student-int8-onnx", "int8 onnx (host cpu)")], req)


def _engine_dla_core(bundle: Path) -> int | None:
    """The DLA core the engine was built for, from the settings export wrote (None: GPU engine)."""
    p = bundle / SETTINGS_FILE
    if not p.is_file():
        return None
    data = json.loads(p.read_text(encoding="utf-8"))
    built = data.get("built", {}).get("settings")
    if built:
        return built.get("dla_core") if built.get("use_dla") else None
    for entry in data.get("by_tensorrt_major", {}).values():
        s = entry.get("settings")
        if s and s.get("use_dla"):
            return s.get("dla_core")
    return None
