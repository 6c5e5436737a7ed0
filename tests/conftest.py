"""Shared helpers: the real CLI in a subprocess, and smoke bundles built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `pipeline ARGS` as a user would, in a fresh interpreter."""
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env=e)


def onnx_test_accuracy(model: Path, x, y) -> float:
    """Accuracy of an ONNX model computed here, with ONNX Runtime directly: what a report claims is checked
    against it, not against the pipeline's own evaluation code."""
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, dtype=np.float32)})[0]
    return float((logits.argmax(1) == np.asarray(y)).mean())


def digits_test_split():
    """The built-in task's real test split, normalised as the teacher reads it."""
    from core.tasks import digits

    x, y = digits.test_set()
    return x.numpy(), y.numpy()


def _smoke_bundle(tmp_path_factory, target: str) -> Path:
    out = tmp_path_factory.mktemp("bundles") / target
    r = run_cli("run", "--target", target, "--preset", "smoke", "--device", "cpu", "--eval", "digits", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def jetson_bundle(tmp_path_factory) -> Path:
    return _smoke_bundle(tmp_path_factory, "jetson")


@pytest.fixture(scope="session")
def mobile_bundle(tmp_path_factory) -> Path:
    return _smoke_bundle(tmp_path_factory, "mobile")
