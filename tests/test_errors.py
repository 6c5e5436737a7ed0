"""Bad input through the real CLI: one clear `error:` line, exit 2 (usage) or 1 (run time), no traceback.

Cases that fail while the configuration is read cost a fraction of a second (no torch import);
teacher cases load torch and fail before any training; run-time failures (disk full, NaN) stop early.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pipeline.config import load_config, to_dict
from tests.conftest import run_cli

MODELS = textwrap.dedent('''
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self, n=4):
            super().__init__()
            self.fc = nn.Linear(6, n)
        def forward(self, x):
            return self.fc(x)

    def build():
        return Net()

    def not_module():
        return {"fc": 1}

    def raises():
        raise RuntimeError("cannot build without the dataset")

    class Pair(Net):
        def forward(self, x):
            return self.fc(x), x

    def pair():
        return Pair()

    class Named(Net):
        def forward(self, x):
            return {"scores": self.fc(x), "inputs": x}

    def named():
        return Named()

    class NaNNet(Net):
        def forward(self, x):
            return self.fc(x) * float("nan")

    def nan_always():
        return NaNNet()

    class ThroughNumpy(Net):
        def forward(self, x):
            return self.fc(torch.from_numpy(x.detach().numpy().clip(-3, 3)))

    def through_numpy():
        return ThroughNumpy()

    class NoGrad(Net):
        def forward(self, x):
            with torch.no_grad():
                return self.fc(x)

    def no_grad():
        return NoGrad()

    class InPlace(Net):
        def forward(self, x):
            return self.fc(x.sub_(0.1))

    def in_place():
        return InPlace()

    class BreaksBackward(Net):
        def forward(self, x):
            y = torch.sigmoid(self.fc(x))
            return y.mul_(2.0)  # sigmoid's backward needs its output, changed here

    def breaks_backward():
        return BreaksBackward()

    class NaNLater(Net):
        """Finite until it has served BATCH-sized generator batches AFTER times, then NaN."""
        BATCH, AFTER = 48, 5
        def __init__(self):
            super().__init__()
            self.calls = 0
        def forward(self, x):
            if x.shape[0] == self.BATCH and torch.is_grad_enabled():
                self.calls += 1
            out = self.fc(x)
            return out * float("nan") if self.calls > self.AFTER else out

    def nan_later():
        return NaNLater()
''')

TEACHER = '[teacher]\nfactory = "{factory}"\n{weights}input_shape = {shape}\nnum_classes = {classes}\n'


def assert_one_line_error(r: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    """Exit `code`, the last stderr line is the one `error:` line and holds every fragment, no traceback."""
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == code, (r.returncode, r.stderr[-2000:])
    lines = r.stderr.strip().splitlines()
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], r.stderr[-2000:]
    for f in fragments:
        assert f in errors[0], (f, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("errors")
    (d / "models.py").write_text(MODELS)
    (d / "broken.py").write_text("def build(:\n    pass\n")
    torch.manual_seed(0)
    net = nn.Linear(6, 4)
    save_file({"fc." + k: v for k, v in net.state_dict().items()}, str(d / "ok.safetensors"))
    torch.save({"fc." + k: v for k, v in nn.Linear(6, 5).state_dict().items()}, d / "wrong.pt")
    (d / "corrupt.pt").write_bytes(b"\x80\x02not really a pickle" * 8)
    (d / "corrupt.safetensors").write_bytes(b"\xff" * 64)
    torch.save(nn.Linear(6, 4), d / "whole_model.pt")  # the module pickled, not its state_dict
    (d / "not_npz.npz").write_text("x,y\n")
    (d / "weights_dir.pt").mkdir()
    (d / "a_file").write_text("not a directory\n")
    (d / "foreign").mkdir()
    (d / "foreign" / "notes.txt").write_text("someone else's files\n")
    other = d / "other_run"
    other.mkdir()
    cfg = load_config(None, {"preset": "smoke", "distill.iterations": 60})
    (other / "run.json").write_text(json.dumps({"config": to_dict(cfg), "task": {}, "stages": {}}))
    broken_run = d / "broken_run"
    broken_run.mkdir()
    (broken_run / "run.json").write_text('{"config": {"target": "jet')
    (d / "not_a_bundle").mkdir()
    future = d / "future_bundle"
    future.mkdir()
    (future / "manifest.json").write_text(json.dumps({"format_version": 99, "target": "jetson", "input": {},
                                                      "num_classes": 10, "artifacts": []}))
    bad_json = d / "bad_json_bundle"
    bad_json.mkdir()
    (bad_json / "manifest.json").write_text("{not json")
    return d


def toml(work: Path, name: str, text: str) -> str:
    (work / name).write_text(text)
    return name


def teacher_toml(work: Path, name: str, factory: str, weights: str | None = "ok.safetensors",
                 shape: str = "[6]", classes: int = 4, extra: str = "") -> str:
    w = f'weights = "{weights}"\n' if weights else ""
    return toml(work, name, TEACHER.format(factory=factory, weights=w, shape=shape, classes=classes) + extra)


# ---- usage errors found while reading the configuration (exit 2, no torch import) ----------------

CONFIG_CASES = [
    # (id, files to write {name: text}, argv after `pipeline`, expected fragments)
    ("unknown-target", {}, ["run", "--target", "raspberry", "--out", "o"], ["unknown target 'raspberry'", "jetson, mobile"]),
    ("unknown-preset", {}, ["run", "--preset", "huge", "--out", "o"], ["unknown preset 'huge'", "smoke, default, paper"]),
    ("unknown-device", {}, ["run", "--device", "tpu", "--out", "o"], ["unknown device 'tpu'", "auto, cpu, cuda"]),
    ("unknown-eval", {}, ["run", "--eval", "imagenet", "--out", "o"], ["unknown eval set 'imagenet'"]),
    ("unknown-replay", {}, ["run", "--replay", "tape", "--out", "o"], ["unknown replay mode 'tape'"]),
    ("config-missing", {}, ["run", "--config", "nowhere.toml", "--out", "o"], ["config file not found: nowhere.toml"]),
    ("malformed-toml", {"bad.toml": "preset = 'smoke'\n[distill\niterations = 3\n"},
     ["run", "--config", "bad.toml", "--out", "o"], ["bad.toml is not valid TOML", "line 2"]),
    ("not-utf8-toml", {"latin.toml": None}, ["run", "--config", "latin.toml", "--out", "o"], ["latin.toml cannot be read"]),
    ("wrong-type", {"t.toml": '[distill]\niterations = "ten"\n'}, ["run", "--config", "t.toml", "--out", "o"],
     ["distill.iterations must be an integer, got 'ten'"]),
    ("bool-for-number", {"b.toml": "[distill]\nlr_student = true\n"}, ["run", "--config", "b.toml", "--out", "o"],
     ["distill.lr_student must be a number"]),
    ("list-expected", {"l.toml": '[teacher]\nfactory = "m.py:f"\ninput_shape = 6\nnum_classes = 4\n'},
     ["run", "--config", "l.toml", "--out", "o"], ["teacher.input_shape must be a list"]),
    ("zero-size", {}, ["run", "--set", "distill.iterations=0", "--out", "o"], ["distill.iterations must be > 0, got 0"]),
    ("negative-size", {"n.toml": "[distill]\nbatch_size = -5\n"}, ["run", "--config", "n.toml", "--out", "o"],
     ["distill.batch_size must be > 0, got -5"]),
    ("zero-input-dim", {"z.toml": '[teacher]\nfactory = "m.py:f"\ninput_shape = [3, 0, 32]\nnum_classes = 4\n'},
     ["run", "--config", "z.toml", "--out", "o"], ["teacher.input_shape must be a list of positive integers"]),
    ("teacher-output-type", {"ot.toml": '[teacher]\nfactory = "m.py:f"\ninput_shape = [6]\nnum_classes = 4\noutput = 1.5\n'},
     ["run", "--config", "ot.toml", "--out", "o"], ["teacher.output must be an index (e.g. 0) or a key or attribute name", "1.5"]),
    ("one-class", {"c.toml": '[teacher]\nfactory = "m.py:f"\ninput_shape = [6]\nnum_classes = 1\n'},
     ["run", "--config", "c.toml", "--out", "o"], ["teacher.num_classes must be >= 2"]),
    ("nan-number", {}, ["run", "--set", "distill.lr_student=nan", "--out", "o"], ["distill.lr_student must be a finite number"]),
    ("unknown-key", {"k.toml": "[distill]\nitrations = 5\n"}, ["run", "--config", "k.toml", "--out", "o"],
     ["unknown key 'distill.itrations'", "iterations"]),
    ("unknown-section", {"s.toml": "[distil]\niterations = 5\n"}, ["run", "--config", "s.toml", "--out", "o"],
     ["unknown key 'distil'"]),
    ("section-not-table", {"t2.toml": "distill = 5\n"}, ["run", "--config", "t2.toml", "--out", "o"], ["[distill] must be a table"]),
    ("teacher-without-factory", {"nf.toml": "[teacher]\ninput_shape = [6]\nnum_classes = 4\n"},
     ["run", "--config", "nf.toml", "--out", "o"], ["[teacher] needs 'factory'"]),
    ("set-without-equals", {}, ["run", "--set", "distill.iterations", "--out", "o"], ["--set takes key=value"]),
    ("set-unknown-key", {}, ["run", "--set", "distil.iterations=3", "--out", "o"], ["unknown key 'distil'"]),
    ("removed-key-set", {}, ["run", "--set", "distill.input_shift=2", "--out", "o"],
     ["distill.input_shift is no longer a setting", "docs/cli.md"]),
    ("removed-key-file", {"r.toml": "[distill]\ninput_mix = 0.2\n"}, ["run", "--config", "r.toml", "--out", "o"],
     ["distill.input_mix is no longer a setting"]),
    ("removed-quantize-key", {}, ["run", "--set", "quantize.fast_bias_correction=false", "--out", "o"],
     ["quantize.fast_bias_correction is no longer a setting"]),
    ("seed-negative", {}, ["run", "--seed", "-1", "--out", "o"], ["seed must be between 0 and"]),
    ("threads-zero", {}, ["run", "--threads", "0", "--out", "o"], ["threads must be between 1 and 1024"]),
    ("opset-too-old", {}, ["run", "--set", "export.opset=11", "--out", "o"], ["export.opset must be between 13 and 21"]),
    ("ratio-above-one", {}, ["run", "--student-ratio", "2", "--out", "o"], ["student.ratio must be in (0, 1]"]),
    ("vae-width-negative", {}, ["run", "--set", "distill.vae_width=-8", "--out", "o"], ["distill.vae_width must be >= 0, got -8"]),
    ("generator-width-zero", {}, ["run", "--set", "distill.generator_width=0", "--out", "o"],
     ["distill.generator_width must be > 0, got 0"]),
    ("ema-decay-one", {}, ["run", "--set", "distill.ema_decay=1", "--out", "o"], ["distill.ema_decay must be in [0, 1)"]),
    ("attack-fraction-zero", {}, ["run", "--set", "distill.attack_fraction=0", "--out", "o"],
     ["distill.attack_fraction must be in (0, 1]"]),
    ("seed-not-int", {}, ["run", "--seed", "abc", "--out", "o"], ["'abc' is not a valid integer"]),
    ("unknown-option", {}, ["run", "--colour", "red"], ["No such option '--colour'"]),
    ("resume-without-out", {}, ["run", "--resume"], ["--resume needs --out DIR"]),
    ("out-is-a-file", {}, ["run", "--out", "a_file"], ["'a_file' is a file"]),
    ("quantize-unknown-target", {}, ["quantize", "other_run", "--target", "tv"], ["unknown target 'tv'"]),
    ("benchmark-missing-bundle", {}, ["benchmark", "no_such_bundle"], ["bundle directory not found: no_such_bundle"]),
    ("benchmark-not-a-bundle", {}, ["benchmark", "not_a_bundle"], ["not a bundle (no manifest.json)"]),
    ("bundle-from-the-future", {}, ["benchmark", "future_bundle"], ["format_version 99 is newer", "upgrade the pipeline"]),
    ("manifest-not-json", {}, ["build-engine", "bad_json_bundle"], ["manifest.json: not valid JSON"]),
    ("benchmark-bad-batch", {}, ["benchmark", "future_bundle", "--batch", "0"], ["--batch must be positive integers"]),
    ("check-not-onnx", {}, ["check", "a_file", "--target", "jetson"], ["a_file is not a readable ONNX model"]),
    ("check-missing-model", {}, ["check", "nothing.onnx", "--target", "mobile"], ["model not found: nothing.onnx"]),
]


@pytest.mark.parametrize("files,argv,fragments", [c[1:] for c in CONFIG_CASES], ids=[c[0] for c in CONFIG_CASES])
def test_usage_error_before_any_work(work, files, argv, fragments):
    for name, text in files.items():
        if text is None:
            (work / name).write_bytes("preset = 'smöke'\n".encode("latin-1"))
        else:
            (work / name).write_text(text)
    r = run_cli(*argv, cwd=work, timeout=120)
    assert_one_line_error(r, 2, *fragments)
    assert not (work / "o").exists()  # nothing created for a refused request


# ---- output directory -----------------------------------------------------------------------------

OUT_CASES = [
    ("holds-another-run", ["run", "--preset", "smoke", "--out", "other_run"], ["already holds a run", "--force", "--resume"]),
    ("holds-foreign-files", ["run", "--preset", "smoke", "--out", "foreign"], ["already holds files that are not a pipeline run"]),
    ("force-on-foreign-files", ["run", "--preset", "smoke", "--out", "foreign", "--force"], ["not a pipeline run", "choose a new or empty directory"]),
    ("force-and-resume", ["run", "--preset", "smoke", "--out", "other_run", "--force", "--resume"], ["contradict"]),
    ("out-below-a-file", ["run", "--preset", "smoke", "--out", "a_file/run"], ["--out a_file/run is not writable"]),
    ("resume-other-settings", ["run", "--preset", "smoke", "--out", "other_run", "--resume"],
     ["--resume: other_run was started with distill.iterations = 60, not 12"]),
    ("resume-corrupt-run-json", ["run", "--out", "broken_run", "--resume"], ["run.json is corrupt"]),
]


@pytest.mark.parametrize("argv,fragments", [c[1:] for c in OUT_CASES], ids=[c[0] for c in OUT_CASES])
def test_output_directory_refused(work, argv, fragments):
    before = {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file()}
    r = run_cli(*argv, cwd=work, timeout=120)
    assert_one_line_error(r, 2, *fragments)
    assert (work / "foreign" / "notes.txt").read_text() == "someone else's files\n"
    assert {p: p.stat().st_mtime_ns for p in work.rglob("*") if p.is_file() and p in before} == before


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", str(path)], capture_output=True, timeout=20)


def test_out_not_writable_read_only_mount(work, tmp_path):
    ro = tmp_path / "ro"
    if not _mount_tmpfs(ro, "ro,size=64k"):
        pytest.skip("cannot mount a read-only tmpfs here (needs root in a namespace that allows mounts)")
    try:
        r = run_cli("run", "--preset", "smoke", "--out", str(ro / "run"), cwd=work, timeout=120)
        assert_one_line_error(r, 2, "is not writable", "Read-only file system")
    finally:
        _umount(ro)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads a chmod 000 file anyway; "
                    "test_teacher_errors[weights-is-directory] covers an unreadable path")
def test_unreadable_weights_chmod(work):
    p = work / "locked.safetensors"
    p.write_bytes((work / "ok.safetensors").read_bytes())
    p.chmod(0)
    try:
        r = run_cli("run", "--config", teacher_toml(work, "locked.toml", "models.py:build", "locked.safetensors"),
                    "--out", "o", cwd=work, timeout=120)
        assert_one_line_error(r, 2, "teacher weights", "locked.safetensors")
    finally:
        p.chmod(0o644)


# ---- the teacher (torch loads, no training starts) ------------------------------------------------

TEACHER_CASES = [
    # (id, toml kwargs, exit code, fragments)
    ("weights-missing", dict(factory="models.py:build", weights="missing.safetensors"), 2, ["teacher weights not found", "missing.safetensors"]),
    ("weights-is-directory", dict(factory="models.py:build", weights="weights_dir.pt"), 2, ["weights_dir.pt is a directory"]),
    ("weights-corrupt-pickle", dict(factory="models.py:build", weights="corrupt.pt"), 2, ["corrupt.pt are corrupt", "code is never unpickled"]),
    ("weights-corrupt-safetensors", dict(factory="models.py:build", weights="corrupt.safetensors"), 2, ["corrupt.safetensors are corrupt"]),
    ("weights-do-not-fit", dict(factory="models.py:build", weights="wrong.pt"), 2, ["weights wrong.pt do not fit the model", "size mismatch for fc.weight"]),
    ("factory-file-missing", dict(factory="nowhere.py:build"), 2, ["teacher factory file not found", "nowhere.py"]),
    ("factory-no-colon", dict(factory="models.py"), 2, ["must look like 'file.py:function'"]),
    ("factory-name-missing", dict(factory="models.py:make"), 2, ["'make' is not a callable in models.py"]),
    ("factory-syntax-error", dict(factory="broken.py:build"), 2, ["broken.py failed to import", "SyntaxError"]),
    ("factory-not-module", dict(factory="models.py:not_module"), 2, ["returned dict, not a torch.nn.Module"]),
    ("factory-raises", dict(factory="models.py:raises"), 2, ["raised RuntimeError: cannot build without the dataset"]),
    ("output-wrong-classes", dict(factory="models.py:build", classes=7), 2, ["teacher output has shape [8, 4], expected [batch, 7]"]),
    ("output-not-tensor", dict(factory="models.py:pair"), 2,
     ["teacher returned a tuple of 2 (tensor [8, 4], tensor [8, 6]); set teacher.output = 0 to pick the logits"]),
    ("output-index-out-of-range", dict(factory="models.py:pair", extra="output = 2\n"), 2,
     ["teacher.output = 2 is out of range (0..1)", "a tuple of 2"]),
    ("output-key-missing", dict(factory="models.py:named", extra='output = "logits"\n'), 2,
     ['teacher.output = "logits" is not one of its keys', "'scores': tensor [8, 4]"]),
    ("input-shape-rejected", dict(factory="models.py:build", shape="[3, 8, 8]"), 2, ["teacher rejects input of shape [3, 8, 8]"]),
    ("teacher-nan-output", dict(factory="models.py:nan_always"), 1, ["teacher returns NaN or inf"]),
    ("weights-whole-model", dict(factory="models.py:build", weights="whole_model.pt"), 2,
     ["pickles a torch.nn.modules.linear.Linear object, not a state_dict", "save model.state_dict()"]),
    ("forward-through-numpy", dict(factory="models.py:through_numpy"), 2, ["no gradient with respect to its input"]),
    ("forward-without-grad", dict(factory="models.py:no_grad"), 2, ["no gradient with respect to its input"]),
    ("forward-changes-input", dict(factory="models.py:in_place"), 2, ["changes its input in place", "x.clone()"]),
    ("forward-breaks-backward", dict(factory="models.py:breaks_backward"), 2,
     ["cannot be differentiated with respect to its input", "modified by an inplace operation"]),
    ("eval-not-npz", dict(factory="models.py:build", extra='[eval]\ndata = "not_npz.npz"\n'), 2,
     ["not_npz.npz is not an .npz archive", "numpy.savez"]),
]


@pytest.mark.parametrize("kw,code,fragments", [c[1:] for c in TEACHER_CASES], ids=[c[0] for c in TEACHER_CASES])
def test_teacher_errors(work, kw, code, fragments):
    name = f"teacher_{abs(hash(str(kw)))}.toml"
    r = run_cli("run", "--config", teacher_toml(work, name, **kw), "--preset", "smoke", "--out", "o_teacher",
                "--force", cwd=work, timeout=180)
    assert_one_line_error(r, code, *fragments)
    assert not (work / "o_teacher" / "manifest.json").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA GPU")
def test_device_cuda_without_gpu(work):
    r = run_cli("run", "--device", "cuda", "--preset", "smoke", "--out", "o_cuda", cwd=work, timeout=180)
    assert_one_line_error(r, 2, "--device cuda: no CUDA GPU", "--device cpu")


def test_debug_shows_the_traceback(work):
    r = run_cli("--debug", "run", "--target", "raspberry", "--out", "o_dbg", cwd=work, timeout=60)
    assert r.returncode == 2 and "Traceback" in r.stderr
    assert r.stderr.strip().splitlines()[-1] == "error: unknown target 'raspberry'; choose one of: jetson, mobile"


# ---- failures at run time (exit 1) ----------------------------------------------------------------

def test_nan_loss_stops_with_stage_step_and_keeps_checkpoint(work):
    out = work / "o_nan"
    r = run_cli("run", "--config", teacher_toml(work, "nan.toml", "models.py:nan_later"), "--preset", "smoke",
                "--set", "distill.batch_size=48", "--set", "distill.checkpoint_every=2", "--out", str(out), "--force",
                cwd=work, timeout=240)
    line = assert_one_line_error(r, 1, "distill:", "became nan at step", "last good checkpoint kept at")
    step = int(line.split("at step ")[1].split(";")[0])
    ckpt = out / "distill" / "checkpoint.pt"
    assert str(ckpt) in line
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert 2 <= state["iteration"] <= step + 1
    assert all(torch.isfinite(v).all() for v in state["student"].values() if v.is_floating_point())
    assert not (out / "student.safetensors").exists() and not (out / "manifest.json").exists()


def test_disk_full_while_saving(work, tmp_path):
    small = tmp_path / "small"
    if not _mount_tmpfs(small, "size=200k"):
        pytest.skip("cannot mount a 200 KiB tmpfs here (needs root in a namespace that allows mounts)")
    try:
        r = run_cli("run", "--preset", "smoke", "--set", "distill.checkpoint_every=1", "--out", str(small / "run"),
                    cwd=work, timeout=240)
        assert_one_line_error(r, 1, "no space left on device while writing", str(small / "run"), "--resume")
        leftovers = [p.name for p in (small / "run").rglob("*.tmp")]
        assert leftovers == []  # the failed write's temporary was removed
    finally:
        _umount(small)
