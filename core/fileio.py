"""Atomic file writes and hashing: an artifact is either complete on disk or absent."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from core.errors import RunError, UsageError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_PROBE_BYTES = 1 << 20


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _disk_full(tmp: Path) -> bool:
    """After a writer failed with a non-OS error (torch, safetensors, onnx wrap ENOSPC in their own
    exceptions): is the file system full? Probe by appending to the partial temporary file."""
    try:
        st = os.statvfs(tmp.parent)
        if st.f_bavail * st.f_frsize < _PROBE_BYTES:
            return True
        with open(tmp, "ab") as f:
            f.write(b"\0" * _PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        return exc.errno in _FULL
    return False


def _write_error(path: Path, exc: OSError) -> RunError:
    if exc.errno in _FULL:
        return RunError(f"no space left on device while writing {path}; free some space, then rerun with --resume")
    return RunError(f"could not write {path}: {exc.strerror or exc}")


def fsync_path(directory: Path) -> None:
    """Flush a file or directory entry to disk where the file system can; a no-op where it cannot."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every file system can sync a directory
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    A crash at any point leaves either the old file or the new one, never a torn one; a failed
    write (disk full included) raises RunError naming the file and removes the temporary.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get ordinary permissions
        os.replace(tmp_path, path)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _write_error(path, exc) from exc
    except Exception as exc:
        full = _disk_full(tmp_path)
        tmp_path.unlink(missing_ok=True)
        if full:
            raise _write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))) from exc
        raise
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def remove_stale_temporaries(directory: str | os.PathLike) -> int:
    """Delete temporaries a killed process left behind (`.NAME.*.tmp`); return how many."""
    n = 0
    for p in Path(directory).rglob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            n += 1
    return n


def torch_load_reason(exc: BaseException) -> str:
    """The informative line of a torch.load(weights_only=True) failure, without torch's advice to
    retry with weights_only=False (which would execute code from the file)."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        # torch's own lines around the unpickler's error advise loading with weights_only=False
        named = [ln for ln in lines if ln.startswith("WeightsUnpickler error:")]
        useful = named or [ln for ln in lines[1:] if not ln.startswith(("Please file an issue", "Check the documentation"))]
        detail = " ".join(useful).replace("WeightsUnpickler error: ", "").strip()
        held = re.search(r"GLOBAL ([\w.]+) was not an allowed global", detail)
        if held:
            return (f"the file pickles a {held.group(1)} object, not a state_dict of tensors, and code from a file is "
                    "never run: save model.state_dict() (torch.save or safetensors) instead")
        if "GLOBAL" in detail or "REDUCE" in detail or "blocked" in detail:
            return f"the pickle references code, which is never executed ({detail[:160]})"
        return f"not a weights-only pickle ({detail[:160] or 'unreadable'})"
    return lines[0][:200]


def read_input(path: Path, what: str) -> bytes:
    """A file the user named, whole; missing or unreadable is their one-line usage error."""
    if not path.is_file():
        raise UsageError(f"{what} not found: {path}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{what} {path} cannot be read: {exc.strerror or exc}") from exc
