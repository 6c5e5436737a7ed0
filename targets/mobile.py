"""Mobile target: ONNX Runtime on a phone. `.ort` models plus execution-provider settings.

The `.ort` conversion uses the Fixed optimization style: the default Runtime style fails on NNCF
Q/DQ models, and Fixed bakes the QDQ -> QLinear* fusions into the file, so a minimal ORT build
on the phone does no graph work at load. `--target_platform arm` keeps x86-only layouts out.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from core.bundle import verify_bundle
from core.errors import RunError
from core.fileio import write_bytes, write_json, write_text
from core.target import BenchmarkRequest, ExportContext, ExportedArtifact
from targets.check import StaticCheckTarget
from targets.profiles import MobileProfile, resolve_profile

SESSION_FILE = "ort_session.json"
README = "MOBILE.md"
OPS_CONFIG = "required_operators.config"


def convert_to_ort(models: list[Path], out_dir: Path) -> dict[Path, Path]:
    """Convert ONNX files to `.ort` (Fixed style, ARM) in a scratch copy; return source -> .ort bytes' new path."""
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for m in models:
            shutil.copyfile(m, work / m.name)
        cmd = [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(work),
               "--optimization_style", "Fixed", "--target_platform", "arm"]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
            raise RunError("ONNX -> .ort conversion failed:\n  " + "\n  ".join(tail))
        out: dict[Path, Path] = {}
        for m in models:
            ort_file = work / m.with_suffix(".ort").name
            if not ort_file.is_file():
                raise RunError(f"ONNX -> .ort conversion wrote no {ort_file.name}")
            out[m] = write_bytes(out_dir / ort_file.name, ort_file.read_bytes())
        if (work / OPS_CONFIG).is_file():
            out[Path(OPS_CONFIG)] = write_bytes(out_dir / OPS_CONFIG, (work / OPS_CONFIG).read_bytes())
        return out


def session_config(profile: MobileProfile, int8_ort: str, fp32_ort: str, input_name: str, input_shape: list[int]) -> dict:
    """Per execution provider, the session settings ONNX Runtime's docs recommend for a phone."""
    threads = profile.threads
    providers = {
        # XNNPACK EP docs: XNNPACK has its own thread pool; give it the threads, keep ORT's intra-op
        # pool at 1 and stop it spinning so the two pools do not contend.
        "XNNPACK": {
            "model": int8_ort,
            "provider_options": {"intra_op_num_threads": str(threads)},
            "session_options": {"intra_op_num_threads": 1, "config_entries": {"session.intra_op.allow_spinning": "0"}},
        },
        # NNAPI EP docs: flags off keeps INT8 exact (USE_FP16 would relax FP32 ops to FP16), NCHW is
        # slower on most drivers, and CPU_DISABLED off lets ORT's CPU EP run what NNAPI cannot.
        "NNAPI": {
            "model": int8_ort,
            "flags": [],
            "flags_off": ["NNAPI_FLAG_USE_FP16", "NNAPI_FLAG_USE_NCHW", "NNAPI_FLAG_CPU_DISABLED", "NNAPI_FLAG_CPU_ONLY"],
            "session_options": {"intra_op_num_threads": threads},
        },
        # CoreML EP docs: the ML Program format on all compute units (Neural Engine, GPU, CPU);
        # CoreML does not take ORT's fused QLinear* ops, so the FP32 model is the one to give it.
        "CoreML": {
            "model": fp32_ort,
            "provider_options": {"ModelFormat": "MLProgram", "MLComputeUnits": "ALL", "RequireStaticInputShapes": "1"},
            "session_options": {"intra_op_num_threads": threads},
        },
        "CPU": {"model": int8_ort, "session_options": {"intra_op_num_threads": threads}},
    }
    return {
        "profile": profile.name,
        "input": {"name": input_name, "shape": input_shape},
        "models": {"int8": int8_ort, "fp32": fp32_ort},
        "execution_providers": [{"name": n, **providers[n]} for n in profile.execution_providers if n in providers],
    }


def readme(cfg: dict) -> str:
    eps = {e["name"]: e for e in cfg["execution_providers"]}
    xnn = eps.get("XNNPACK", {}).get("provider_options", {}).get("intra_op_num_threads", "4")
    int8, fp32 = cfg["models"]["int8"], cfg["models"]["fp32"]
    return f"""# Running the student on a phone with ONNX Runtime

Profile `{cfg['profile']}`. Models: `{int8}` (INT8, Q/DQ fused to integer kernels) and `{fp32}` (FP32).
They are ORT-format files (Fixed optimization style) for the `onnxruntime-android` / `onnxruntime-objc`
packages or a minimal build made with `{OPS_CONFIG}`. Input `{cfg['input']['name']}`, shape
`{cfg['input']['shape']}`, float32. Settings per execution provider are in `{SESSION_FILE}`.

## Android (Kotlin), XNNPACK

```kotlin
import ai.onnxruntime.*

val env = OrtEnvironment.getEnvironment()
val options = OrtSession.SessionOptions().apply {{
    setIntraOpNumThreads(1)                                   // XNNPACK runs its own pool
    addConfigEntry("session.intra_op.allow_spinning", "0")
    addXnnpack(mapOf("intra_op_num_threads" to "{xnn}"))
}}
val session = env.createSession(modelBytes /* {int8} */, options)
```

NNAPI instead: `addNnapi(java.util.EnumSet.noneOf(NNAPIFlags::class.java))` (no FP16, CPU fallback on).

## iOS (Swift), CoreML or XNNPACK

```swift
import onnxruntime_objc

let env = try ORTEnv(loggingLevel: .warning)
let options = try ORTSessionOptions()
try options.appendCoreMLExecutionProvider(withOptionsV2: [
    "ModelFormat": "MLProgram", "MLComputeUnits": "ALL", "RequireStaticInputShapes": "1",
])
let session = try ORTSession(env: env, modelPath: "{fp32}", sessionOptions: options)

// XNNPACK with the INT8 model:
let xnn = ORTXnnpackExecutionProviderOptions()
xnn.intra_op_num_threads = {xnn}
let cpuOptions = try ORTSessionOptions()
try cpuOptions.setIntraOpNumberOfThreads(1)
try cpuOptions.addConfigEntry(withKey: "session.intra_op.allow_spinning", value: "0")
try cpuOptions.appendXnnpackExecutionProvider(with: xnn)
let int8Session = try ORTSession(env: env, modelPath: "{int8}", sessionOptions: cpuOptions)
```
"""


class MobileTarget(StaticCheckTarget):
    name = "mobile"
    scheme = "onnxruntime"
    description = "Phones: ONNX Runtime .ort models with XNNPACK / NNAPI / CoreML session settings"

    def export(self, ctx: ExportContext) -> list[ExportedArtifact]:
        import onnxruntime as ort

        profile = resolve_profile(ctx.profile, "mobile")
        bundle = Path(ctx.bundle_dir)
        int8, fp32 = Path(ctx.int8_onnx), Path(ctx.fp32_onnx)
        if int8.name == fp32.name:
            raise RunError(f"FP32 and INT8 ONNX share the file name {int8.name}; their .ort files would collide")
        converted = convert_to_ort([int8, fp32], bundle)
        for src in (int8, fp32):  # refuse to ship an .ort that ONNX Runtime cannot load
            ort.InferenceSession(str(converted[src]), providers=["CPUExecutionProvider"])
        cfg = session_config(profile, converted[int8].name, converted[fp32].name, ctx.input_name,
                             [profile.batch, *ctx.input_shape])
        arts = [
            ExportedArtifact(converted[int8], "ort-model"),
            ExportedArtifact(converted[fp32], "ort-model-fp32"),
            ExportedArtifact(write_json(bundle / SESSION_FILE, cfg), "ort-session-config"),
            ExportedArtifact(write_text(bundle / README, readme(cfg)), "mobile-readme"),
        ]
        if Path(OPS_CONFIG) in converted:
            arts.append(ExportedArtifact(converted[Path(OPS_CONFIG)], "ort-required-operators"))
        return arts

    def build(self, bundle_dir: Path, profile: str | None = None) -> list[ExportedArtifact]:
        verify_bundle(bundle_dir)
        return []  # nothing to build on the device: the .ort files load as they are

    def benchmark(self, req: BenchmarkRequest) -> list[dict]:
        from targets.runners import onnx_rows

        bundle = Path(req.bundle_dir)
        roles = [("student-fp32-onnx", "fp32 onnx"), ("student-int8-onnx", "int8 onnx"),
                 ("ort-model-fp32", "fp32 .ort"), ("ort-model", "int8 .ort")]
        return onnx_rows(bundle, verify_bundle(bundle), [(role, f"{what} (host cpu)") for role, what in roles], req)
