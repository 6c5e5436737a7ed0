"""On-device update: a new teacher, replay from the bundle's VAE, a parent-linked bundle; privacy."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

from core.tasks import digits
from core.teacher import load_weights
from stages.distill.probes import synthesize_probes
from tests.conftest import run_cli

SWAP = {1: 7, 7: 1}


@pytest.fixture(scope="module")
def new_teacher_config(tmp_path_factory) -> Path:
    """T2: the built-in teacher fine-tuned so classes 1 and 7 trade places."""
    d = tmp_path_factory.mktemp("t2")
    t1 = digits.build_teacher()
    load_weights(t1, digits.WEIGHTS)
    t2 = digits.fine_tune(t1, SWAP, epochs=3)
    save_file({k: v.contiguous() for k, v in t2.state_dict().items()}, str(d / "t2.safetensors"))
    (d / "new.toml").write_text(
        '[teacher]\nfactory = "core.tasks.digits:build_teacher"\nweights = "t2.safetensors"\n'
        "input_shape = [1, 8, 8]\nnum_classes = 10\nmean = [0.3059]\nstd = [0.3782]\nscale = 0.0625\n"
    )
    return d / "new.toml"


def _predict(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path)).run(None, {"input": x})[0].argmax(1)


def test_update_moves_student_toward_new_teacher(jetson_bundle, new_teacher_config, tmp_path):
    out = tmp_path / "updated"
    r = run_cli("update", str(jetson_bundle), "--config", str(new_teacher_config), "--out", str(out),
                "--preset", "smoke", "--set", "distill.iterations=24")
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text())
    assert m["parent"] == hashlib.sha256((jetson_bundle / "manifest.json").read_bytes()).hexdigest()
    assert m["target"] == "jetson"

    t2 = digits.build_teacher()
    load_weights(t2, new_teacher_config.parent / "t2.safetensors")
    probes, labels = synthesize_probes(t2.eval(), (1, 8, 8), 10, 16, seed=99)
    x = probes.numpy().astype(np.float32)
    old = (_predict(jetson_bundle / "student_fp32.onnx", x) == labels.numpy()).mean()
    new = (_predict(out / "student_fp32.onnx", x) == labels.numpy()).mean()
    assert new > old, (old, new)


def test_update_refuses_tampered_bundle(jetson_bundle, new_teacher_config, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(jetson_bundle, copy)
    vae = copy / "vae.safetensors"
    data = bytearray(vae.read_bytes())
    data[-1] ^= 0xFF
    vae.write_bytes(bytes(data))
    r = run_cli("update", str(copy), "--config", str(new_teacher_config), "--out", str(tmp_path / "u"), "--preset", "smoke")
    assert r.returncode == 1 and "vae.safetensors" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "u").exists()


def test_update_needs_a_config(jetson_bundle, tmp_path):
    r = run_cli("update", str(jetson_bundle), "--out", str(tmp_path / "u"))
    assert r.returncode == 2 and "--config" in r.stderr


def test_no_artifact_contains_training_or_evaluation_data(jetson_bundle, mobile_bundle):
    """The digits images, raw or normalised, in any dtype the pipeline uses, appear in no file of a bundle."""
    from sklearn.datasets import load_digits

    images = load_digits().images
    patterns = set()
    for img in images:
        norm = (img * digits.SCALE - digits.MEAN[0]) / digits.STD[0]
        for arr in (norm.astype(np.float32), img.astype(np.float32), norm.astype(np.float64)):
            row = arr.tobytes()
            if len(set(row)) > 8:  # skip near-constant rows that could match by chance
                patterns.add(row[:128])  # the first 4 image rows are distinctive enough
    for bundle in (jetson_bundle, mobile_bundle):
        for path in bundle.rglob("*"):
            if path.is_file():
                blob = path.read_bytes()
                assert not any(p in blob for p in patterns), f"{path} holds dataset bytes"
