"""The same seed and config on CPU give byte-identical student weights and ONNX models."""

from __future__ import annotations

import json

from tests.conftest import run_cli

SAME_BYTES = ["student.safetensors", "generator.safetensors", "vae.safetensors", "student_fp32.onnx", "student_int8.onnx",
              "build_engine.sh", "tensorrt_build.json"]


def test_same_seed_same_bytes(jetson_bundle, tmp_path):
    # The session's smoke bundle is one run; this is a second with the same arguments.
    out = tmp_path / "again"
    r = run_cli("run", "--target", "jetson", "--preset", "smoke", "--device", "cpu", "--eval", "digits", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    for name in SAME_BYTES:
        a, b = jetson_bundle / name, out / name
        if not a.exists() and not b.exists():
            continue
        assert a.read_bytes() == b.read_bytes(), f"{name} differs between two runs with the same seed"

    def hashes(bundle):
        m = json.loads((bundle / "manifest.json").read_text())
        return {a["path"]: a["sha256"] for a in m["artifacts"]}

    assert hashes(jetson_bundle) == hashes(out)  # every artifact, whatever the target added
    r1 = json.loads((jetson_bundle / "report.json").read_text())
    r2 = json.loads((out / "report.json").read_text())
    assert r1["accuracy"] == r2["accuracy"]
    strip = lambda h: [{k: v for k, v in row.items() if k != "elapsed_s"} for row in h]  # noqa: E731
    assert strip(r1["distillation"]["history"]) == strip(r2["distillation"]["history"])


def test_another_seed_other_weights(jetson_bundle, tmp_path):
    """The comparison above can fail: a different seed changes the student (distillation stage only)."""
    out = tmp_path / "seed1"
    r = run_cli("distill", "--preset", "smoke", "--device", "cpu", "--seed", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "student.safetensors").read_bytes() != (jetson_bundle / "student.safetensors").read_bytes()
