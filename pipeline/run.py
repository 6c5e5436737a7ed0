"""The stages chained: each reads the run directory the previous one wrote, with the config stored there.

distill  -> student, VAE and generator weights (stages.distill.stage); or, for INT8 of the user's own
            model, the model itself as the student and a sample generator (stages.quantize.own_model)
quantize -> FP32 and INT8 ONNX models (stages.quantize.stage)
export   -> the target's artifacts, manifest.json, latency and report.{json,md,html} (stages.export)
"""

from __future__ import annotations

import time
from pathlib import Path

from core import workdir as wd
from core.bundle import MANIFEST
from core.ui import Console
from core.workdir import prepare_out_dir
from core.world import world_from_env
from pipeline.config import RunConfig, config_from_dict
from pipeline.report import write_reports
from stages.distill.stage import stage_distill
from stages.export.stage import stage_export
from stages.quantize.own_model import prepare_own_model
from stages.quantize.stage import stage_quantize
from targets.registry import get_target


def _stored(out: Path, after: str) -> tuple[dict, RunConfig]:
    run = wd.read_run(out)
    wd.require(out, run, after)
    return run, config_from_dict(run["config"])


def quantize(out: Path, console: Console, target: str | None = None, max_drop: float | None = None) -> dict:
    """Stage 2 on a distilled directory, for `target` (the run's own by default); `max_drop` replaces the
    run's `quantize.max_drop` when given."""
    _, cfg = _stored(out, "samples" if wd.source(wd.read_run(out)) == wd.OWN_MODEL else "distill")
    cfg.target = target or cfg.target
    if max_drop is not None:
        cfg.quantize.max_drop = max_drop
    return stage_quantize(cfg, out, console, get_target(cfg.target).scheme)


def export(out: Path, console: Console, target: str | None = None, parent: str | None = None,
           benchmark_runs: int | None = None, version: int = 1) -> dict:
    """Stage 3 on a quantized directory: the bundle, then its reports."""
    _, cfg = _stored(out, "quantize")
    chosen = get_target(target or cfg.target)
    report = stage_export(cfg, out, console, chosen, parent, benchmark_runs, version)
    write_reports(out, report)
    run = wd.read_run(out)
    run["stages"]["export"] = {"target": chosen.name, "manifest": MANIFEST}
    wd.write_run(out, run)
    return report


def run_all(cfg: RunConfig, out: Path, console: Console, resume: bool = False, force: bool = False) -> dict | None:
    """All three stages into `out`. Under torchrun only distillation is shared: ranks other than 0 return
    None after it."""
    main = world_from_env().is_main
    if main:
        prepare_out_dir(out, force, resume)
    t0 = time.perf_counter()
    stage_distill(cfg, out, resume, console)
    if not main:
        return None
    run = wd.read_run(out)
    if not (resume and "quantize" in run["stages"] and run["config"]["target"] == cfg.target):
        quantize(out, console, cfg.target)
    report = export(out, console, cfg.target)
    report["total_wall_s"] = round(time.perf_counter() - t0, 1)
    return report


def quantize_own_model(cfg: RunConfig, out: Path, console: Console, force: bool = False) -> dict:
    """INT8 of the model itself into `out`: its synthetic samples, then stages 2 and 3 as after a distillation."""
    prepare_out_dir(out, force, resume=False, resumable=False)
    t0 = time.perf_counter()
    prepare_own_model(cfg, out, console)
    quantize(out, console, cfg.target)
    report = export(out, console, cfg.target)
    report["total_wall_s"] = round(time.perf_counter() - t0, 1)
    return report
