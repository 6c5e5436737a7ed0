"""Health probes: synthetic inputs and the deployable model's outputs on them, recorded at export.

An install runs the installed model on the same inputs and compares: same shape, finite, and argmax
agreement at least the recorded figure. The figure is the agreement of the deployable model with
the FP32 student on the probes: a runtime that changes predictions more than quantization did is
not healthy. Probes are drawn from noise, the pipeline never holds data; those with the widest
top-2 margin are kept, so a healthy runtime's small numeric differences do not flip them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.bundle import Manifest
from core.errors import RunError
from core.fileio import atomic_path

PROBES = "health_probes.npz"
ROLE = "health-probes"
DEPLOYABLE_ROLES = ("ort-model", "student-int8-onnx")
REFERENCE_ROLES = ("ort-model-fp32", "student-fp32-onnx")
_CANDIDATES = 256
_KEEP = 32


@dataclass
class Health:
    ok: bool
    agreement: float
    required: float
    message: str


def _model_path(bundle: Path, manifest: Manifest, roles: tuple[str, ...]) -> Path | None:
    art = next((manifest.artifact(r) for r in roles if manifest.artifact(r) is not None), None)
    return bundle / art.path if art is not None else None


def _run(model: Path, input_name: str, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {input_name: x})[0])


def write_probes(bundle: Path, manifest: Manifest, seed: int = 0) -> Path:
    """Record probe inputs, expected outputs and the agreement figure; return the file's path."""
    deployable = _model_path(bundle, manifest, DEPLOYABLE_ROLES)
    reference = _model_path(bundle, manifest, REFERENCE_ROLES)
    if deployable is None or reference is None:
        raise RunError(f"{bundle}: no deployable model to record health probes for")
    shape = [int(d) for d in manifest.input["shape"][1:]]
    name = manifest.input.get("name", "input")
    x = np.random.default_rng(seed).standard_normal((_CANDIDATES, *shape)).astype(np.float32)
    y = _run(deployable, name, x)
    top2 = np.sort(y, axis=1)[:, -2:]
    keep = np.argsort(top2[:, 1] - top2[:, 0])[-_KEEP:]
    x, y = x[keep], y[keep]
    agreement = float((_run(reference, name, x).argmax(1) == y.argmax(1)).mean())
    path = bundle / PROBES
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, inputs=x, expected=y, min_agreement=np.float64(agreement))
    return path


def health_check(bundle: Path, manifest: Manifest) -> Health:
    """Load the deployable model with onnxruntime and compare its outputs on the recorded probes."""
    art = manifest.artifact(ROLE)
    model = _model_path(bundle, manifest, DEPLOYABLE_ROLES)
    if art is None:
        return Health(False, 0.0, 1.0, "no health probes recorded (exported by an older pipeline); export it again")
    if model is None:
        return Health(False, 0.0, 1.0, "no deployable model")
    try:
        with np.load(bundle / art.path, allow_pickle=False) as probes:
            x, expected, required = probes["inputs"], probes["expected"], float(probes["min_agreement"])
        y = _run(model, manifest.input.get("name", "input"), x)
    except Exception as exc:  # any failure to load or run the model is an unhealthy install
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        return Health(False, 0.0, 1.0, f"health check: the model does not run: {first}")
    if y.shape != expected.shape:
        return Health(False, 0.0, required, f"health check: output shape {list(y.shape)}, expected {list(expected.shape)}")
    if not np.isfinite(y).all():
        return Health(False, 0.0, required, "health check: the model's outputs are not finite")
    agreement = float((y.argmax(1) == expected.argmax(1)).mean())
    if agreement < required:
        return Health(False, agreement, required,
                      f"health check: agreement with the recorded outputs {agreement:.3f}, below the recorded {required:.3f}")
    return Health(True, agreement, required, f"health check: agreement {agreement:.3f} (required {required:.3f})")
