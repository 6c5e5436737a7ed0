"""What one stage leaves for the next inside an output directory, and how it is read back.

run.json holds the resolved config and each finished stage's summary; model files sit beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.config import RunConfig, _apply, validate
from pipeline.errors import RunError, UsageError
from pipeline.fileio import atomic_path, write_json

RUN_FILE = "run.json"
STUDENT = "student.safetensors"
STUDENT_SPEC = "student.json"
VAE_FILE = "vae.safetensors"
VAE_SPEC = "vae.json"
GENERATOR = "generator.safetensors"
FP32_ONNX = "student_fp32.onnx"
INT8_ONNX = "student_int8.onnx"
HISTORY = "history.json"


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


def config_from_dict(d: dict) -> RunConfig:
    d = dict(d)
    config_dir = d.pop("config_dir", None)
    cfg = RunConfig()
    _apply(cfg, d, "")
    cfg.config_dir = config_dir
    return validate(cfg)


def save_module(module: nn.Module, path: Path) -> Path:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    return Path(path)


def load_module(module: nn.Module, path: Path) -> nn.Module:
    if not Path(path).is_file():
        raise UsageError(f"missing {path.name} in {path.parent}: did the previous stage finish?")
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


def require(out_dir: Path, run: dict, stage: str) -> None:
    if stage not in run.get("stages", {}):
        cmd = {"distill": "pipeline distill", "quantize": "pipeline quantize"}[stage]
        raise UsageError(f"{out_dir}: stage '{stage}' has not finished; run `{cmd}` on it first")


def torch_save_atomic(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
