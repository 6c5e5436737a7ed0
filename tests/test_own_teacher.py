"""The README's "Use your own teacher" commands, exactly as written, in a copy of the example folder."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from core.evaluation import read_npz
from tests.conftest import onnx_test_accuracy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "own_teacher"


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Use your own teacher", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    lines = [ln.split("#", 1)[0].strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln]


def test_readme_own_teacher_commands_build_bundles(tmp_path):
    commands = readme_commands()
    assert commands[0] == "cd examples/own_teacher" and any("train.py" in c for c in commands)
    work = tmp_path / "examples" / "own_teacher"
    shutil.copytree(EXAMPLE, work, ignore=shutil.ignore_patterns("runs", "*.safetensors", "*.npz", "__pycache__"))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cwd, outs = tmp_path, []
    for command in commands:
        argv = shlex.split(command)
        if argv[0] == "cd":
            cwd = cwd / argv[1]
            continue
        if argv[0] == "python":
            argv[0] = sys.executable
        elif argv[0] == "pipeline":
            argv = [sys.executable, "-m", "pipeline.cli", *argv[1:]]
            outs.append((cwd / argv[argv.index("--out") + 1], argv[argv.index("--config") + 1], argv[argv.index("--target") + 1]))
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
        assert r.returncode == 0, f"{command}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        if "train.py" in command:
            accs = [float(v) for v in re.findall(r"test accuracy ([0-9.]+)", r.stdout)]
            assert len(accs) == 2 and min(accs) > 0.9, r.stdout  # real teachers, on data the pipeline never reads
    assert {cfg for _, cfg, _ in outs} == {"tabular.toml", "image.toml"}

    shapes = {"tabular.toml": ["batch", 30], "image.toml": ["batch", 3, 16, 16]}
    for out, cfg, target in outs:
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["target"] == target and manifest["input"]["shape"] == shapes[cfg]
        assert (out / manifest["input"]["name"]).parent.exists()
        roles = {a["role"] for a in manifest["artifacts"]}
        assert {"student-checkpoint", "vae", "student-fp32-onnx", "student-int8-onnx"} <= roles
        for art in manifest["artifacts"]:
            assert (out / art["path"]).stat().st_size == art["bytes"]
        report = json.loads((out / "report.json").read_text())
        acc = report["accuracy"]
        test_file = cfg.replace(".toml", "_test.npz")
        assert acc["evaluated_on"].startswith(test_file)  # the user's own held-out split, report only
        assert acc["teacher"] > 0.9
        inp = manifest["input"]
        x, y = read_npz(work / test_file, {"input_shape": inp["shape"][1:], "num_classes": manifest["num_classes"],
                                           "scale": inp["scale"], "mean": inp["mean"], "std": inp["std"]})
        assert acc["student_int8"] == pytest.approx(onnx_test_accuracy(out / "student_int8.onnx", x.numpy(), y.numpy()))
        assert (out / "report.html").is_file() and (out / "report.md").is_file()
    tab = json.loads((outs[0][0] / "manifest.json").read_text()) if outs[0][1] == "tabular.toml" else None
    if tab is not None:
        assert len(tab["input"]["mean"]) == 30 and tab["classes"] == ["malignant", "benign"]
