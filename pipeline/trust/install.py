"""Atomic installs into slots with a `current` link, rollback, and pruning.

Layout of an install directory:

    DIR/current -> slots/0003-v2-1a2b3c4d5e6f   (relative symlink; replaced by rename, never edited)
    DIR/slots/0003-v2-1a2b3c4d5e6f/             (install sequence, lineage version, manifest sha256)
    DIR/slots/.partial-*/                        (a copy in progress; removed by the next install)

A slot is copied under a `.partial-` name, verified, health-checked, synced, and only then renamed
to its final name; `current` is switched by renaming a new link over it. A kill at any point leaves
`current` on the previous complete slot.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import secrets
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from core.bundle import MANIFEST, Manifest
from core.errors import RunError, UsageError
from core.fileio import fsync_path
from pipeline.trust.faults import checkpoint
from core.health import health_check
from core.signing import SIGNATURE
from core.trust import check_bundle, verified

CURRENT = "current"
SLOTS = "slots"
PARTIAL = ".partial-"
_LINK_TMP = ".current-"
_LOCK = ".lock"
_SLOT_NAME = re.compile(r"(\d+)-v(\d+)-([0-9a-f]{12})")


@dataclass
class Installed:
    slot: Path
    manifest: Manifest
    previous: Path | None
    health: str
    pruned: list[str]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def _locked(into: Path) -> Iterator[None]:
    """One install or rollback at a time per directory; the kernel drops the lock if the process dies."""
    try:
        into.mkdir(parents=True, exist_ok=True)
        (into / SLOTS).mkdir(exist_ok=True)
        fd = os.open(into / _LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UsageError(f"--into {into} cannot be used: {exc.strerror or exc}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"another install or rollback is running in {into}") from None
        yield
    finally:
        os.close(fd)


def clean_partials(into: Path) -> list[str]:
    """Remove what a killed install left: partial slot copies and unrenamed links."""
    removed = []
    for p in (into / SLOTS).glob(PARTIAL + "*"):
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p.name)
    for p in into.glob(_LINK_TMP + "*"):
        p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def current_slot(into: Path) -> Path | None:
    link = into / CURRENT
    if not link.is_symlink():
        return None
    target = (into / os.readlink(link)).resolve()
    return target if target.is_dir() else None


def _slots(into: Path) -> list[tuple[int, Path]]:
    """Complete slots, oldest install first."""
    out = []
    for p in (into / SLOTS).iterdir() if (into / SLOTS).is_dir() else ():
        m = _SLOT_NAME.fullmatch(p.name)
        if m and p.is_dir() and not p.is_symlink():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 20)
        fo.flush()
        checkpoint()
        os.fsync(fo.fileno())
    checkpoint()


def _copy_bundle(src: Path, dst: Path, manifest: Manifest) -> None:
    """Only what the manifest pins, plus the manifest and its signature: nothing unverified is installed."""
    names = [MANIFEST] + ([SIGNATURE] if (src / SIGNATURE).is_file() else []) + [a.path for a in manifest.artifacts]
    for name in names:
        _copy_file(src / name, dst / name)
    for d in sorted({(dst / n).parent for n in names}, key=lambda p: len(p.parts), reverse=True):
        fsync_path(d)
    checkpoint()


def switch_current(into: Path, slot: Path) -> None:
    """Point `current` at slot with one rename: readers see the old slot or the new one, nothing between."""
    tmp = into / f"{_LINK_TMP}{secrets.token_hex(8)}"  # under the install lock; os.symlink refuses to overwrite
    os.symlink(os.path.relpath(slot, into), tmp)
    checkpoint()
    os.replace(tmp, into / CURRENT)
    checkpoint()
    fsync_path(into)
    checkpoint()


def _installed_version(into: Path) -> int | None:
    """From the slot's name, which only an install writes, so a damaged slot still guards its version."""
    slot = current_slot(into)
    m = _SLOT_NAME.fullmatch(slot.name) if slot is not None else None
    return int(m.group(2)) if m else None


def prune(into: Path, keep: int) -> list[str]:
    """Delete the oldest slots beyond `keep`; the current slot is never deleted."""
    current = current_slot(into)
    slots = [p for _, p in _slots(into)]
    removed = []
    for p in slots[:max(0, len(slots) - keep)]:
        if current is not None and p.resolve() == current:
            continue
        shutil.rmtree(p)
        removed.append(p.name)
    return removed


def install(bundle: Path, into: Path, trusted: Ed25519PublicKey | None, allow_downgrade: bool = False,
            keep: int = 3) -> Installed:
    if keep < 1:
        raise UsageError(f"--keep must be at least 1, got {keep}")
    source = verified(bundle, trusted)  # refuse early, before anything is copied
    with _locked(into):
        clean_partials(into)
        previous = current_slot(into)
        have = _installed_version(into)
        if have is not None and source.version < have and not allow_downgrade:
            raise RunError(f"{bundle} is version {source.version}, older than the installed version {have}; "
                           f"refusing a downgrade (pass --allow-downgrade to install it anyway)")
        slots_dir = into / SLOTS
        partial = Path(tempfile.mkdtemp(prefix=PARTIAL, dir=slots_dir))
        os.chmod(partial, 0o777 & ~_umask())  # mkdtemp makes 0700; a slot is read by the device's services
        try:
            _copy_bundle(bundle, partial, source)
            manifest = verified(partial, trusted)  # the copy is what runs: verify it, not the source
            health = health_check(partial, manifest)
            if not health.ok:
                raise RunError(f"{bundle}: {health.message}; `current` is unchanged")
            sha = hashlib.sha256((partial / MANIFEST).read_bytes()).hexdigest()[:12]
            seq = max((n for n, _ in _slots(into)), default=0) + 1
            slot = slots_dir / f"{seq:04d}-v{manifest.version}-{sha}"
            os.rename(partial, slot)
            checkpoint()
            fsync_path(slots_dir)
            checkpoint()
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        switch_current(into, slot)
        return Installed(slot, manifest, previous, health.message, prune(into, keep))


def rollback(into: Path, trusted: Ed25519PublicKey | None) -> Installed:
    """Switch `current` to the newest slot installed before it that still verifies and is healthy."""
    if not (into / SLOTS).is_dir():
        raise UsageError(f"{into} is not an install directory (no {SLOTS}/)")
    with _locked(into):
        clean_partials(into)
        current = current_slot(into)
        if current is None:
            raise RunError(f"{into} has no current install to roll back from")
        seq = next((n for n, p in _slots(into) if p.resolve() == current), None)
        skipped = []
        for n, slot in reversed(_slots(into)):
            if seq is None or n >= seq:
                continue
            report = check_bundle(slot, trusted)
            health = health_check(slot, report.manifest) if report.ok else None
            if health is not None and health.ok:
                switch_current(into, slot)
                return Installed(slot, report.manifest, current, health.message, [])
            skipped.append(f"{slot.name} ({report.findings[0] if not report.ok else health.message})")
        why = f"; skipped: {', '.join(skipped)}" if skipped else ""
        raise RunError(f"{into}: no earlier slot to roll back to{why}")
