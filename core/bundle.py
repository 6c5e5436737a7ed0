"""The bundle contract: manifest.json with every artifact's role, size and sha256.

Readers verify hashes before trusting a bundle (a tampered or truncated artifact is refused).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from core import FORMAT_VERSION, __version__
from core.errors import RunError, UsageError
from core.fileio import sha256_file, write_json

MANIFEST = "manifest.json"
REPORT = "report.json"


@dataclass
class Artifact:
    path: str  # relative to the bundle directory
    role: str
    sha256: str
    bytes: int


@dataclass
class Manifest:
    target: str
    input: dict
    num_classes: int
    classes: list | None = None
    artifacts: list[Artifact] = field(default_factory=list)
    parent: str | None = None
    version: int = 1  # grows by one per update along a lineage; installs refuse to go back
    format_version: int = FORMAT_VERSION
    pipeline_version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        d = {
            "format_version": self.format_version,
            "pipeline_version": self.pipeline_version,
            "target": self.target,
            "created": self.created,
            "input": self.input,
            "num_classes": self.num_classes,
            "classes": self.classes,
            "artifacts": [a.__dict__ for a in self.artifacts],
            "parent": self.parent,
            "version": self.version,
        }
        d.update(self.extra)
        return d

    def artifact(self, role: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.role == role), None)

    def add(self, bundle_dir: Path, path: Path, role: str) -> Artifact:
        rel = Path(path).resolve().relative_to(Path(bundle_dir).resolve()).as_posix()
        self.artifacts = [a for a in self.artifacts if a.path != rel]
        art = Artifact(rel, role, sha256_file(path), Path(path).stat().st_size)
        self.artifacts.append(art)
        return art


_REQUIRED = {"format_version": int, "target": str, "input": dict, "num_classes": int, "artifacts": list}
_KNOWN = set(_REQUIRED) | {"pipeline_version", "created", "classes", "parent", "version"}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def parse_manifest(data: object) -> Manifest:
    """Validate a decoded manifest; raise UsageError naming the first problem."""
    if not isinstance(data, dict):
        raise UsageError("manifest.json: expected a JSON object")
    for key, typ in _REQUIRED.items():
        if key not in data:
            raise UsageError(f"manifest.json: missing field '{key}'")
        if not isinstance(data[key], typ) or isinstance(data[key], bool):
            raise UsageError(f"manifest.json: field '{key}' must be {typ.__name__}")
    if data["format_version"] < 1:
        raise UsageError(f"manifest.json: format_version must be >= 1, got {data['format_version']}")
    if data["format_version"] > FORMAT_VERSION:
        raise UsageError(
            f"manifest.json: format_version {data['format_version']} is newer than this pipeline "
            f"understands ({FORMAT_VERSION}); upgrade the pipeline"
        )
    for key in ("pipeline_version", "created", "parent"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise UsageError(f"manifest.json: field '{key}' must be a string")
    if data.get("classes") is not None and not isinstance(data["classes"], list):
        raise UsageError("manifest.json: field 'classes' must be a list or null")
    version = data.get("version", 1)  # bundles before format 2 carry none: the first of their lineage
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise UsageError("manifest.json: field 'version' must be a positive integer")
    if data["num_classes"] < 1:
        raise UsageError(f"manifest.json: num_classes must be positive, got {data['num_classes']}")
    shape = data["input"].get("shape")
    if shape is not None and not isinstance(shape, list):
        raise UsageError("manifest.json: input.shape must be a list")
    arts = []
    for i, a in enumerate(data["artifacts"]):
        if not isinstance(a, dict):
            raise UsageError(f"manifest.json: artifacts[{i}] must be an object")
        for key, typ in (("path", str), ("role", str), ("sha256", str), ("bytes", int)):
            if not isinstance(a.get(key), typ) or isinstance(a.get(key), bool):
                raise UsageError(f"manifest.json: artifacts[{i}].{key} must be {typ.__name__}")
        p = Path(a["path"])
        if not a["path"].strip() or "\0" in a["path"] or p.is_absolute() or ".." in p.parts or p.as_posix() == ".":
            raise UsageError(f"manifest.json: artifacts[{i}].path must name a file inside the bundle: {a['path']!r}")
        if not _SHA256.fullmatch(a["sha256"]):
            raise UsageError(f"manifest.json: artifacts[{i}].sha256 must be 64 lowercase hex digits")
        if a["bytes"] < 0:
            raise UsageError(f"manifest.json: artifacts[{i}].bytes must be >= 0")
        arts.append(Artifact(a["path"], a["role"], a["sha256"], a["bytes"]))
    return Manifest(
        target=data["target"],
        input=data["input"],
        num_classes=data["num_classes"],
        classes=data.get("classes"),
        artifacts=arts,
        parent=data.get("parent"),
        version=version,
        format_version=data["format_version"],
        pipeline_version=data.get("pipeline_version") or "",
        created=data.get("created") or "",
        extra={k: v for k, v in data.items() if k not in _KNOWN},
    )


def read_manifest(bundle_dir: str | Path) -> Manifest:
    path = Path(bundle_dir) / MANIFEST
    if not Path(bundle_dir).is_dir():
        raise UsageError(f"bundle directory not found: {bundle_dir}")
    if not path.is_file():
        raise UsageError(f"not a bundle (no {MANIFEST}): {bundle_dir}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: not valid JSON ({exc})") from exc
    except RecursionError as exc:
        raise UsageError(f"{path}: not valid JSON (nested too deeply)") from exc
    except OSError as exc:
        raise UsageError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    return parse_manifest(data)


def verify_bundle(bundle_dir: str | Path) -> Manifest:
    """Read the manifest and check every artifact's size and sha256; refuse a tampered bundle."""
    manifest = read_manifest(bundle_dir)
    root = Path(bundle_dir).resolve()
    for a in manifest.artifacts:
        p = Path(bundle_dir) / a.path
        if not p.is_file():
            raise RunError(f"bundle artifact missing: {a.path}; the bundle is incomplete, copy it again")
        if not p.resolve().is_relative_to(root):
            raise RunError(f"bundle artifact {a.path} links outside the bundle; refusing")
        if p.stat().st_size != a.bytes or sha256_file(p) != a.sha256:
            raise RunError(f"bundle artifact {a.path} does not match its sha256 in manifest.json (tampered or corrupt); refusing")
    return manifest


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    return write_json(Path(bundle_dir) / MANIFEST, manifest.to_json())


def manifest_sha256(bundle_dir: str | Path) -> str:
    return sha256_file(Path(bundle_dir) / MANIFEST)
