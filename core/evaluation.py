"""Real-data accuracy for reports only: the stages never see these data."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from core.errors import UsageError


def _task_fields(spec) -> tuple[tuple[int, ...], int, float, list[float], list[float]]:
    """(input_shape, num_classes, scale, mean, std) from a TaskSpec or its dict form (run.json)."""
    get = (lambda k: spec[k]) if isinstance(spec, dict) else (lambda k: getattr(spec, k))
    return tuple(get("input_shape")), int(get("num_classes")), float(get("scale")), list(get("mean")), list(get("std"))


def normalize(raw: np.ndarray, input_shape: tuple[int, ...], scale: float, mean: list[float], std: list[float]) -> torch.Tensor:
    """model_input = (raw * scale - mean) / std, mean and std per channel (images) or per feature (vectors)."""
    x = torch.as_tensor(np.asarray(raw, dtype=np.float32)).reshape(-1, *input_shape)
    view = (-1,) + (1,) * (len(input_shape) - 1)  # broadcast over the first per-sample axis
    m = torch.tensor(mean, dtype=torch.float32).reshape(view)
    s = torch.tensor(std, dtype=torch.float32).reshape(view)
    return (x * scale - m) / s


def read_npz(path: str | Path, spec) -> tuple[torch.Tensor, torch.Tensor]:
    """A user's own test set: `x` raw inputs (before scale/mean/std), `y` integer labels."""
    shape, num_classes, scale, mean, std = _task_fields(spec)
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"eval data not found: {path}")
    with path.open("rb") as f:
        head = f.read(4)
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):  # an .npz is a zip archive; numpy reads anything else as .npy or pickle
        raise UsageError(f"eval data {path} is not an .npz archive; write one with numpy.savez(path, x=inputs, y=labels)")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "x" not in data or "y" not in data:
                raise UsageError(f"eval data {path} needs arrays 'x' (raw inputs) and 'y' (labels), has {sorted(data.files)}")
            x, y = data["x"], data["y"]
    except UsageError:
        raise
    except Exception as exc:
        raise UsageError(f"eval data {path} is not a readable .npz: {str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__}") from exc
    if len(x) != len(y) or len(y) == 0:
        raise UsageError(f"eval data {path}: x has {len(x)} rows, y has {len(y)}; need the same, non-zero count")
    fits = tuple(x.shape[1:]) == tuple(shape) or (len(shape) == 3 and shape[0] == 1 and tuple(x.shape[1:]) == tuple(shape[1:]))
    if not fits:  # same layout only: a reshape would silently scramble e.g. HWC images into CHW
        raise UsageError(f"eval data {path}: samples of shape {list(x.shape[1:])} do not match the teacher's input {list(shape)}")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0 or y.max() >= num_classes:
        raise UsageError(f"eval data {path}: y must be integer labels in 0..{num_classes - 1}")
    return normalize(x, shape, scale, mean, std), torch.as_tensor(y.astype(np.int64))


def eval_set(name: str | None, spec=None) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    if name is None:
        return None
    if name == "digits":
        from core.tasks import digits

        x, y = digits.test_set()
        return x, y, f"digits test split ({len(y)} images, scikit-learn load_digits, random_state=0)"
    if name.endswith(".npz") and spec is not None:
        x, y = read_npz(name, spec)
        return x, y, f"{Path(name).name} ({len(y)} samples, user-provided)"
    raise UsageError(f"unknown eval set '{name}'; choose one of: digits, FILE.npz")


def check_compatible(name: str | None, input_shape: tuple[int, ...], num_classes: int, spec=None) -> None:
    if name == "digits":
        from core.tasks import digits

        if tuple(input_shape) != digits.INPUT_SHAPE or num_classes != digits.NUM_CLASSES:
            raise UsageError(f"--eval digits needs a teacher on [1, 8, 8] inputs with 10 classes, "
                             f"this one takes {list(input_shape)} with {num_classes} classes")
    elif name is not None and name.endswith(".npz") and spec is not None:
        read_npz(name, spec)  # fail before distillation, not after it


@torch.no_grad()
def torch_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int = 512) -> float:
    was_training = model.training
    model.eval()
    device = next(iter(model.parameters()), torch.empty(0)).device
    hits = 0
    for i in range(0, len(x), batch):
        hits += (model(x[i : i + batch].to(device)).argmax(1).cpu() == y[i : i + batch]).sum().item()
    model.train(was_training)
    return hits / len(y)


def onnx_predict(path: Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i : i + batch]})[0] for i in range(0, len(x), batch)])


def onnx_accuracy(path: Path, x: torch.Tensor, y: torch.Tensor) -> float:
    pred = onnx_predict(path, x.numpy().astype(np.float32)).argmax(1)
    return float((pred == y.numpy()).mean())


def evaluator(name: str | None, spec=None) -> Callable[[nn.Module], float] | None:
    data = eval_set(name, spec)
    if data is None:
        return None
    x, y, _ = data
    return lambda model: torch_accuracy(model, x, y)
