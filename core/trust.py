"""Verify a bundle against a trusted key: signature over the manifest bytes, then every artifact.

The manifest is read once; the bytes whose signature was checked are the bytes that are parsed, so
nothing can swap the manifest between the two steps.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.bundle import MANIFEST, Manifest, parse_manifest
from core.errors import RunError, UsageError
from core.fileio import read_input, sha256_file
from core.signing import load_public_key, verify_signature

TRUST_ENV = "PIPELINE_TRUST_KEY"


@dataclass
class Report:
    manifest: Manifest | None
    findings: list[str]  # one line per problem; empty when the bundle verifies
    signer: str | None = None

    @property
    def ok(self) -> bool:
        return not self.findings


def trust_key_path(option: str | None) -> str | None:
    """--trust wins; otherwise PIPELINE_TRUST_KEY (set once on a device, it guards every command)."""
    return option or os.environ.get(TRUST_ENV) or None


def _read_manifest_bytes(bundle: Path) -> bytes:
    if not bundle.is_dir():
        raise UsageError(f"bundle directory not found: {bundle}")
    if not (bundle / MANIFEST).is_file():
        raise UsageError(f"not a bundle (no {MANIFEST}): {bundle}")
    return read_input(bundle / MANIFEST, "manifest")


def _parse(data: bytes) -> Manifest:
    try:
        return parse_manifest(json.loads(data.decode("utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{MANIFEST}: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise UsageError(f"{MANIFEST}: not valid JSON (nested too deeply)") from exc


def artifact_findings(bundle: Path, manifest: Manifest) -> list[str]:
    """Every artifact present, inside the bundle, a regular file, with its recorded size and sha256."""
    root = bundle.resolve()
    out = []
    for a in manifest.artifacts:
        p = bundle / a.path
        if p.is_symlink() or not p.resolve().is_relative_to(root):
            out.append(f"artifact {a.path}: a link or a path leaving the bundle; refusing")
        elif not p.is_file():
            out.append(f"artifact {a.path}: missing")
        elif p.stat().st_size != a.bytes or sha256_file(p) != a.sha256:
            out.append(f"artifact {a.path}: does not match its sha256 in {MANIFEST} (tampered or corrupt)")
    return out


def check_bundle(bundle: Path, trusted: Ed25519PublicKey | None) -> Report:
    """All findings, for `pipeline verify`; the signature first when a key is trusted."""
    data = _read_manifest_bytes(bundle)
    signer = None
    findings = []
    if trusted is not None:
        try:
            signer = verify_signature(bundle, trusted, data)
        except RunError as exc:
            findings.append(f"signature: {exc}")
    manifest = _parse(data)
    findings += artifact_findings(bundle, manifest)
    return Report(manifest, findings, signer)


def require_trusted(bundle: str | Path, trust_option: str | None) -> Manifest | None:
    """With a trust key set (option or environment), refuse the bundle at its first problem; else do nothing."""
    path = trust_key_path(trust_option)
    if path is None:
        return None
    report = check_bundle(Path(bundle), load_public_key(path))
    if not report.ok:
        raise RunError(f"{bundle}: {report.findings[0]}")
    return report.manifest


def verified(bundle: Path, trusted: Ed25519PublicKey | None) -> Manifest:
    report = check_bundle(bundle, trusted)
    if not report.ok:
        raise RunError(f"{bundle}: {report.findings[0]}")
    return report.manifest

