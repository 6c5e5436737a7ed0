"""What one stage leaves for the next inside an output directory, and how it is read back.

run.json holds the resolved config and each finished stage's summary; model files sit beside it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from core.errors import RunError, UsageError
from core.fileio import atomic_path, remove_stale_temporaries, write_json

if TYPE_CHECKING:  # torch loads only when a model is saved or read: bad requests fail fast
    from torch import nn

RUN_FILE = "run.json"
STUDENT = "student.safetensors"
STUDENT_SPEC = "student.json"
VAE_FILE = "vae.safetensors"
VAE_SPEC = "vae.json"
GENERATOR = "generator.safetensors"
FP32_ONNX = "student_fp32.onnx"
INT8_ONNX = "student_int8.onnx"

# run.json's "source": what the run's student is. A distilled run carries no such key.
DISTILLED = "distilled"
OWN_MODEL = "own model"  # the user's model itself, quantized without distillation (stages.quantize.own_model)


def read_run(out_dir: Path) -> dict:
    path = Path(out_dir) / RUN_FILE
    if not path.is_file():
        raise UsageError(f"{out_dir} holds no pipeline run ({RUN_FILE} missing); run `pipeline distill --out {out_dir}` first")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UsageError(f"{path} is corrupt ({str(exc)[:120]}); start again with --force") from exc
    if not isinstance(run, dict) or not isinstance(run.get("config"), dict) or not isinstance(run.get("stages"), dict):
        raise UsageError(f"{path} is corrupt (no 'config' and 'stages' objects); start again with --force")
    return run


def write_run(out_dir: Path, run: dict) -> None:
    write_json(Path(out_dir) / RUN_FILE, run)


def save_module(module: nn.Module, path: Path) -> Path:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    return Path(path)


def load_module(module: nn.Module, path: Path) -> nn.Module:
    if not Path(path).is_file():
        raise UsageError(f"missing {path.name} in {path.parent}: did the previous stage finish?")
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except Exception as exc:  # safetensors refuses anything that is not a well-formed header + tensors
        raise RunError(f"{path} is corrupt ({str(exc).strip()[:120]}); rerun the stage that writes it") from exc
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise RunError(f"{path} does not fit the model it belongs to ({first[1].strip()[:160] if len(first) > 1 else first[0][:160]})") from exc
    return module


def source(run: dict) -> str:
    return run.get("source", DISTILLED)


def require(out_dir: Path, run: dict, stage: str) -> None:
    if stage not in run.get("stages", {}):
        cmd = {"distill": "pipeline distill", "samples": "pipeline quantize --config",
               "quantize": "pipeline quantize"}[stage]
        raise UsageError(f"{out_dir}: stage '{stage}' has not finished; run `{cmd}` on it first")


# ---- output directories ------------------------------------------------------------------------


def check_force_resume(force: bool, resume: bool) -> None:
    if force and resume:
        raise UsageError("--force and --resume contradict each other: --force starts over, --resume continues")


def prepare_out_dir(out: Path, force: bool, resume: bool, resumable: bool = True) -> None:
    """Refuse to mix two runs in one directory unless asked to overwrite or resume.

    --force clears a previous pipeline run (a directory with run.json) and nothing else: a directory
    holding other files is never emptied. --resume keeps the run and drops temporaries a killed
    process left behind. `resumable`: whether the command offers --resume at all.
    """
    check_force_resume(force, resume)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    try:
        holds_files = out.is_dir() and any(out.iterdir())
    except OSError as exc:
        raise UsageError(f"--out {out} cannot be read: {exc.strerror or exc}") from exc
    is_run = (out / RUN_FILE).is_file()
    if holds_files and not is_run and (force or resume):
        raise UsageError(f"--out {out} holds files that are not a pipeline run (no {RUN_FILE}); "
                         f"{'--force' if force else '--resume'} only applies to a previous run: choose a new or empty directory")
    if holds_files and not (force or resume):
        if not is_run:
            raise UsageError(f"--out {out} already holds files that are not a pipeline run; choose a new or empty directory")
        resume_hint = " or --resume to continue that run" if resumable else ""
        raise UsageError(f"--out {out} already holds a run; pass --force to overwrite{resume_hint}")
    try:
        if force and is_run:
            for child in out.iterdir():  # only a previous pipeline run's contents are cleared
                shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        if resume and is_run:
            remove_stale_temporaries(out)
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".write-test.", suffix=".tmp") as f:
            f.write(b"x")
            f.flush()
    except OSError as exc:
        raise UsageError(f"--out {out} is not writable: {exc.strerror or exc}") from exc
