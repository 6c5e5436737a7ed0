"""Real-data accuracy for reports only: the stages never see these data."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from pipeline.errors import UsageError


def eval_set(name: str | None) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    if name is None:
        return None
    if name == "digits":
        from pipeline.tasks import digits

        x, y = digits.test_set()
        return x, y, f"digits test split ({len(y)} images, scikit-learn load_digits, random_state=0)"
    raise UsageError(f"unknown eval set '{name}'; choose one of: digits")


def check_compatible(name: str | None, input_shape: tuple[int, ...], num_classes: int) -> None:
    if name == "digits":
        from pipeline.tasks import digits

        if tuple(input_shape) != digits.INPUT_SHAPE or num_classes != digits.NUM_CLASSES:
            raise UsageError(f"--eval digits needs a teacher on [1, 8, 8] inputs with 10 classes, "
                             f"this one takes {list(input_shape)} with {num_classes} classes")


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


def evaluator(name: str | None) -> Callable[[nn.Module], float] | None:
    data = eval_set(name)
    if data is None:
        return None
    x, y, _ = data
    return lambda model: torch_accuracy(model, x, y)
