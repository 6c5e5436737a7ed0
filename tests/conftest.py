"""Shared helpers: the real CLI in a subprocess, and smoke bundles built once per test session."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `pipeline ARGS` as a user would, in a fresh interpreter."""
    e = dict(os.environ, PYTHONUNBUFFERED="1")
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], cwd=cwd or ROOT, capture_output=True,
                          text=True, timeout=timeout, env=e)


@pytest.fixture(scope="session")
def jetson_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "jetson"
    r = run_cli("run", "--target", "jetson", "--preset", "smoke", "--device", "cpu", "--eval", "digits", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="session")
def mobile_bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "mobile"
    r = run_cli("run", "--target", "mobile", "--preset", "smoke", "--device", "cpu", "--eval", "digits", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    return out
