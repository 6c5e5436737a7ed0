"""Crash safety: SIGKILL a real run during distillation, `--resume` it, and get a valid bundle."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from core.bundle import verify_bundle
from core.fileio import sha256_file
from tests.conftest import ROOT, run_cli

ITERATIONS, EVERY = 60, 5


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"run ended (exit {proc.returncode}) before writing {path.name}"
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.05)


def test_sigkill_during_distillation_then_resume(tmp_path):
    out = tmp_path / "run"
    log = (tmp_path / "first.log").open("w")
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--preset", "smoke", "--set", f"distill.iterations={ITERATIONS}",
           "--set", f"distill.checkpoint_every={EVERY}", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    ckpt = out / "distill" / "checkpoint.pt"
    try:
        _wait_for(ckpt, proc, timeout=240)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        log.close()
    assert proc.returncode == -signal.SIGKILL

    # What the killed run left: a complete checkpoint (atomic write), no finished stage, no bundle.
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    killed_at = int(state["iteration"])
    assert killed_at % EVERY == 0 and 0 < killed_at < ITERATIONS
    run = json.loads((out / "run.json").read_text())
    assert run["stages"] == {}
    assert not (out / "manifest.json").exists()

    # Resume with no settings: the interrupted run's own are used (60 iterations, not the preset's 12).
    r = run_cli("run", "--resume", "--out", str(out), timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr

    report = json.loads((out / "report.json").read_text())
    distill = report["distillation"]
    assert distill["resumed_from"] == killed_at
    assert distill["steps"] == ITERATIONS
    assert distill["history"][-1]["step"] == ITERATIONS
    steps = [row["step"] for row in distill["history"]]
    assert steps == sorted(set(steps))  # the rows before the kill came back from the checkpoint, none twice

    # A valid bundle: every artifact's hash and size match the manifest; no checkpoint or temporaries left.
    manifest = json.loads((out / "manifest.json").read_text())
    assert {a["role"] for a in manifest["artifacts"]} >= {"student-checkpoint", "vae", "student-fp32-onnx", "student-int8-onnx"}
    for a in manifest["artifacts"]:
        p = out / a["path"]
        assert sha256_file(p) == a["sha256"], a["path"]
        assert p.stat().st_size == a["bytes"], a["path"]
    verify_bundle(out)
    assert not ckpt.exists()
    assert list(out.rglob("*.tmp")) == []

    import onnxruntime as ort
    import numpy as np

    sess = ort.InferenceSession(str(out / "student_int8.onnx"), providers=["CPUExecutionProvider"])
    logits = sess.run(None, {"input": np.zeros((2, 1, 8, 8), dtype=np.float32)})[0]
    assert logits.shape == (2, 10) and np.isfinite(logits).all()


def test_a_run_stored_with_removed_settings_still_reads_and_resumes_only_where_they_did_nothing(tmp_path):
    # A run.json written before settings were removed names them: `quantize DIR` and `export DIR` still read
    # its config; `--resume` continues it only when each removed setting held the value that does what this
    # version does, and says which one stands in the way otherwise.
    import pytest

    from core.errors import UsageError
    from core.workdir import write_run
    from pipeline.config import config_from_dict, load_config, resume_config, to_dict
    from stages.distill.config import RETIRED

    from stages.quantize.config import RETIRED as QUANTIZE_RETIRED

    current = to_dict(load_config(overrides={"preset": "smoke"}))
    stored = {**current, "distill": {**current["distill"], **RETIRED},
              "quantize": {**current["quantize"], **QUANTIZE_RETIRED}}
    assert to_dict(config_from_dict(stored)) == current
    write_run(tmp_path, {"config": stored, "stages": {}})
    assert to_dict(resume_config(tmp_path, None)) == current
    for key, value in RETIRED.items():
        other = not value if isinstance(value, bool) else "other" if isinstance(value, str) else value + 1
        changed = {**current, "distill": {**current["distill"], key: other}}
        assert to_dict(config_from_dict(changed)) == current
        write_run(tmp_path, {"config": changed, "stages": {}})
        with pytest.raises(UsageError, match=f"started with distill.{key} = .*no longer has; start over with --force"):
            resume_config(tmp_path, None)
