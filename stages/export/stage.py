"""Stage 3: a bundle for a target from the quantized run directory.

The target's artifacts, manifest.json with the sha256 of every artifact, a static check of the INT8
model, latency measured on this host and the report's content (accuracy where evaluation data exists).
"""

from __future__ import annotations

from pathlib import Path

from core import __version__
from core import workdir as wd
from core.bundle import Manifest, write_manifest
from core.seal import seal_manifest
from core.device import set_up
from core.errors import UsageError
from core.evaluation import eval_set, onnx_accuracy, torch_accuracy
from core.target import BenchmarkRequest, ExportContext, Target
from core.teacher import load_teacher
from core.ui import Console
from stages.export.decision import deploy_decision, manifest_entry


# What every bundle carries whatever its target, by the role the manifest gives it.
BASE_ROLES = [(wd.STUDENT, "student-checkpoint"), (wd.STUDENT_SPEC, "student-spec"), (wd.VAE_FILE, "vae"),
              (wd.VAE_SPEC, "vae-spec"), (wd.GENERATOR, "generator"), (wd.FP32_ONNX, "student-fp32-onnx"),
              (wd.INT8_ONNX, "student-int8-onnx")]


def stage_export(cfg, out: Path, console: Console, target: Target, parent: str | None = None,
                 benchmark_runs: int | None = None, version: int = 1) -> dict:
    """Stage 3 with the run's stored config `cfg` for `target`; returns the report's content."""
    run = wd.read_run(out)
    if run["stages"]["quantize"]["scheme"] != target.scheme:
        raise UsageError(f"{out} was quantized for '{run['config']['target']}', not '{target.name}'; "
                         f"run `pipeline quantize --target {target.name}` first")
    set_up(cfg)
    spec = run["task"]
    ctx = ExportContext(out, out / wd.FP32_ONNX, out / wd.INT8_ONNX, "input", tuple(spec["input_shape"]), cfg.export.profile)
    findings = target.check(ctx)
    for f in findings:
        console.warn(f"check: [{f.rule}] {f.op_type} {f.node}: {f.message}")
    manifest = _write_manifest(out, spec, target, target.export(ctx), parent, version)

    runs = benchmark_runs or cfg.export.benchmark_runs
    console.info(f"export: measuring latency on this host ({runs} runs per model)")
    latency = target.benchmark(BenchmarkRequest(out, batches=(1,), threads=(1,), runs=runs))
    accuracy = _accuracy(cfg, out, spec)
    decision = deploy_decision(target.name, latency, run["stages"]["quantize"], accuracy,
                               {a.path: a.bytes for a in manifest.artifacts})
    # Written after the latency it rests on; the manifest is not itself hashed, so its artifacts stay valid.
    manifest.extra["deploy"] = manifest_entry(decision)
    write_manifest(out, manifest)
    report = {
        "target": target.name,
        "created": manifest.created,
        "pipeline_version": __version__,
        "teacher": spec["source"],
        "source": wd.source(run),
        "deploy": decision,
        "accuracy": accuracy,
        # A distilled run has its distillation; a model quantized as it is, its samples' generator instead.
        **{key: run["stages"][stage] for key, stage in (("distillation", "distill"), ("samples", "samples"))
           if stage in run["stages"]},
        "quantization": run["stages"]["quantize"],
        "latency": latency,
        "artifacts": [{"path": a.path, "role": a.role, "bytes": a.bytes} for a in manifest.artifacts],
        "check": {"target": target.name, "findings": [f"[{f.rule}] {f.op_type} {f.node}: {f.message}" for f in findings]},
        "parent": parent,
    }
    return report


def _write_manifest(out: Path, spec: dict, target: Target, exported, parent: str | None, version: int) -> Manifest:
    manifest = Manifest(
        target=target.name,
        input={"name": "input", "shape": ["batch", *spec["input_shape"]], "dtype": "float32",
               "scale": spec["scale"], "mean": spec["mean"], "std": spec["std"]},
        num_classes=spec["num_classes"], classes=spec["classes"], parent=parent, version=version,
    )
    for name, role in BASE_ROLES:
        if (out / name).is_file():
            manifest.add(out, out / name, role)
    for art in exported:
        manifest.add(out, art.path, art.role)
    seal_manifest(out, manifest)  # with the health probes an install checks the deployed model against
    return manifest


def _accuracy(cfg, out: Path, spec: dict) -> dict:
    """Teacher and students on the run's evaluation data; all None when it has none."""
    data = eval_set(cfg.eval, spec)
    if data is None:
        return {"teacher": None, "student_fp32": None, "student_int8": None, "evaluated_on": None}
    x, y, what = data
    teacher, _ = load_teacher(cfg)
    return {"teacher": torch_accuracy(teacher, x, y), "student_fp32": onnx_accuracy(out / wd.FP32_ONNX, x, y),
            "student_int8": onnx_accuracy(out / wd.INT8_ONNX, x, y), "evaluated_on": what}
