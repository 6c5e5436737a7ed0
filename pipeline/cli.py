"""`pipeline`: distill a teacher data-free, quantize to INT8, export for Jetson (TensorRT) or phones (ONNX Runtime).

Errors are one line on stderr; exit 2 for usage errors, 1 for failures at run time (--debug: traceback).
"""

from __future__ import annotations

import logging
import os
import sys
import tomllib
import traceback
import warnings
from datetime import datetime
from pathlib import Path

import click

from core import __version__
from core.bundle import verify_bundle
from core.errors import PipelineError, RunError, UsageError
from core.target import RuntimeMissing
from core.ui import Console
from core.workdir import check_force_resume, prepare_out_dir
from core.world import DISTRIBUTED_COMMANDS, world_from_env
from pipeline.config import RESUME_FREE, load_config, resume_config, validate
from pipeline.trust.commands import (COMMANDS, lineage_of, load_sign_key, sign_key_option, sign_output,
                                     trust_option)
from core.trust import require_trusted
from targets import TARGET_NAMES

# The stages, the targets' runtimes and the report load torch, onnx and matplotlib: commands import them
# inside, after their arguments are checked, so that a usage error answers at once.

CONTEXT = {"help_option_names": ["-h", "--help"]}


def _quiet_libraries() -> None:
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TORCHINDUCTOR_DISABLE", "1")
    for name in ("nncf", "torch", "torch.utils._pytree", "torchao", "onnxruntime"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _parse_int_list(value: str, what: str) -> tuple[int, ...]:
    try:
        items = tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got '{value}'") from None
    if not items or any(v <= 0 for v in items):
        raise UsageError(f"{what} must be positive integers, got '{value}'")
    return items


def parse_set(values: tuple[str, ...]) -> dict:
    """`--set key=value` items as dotted overrides, values read as TOML (a bare word as a string)."""
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set takes key=value (for example distill.iterations=100), got '{item}'")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw  # a bare string
    return out


def config_options(f):
    """Options shared by every command that builds a configuration."""
    opts = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file (bring your own teacher)."),
        click.option("--preset", type=str, default=None, help="smoke | default | paper"),
        click.option("--device", type=str, default=None, help="auto | cpu | cuda"),
        click.option("--seed", type=int, default=None),
        click.option("--eval", "eval_set", type=str, default=None, help="Score on a real test split for the report only: digits"),
        click.option("--replay", type=str, default=None, help="vae | none"),
        click.option("--threads", type=int, default=None, help="torch intra-op threads (default 1)"),
        click.option("--student-ratio", type=float, default=None, help="student size relative to the teacher (auto arch)"),
        click.option("--time-budget", type=float, default=None, help="seconds of distillation at most"),
        click.option("--min-agreement", type=float, default=None,
                     help="fail when the student agrees with the teacher on synthetic probes less than this (0..1)"),
        click.option("--set", "sets", multiple=True, help="Any config key, e.g. --set distill.iterations=100"),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def build_config(target, config_path, preset, device, seed, eval_set, replay, threads, student_ratio,
                 time_budget, min_agreement, sets, max_drop=None):
    overrides = {"target": target, "preset": preset, "device": device, "seed": seed, "eval": eval_set,
                 "distill.replay": replay, "threads": threads,
                 "student.ratio": student_ratio, "distill.time_budget": time_budget,
                 "distill.min_agreement": min_agreement, "quantize.max_drop": max_drop}
    overrides.update(parse_set(sets))
    return load_config(config_path, overrides)


def config_for(target, out, resume: bool, kw: dict, force: bool = False):
    """The run's configuration; with --resume, the interrupted run's own (settings given again must match)."""
    check_force_resume(force, resume)
    if not resume:
        return build_config(target, **kw)
    if not out:
        raise UsageError("--resume needs --out DIR: the directory of the run to continue")
    explicit = target is not None or any(v not in (None, ()) for k, v in kw.items() if k not in RESUME_FREE)
    cfg = resume_config(Path(out), build_config(target, **kw) if explicit else None)
    if cfg is None:  # nothing stored yet: a fresh run
        return build_config(target, **kw)
    if not explicit:
        cfg.device = kw.get("device") or cfg.device
        cfg.threads = kw.get("threads") or cfg.threads
        validate(cfg)
    return cfg


def _known_target(name: str | None) -> None:
    if name is not None and name not in TARGET_NAMES:
        raise UsageError(f"unknown target '{name}'; choose one of: {', '.join(TARGET_NAMES)}")


def _default_out(target: str) -> Path:
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{target}"


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="pipeline")
@click.option("--debug", is_flag=True, help="Show tracebacks and library warnings.")
@click.option("--quiet", is_flag=True, help="Only errors and the final summary.")
@click.pass_context
def cli(ctx, debug, quiet):
    """Data-free distillation, INT8 quantization and export for edge targets."""
    world = world_from_env()
    if world.distributed and ctx.invoked_subcommand not in DISTRIBUTED_COMMANDS:
        raise UsageError(f"only {' and '.join(DISTRIBUTED_COMMANDS)} run under torchrun (distillation is what is shared); "
                         f"run `pipeline {ctx.invoked_subcommand}` as one process")
    # Under torchrun rank 0 speaks for the run; the other ranks only report errors.
    console = Console(quiet=quiet) if world.is_main else Console(quiet=True, warnings=False)
    ctx.obj = {"debug": debug, "console": console, "world": world}
    if not debug:
        _quiet_libraries()


@cli.command(context_settings=CONTEXT)
@click.option("--target", type=str, default=None, help="jetson | mobile (default: jetson)")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Bundle directory (default runs/<timestamp>-<target>)")
@click.option("--force", is_flag=True, help="Overwrite a directory that holds another run.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out from its last checkpoint.")
@sign_key_option
@click.option("--max-drop", type=click.FloatRange(min=0), default=None,
              help="Keep the most INT8-sensitive layers in float until agreement on synthetic probes drops at most this many points.")
@config_options
@click.pass_obj
def run(obj, target, out, force, resume, sign_key, **kw):
    """All three stages: distill, quantize, export."""
    cfg = config_for(target, out, resume, kw, force)  # usage errors surface before torch is imported
    key = load_sign_key(sign_key)
    out = Path(out) if out else _default_out(cfg.target)

    from pipeline.report import latency_table, summary_table
    from pipeline.run import run_all

    report = run_all(cfg, out, obj["console"], resume=resume, force=force)
    if report is None:  # another rank of a torchrun: its share of distillation is done
        return
    console = obj["console"]
    console.out.print(summary_table(report))
    console.out.print(latency_table(report["latency"], report.get("accuracy")))
    console.out.print(f"bundle: {out}  (manifest.json, report.md, report.html)  in {report['total_wall_s']} s")
    sign_output(out, key, console)


@cli.command(context_settings=CONTEXT)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory for the stage.")
@click.option("--force", is_flag=True)
@click.option("--resume", is_flag=True)
@click.option("--target", type=str, default=None, help="Target the later stages will use (recorded).")
@config_options
@click.pass_obj
def distill(obj, out, force, resume, target, **kw):
    """Stage 1: data-free distillation with generative pseudo replay."""
    cfg = config_for(target, out, resume, kw, force)
    out = Path(out)
    if obj["world"].is_main:
        prepare_out_dir(out, force, resume)

    from stages.distill.stage import stage_distill

    summary = stage_distill(cfg, out, resume, obj["console"])
    if summary is None:  # another rank of a torchrun
        return
    last = summary["history"][-1] if summary["history"] else {}
    acc = f", accuracy {last['accuracy']:.4f}" if last.get("accuracy") is not None else ""
    obj["console"].out.print(f"distilled in {summary['wall_s']} s: teacher agreement {last.get('agreement', 0):.4f}{acc} -> {out}")


@cli.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(file_okay=False), required=False)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
              help="INT8 of your own model ([teacher] in this TOML), without distillation, instead of a DIRECTORY.")
@click.option("--target", type=str, default=None, help="Quantization scheme for this target (default: the run's, or jetson).")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None,
              help="Keep the most INT8-sensitive layers in float until agreement on synthetic probes drops at most this many points.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="With --config: the bundle directory (default runs/<timestamp>-<target>).")
@click.option("--force", is_flag=True, help="With --config: overwrite a directory that holds another run.")
@sign_key_option
@click.option("--preset", type=str, default=None, help="With --config: smoke | default | paper")
@click.option("--device", type=str, default=None, help="With --config: auto | cpu | cuda")
@click.option("--seed", type=int, default=None, help="With --config.")
@click.option("--eval", "eval_set", type=str, default=None, help="With --config: score on a real test split for the report only.")
@click.option("--threads", type=int, default=None, help="With --config: torch intra-op threads (default 1).")
@click.option("--set", "sets", multiple=True, help="With --config: any config key, e.g. --set quantize.qat_steps=300")
@click.pass_obj
def quantize(obj, directory, config_path, target, max_drop, **own):
    """Stage 2 on a distilled DIRECTORY; or, with --config, INT8 of your own model (no distillation) as a bundle."""
    _known_target(target)
    if directory is not None and config_path is not None:
        raise UsageError("quantize takes a run DIRECTORY or --config MODEL.toml, not both")
    if config_path is not None:
        return _quantize_own_model(obj, config_path, target, max_drop, **own)
    if directory is None:
        raise UsageError("quantize needs a run DIRECTORY (stage 2 of a distilled run) or --config MODEL.toml "
                         "(INT8 of your own model)")
    given = [f"--{name.replace('_', '-')}" for name, value in own.items() if value not in (None, False, ())]
    if given:
        raise UsageError(f"{given[0]} goes with --config MODEL.toml; `pipeline quantize DIRECTORY` quantizes that run "
                         f"in place (--target and --max-drop only)")
    from pipeline.run import quantize as quantize_run

    s = quantize_run(Path(directory), obj["console"], target, max_drop)
    kept = s["sensitivity"]["kept_float"]
    in_float = f", {len(kept)} layer(s) kept in float" if kept else ""
    obj["console"].out.print(f"quantized ({s['scheme']}, calibration {s['calibration_source']}, {s['num_quantizers']} quantizers"
                             f"{in_float}): INT8/FP32 agreement {s['int8_fp32_agreement']:.4f} -> {directory}")


def _quantize_own_model(obj, config_path, target, max_drop, out, force, sign_key, preset, device, seed, eval_set,
                        threads, sets) -> None:
    """`quantize --config`: the model in [teacher] itself to INT8, calibrated and fine-tuned on synthetic
    samples, exported as a bundle like `run`'s."""
    cfg = load_config(config_path, {"target": target, "preset": preset, "device": device, "seed": seed,
                                    "eval": eval_set, "threads": threads, "quantize.max_drop": max_drop,
                                    **parse_set(sets)})
    if cfg.teacher.program:
        raise UsageError("quantize --config needs the model's code: teacher.factory with teacher.weights (a saved "
                         "program is a fixed graph that NNCF does not quantize whole)")
    key = load_sign_key(sign_key)
    out = Path(out) if out else _default_out(cfg.target)

    from pipeline.report import latency_table, summary_table
    from pipeline.run import quantize_own_model

    report = quantize_own_model(cfg, out, obj["console"], force=force)
    console = obj["console"]
    console.out.print(summary_table(report))
    console.out.print(latency_table(report["latency"], report.get("accuracy")))
    console.out.print(f"bundle: {out}  (your model in INT8; manifest.json, report.md, report.html)  in {report['total_wall_s']} s")
    sign_output(out, key, console)


@cli.command(context_settings=CONTEXT)
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--target", type=str, default=None)
@sign_key_option
@click.pass_obj
def export(obj, directory, target, sign_key):
    """Stage 3: target artifacts, manifest, latency and reports."""
    _known_target(target)
    from pipeline.report import summary_table
    from pipeline.run import export

    key = load_sign_key(sign_key)
    parent, version = lineage_of(Path(directory))
    report = export(Path(directory), obj["console"], target, parent=parent, version=version)
    obj["console"].out.print(summary_table(report))
    sign_output(Path(directory), key, obj["console"])


@cli.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path())
@click.option("--batch", default="1", help="Comma-separated batch sizes, e.g. 1,8")
@click.option("--threads", default="1", help="Comma-separated thread counts, e.g. 1,2")
@click.option("--runs", type=int, default=None, help="Timed runs per model")
@click.option("--duration", type=float, default=None, help="Seconds per model instead of a run count")
@click.option("--warmup", type=int, default=10)
@trust_option
@click.pass_obj
def benchmark(obj, bundle, batch, threads, runs, duration, warmup, trust):
    """Latency of a bundle's models on this machine; saved into report.json."""
    require_trusted(bundle, trust)
    from pipeline.benchmarking import benchmark_bundle

    if runs is not None and runs <= 0:
        raise UsageError(f"--runs must be positive, got {runs}")
    if duration is not None and duration <= 0:
        raise UsageError(f"--duration must be positive, got {duration}")
    if warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {warmup}")
    table = benchmark_bundle(Path(bundle), _parse_int_list(batch, "--batch"), _parse_int_list(threads, "--threads"),
                             runs, duration, warmup)
    obj["console"].out.print(table)


@cli.command("build-engine", context_settings=CONTEXT)
@click.argument("bundle", type=click.Path())
@click.option("--profile", type=str, default=None, help="Device profile: orin-nano, orin-nx, agx-orin, agx-orin-dla")
@trust_option
@click.pass_obj
def build_engine(obj, bundle, profile, trust):
    """On a machine with TensorRT (a Jetson): build the engine and measure it."""
    require_trusted(bundle, trust)
    from targets.registry import get_target

    manifest = verify_bundle(bundle)  # a tampered bundle is refused before anything in it is used
    if manifest.target != "jetson":
        raise UsageError(f"bundle {bundle} is for target '{manifest.target}'; build-engine needs a jetson bundle")
    try:
        arts = get_target("jetson").build(Path(bundle), profile)
    except RuntimeMissing as exc:
        raise RunError(str(exc)) from exc
    for a in arts:
        obj["console"].out.print(f"built {a.role}: {a.path}")
    from pipeline.benchmarking import benchmark_bundle

    obj["console"].out.print(benchmark_bundle(Path(bundle), (1,), (1,), None, None, 10))


@cli.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path())
@click.option("--out", type=click.Path(file_okay=False), default=None, help="New bundle (default: BUNDLE-update-<timestamp>)")
@click.option("--force", is_flag=True, help="Overwrite --out if it holds another run.")
@trust_option
@sign_key_option
@config_options
@click.pass_obj
def update(obj, bundle, out, force, trust, sign_key, **kw):
    """On-device update: distill toward a new teacher with replay from the bundle's VAE; no stored data."""
    from pipeline.report import summary_table
    from pipeline.update import default_update_out, update_bundle

    if not kw.get("config_path"):
        raise UsageError("update needs --config NEW.toml naming the new teacher")
    require_trusted(bundle, trust)
    key = load_sign_key(sign_key)
    cfg = build_config(None, **kw)
    bundle = Path(bundle)
    out = Path(out) if out else default_update_out(bundle)
    if out.resolve() == bundle.resolve():
        raise UsageError("update writes a new bundle: --out must differ from BUNDLE (the parent stays as it is)")
    report = update_bundle(bundle, cfg, out, obj["console"], force=force)
    obj["console"].out.print(summary_table(report))
    obj["console"].out.print(f"updated bundle: {out} (parent {report['parent'][:12]})")
    sign_output(out, key, obj["console"])


@cli.command(context_settings=CONTEXT)
@click.argument("model", type=click.Path())
@click.option("--target", type=str, required=True, help="jetson | mobile")
@click.pass_obj
def check(obj, model, target):
    """List every node the target's runtime will not run in INT8."""
    _known_target(target)
    from targets.check import check_model, format_findings

    if not Path(model).is_file():
        raise UsageError(f"model not found: {model}")
    try:
        findings = check_model(model, target)
    except PipelineError:
        raise
    except Exception as exc:
        raise UsageError(f"{model} is not a readable ONNX model: {str(exc).splitlines()[0][:200]}") from exc
    obj["console"].out.print(format_findings(findings), markup=False)
    if findings:
        sys.exit(1)


@cli.command(context_settings=CONTEXT)
@click.pass_obj
def targets(obj):
    """What targets and device profiles exist."""
    from targets.profiles import profile_names
    from targets.registry import TARGETS

    for name, t in TARGETS.items():
        obj["console"].out.print(f"{name}: {t.description}\n  profiles: {', '.join(profile_names(name))}", markup=False)


@cli.command(context_settings=CONTEXT)
@click.pass_obj
def doctor(obj):
    """What this machine can do: torch, CUDA, NNCF, onnxruntime providers, TensorRT."""
    import onnxruntime
    import torch

    from targets.tensorrt_engine import tensorrt_status

    lines = [f"pipeline {__version__}", f"python {sys.version.split()[0]}",
             f"torch {torch.__version__} (CUDA available: {torch.cuda.is_available()}, threads: {torch.get_num_threads()})"]
    try:
        import nncf

        lines.append(f"nncf {nncf.__version__}")
    except Exception as exc:  # report, don't fail
        lines.append(f"nncf: not usable ({exc})")
    try:
        import torchao  # noqa: F401  (nncf.strip needs it)

        lines.append("torchao: installed")
    except Exception:
        lines.append("torchao: MISSING (nncf.strip needs it: pip install torchao)")
    lines.append(f"onnxruntime {onnxruntime.__version__}: providers {', '.join(onnxruntime.get_available_providers())}")
    ok, msg = tensorrt_status()
    lines.append(f"tensorrt: {'available' if ok else 'not available'} ({msg})")
    obj["console"].out.print("\n".join(lines), markup=False)


for _command in COMMANDS:
    cli.add_command(_command)


def _one_line(message: str) -> str:
    """Errors are one line: a multi-line message (a tool's output tail) is joined with '; '."""
    parts = [ln.strip() for ln in str(message).strip().splitlines() if ln.strip()]
    return "; ".join(parts) if parts else "failed"


def main(argv=None) -> None:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="pipeline", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"error: {_one_line(exc.format_message())}", err=True)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except PipelineError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"error: {_one_line(str(exc))}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted; rerun with --resume to continue from the last checkpoint", err=True)
        sys.exit(130)
    except MemoryError:
        click.echo("error: out of memory; try a smaller --preset or batch size", err=True)
        sys.exit(1)
    except OSError as exc:
        if debug:
            traceback.print_exc()
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        click.echo(f"error: {_one_line(exc.strerror or str(exc))}{where}", err=True)
        sys.exit(1)
    except Exception as exc:  # last resort: still one line, never a traceback without --debug
        if debug:
            traceback.print_exc()
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        click.echo(f"error: internal error {type(exc).__name__}: {first} (rerun with --debug for details)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
