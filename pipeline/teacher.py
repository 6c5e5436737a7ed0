"""Load the teacher: the built-in digits task, a factory spec plus weights, or a saved program.

Untrusted files are never unpickled as code: safetensors, or torch.load(weights_only=True).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from pipeline.config import RunConfig, resolve_path
from pipeline.errors import RunError, UsageError


@dataclass
class TaskSpec:
    """What every stage needs to know about the teacher's task; per-sample shapes exclude batch."""

    input_shape: tuple[int, ...]
    num_classes: int
    classes: list[str] | None
    mean: list[float]
    std: list[float]
    scale: float
    source: str  # human-readable origin of the teacher

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3


def resolve_callable(spec: str, base_dir: str | None = None, what: str = "factory") -> Callable:
    """'path/to/file.py:name' or 'package.module:name' -> the callable."""
    if ":" not in spec:
        raise UsageError(f"{what} '{spec}' must look like 'file.py:function' or 'package.module:function'")
    mod_part, _, attr = spec.rpartition(":")
    if not mod_part or not attr:
        raise UsageError(f"{what} '{spec}' must look like 'file.py:function' or 'package.module:function'")
    if mod_part.endswith(".py") or "/" in mod_part or "\\" in mod_part:
        path = Path(mod_part).expanduser()
        if not path.is_absolute() and base_dir:
            path = Path(base_dir) / path
        if not path.is_file():
            raise UsageError(f"{what} file not found: {path}")
        name = f"_pipeline_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise UsageError(f"{what} file cannot be imported: {path}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:  # user code: report, don't crash
            raise UsageError(f"{what} file {path} failed to import: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(mod_part)
        except Exception as exc:
            raise UsageError(f"{what} module '{mod_part}' cannot be imported: {type(exc).__name__}: {exc}") from exc
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise UsageError(f"{what} '{spec}': '{attr}' is not a callable in {mod_part}")
    return fn


def build_from_factory(spec: str, base_dir: str | None, what: str = "teacher factory") -> nn.Module:
    fn = resolve_callable(spec, base_dir, what)
    try:
        model = fn()
    except Exception as exc:
        raise UsageError(f"{what} '{spec}' raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise UsageError(f"{what} '{spec}' returned {type(model).__name__}, not a torch.nn.Module")
    return model


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read weights without executing code: safetensors, or a state_dict via weights_only unpickling."""
    if not path.is_file():
        raise UsageError(f"teacher weights not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except PermissionError as exc:
        raise UsageError(f"teacher weights cannot be read: {path}") from exc
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"teacher weights {path} are corrupt or not a plain state_dict (code is never unpickled): {first[:200]}") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UsageError(f"teacher weights {path} hold a {type(obj).__name__}, not a state_dict of tensors")
    return obj


def load_weights(model: nn.Module, path: Path, what: str = "teacher") -> None:
    state = read_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DataParallel checkpoints
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0]
        raise UsageError(f"{what} weights {path.name} do not fit the model: {detail[:300]}") from exc


def load_program(path: Path) -> nn.Module:
    if not path.is_file():
        raise UsageError(f"teacher program not found: {path}")
    try:
        if path.suffix in (".pt2", ".ep"):
            return torch.export.load(str(path)).module()
        return torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise UsageError(f"teacher program {path} cannot be loaded as TorchScript or torch.export: {str(exc).splitlines()[0][:200]}") from exc


def check_teacher(model: nn.Module, spec: TaskSpec) -> None:
    """Run one batch through the teacher and insist on logits of shape [batch, num_classes]."""
    x = torch.randn(2, *spec.input_shape)
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"teacher rejects input of shape {list(spec.input_shape)}: {msg}") from exc
    if not isinstance(out, torch.Tensor):
        raise UsageError(f"teacher must return a logits tensor, got {type(out).__name__} (return logits only; features come from hooks)")
    if tuple(out.shape) != (2, spec.num_classes):
        raise UsageError(f"teacher output has shape {list(out.shape)}, expected [batch, {spec.num_classes}]")
    if not torch.isfinite(out).all():
        raise RunError("teacher returns NaN or inf on random input; check its weights")


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def load_teacher(cfg: RunConfig) -> tuple[nn.Module, TaskSpec]:
    t = cfg.teacher
    if t.builtin == "digits":
        from pipeline.tasks import digits

        model = digits.build_teacher()
        load_weights(model, digits.WEIGHTS)
        spec = TaskSpec(digits.INPUT_SHAPE, digits.NUM_CLASSES, digits.CLASSES, digits.MEAN, digits.STD,
                        digits.SCALE, "built-in digits teacher")
    else:
        if t.program:
            model = load_program(resolve_path(cfg, t.program))
            source = f"program {t.program}"
        else:
            model = build_from_factory(t.factory, cfg.config_dir)
            if t.weights:
                load_weights(model, resolve_path(cfg, t.weights))
            else:
                warnings.warn("teacher has no 'weights': using the factory's own initialisation", stacklevel=1)
            source = f"factory {t.factory}"
        spec = TaskSpec(tuple(t.input_shape), t.num_classes, t.classes, list(t.mean) or [0.0], list(t.std) or [1.0],
                        t.scale, source)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    check_teacher(model, spec)
    return model, spec
