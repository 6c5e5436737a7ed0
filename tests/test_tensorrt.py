"""TensorRT build settings, trtexec command and script, and the Jetson target where TensorRT is absent."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import warnings
from pathlib import Path

import onnx
import pytest
import torch

from core.bundle import Manifest, read_manifest, write_manifest
from core.errors import UsageError
from core.fileio import sha256_file
from qdq_models import qdq_conv_model
from core.target import ExportContext, RuntimeMissing
from targets.jetson import BUILD_SCRIPT, SETTINGS_FILE, JetsonTarget
from targets.profiles import get_profile
from targets.tensorrt_engine import BuildSettings, build_script, build_settings, tensorrt_status, trtexec_command

SHAPE = (1, 1, 8, 8)


def test_trt10_gpu_is_strongly_typed_without_precision_flags():
    s = build_settings(get_profile("orin-nano"), "10.3.0", SHAPE)
    assert s.trt_major == 10 and s.strongly_typed
    assert s.network_flags == ("STRONGLY_TYPED",)  # EXPLICIT_BATCH is deprecated and ignored in 10
    assert s.builder_flags == ()  # INT8/FP16 flags are refused in strongly typed mode
    assert not s.use_dla and s.dla_core is None and not s.gpu_fallback
    assert s.workspace_mib == 256 and s.input_shape == SHAPE


def test_trt11_needs_no_network_flag_and_has_no_precision_flags():
    s = build_settings(get_profile("orin-nx"), "11.4.1", SHAPE)
    assert s.trt_major == 11 and s.strongly_typed
    assert s.network_flags == () and s.builder_flags == ()
    assert s.workspace_mib == 512


def test_dla_on_agx_orin_per_version():
    prof = get_profile("agx-orin-dla")
    assert prof.dla_cores == 2 and prof.use_dla
    s10 = build_settings(prof, "10.3.0", SHAPE)
    assert s10.use_dla and s10.dla_core == 0 and s10.gpu_fallback
    assert not s10.strongly_typed and s10.builder_flags == ("INT8", "FP16", "GPU_FALLBACK")
    s11 = build_settings(prof, "11.4.1", SHAPE)
    assert s11.strongly_typed and s11.builder_flags == ("GPU_FALLBACK",)
    assert s11.dla_core == 0


@pytest.mark.parametrize("version,why", [("10.8.0", "10.7 was the last"), ("11.2.1", "11.4.1"), ("11.4.0", "11.4.1")])
def test_dla_refused_where_tensorrt_has_none(version, why):
    with pytest.raises(UsageError, match=why):
        build_settings(get_profile("agx-orin-dla"), version, SHAPE)


def test_agx_orin_default_profile_does_not_use_dla_and_orin_nano_has_none():
    assert get_profile("agx-orin").dla_cores == 2 and not get_profile("agx-orin").use_dla
    assert get_profile("orin-nano").dla_cores == 0


def test_old_tensorrt_and_bad_inputs_refused():
    with pytest.raises(UsageError, match="too old.*TensorRT 10 or 11"):
        build_settings(get_profile("orin-nano"), "8.6.2", SHAPE)
    with pytest.raises(UsageError, match="static input shape"):
        build_settings(get_profile("orin-nano"), "10.3.0", (-1, 1, 8, 8))
    with pytest.raises(UsageError, match="not a Jetson profile"):
        build_settings(get_profile("phone-big-core"), "10.3.0", SHAPE)


def test_settings_round_trip_through_json():
    s = build_settings(get_profile("agx-orin-dla"), "10.3.0", SHAPE)
    assert BuildSettings.from_json(json.loads(json.dumps(s.to_json()))) == s


def test_trtexec_command_contents():
    s = build_settings(get_profile("orin-nano"), "10.3.0", SHAPE)
    cmd = trtexec_command("student_int8.onnx", "student_int8.engine", s)
    assert cmd == ["trtexec", "--onnx=student_int8.onnx", "--saveEngine=student_int8.engine", "--stronglyTyped",
                   "--memPoolSize=workspace:256M", "--shapes=input:1x1x8x8"]
    s11 = build_settings(get_profile("orin-nano"), "11.4.1", SHAPE, model_dynamic_batch=False)
    cmd11 = trtexec_command("m.onnx", "m.engine", s11)
    assert "--stronglyTyped" not in cmd11 and not any(a.startswith("--shapes") for a in cmd11)
    dla = trtexec_command("m.onnx", "m.engine", build_settings(get_profile("agx-orin-dla"), "10.3.0", SHAPE))
    assert {"--int8", "--fp16", "--useDLACore=0", "--allowGPUFallback", "--memPoolSize=workspace:1024M"} <= set(dla)
    assert "--stronglyTyped" not in dla


def _fake_trtexec(tmp_path: Path) -> Path:
    """Stands in for trtexec (absent here): records its arguments and writes the engine file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "trtexec"
    exe.write_text('#!/usr/bin/env bash\necho "$@" > "$(dirname "$0")/args.txt"\n'
                   'for a in "$@"; do case "$a" in --saveEngine=*) echo plan > "${a#--saveEngine=}";; esac; done\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return bin_dir


def _script_dir(tmp_path: Path, profile: str = "orin-nano") -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    onnx.save(qdq_conv_model(), d / "student_int8.onnx")
    text = build_script("student_int8.onnx", "student_int8.engine", sha256_file(d / "student_int8.onnx"),
                        get_profile(profile), SHAPE)
    (d / BUILD_SCRIPT).write_text(text)
    return d


def test_build_script_is_valid_bash_and_mentions_python_alternative(tmp_path):
    d = _script_dir(tmp_path)
    text = (d / BUILD_SCRIPT).read_text()
    subprocess.run(["bash", "-n", str(d / BUILD_SCRIPT)], check=True)
    assert "/usr/src/tensorrt/bin/trtexec" in text and "sha256sum" in text
    assert "pipeline build-engine BUNDLE" in text


@pytest.mark.parametrize("major,expect,absent", [("10", "--stronglyTyped", None), ("11", "--memPoolSize=workspace:256M", "--stronglyTyped")])
def test_build_script_runs_trtexec_for_the_installed_major(tmp_path, major, expect, absent):
    d = _script_dir(tmp_path)
    bin_dir = _fake_trtexec(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TRT_MAJOR": major}
    r = subprocess.run(["bash", str(d / BUILD_SCRIPT)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    args = (bin_dir / "args.txt").read_text().split()
    assert expect in args and (absent is None or absent not in args)
    assert "--onnx=student_int8.onnx" in args
    assert (d / "student_int8.engine").read_text() == "plan\n"
    assert not (d / "student_int8.engine.partial").exists()
    assert f"engine written to {d}/student_int8.engine" in r.stdout


def test_build_script_refuses_changed_onnx_and_missing_trtexec(tmp_path):
    d = _script_dir(tmp_path)
    bin_dir = _fake_trtexec(tmp_path)
    with open(d / "student_int8.onnx", "ab") as f:
        f.write(b"x")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TRT_MAJOR": "10"}
    r = subprocess.run(["bash", str(d / BUILD_SCRIPT)], env=env, capture_output=True, text=True)
    assert r.returncode == 1 and "does not match the sha256" in r.stderr
    assert not (d / "student_int8.engine").exists()
    env = {**os.environ, "PATH": "/usr/bin:/bin", "TRT_MAJOR": "10"}
    r = subprocess.run(["bash", str(d / BUILD_SCRIPT)], env=env, capture_output=True, text=True)
    assert r.returncode == 127 and "trtexec not found" in r.stderr


def test_build_script_for_dla_profile_refuses_unknown_major(tmp_path):
    d = _script_dir(tmp_path, "agx-orin-dla")
    bin_dir = _fake_trtexec(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "TRT_MAJOR": "9"}
    r = subprocess.run(["bash", str(d / BUILD_SCRIPT)], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "TensorRT 10 or 11" in r.stderr
    env["TRT_MAJOR"] = "10"
    r = subprocess.run(["bash", str(d / BUILD_SCRIPT)], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "--useDLACore=0" in (bin_dir / "args.txt").read_text()


def test_tensorrt_status_false_here_with_a_message():
    if shutil.which("nvidia-smi"):
        pytest.skip("a GPU machine: status may be true")
    ok, msg = tensorrt_status()
    assert ok is False and "TensorRT" in msg


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def make_bundle(tmp_path: Path) -> Path:
    d = tmp_path / "bundle"
    d.mkdir(exist_ok=True)
    model = Tiny().eval()
    for name in ("student_fp32.onnx", "student_int8.onnx"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is what we want here
            torch.onnx.export(model, (torch.zeros(1, 1, 8, 8),), str(d / name), input_names=["input"],
                              output_names=["logits"], dynamic_axes={"input": {0: "batch"}}, dynamo=False)
    m = Manifest(target="jetson", input={"name": "input", "shape": ["batch", 1, 8, 8], "dtype": "float32",
                                         "scale": 0.0625, "mean": [0.0], "std": [1.0]}, num_classes=10)
    m.add(d, d / "student_fp32.onnx", "student-fp32-onnx")
    m.add(d, d / "student_int8.onnx", "student-int8-onnx")
    write_manifest(d, m)
    return d


def test_jetson_build_without_tensorrt_raises_runtime_missing(tmp_path):
    if tensorrt_status()[0]:
        pytest.skip("TensorRT is usable here")
    d = make_bundle(tmp_path)
    with pytest.raises(RuntimeMissing, match="TensorRT.*pipeline build-engine BUNDLE"):
        JetsonTarget().build(d)
    assert read_manifest(d).artifact("tensorrt-engine") is None


def test_jetson_build_verifies_bundle_first(tmp_path):
    d = make_bundle(tmp_path)
    with open(d / "student_int8.onnx", "ab") as f:
        f.write(b"tampered")
    from core.errors import RunError

    with pytest.raises(RunError, match="does not match its sha256"):
        JetsonTarget().build(d)


def test_jetson_export_writes_script_and_settings(tmp_path):
    d = make_bundle(tmp_path)
    ctx = ExportContext(bundle_dir=d, fp32_onnx=d / "student_fp32.onnx", int8_onnx=d / "student_int8.onnx",
                        input_name="input", input_shape=(1, 8, 8), profile="agx-orin-dla")
    arts = JetsonTarget().export(ctx)
    roles = {a.role: a.path for a in arts}
    assert set(roles) == {"engine-build-script", "tensorrt-build-settings"}  # no engine without TensorRT
    script = roles["engine-build-script"]
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    data = json.loads((d / SETTINGS_FILE).read_text())
    assert data["onnx_sha256"] == sha256_file(d / "student_int8.onnx")
    assert data["by_tensorrt_major"]["10"]["settings"]["use_dla"] is True
    assert "--useDLACore=0" in data["by_tensorrt_major"]["11"]["trtexec"]
    assert data["by_tensorrt_major"]["10"]["settings"]["model_dynamic_batch"] is True
