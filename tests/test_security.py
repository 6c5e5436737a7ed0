"""Untrusted files: no pickle ever runs code, and a tampered bundle is refused before it is used."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config, to_dict
from tests.conftest import run_cli
from tests.test_errors import assert_one_line_error


class Payload:
    """Unpickling this runs `touch MARKER`: the attack a weights file can carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _teacher_toml(d: Path, weights: str) -> Path:
    (d / "models.py").write_text("from torch import nn\n\ndef build():\n    return nn.Sequential(nn.Linear(6, 4))\n")
    p = d / f"{weights}.toml"
    p.write_text(f'[teacher]\nfactory = "models.py:build"\nweights = "{weights}"\ninput_shape = [6]\nnum_classes = 4\n')
    return p


@pytest.mark.parametrize("fmt", ["torch-zip", "plain-pickle"])
def test_crafted_pickle_weights_never_execute(tmp_path, fmt):
    marker = tmp_path / "PWNED"
    state = {"0.weight": torch.zeros(4, 6), "0.bias": Payload(marker)}
    if fmt == "torch-zip":
        torch.save(state, tmp_path / "evil.pt")
    else:
        (tmp_path / "evil.pt").write_bytes(pickle.dumps(state, protocol=2))
    assert not marker.exists()
    r = run_cli("run", "--config", str(_teacher_toml(tmp_path, "evil.pt")), "--preset", "smoke", "--out",
                str(tmp_path / "out"), cwd=tmp_path, timeout=180)
    assert_one_line_error(r, 2, "evil.pt", "code is never unpickled")
    assert not marker.exists(), "the pickle's payload ran"


def test_crafted_checkpoint_on_resume_never_executes(tmp_path):
    """--resume reads distill/checkpoint.pt: a planted pickle there is refused, not run."""
    marker = tmp_path / "PWNED"
    out = tmp_path / "run"
    (out / "distill").mkdir(parents=True)
    cfg = load_config(None, {"preset": "smoke", "distill.iterations": 4})
    (out / "run.json").write_text(json.dumps({"config": to_dict(cfg), "task": {}, "stages": {}}))
    torch.save({"iteration": 2, "student": Payload(marker)}, out / "distill" / "checkpoint.pt")
    r = run_cli("run", "--resume", "--out", str(out), cwd=tmp_path, timeout=180)
    assert_one_line_error(r, 2, "checkpoint", "corrupt or not from this pipeline")
    assert not marker.exists(), "the checkpoint's payload ran"


# ---- a tampered bundle ----------------------------------------------------------------------------

@pytest.fixture()
def bundle_copy(jetson_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(jetson_bundle, dst)
    return dst


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("command", ["benchmark", "build-engine"])
def test_flipped_byte_refused(bundle_copy, command):
    _flip_byte(bundle_copy / "student_int8.onnx")
    before = (bundle_copy / "report.json").read_bytes()
    r = run_cli(command, str(bundle_copy), timeout=120)
    assert_one_line_error(r, 1, "student_int8.onnx does not match its sha256", "tampered or corrupt", "refusing")
    assert (bundle_copy / "report.json").read_bytes() == before  # nothing was measured or rewritten


def test_update_refuses_tampered_bundle(bundle_copy, tmp_path):
    _flip_byte(bundle_copy / "vae.safetensors")
    new = tmp_path / "new.toml"
    new.write_text('[teacher]\nfactory = "core.tasks.digits:build_teacher"\ninput_shape = [1, 8, 8]\nnum_classes = 10\n')
    r = run_cli("update", str(bundle_copy), "--config", str(new), "--out", str(tmp_path / "updated"), timeout=180)
    assert_one_line_error(r, 1, "vae.safetensors does not match its sha256")
    assert not (tmp_path / "updated").exists()


def _edit_manifest(bundle: Path, fn) -> None:
    m = json.loads((bundle / "manifest.json").read_text())
    fn(m)
    (bundle / "manifest.json").write_text(json.dumps(m))


def _art(m: dict, role: str) -> dict:
    return next(a for a in m["artifacts"] if a["role"] == role)


def test_other_tampering_refused(bundle_copy, tmp_path):
    b = bundle_copy
    # a truncated artifact
    data = (b / "student_fp32.onnx").read_bytes()
    (b / "student_fp32.onnx").write_bytes(data[:-10])
    assert_one_line_error(run_cli("benchmark", str(b), timeout=120), 1, "student_fp32.onnx does not match")
    (b / "student_fp32.onnx").write_bytes(data)

    # a missing artifact
    (b / "student_int8.onnx").rename(tmp_path / "int8.onnx")
    assert_one_line_error(run_cli("benchmark", str(b), timeout=120), 1, "bundle artifact missing: student_int8.onnx")

    # the same bytes behind a link that leaves the bundle
    (b / "student_int8.onnx").symlink_to(tmp_path / "int8.onnx")
    assert_one_line_error(run_cli("benchmark", str(b), timeout=120), 1, "student_int8.onnx links outside the bundle")
    (b / "student_int8.onnx").unlink()
    (tmp_path / "int8.onnx").rename(b / "student_int8.onnx")

    # a manifest entry pointing out of the bundle
    _edit_manifest(b, lambda m: _art(m, "student-int8-onnx").update(path="../../etc/passwd"))
    assert_one_line_error(run_cli("build-engine", str(b), timeout=120), 2, "must name a file inside the bundle")

    # a manifest whose hash is not a sha256
    _edit_manifest(b, lambda m: _art(m, "student-int8-onnx").update(path="student_int8.onnx", sha256="abc"))
    assert_one_line_error(run_cli("benchmark", str(b), timeout=120), 2, "sha256 must be 64 lowercase hex digits")


def test_update_never_overwrites_its_parent(bundle_copy, tmp_path):
    new = tmp_path / "new.toml"
    new.write_text('[teacher]\nfactory = "core.tasks.digits:build_teacher"\ninput_shape = [1, 8, 8]\nnum_classes = 10\n')
    r = run_cli("update", str(bundle_copy), "--config", str(new), "--out", str(bundle_copy), "--force", timeout=180)
    assert_one_line_error(r, 2, "--out must differ from BUNDLE")
    from core.bundle import verify_bundle

    verify_bundle(bundle_copy)  # intact
