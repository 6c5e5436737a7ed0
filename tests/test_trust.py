"""Trusted updates: signed bundles, refused attacks, atomic installs with a health check, rollback.

Real keys, real files, the real CLI in subprocesses; one signed lineage (version 1, its update version 2)
is built once for the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from core.bundle import parse_manifest
from core.fileio import sha256_file
from core.tasks import digits
from pipeline.trust.install import CURRENT, SLOTS, current_slot
from core.health import health_check
from core.signing import SIGNATURE, generate_keypair, load_private_key, load_public_key, sign_bundle
from core.trust import check_bundle
from tests.conftest import run_cli
from tests.test_errors import assert_one_line_error


@dataclass
class Lineage:
    keys: Path
    v1: Path
    v2: Path

    @property
    def pub(self) -> str:
        return str(self.keys / "signing_key.pub.pem")

    @property
    def priv(self) -> str:
        return str(self.keys / "signing_key.pem")


@pytest.fixture(scope="module")
def lineage(tmp_path_factory) -> Lineage:
    d = tmp_path_factory.mktemp("trust")
    r = run_cli("keygen", "--out", str(d / "keys"))
    assert r.returncode == 0, r.stderr
    keys = d / "keys"
    v1 = d / "v1"
    r = run_cli("run", "--target", "jetson", "--preset", "smoke", "--device", "cpu", "--out", str(v1),
                "--sign-key", str(keys / "signing_key.pem"))
    assert r.returncode == 0, r.stderr[-3000:]
    (d / "same.toml").write_text(f'[teacher]\nfactory = "core.tasks.digits:build_teacher"\nweights = "{digits.WEIGHTS}"\n'
                                 "input_shape = [1, 8, 8]\nnum_classes = 10\nmean = [0.3059]\nstd = [0.3782]\nscale = 0.0625\n")
    v2 = d / "v2"
    r = run_cli("update", str(v1), "--config", str(d / "same.toml"), "--out", str(v2), "--preset", "smoke",
                "--set", "distill.iterations=4", "--trust", str(keys / "signing_key.pub.pem"),
                "--sign-key", str(keys / "signing_key.pem"))
    assert r.returncode == 0, r.stderr[-3000:]
    return Lineage(keys, v1, v2)


def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst, symlinks=True)
    return dst


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def _write_manifest(bundle: Path, m: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(m, indent=2))


def _rehash(bundle: Path, path: str) -> None:
    """What an attacker who can write the bundle does: make the manifest agree with a changed file."""
    m = _manifest(bundle)
    art = next(a for a in m["artifacts"] if a["path"] == path)
    art.update(sha256=sha256_file(bundle / path), bytes=(bundle / path).stat().st_size)
    _write_manifest(bundle, m)


def _install(bundle: Path, into: Path, *extra: str, trust: str | None = None):
    return run_cli("install", str(bundle), "--into", str(into), *(["--trust", trust] if trust else []), *extra, timeout=120)


def _current_ok(into: Path, pub: str) -> Path:
    """`current` points at a complete slot whose signature, hashes and health check all pass."""
    slot = current_slot(into)
    assert slot is not None
    report = check_bundle(slot, load_public_key(pub))
    assert report.ok, report.findings
    assert health_check(slot, report.manifest).ok
    return slot


# ---- signing and lineage --------------------------------------------------------------------------

def test_keygen_and_signed_lineage(lineage):
    assert stat.S_IMODE((lineage.keys / "signing_key.pem").stat().st_mode) == 0o600
    assert_one_line_error(run_cli("keygen", "--out", str(lineage.keys)), 2, "already holds a key pair")
    m1, m2 = _manifest(lineage.v1), _manifest(lineage.v2)
    assert (m1["version"], m2["version"]) == (1, 2)
    assert m2["parent"] == hashlib.sha256((lineage.v1 / "manifest.json").read_bytes()).hexdigest()
    assert any(a["role"] == "health-probes" for a in m1["artifacts"])
    for b in (lineage.v1, lineage.v2):
        r = run_cli("verify", str(b), "--trust", lineage.pub)
        assert r.returncode == 0, r.stderr
        assert "ok" in r.stdout and "signed by key" in r.stdout


def test_manifest_without_version_reads_as_first():
    m = parse_manifest({"format_version": 1, "target": "jetson", "input": {}, "num_classes": 2, "artifacts": []})
    assert m.version == 1
    with pytest.raises(Exception, match="'version' must be a positive integer"):
        parse_manifest({"format_version": 2, "target": "jetson", "input": {}, "num_classes": 2, "artifacts": [],
                        "version": 0})


@pytest.mark.parametrize("command", ["benchmark", "build-engine", "install", "update"])
def test_unsigned_bundle_refused_with_trust_key(lineage, tmp_path, command):
    b = _copy(lineage.v1, tmp_path / "unsigned")
    (b / SIGNATURE).unlink()
    args = {"benchmark": ["benchmark", str(b)], "build-engine": ["build-engine", str(b)],
            "install": ["install", str(b), "--into", str(tmp_path / "dev")],
            "update": ["update", str(b), "--config", str(b.parent / "x.toml"), "--out", str(tmp_path / "u")]}[command]
    if command == "update":
        (b.parent / "x.toml").write_text('[teacher]\nfactory = "core.tasks.digits:build_teacher"\n'
                                         'input_shape = [1, 8, 8]\nnum_classes = 10\n')
    # the device's environment variable guards the command as --trust would
    r = run_cli(*args, env={"PIPELINE_TRUST_KEY": lineage.pub}, timeout=120)
    assert_one_line_error(r, 1, "not signed", "refusing an unsigned bundle")
    assert not (tmp_path / "u").exists() and not (tmp_path / "dev" / CURRENT).exists()


# ---- attacks --------------------------------------------------------------------------------------

def test_changed_artifact_with_rewritten_hash_refused(lineage, tmp_path):
    b = _copy(lineage.v1, tmp_path / "b")
    data = bytearray((b / "student_int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (b / "student_int8.onnx").write_bytes(bytes(data))
    _rehash(b, "student_int8.onnx")
    assert check_bundle(b, None).ok  # the hashes alone no longer catch it
    r = run_cli("verify", str(b), "--trust", lineage.pub)
    assert_one_line_error(r, 1, "does not verify")
    assert "FAIL signature" in r.stdout and "altered after signing" in r.stdout
    assert_one_line_error(_install(b, tmp_path / "dev", trust=lineage.pub), 1, "altered after signing")
    assert not (tmp_path / "dev" / CURRENT).exists()


def test_manifest_signed_by_another_key_refused(lineage, tmp_path):
    b = _copy(lineage.v1, tmp_path / "b")
    generate_keypair(tmp_path / "attacker")
    sign_bundle(b, load_private_key(tmp_path / "attacker" / "signing_key.pem"))
    for r in (run_cli("verify", str(b), "--trust", lineage.pub), _install(b, tmp_path / "dev", trust=lineage.pub)):
        assert_one_line_error(r, 1)
        assert "not by the trusted key" in r.stdout + r.stderr


def test_old_signature_on_newer_manifest_refused(lineage, tmp_path):
    # the newer manifest carrying the older bundle's (valid) signature
    b = _copy(lineage.v2, tmp_path / "b")
    shutil.copy(lineage.v1 / SIGNATURE, b / SIGNATURE)
    assert_one_line_error(_install(b, tmp_path / "dev", trust=lineage.pub), 1, "does not match manifest.json")
    # the older manifest and its signature over the newer artifacts
    c = _copy(lineage.v2, tmp_path / "c")
    for name in ("manifest.json", SIGNATURE):
        shutil.copy(lineage.v1 / name, c / name)
    assert_one_line_error(_install(c, tmp_path / "dev", trust=lineage.pub), 1, "does not match its sha256")
    assert not (tmp_path / "dev" / CURRENT).exists()


def test_downgrade_to_older_signed_version_refused(lineage, tmp_path):
    dev = tmp_path / "dev"
    assert _install(lineage.v2, dev, trust=lineage.pub).returncode == 0
    slot = _current_ok(dev, lineage.pub)
    assert_one_line_error(_install(lineage.v1, dev, trust=lineage.pub), 1, "version 1, older than the installed version 2",
                          "--allow-downgrade")
    assert current_slot(dev) == slot
    r = _install(lineage.v1, dev, "--allow-downgrade", trust=lineage.pub)
    assert r.returncode == 0, r.stderr
    assert _manifest(_current_ok(dev, lineage.pub))["version"] == 1


def test_symlinked_artifact_refused(lineage, tmp_path):
    b = _copy(lineage.v1, tmp_path / "b")
    (b / "student_int8.onnx").rename(tmp_path / "outside.onnx")
    (b / "student_int8.onnx").symlink_to(tmp_path / "outside.onnx")  # same bytes: the signature still holds
    assert_one_line_error(_install(b, tmp_path / "dev", trust=lineage.pub), 1, "student_int8.onnx", "a link")
    assert not (tmp_path / "dev" / CURRENT).exists()


def test_traversing_artifact_path_refused_even_when_signed(lineage, tmp_path):
    b = _copy(lineage.v1, tmp_path / "b")
    m = _manifest(b)
    next(a for a in m["artifacts"] if a["role"] == "student-int8-onnx")["path"] = "../outside.onnx"
    _write_manifest(b, m)
    sign_bundle(b, load_private_key(lineage.priv))  # a signer's mistake is still not followed out of the bundle
    for r in (run_cli("verify", str(b), "--trust", lineage.pub), _install(b, tmp_path / "dev", trust=lineage.pub)):
        assert_one_line_error(r, 2, "must name a file inside the bundle")


# ---- install, health check, rollback --------------------------------------------------------------

def test_install_switches_current_and_rollback(lineage, tmp_path):
    dev = tmp_path / "dev"
    assert _install(lineage.v1, dev, trust=lineage.pub).returncode == 0
    first = _current_ok(dev, lineage.pub)
    assert os.readlink(dev / CURRENT) == f"{SLOTS}/{first.name}"  # relative: the directory can move
    assert_one_line_error(run_cli("rollback", "--into", str(dev)), 1, "no earlier slot")
    r = _install(lineage.v2, dev, trust=lineage.pub)
    assert r.returncode == 0, r.stderr
    second = _current_ok(dev, lineage.pub)
    assert second != first and _manifest(second)["version"] == 2
    r = run_cli("rollback", "--into", str(dev), "--trust", lineage.pub)
    assert r.returncode == 0, r.stderr
    assert current_slot(dev) == first
    # more installs than --keep: the oldest slots go, the current one stays
    for _ in range(3):
        assert _install(lineage.v2, dev, "--keep", "2", trust=lineage.pub).returncode == 0
    names = sorted(p.name for p in (dev / SLOTS).iterdir())
    assert len(names) == 2 and current_slot(dev).name == names[-1]


def test_failed_health_check_keeps_current(lineage, tmp_path):
    dev = tmp_path / "dev"
    assert _install(lineage.v1, dev, trust=lineage.pub).returncode == 0
    before = current_slot(dev)
    # signed by the real key, hashes right, but the model disagrees with its recorded outputs
    b = _copy(lineage.v2, tmp_path / "b")
    with np.load(b / "health_probes.npz") as p:
        probes = {k: p[k] for k in p.files}
    probes["expected"] = np.roll(probes["expected"], 1, axis=1)
    with open(b / "health_probes.npz", "wb") as f:
        np.savez(f, **probes)
    _rehash(b, "health_probes.npz")
    sign_bundle(b, load_private_key(lineage.priv))
    assert_one_line_error(_install(b, dev, trust=lineage.pub), 1, "health check", "`current` is unchanged")
    assert current_slot(dev) == before
    assert not list((dev / SLOTS).glob(".partial-*"))


def test_partial_slot_cleaned_by_next_install(lineage, tmp_path):
    dev = tmp_path / "dev"
    (dev / SLOTS / ".partial-dead").mkdir(parents=True)
    (dev / SLOTS / ".partial-dead" / "student_int8.onnx").write_bytes(b"half")
    (dev / ".current-dead").symlink_to("slots/.partial-dead")
    assert _install(lineage.v1, dev, trust=lineage.pub).returncode == 0
    assert not (dev / SLOTS / ".partial-dead").exists() and not (dev / ".current-dead").is_symlink()
    _current_ok(dev, lineage.pub)


def test_killed_install_leaves_current_verifying(lineage, tmp_path):
    dev = tmp_path / "dev"
    assert _install(lineage.v1, dev, trust=lineage.pub).returncode == 0
    before = current_slot(dev)
    # SIGKILL from inside, after the 8th checkpoint: some files copied and synced, nothing renamed
    r = run_cli("install", str(lineage.v2), "--into", str(dev), "--trust", lineage.pub,
                env={"PIPELINE_FAULT_AT": "8"}, timeout=120)
    assert r.returncode == -9, (r.returncode, r.stderr[-2000:])
    assert list((dev / SLOTS).glob(".partial-*")), "the kill did not land inside the copy"
    assert current_slot(dev) == before
    _current_ok(dev, lineage.pub)
    assert _install(lineage.v2, dev, trust=lineage.pub).returncode == 0
    assert not list((dev / SLOTS).glob(".partial-*"))
    assert _manifest(_current_ok(dev, lineage.pub))["version"] == 2
