"""Ed25519 keys and detached signatures over the exact bytes of manifest.json.

The manifest pins every artifact's sha256, its lineage version and its parent, so one signature over
its bytes covers the whole bundle; a signature never transfers to a manifest with other bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.bundle import MANIFEST
from core.errors import RunError, UsageError
from core.fileio import read_input, write_bytes, write_json

SIGNATURE = MANIFEST + ".sig"
PRIVATE_KEY = "signing_key.pem"
PUBLIC_KEY = "signing_key.pub.pem"
ALGORITHM = "ed25519"


def key_id(public: Ed25519PublicKey) -> str:
    """A short fingerprint for messages: which key signed, which key is trusted."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(out_dir: Path) -> tuple[Path, Path]:
    """Write a new key pair into out_dir; never overwrite an existing private key."""
    private_path, public_path = out_dir / PRIVATE_KEY, out_dir / PUBLIC_KEY
    if private_path.exists() or public_path.exists():
        raise UsageError(f"{out_dir} already holds a key pair; choose another --out (keys are never overwritten)")
    out_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    # Created 0600 from the start: the private key is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    write_bytes(public_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                           serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    data = read_input(Path(path), "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not an unencrypted PEM private key ({str(exc).splitlines()[0][:120]})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise UsageError(f"{path} is not an Ed25519 private key; make one with `pipeline keygen`")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    data = read_input(Path(path), "trust key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{path} is not a PEM public key ({str(exc).splitlines()[0][:120]})") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise UsageError(f"{path} is not an Ed25519 public key; use the .pub.pem file from `pipeline keygen`")
    return key


def sign_bundle(bundle: Path, key: Ed25519PrivateKey) -> Path:
    """Write BUNDLE/manifest.json.sig over the manifest's bytes as they are on disk."""
    data = (bundle / MANIFEST).read_bytes()
    sig = {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
           "signature": base64.b64encode(key.sign(data)).decode("ascii")}
    return write_json(bundle / SIGNATURE, sig)


def clear_signature(bundle: Path) -> None:
    """A re-exported manifest is not what an earlier signature covered: drop the stale signature."""
    (bundle / SIGNATURE).unlink(missing_ok=True)


def read_signature(bundle: Path) -> tuple[bytes, str]:
    """The raw signature and the signer's key id, or RunError naming what is wrong."""
    path = bundle / SIGNATURE
    if not path.is_file():
        raise RunError(f"not signed (no {SIGNATURE}); refusing an unsigned bundle")
    try:
        sig = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(sig, dict) or sig.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm must be {ALGORITHM}")
        raw = base64.b64decode(sig["signature"], validate=True)
        if len(raw) != 64:
            raise ValueError("an Ed25519 signature is 64 bytes")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise RunError(f"{SIGNATURE} is malformed ({str(exc)[:120]}); refusing") from exc
    return raw, str(sig.get("key_id", "?"))


def verify_signature(bundle: Path, trusted: Ed25519PublicKey, manifest_bytes: bytes) -> str:
    """Check the detached signature over manifest_bytes; return the signer's key id or raise RunError."""
    raw, signer = read_signature(bundle)
    try:
        trusted.verify(raw, manifest_bytes)
    except InvalidSignature:
        if signer != key_id(trusted):
            raise RunError(f"signed by key {signer}, not by the trusted key {key_id(trusted)}; refusing") from None
        raise RunError("the signature does not match manifest.json (altered after signing); refusing") from None
    return signer
