"""The last step of export: record health probes, then write the manifest that pins them.

Any earlier signature is removed first: it covered a manifest that is about to be replaced, and a
bundle is either unsigned or signed over the manifest it holds.
"""

from __future__ import annotations

from pathlib import Path

from core.bundle import Manifest, write_manifest
from core.health import ROLE, write_probes
from core.signing import clear_signature


def seal_manifest(out: Path, manifest: Manifest) -> Path:
    clear_signature(out)
    manifest.add(out, write_probes(out, manifest), ROLE)
    return write_manifest(out, manifest)
