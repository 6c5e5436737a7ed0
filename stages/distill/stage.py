"""Stage 1 as the pipeline runs it: load the teacher, build the student, distil, write the outputs.

Writes into the run directory: student.safetensors (+ .json spec), vae.safetensors (+ .json spec),
generator.safetensors and the stage's summary in run.json.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from core import __version__
from core import workdir as wd
from core.device import set_up
from core.errors import RunError, UsageError
from core.evaluation import check_compatible, evaluator
from core.fileio import write_json
from core.settings import resolve_path
from core.teacher import (TaskSpec, build_from_factory, computes_convolution, has_batchnorm, load_teacher,
                          load_weights, refuse_batch_statistics, teacher_architecture)
from core.ui import Console
from core.world import World, world_from_env
from stages.distill import parallel
from stages.distill.engine import DistillResult, distill
from stages.distill.networks import VAE, build_student, param_count, student_spec
from stages.distill.stopping import describe_stop, verdict


def student_for(cfg, teacher: nn.Module, spec: TaskSpec) -> tuple[nn.Module, dict]:
    """The student the config asks for, and the spec that rebuilds it."""
    if cfg.student.arch == "auto":
        s = student_spec(spec.input_shape, spec.num_classes, param_count(teacher), cfg.student.ratio,
                         convolutional=computes_convolution(teacher, spec.input_shape))
        return build_student(s), s
    model = build_from_factory(cfg.student.arch, cfg.config_dir, what="student factory")
    refuse_batch_statistics(model, f"student factory {cfg.student.arch}")  # before distillation, not after it
    if cfg.student.weights:
        load_weights(model, resolve_path(cfg, cfg.student.weights), what="student")
    return model, {"family": "factory", "factory": cfg.student.arch, "config_dir": cfg.config_dir}


def rebuild_student(spec: dict) -> nn.Module:
    if spec.get("family") == "factory":
        return build_from_factory(spec["factory"], spec.get("config_dir"), what="student factory")
    if spec.get("family") == "teacher":  # a run that quantizes the model itself (no distillation)
        return teacher_architecture(spec["teacher"], spec.get("config_dir"))
    return build_student(spec)


def vae_spec(vae: VAE, shape: tuple[int, ...]) -> dict:
    return {"input_shape": list(shape), "latent_dim": vae.latent_dim, "width": vae.width}


def load_vae(spec: dict, weights: Path) -> VAE:
    """A VAE as a run or a bundle stored it: its spec (vae.json) and its weights."""
    vae = VAE(tuple(spec["input_shape"]), spec["latent_dim"], width=spec.get("width", 64))
    return wd.load_module(vae, weights)


def task_dict(spec: TaskSpec) -> dict:
    return dataclasses.asdict(spec) | {"input_shape": list(spec.input_shape)}


def stage_distill(cfg, out: Path, resume: bool, console: Console, memory_factory=None,
                  student_from: tuple[dict, Path] | None = None) -> dict | None:
    """Stage 1 with the run config `cfg`. For an update, `student_from` is (spec, weights) of the deployed
    student and `memory_factory(teacher, device)` rebuilds the shipped VAE memory around the new teacher.
    Under torchrun every process trains; rank 0 writes and gets the summary, the others get None."""
    world = world_from_env()
    with parallel.process_group(world, set_up(cfg)) as device:
        teacher, spec = load_teacher(cfg)
        check_compatible(cfg.eval, spec.input_shape, spec.num_classes, spec)
        if cfg.distill.w_bn and not has_batchnorm(teacher):
            console.warn("teacher has no BatchNorm layers with running statistics: the BN-statistics and "
                         "feature-diversity terms are dropped")
        if cfg.distill.batch_size < world.size:
            raise UsageError(f"distill.batch_size {cfg.distill.batch_size} is smaller than the {world.size} "
                             "processes sharing it")
        if student_from is not None:
            s_spec, weights = student_from
            student = wd.load_module(rebuild_student(s_spec), weights)
        else:
            student, s_spec = student_for(cfg, teacher, spec)
        run, finished = _open_run(cfg, out, spec, resume, world)
        if finished is not None:
            console.info("distill: already finished in this directory, skipping")
            return finished if world.is_main else None
        memory = memory_factory(teacher, device) if memory_factory is not None else None
        across = f", {world.size} processes" if world.distributed else ""
        console.info(f"distill: {spec.source} -> student with {param_count(student):,} parameters "
                     f"(teacher {param_count(teacher):,}), replay={cfg.distill.replay}, device={device}{across}")
        with console.progress("distill", cfg.distill.iterations) as advance:
            result = distill(cfg.distill, teacher, student, spec.input_shape, out / "distill", device, seed=cfg.seed,
                             evaluate=evaluator(cfg.eval, spec) if world.is_main else None, resume=resume,
                             progress=advance, memory=memory, world=world, inform=console.info)
        if not world.is_main:
            return None
        summary = _finish(cfg, out, run, result, s_spec, spec, param_count(teacher), device, world)
        _tell(console, summary, out, cfg.distill.min_agreement)
        return summary


def _tell(console: Console, summary: dict, out: Path, minimum: float) -> None:
    """Say why distillation ended and whether the student learnt the teacher; fail when asked to on a poor one."""
    v = summary["verdict"]
    console.info(f"distill: stopped by {describe_stop(summary)} after {summary['steps']} iterations in {summary['wall_s']:.0f} s; "
                 f"{v['reason']}")
    if v["converged"] is False:
        console.warn(f"the student did not converge: {v['reason']}; try {v['try']}")
    reached = summary["history"][-1]["agreement"] if summary["history"] else None
    if minimum and reached is not None and reached < minimum:
        raise RunError(f"distill: probe agreement {reached:.3f} is below --min-agreement {minimum:g}; the student "
                       f"is kept in {out}")


def _open_run(cfg, out: Path, spec: TaskSpec, resume: bool, world: World) -> tuple[dict, dict | None]:
    """run.json for this directory (a resumed one's own), and the distill summary if that stage finished."""
    run = {"pipeline_version": __version__, "config": dataclasses.asdict(cfg), "task": task_dict(spec), "stages": {}}
    finished = None
    if world.is_main:
        if resume and (out / wd.RUN_FILE).is_file():
            run = wd.read_run(out)
            finished = run.get("stages", {}).get("distill")
        if finished is None:
            wd.write_run(out, run)
    return run, parallel.broadcast(finished, world)


def _finish(cfg, out: Path, run: dict, result: DistillResult, s_spec: dict, spec: TaskSpec, teacher_params: int,
            device: torch.device, world: World) -> dict:
    wd.save_module(result.student, out / wd.STUDENT)
    write_json(out / wd.STUDENT_SPEC, s_spec)
    wd.save_module(result.generator, out / wd.GENERATOR)
    if result.vae is not None:
        wd.save_module(result.vae, out / wd.VAE_FILE)
        write_json(out / wd.VAE_SPEC, vae_spec(result.vae, spec.input_shape))
    summary = {
        "replay": cfg.distill.replay,
        "replay_memory_bytes": result.memory.nbytes(),
        "steps": result.iterations,
        "stopped_by": result.stopped_by,
        "plateau_at": result.plateau_at,
        "wall_s": round(result.wall_s, 2),
        "estimate": result.estimate,
        "probes_s": round(result.probes_s, 2),
        "probes_robust": result.probes_robust,
        "verdict": verdict(result.history, result.stopped_by, cfg.distill.min_agreement, result.probes_robust),
        "history": result.history,
        "student_params": param_count(result.student),
        "teacher_params": teacher_params,
        "resumed_from": result.resumed_from,
        "device": str(device),
        "processes": world.size,
    }
    run["stages"]["distill"] = summary
    wd.write_run(out, run)
    (out / "distill" / "checkpoint.pt").unlink(missing_ok=True)  # the finished stage's outputs supersede it
    return summary
