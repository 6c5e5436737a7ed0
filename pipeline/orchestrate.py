"""The three stages and their chaining. Each stage reads and writes one output directory.

distill  -> student.safetensors (+ .json spec), vae.safetensors (+ .json), generator.safetensors, history
quantize -> student_fp32.onnx, student_int8.onnx (Q/DQ), quantization summary
export   -> target artifacts, manifest.json with sha256 of every artifact, latency, report.{json,md,html}
"""

from __future__ import annotations

import copy
import json
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import torch

from pipeline import __version__
from pipeline.bundle import MANIFEST, Manifest
from pipeline.config import RunConfig, to_dict
from pipeline.errors import RunError, UsageError
from pipeline.fileio import write_json
from pipeline import workdir as wd
from pipeline.workdir import prepare_out_dir, resume_config  # noqa: F401  (part of this module's interface)
from pipeline.teacher import TaskSpec, build_from_factory, has_batchnorm, load_teacher, load_weights
from pipeline.ui import Console
from pipeline.world import World, world_from_env

# ---- set-up ---------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU is visible to torch on this machine; use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def set_up(cfg: RunConfig) -> torch.device:
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    return resolve_device(cfg.device)


def task_dict(spec: TaskSpec) -> dict:
    return asdict(spec) | {"input_shape": list(spec.input_shape)}


def student_for(cfg: RunConfig, teacher: torch.nn.Module, spec: TaskSpec) -> tuple[torch.nn.Module, dict]:
    from stages.distill.networks import build_student, param_count, student_spec

    if cfg.student.arch == "auto":
        s = student_spec(spec.input_shape, spec.num_classes, param_count(teacher), cfg.student.ratio)
        return build_student(s), s
    model = build_from_factory(cfg.student.arch, cfg.config_dir, what="student factory")
    if cfg.student.weights:
        from pipeline.config import resolve_path

        load_weights(model, resolve_path(cfg, cfg.student.weights), what="student")
    return model, {"family": "factory", "factory": cfg.student.arch, "config_dir": cfg.config_dir}


def rebuild_student(spec: dict) -> torch.nn.Module:
    from stages.distill.networks import build_student

    if spec.get("family") == "factory":
        return build_from_factory(spec["factory"], spec.get("config_dir"), what="student factory")
    return build_student(spec)


# ---- stage 1 --------------------------------------------------------------------------------------


def stage_distill(cfg: RunConfig, out: Path, resume: bool, console: Console, memory_factory=None,
                  student_from: tuple[dict, Path] | None = None) -> dict | None:
    """Stage 1. For an update, `student_from` is (spec, weights) of the deployed student and
    `memory_factory(teacher, device)` rebuilds the shipped VAE memory around the new teacher.
    Under torchrun every process trains; rank 0 writes and gets the summary, the others get None."""
    from stages.distill import parallel

    world = world_from_env()
    with parallel.process_group(world, set_up(cfg)) as device:
        return _distill_in_group(cfg, out, resume, console, memory_factory, student_from, world, device)


def _distill_in_group(cfg: RunConfig, out: Path, resume: bool, console: Console, memory_factory,
                      student_from: tuple[dict, Path] | None, world: World, device: torch.device) -> dict | None:
    from pipeline.evaluation import check_compatible, evaluator
    from stages.distill import parallel
    from stages.distill.engine import distill
    from stages.distill.networks import param_count

    teacher, spec = load_teacher(cfg)
    check_compatible(cfg.eval, spec.input_shape, spec.num_classes, spec)
    if cfg.distill.w_bn and not has_batchnorm(teacher):
        console.warn("teacher has no BatchNorm layers: the BN-statistics term is dropped")
    if cfg.distill.batch_size < world.size:
        raise UsageError(f"distill.batch_size {cfg.distill.batch_size} is smaller than the {world.size} processes sharing it")
    if student_from is not None:
        s_spec, weights = student_from
        student = wd.load_module(rebuild_student(s_spec), weights)
    else:
        student, s_spec = student_for(cfg, teacher, spec)
    memory = memory_factory(teacher, device) if memory_factory is not None else None
    run = {"pipeline_version": __version__, "config": to_dict(cfg), "task": task_dict(spec), "stages": {}}
    finished = None
    if world.is_main:
        if resume and (out / wd.RUN_FILE).is_file():
            run = wd.read_run(out)
            finished = run.get("stages", {}).get("distill")
        if finished is None:
            wd.write_run(out, run)
    finished = parallel.broadcast(finished, world)
    if finished is not None:
        console.info("distill: already finished in this directory, skipping")
        return finished if world.is_main else None

    evaluate = evaluator(cfg.eval, spec) if world.is_main else None
    across = f", {world.size} processes" if world.distributed else ""
    console.info(f"distill: {spec.source} -> student with {param_count(student):,} parameters "
                 f"(teacher {param_count(teacher):,}), replay={cfg.distill.replay}, device={device}{across}")
    with console.progress("distill", cfg.distill.iterations) as advance:
        result = distill(cfg.distill, teacher, student, spec.input_shape, out / "distill", device, seed=cfg.seed,
                         evaluate=evaluate, resume=resume, progress=lambda step, row: advance(step, row),
                         memory=memory, world=world)
    if not world.is_main:
        return None
    wd.save_module(result.student, out / wd.STUDENT)
    write_json(out / wd.STUDENT_SPEC, s_spec)
    wd.save_module(result.generator, out / wd.GENERATOR)
    if result.vae is not None:
        wd.save_module(result.vae, out / wd.VAE_FILE)
        write_json(out / wd.VAE_SPEC, {"input_shape": list(spec.input_shape), "latent_dim": result.vae.latent_dim,
                                       "width": result.vae.width})
    summary = {
        "replay": cfg.distill.replay,
        "replay_memory_bytes": result.memory.nbytes(),
        "steps": result.iterations,
        "wall_s": round(result.wall_s, 2),
        "history": result.history,
        "student_params": param_count(result.student),
        "teacher_params": param_count(teacher),
        "resumed_from": result.resumed_from,
        "device": str(device),
        "processes": world.size,
    }
    run["stages"]["distill"] = summary
    wd.write_run(out, run)
    ckpt = out / "distill" / "checkpoint.pt"
    ckpt.unlink(missing_ok=True)  # the finished stage's outputs supersede it
    return summary


# ---- stage 2 --------------------------------------------------------------------------------------


def _load_stage_models(out: Path, run: dict, cfg: RunConfig, device: torch.device):
    from stages.distill.networks import VAE, build_generator

    teacher, spec = load_teacher(cfg)
    teacher.to(device)
    student = wd.load_module(rebuild_student(json.loads((out / wd.STUDENT_SPEC).read_text())), out / wd.STUDENT).to(device).eval()
    generator = build_generator(cfg.distill.latent_dim, spec.input_shape, width=cfg.distill.generator_width)
    generator = wd.load_module(generator, out / wd.GENERATOR).to(device).eval()
    vae = None
    if (out / wd.VAE_FILE).is_file():
        vspec = json.loads((out / wd.VAE_SPEC).read_text())
        vae = VAE(tuple(vspec["input_shape"]), vspec["latent_dim"], width=vspec.get("width", 64))
        vae = wd.load_module(vae, out / wd.VAE_FILE).to(device).eval()
    return teacher, spec, student, generator, vae


def synthetic_sources(cfg: RunConfig, teacher, generator, vae, shape, device):
    """Callables returning batches of synthetic inputs: the only data stage 2 ever sees."""
    from stages.distill.engine import vae_memory

    # The run's own VAE settings (class balancing on or off) decide how calibration samples are drawn too
    memory = vae_memory(cfg.distill, vae, teacher, trained=True) if vae is not None else None

    def from_generator(n: int) -> torch.Tensor:
        with torch.no_grad():
            return generator(torch.randn(n, cfg.distill.latent_dim, device=device))

    def from_vae(n: int) -> torch.Tensor:
        return memory.sample(n) if memory is not None else from_generator(n)

    def from_noise(n: int) -> torch.Tensor:
        return torch.randn(n, *shape, device=device)

    return {"vae": from_vae, "generator": from_generator, "noise": from_noise}, memory is not None


def stage_quantize(out: Path, console: Console, target: str | None = None) -> dict:
    from stages.distill.probes import synthesize_probes
    from stages.onnx_tidy import tidy_qdq
    from stages.quantize import SCHEMES, export_onnx, qdq_summary, quantize

    run = wd.read_run(out)
    wd.require(out, run, "distill")
    cfg = wd.config_from_dict(run["config"])
    if target is not None:
        cfg.target = target
        run["config"]["target"] = target
    device = set_up(cfg)
    torch.manual_seed(cfg.seed + 1)
    teacher, spec, student, generator, vae = _load_stage_models(out, run, cfg, device)
    sources, has_vae = synthetic_sources(cfg, teacher, generator, vae, spec.input_shape, device)
    calibration = cfg.quantize.calibration
    if calibration == "vae" and not has_vae:
        console.warn(f"quantize: no VAE (replay mode '{cfg.distill.replay}'), calibrating on generator samples")
        calibration = "generator"
    q = cfg.quantize
    batches = [sources[calibration](min(q.qat_batch, q.calibration_samples - i)).cpu()
               for i in range(0, q.calibration_samples, q.qat_batch)]

    def qat_batch() -> torch.Tensor:
        # KD on a mix of replayed memories and fresh generator samples, as in distillation.
        half = q.qat_batch // 2
        return torch.cat([sources["vae"](half), sources["generator"](q.qat_batch - half)]).cpu()

    example = torch.randn(1, *spec.input_shape)
    scheme = SCHEMES[cfg.target]
    # QAT and export run on the CPU (the NNCF path this project verifies); a copy keeps the synthetic
    # sources' teacher on `device` (Module.cpu() moves in place).
    teacher_cpu = copy.deepcopy(teacher).cpu()
    with console.progress("quantize (QAT)", q.qat_steps) as advance:
        result = quantize(student.cpu(), teacher_cpu, batches, qat_batch, q, scheme, calibration, example,
                          kd_loss=cfg.distill.kd_loss, progress=lambda step: advance(step, {}))
    fp32_path = export_onnx(result.folded_fp32, out / wd.FP32_ONNX, example, cfg.export.opset)
    int8_path = export_onnx(result.model, out / wd.INT8_ONNX, example, cfg.export.opset)
    tidy = tidy_qdq(int8_path)

    # Data-free check of what quantization cost: agreement on teacher-derived probes.
    from pipeline.evaluation import onnx_predict

    probes, labels = synthesize_probes(teacher_cpu, spec.input_shape, spec.num_classes, max(8, cfg.distill.probe_per_class),
                                       seed=cfg.seed + 777)
    p_fp32 = onnx_predict(fp32_path, probes.numpy()).argmax(1)
    p_int8 = onnx_predict(int8_path, probes.numpy()).argmax(1)
    with torch.no_grad():
        p_torch_q = result.model(probes).argmax(1).numpy()
    summary = {
        "scheme": scheme,
        "calibration_source": calibration,
        "calibration_samples": result.calibration_samples,
        "qat_steps": result.qat_steps,
        "qat_final_loss": result.qat_losses[-1] if result.qat_losses else None,
        "num_quantizers": qdq_summary(int8_path)["dequantize_linear"],
        "qdq": qdq_summary(int8_path),
        "tidy": tidy,
        "probe_samples": int(len(labels)),
        "teacher_agreement_fp32": float((p_fp32 == labels.numpy()).mean()),
        "teacher_agreement_int8": float((p_int8 == labels.numpy()).mean()),
        "int8_fp32_agreement": float((p_int8 == p_fp32).mean()),
        "onnx_torch_int8_agreement": float((p_int8 == p_torch_q).mean()),
        "wall_s": round(result.wall_s, 2),
    }
    run["stages"]["quantize"] = summary
    run["stages"].pop("export", None)
    wd.write_run(out, run)
    return summary


# ---- stage 3 --------------------------------------------------------------------------------------

BASE_ROLES = [(wd.STUDENT, "student-checkpoint"), (wd.STUDENT_SPEC, "student-spec"), (wd.VAE_FILE, "vae"),
              (wd.VAE_SPEC, "vae-spec"), (wd.GENERATOR, "generator"), (wd.FP32_ONNX, "student-fp32-onnx"),
              (wd.INT8_ONNX, "student-int8-onnx")]


def stage_export(out: Path, console: Console, target_name: str | None = None, parent: str | None = None,
                 benchmark_runs: int | None = None, version: int = 1) -> dict:
    from pipeline.evaluation import eval_set, onnx_accuracy, torch_accuracy
    from pipeline.report import write_reports
    from pipeline.trust.seal import seal_manifest
    from targets.base import BenchmarkRequest, ExportContext
    from targets.registry import get_target

    run = wd.read_run(out)
    wd.require(out, run, "quantize")
    cfg = wd.config_from_dict(run["config"])
    target_name = target_name or cfg.target
    if run["stages"]["quantize"]["scheme"] != {"jetson": "tensorrt", "mobile": "onnxruntime"}[target_name]:
        raise UsageError(f"{out} was quantized for '{cfg.target}', not '{target_name}'; run `pipeline quantize --target {target_name}` first")
    target = get_target(target_name)
    set_up(cfg)
    spec = run["task"]
    ctx = ExportContext(out, out / wd.FP32_ONNX, out / wd.INT8_ONNX, "input", tuple(spec["input_shape"]), cfg.export.profile)
    findings = target.check(ctx)
    for f in findings:
        console.warn(f"check: [{f.rule}] {f.op_type} {f.node}: {f.message}")
    exported = target.export(ctx)

    manifest = Manifest(
        target=target_name,
        input={"name": "input", "shape": ["batch", *spec["input_shape"]], "dtype": "float32",
               "scale": spec["scale"], "mean": spec["mean"], "std": spec["std"]},
        num_classes=spec["num_classes"], classes=spec["classes"], parent=parent,
        version=version,
    )
    for name, role in BASE_ROLES:
        if (out / name).is_file():
            manifest.add(out, out / name, role)
    for art in exported:
        manifest.add(out, art.path, art.role)
    seal_manifest(out, manifest)

    runs = benchmark_runs or cfg.export.benchmark_runs
    console.info(f"export: measuring latency on this host ({runs} runs per model)")
    latency = target.benchmark(BenchmarkRequest(out, batches=(1,), threads=(1,), runs=runs))

    accuracy = {"teacher": None, "student_fp32": None, "student_int8": None, "evaluated_on": None}
    data = eval_set(cfg.eval, spec)
    if data is not None:
        x, y, what = data
        teacher, _ = load_teacher(cfg)
        accuracy = {"teacher": torch_accuracy(teacher, x, y), "student_fp32": onnx_accuracy(out / wd.FP32_ONNX, x, y),
                    "student_int8": onnx_accuracy(out / wd.INT8_ONNX, x, y), "evaluated_on": what}
    report = {
        "target": target_name,
        "created": manifest.created,
        "pipeline_version": __version__,
        "teacher": spec["source"],
        "accuracy": accuracy,
        "distillation": run["stages"]["distill"],
        "quantization": run["stages"]["quantize"],
        "latency": latency,
        "artifacts": [{"path": a.path, "role": a.role, "bytes": a.bytes} for a in manifest.artifacts],
        "check": {"target": target_name, "findings": [f"[{f.rule}] {f.op_type} {f.node}: {f.message}" for f in findings]},
        "parent": parent,
    }
    write_reports(out, report)
    run["stages"]["export"] = {"target": target_name, "manifest": MANIFEST}
    wd.write_run(out, run)
    return report


def run_all(cfg: RunConfig, out: Path, console: Console, resume: bool = False, force: bool = False) -> dict | None:
    """All three stages. Under torchrun only distillation is shared: ranks other than 0 return None after it."""
    main = world_from_env().is_main
    if main:
        prepare_out_dir(out, force, resume)
    t0 = time.perf_counter()
    stage_distill(cfg, out, resume, console)
    if not main:
        return None
    run = wd.read_run(out)
    if not (resume and "quantize" in run["stages"] and run["config"]["target"] == cfg.target):
        stage_quantize(out, console, cfg.target)
    report = stage_export(out, console, cfg.target)
    report["total_wall_s"] = round(time.perf_counter() - t0, 1)
    return report
