"""CLI commands for trusted bundles: keygen, verify, install, rollback; and the --sign-key/--trust options."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from core.errors import RunError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from core.ui import Console

CONTEXT = {"help_option_names": ["-h", "--help"]}

sign_key_option = click.option("--sign-key", type=click.Path(dir_okay=False), default=None,
                               help="Ed25519 private key (pipeline keygen): sign manifest.json into manifest.json.sig")
trust_option = click.option("--trust", type=click.Path(dir_okay=False), default=None,
                            help="Ed25519 public key: refuse bundles not signed by it (default: $PIPELINE_TRUST_KEY)")


def load_sign_key(path: str | None) -> Ed25519PrivateKey | None:
    """Load the key before any work starts, so a bad key path fails in a second, not after a run."""
    if path is None:
        return None
    from core.signing import load_private_key

    return load_private_key(path)


def sign_output(out: Path, key: Ed25519PrivateKey | None, console: Console) -> None:
    if key is None:
        return
    from core.signing import key_id, sign_bundle

    console.out.print(f"signed: {sign_bundle(out, key)} (key {key_id(key.public_key())})", markup=False, soft_wrap=True)


def _trusted_key(trust: str | None) -> Ed25519PublicKey | None:
    from core.signing import load_public_key
    from core.trust import trust_key_path

    path = trust_key_path(trust)
    return load_public_key(path) if path else None


@click.command(context_settings=CONTEXT)
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Directory for the key pair.")
@click.pass_obj
def keygen(obj, out):
    """Make an Ed25519 key pair: signing_key.pem (private, 0600) and signing_key.pub.pem (for devices)."""
    from core.signing import generate_keypair, key_id, load_public_key

    private, public = generate_keypair(Path(out))
    obj["console"].out.print(f"private key: {private} (keep it off devices)\npublic key: {public} "
                             f"(key {key_id(load_public_key(public))}; give it to devices as --trust)", markup=False, soft_wrap=True)


@click.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path())
@trust_option
@click.pass_obj
def verify(obj, bundle, trust):
    """Check a bundle's signature and every artifact's sha256; one line per finding."""
    from core.trust import check_bundle

    key = _trusted_key(trust)
    report = check_bundle(Path(bundle), key)
    out = obj["console"].out
    for f in report.findings:
        out.print(f"FAIL {f}", markup=False, soft_wrap=True)
    if not report.ok:
        raise RunError(f"{bundle} does not verify ({len(report.findings)} finding(s))")
    m = report.manifest
    signed = f"signed by key {report.signer}" if key is not None else "signature not checked (no --trust)"
    out.print(f"ok {bundle}: {signed}; version {m.version}; {len(m.artifacts)} artifacts match their sha256", markup=False, soft_wrap=True)


@click.command(context_settings=CONTEXT)
@click.argument("bundle", type=click.Path())
@click.option("--into", type=click.Path(file_okay=False), required=True, help="Install directory (slots/ and current).")
@trust_option
@click.option("--allow-downgrade", is_flag=True, help="Install a bundle whose version is older than the installed one.")
@click.option("--keep", type=int, default=3, show_default=True, help="Slots kept, the current one included.")
@click.pass_obj
def install(obj, bundle, into, trust, allow_downgrade, keep):
    """Copy a bundle into a new slot, verify and health-check it, then switch `current` atomically."""
    from pipeline.trust.install import install as do_install

    r = do_install(Path(bundle), Path(into), _trusted_key(trust), allow_downgrade, keep)
    pruned = f"; pruned {', '.join(r.pruned)}" if r.pruned else ""
    obj["console"].out.print(f"installed version {r.manifest.version} into {r.slot} ({r.health}); current -> "
                             f"{r.slot.name}{pruned}", markup=False, soft_wrap=True)


@click.command(context_settings=CONTEXT)
@click.option("--into", type=click.Path(file_okay=False), required=True, help="Install directory.")
@trust_option
@click.pass_obj
def rollback(obj, into, trust):
    """Switch `current` back to the slot installed before it (verified and health-checked first)."""
    from pipeline.trust.install import rollback as do_rollback

    r = do_rollback(Path(into), _trusted_key(trust))
    obj["console"].out.print(f"rolled back: current -> {r.slot.name} (version {r.manifest.version}; was "
                             f"{r.previous.name if r.previous else 'none'})", markup=False, soft_wrap=True)



def lineage_of(directory: Path) -> tuple[str | None, int]:
    """A re-export keeps the place in its lineage that the directory's manifest already holds."""
    from core.bundle import MANIFEST, read_manifest
    from core.errors import UsageError

    if not (directory / MANIFEST).is_file():
        return None, 1
    try:
        m = read_manifest(directory)
    except UsageError:  # an unreadable manifest is about to be replaced; it holds no lineage to keep
        return None, 1
    return m.parent, m.version


COMMANDS = (keygen, verify, install, rollback)
