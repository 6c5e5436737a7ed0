"""Bring your own teacher: factory and program teachers, any input shape, through all three stages.

Real models, real files, real NNCF/ONNX; only the sizes are tiny so the whole file stays fast.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from pipeline.config import load_config
from core.errors import UsageError
from pipeline.run import run_all
from core.teacher import ProgramTeacher, TaskSpec, computes_convolution, has_batchnorm, load_program, load_teacher
from core.ui import Console
from tests.conftest import onnx_test_accuracy
from stages.distill.criteria import BNStatistics, PenultimateFeatures
from stages.distill.networks import build_student, param_count, student_spec
from stages.distill.stage import student_for


torch.set_num_threads(1)

MODELS = textwrap.dedent('''
    import torch
    from torch import nn

    class ConvNet(nn.Module):
        def __init__(self, c=3, k=5, bn=True, w=16):
            super().__init__()
            norm = (lambda n: nn.BatchNorm2d(n)) if bn else (lambda n: nn.Identity())
            self.features = nn.Sequential(
                nn.Conv2d(c, w, 3, padding=1), norm(w), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(w, 2 * w, 3, padding=1), norm(2 * w), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(2 * w, k)

        def forward(self, x):
            return self.fc(self.features(x))

    class TabNet(nn.Module):
        def __init__(self, d=30, k=3, w=64):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(d, w), nn.BatchNorm1d(w), nn.ReLU(), nn.Linear(w, w // 2),
                                     nn.BatchNorm1d(w // 2), nn.ReLU(), nn.Linear(w // 2, k))

        def forward(self, x):
            return self.net(x)

    def conv_bn():
        return ConvNet()

    def conv_1ch():
        return ConvNet(c=1, k=4)

    def conv_no_bn():
        return ConvNet(bn=False)

    def tab():
        return TabNet()

    def image_mlp():  # an MLP on flattened pixels: an image teacher that never convolves
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 13 * 22, 48), nn.ReLU(), nn.Linear(48, 5))

    def student_no_bn():  # a factory student without BatchNorm
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(8, 5))

    def student_sequential_bn():  # a bare nn.Sequential with BatchNorm
        return nn.Sequential(nn.Flatten(), nn.Linear(30, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
''')

TINY = {"distill.iterations": 3, "distill.kd_steps": 1, "distill.batch_size": 16, "distill.replay_batch": 8,
        "distill.probe_per_class": 2, "distill.eval_every": 3, "distill.checkpoint_every": 3, "distill.vae_steps": 1,
        "quantize.calibration_samples": 16, "quantize.qat_steps": 2, "quantize.qat_batch": 8,
        "export.benchmark_runs": 3}


def _models(folder: Path):
    import importlib.util

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "models.py").write_text(MODELS)
    spec = importlib.util.spec_from_file_location(f"own_models_{abs(hash(str(folder)))}", folder / "models.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _trained_stats(model: nn.Module, shape: tuple[int, ...]) -> nn.Module:
    """Give the BatchNorms non-trivial running statistics, as a trained model has."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(32, *shape) * 1.5 + 0.3)
    return model.eval()


def _config(folder: Path, teacher: str, shape, classes: int, extra: str = "") -> Path:
    path = folder / "run.toml"
    path.write_text(f"[teacher]\n{teacher}\ninput_shape = {list(shape)}\nnum_classes = {classes}\n{extra}")
    return path


def _run(cfg_path: Path, out: Path, target: str = "jetson", **overrides) -> dict:
    cfg = load_config(cfg_path, {"preset": "smoke", "target": target, **TINY, **overrides})
    return run_all(cfg, out, Console(quiet=True), force=True)


def _check_bundle(out: Path, shape, classes: int) -> None:
    import onnxruntime as ort

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["input"]["shape"] == ["batch", *shape]
    assert manifest["num_classes"] == classes
    roles = {a["role"] for a in manifest["artifacts"]}
    assert {"student-checkpoint", "student-fp32-onnx", "student-int8-onnx"} <= roles
    x = np.random.default_rng(0).normal(size=(3, *shape)).astype(np.float32)
    for name in ("student_fp32.onnx", "student_int8.onnx"):
        sess = ort.InferenceSession(str(out / name), providers=["CPUExecutionProvider"])
        (logits,) = sess.run(None, {"input": x})
        assert logits.shape == (3, classes) and np.isfinite(logits).all()
    q = json.loads((out / "run.json").read_text())["stages"]["quantize"]
    assert q["num_quantizers"] > 0


# ---- program teachers -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def conv_teacher(tmp_path_factory):
    folder = tmp_path_factory.mktemp("programs")
    mod = _models(folder)
    shape = (3, 13, 22)  # odd and not square
    model = _trained_stats(mod.conv_bn(), shape)
    x = torch.randn(4, *shape)
    torch.jit.script(model).save(str(folder / "scripted.pt"))
    torch.jit.trace(model, x).save(str(folder / "traced.pt"))
    torch.export.save(torch.export.export(model, (x,)), str(folder / "static_batch.pt2"))
    return folder, model, shape


@pytest.mark.parametrize("name", ["scripted.pt", "traced.pt", "static_batch.pt2"])
def test_program_teacher_has_hookable_layers_and_input_gradients(conv_teacher, name):
    folder, model, shape = conv_teacher
    teacher = load_program(folder / name, shape)
    assert isinstance(teacher, ProgramTeacher)
    teacher.eval()  # an exported graph refuses eval(); the wrapper takes it
    for p in teacher.parameters():
        p.requires_grad_(False)
    x = torch.randn(7, *shape)  # another batch size than the program was saved with
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), model(x), atol=1e-4, rtol=1e-4)
    assert has_batchnorm(teacher)
    assert param_count(teacher) == param_count(model)  # what sizes an auto student
    assert computes_convolution(teacher, shape)  # what picks its family
    bn, feats = BNStatistics(teacher), PenultimateFeatures(teacher)
    assert len(bn.layers) == 2
    xi = x.clone().requires_grad_(True)  # the generator's gradient flows through the frozen teacher
    with bn:
        logits = teacher(xi)
        bn_loss = bn.loss()
    (logits.square().mean() + bn_loss).backward()
    assert bn_loss.item() > 0 and xi.grad is not None and xi.grad.abs().sum() > 0
    assert feats.features is not None and feats.features.shape == (7, 32)
    bn.remove()
    feats.remove()
    import copy

    copy.deepcopy(teacher)


def test_program_with_a_fixed_batch_size_is_refused_clearly(tmp_path):
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(12, 3)

        def forward(self, x):
            return self.fc(x.reshape(4, 12))

    torch.export.save(torch.export.export(Fixed(), (torch.randn(4, 12),)), str(tmp_path / "fixed.pt2"))
    with pytest.raises(UsageError, match="dynamic batch"):
        load_program(tmp_path / "fixed.pt2", (12,))


def test_exported_program_teacher_end_to_end_non_square(conv_teacher, tmp_path):
    folder, _, shape = conv_teacher
    cfg = _config(folder, 'program = "static_batch.pt2"', shape, 5)
    out = tmp_path / "bundle"
    report = _run(cfg, out, "jetson")
    _check_bundle(out, shape, 5)
    assert report["distillation"]["student_params"] > 0


def test_torchscript_tabular_teacher_end_to_end_mobile(tmp_path):
    mod = _models(tmp_path / "cfg")
    model = _trained_stats(mod.tab(), (30,))
    torch.jit.script(model).save(str(tmp_path / "cfg" / "tab.pt"))
    rng = np.random.default_rng(0)
    x_raw = rng.normal(5.0, 2.0, size=(40, 30)).astype(np.float32)
    y = rng.integers(0, 3, size=40)
    np.savez(tmp_path / "cfg" / "test.npz", x=x_raw, y=y)
    cfg = _config(tmp_path / "cfg", 'program = "tab.pt"', (30,), 3,
                  'scale = 0.5\nmean = [2.5]\nstd = [1.0]\n[eval]\ndata = "test.npz"\n'
                  '[student]\narch = "models.py:student_sequential_bn"\n')
    out = tmp_path / "bundle"
    report = _run(cfg, out, "mobile")
    _check_bundle(out, (30,), 3)
    acc = report["accuracy"]
    assert acc["evaluated_on"].startswith("test.npz (40 samples")
    expected = float((model((torch.as_tensor(x_raw) * 0.5 - 2.5)).argmax(1).numpy() == y).mean())
    assert acc["teacher"] == pytest.approx(expected)
    assert acc["student_int8"] == pytest.approx(
        onnx_test_accuracy(out / "student_int8.onnx", (x_raw.reshape(40, 30) * 0.5 - 2.5), y))
    assert any(a["role"] == "ort-model" for a in json.loads((out / "manifest.json").read_text())["artifacts"])
    assert json.loads((out / "student.json").read_text())["factory"] == "models.py:student_sequential_bn"


# ---- factory teachers and students ------------------------------------------------------------------


def test_relative_paths_resolve_against_the_config_folder(tmp_path, monkeypatch):
    mod = _models(tmp_path / "cfg" / "sub")
    save_file(_trained_stats(mod.conv_1ch(), (1, 28, 28)).state_dict(), str(tmp_path / "cfg" / "sub" / "w.safetensors"))
    cfg_path = _config(tmp_path / "cfg", 'factory = "sub/models.py:conv_1ch"\nweights = "sub/w.safetensors"', (1, 28, 28), 4,
                       "mean = [0.1307]\nstd = [0.3081]\nscale = 0.00392156862745098\n")
    monkeypatch.chdir(tmp_path)  # neither the cwd nor the repository: only the config's folder
    teacher, spec = load_teacher(load_config(cfg_path, {"preset": "smoke"}))
    assert spec.input_shape == (1, 28, 28) and spec.mean == [0.1307] and spec.scale == pytest.approx(1 / 255)
    assert has_batchnorm(teacher)
    torch.save(teacher.state_dict(), tmp_path / "cfg" / "sub" / "w.pt")  # a plain state_dict loads too
    cfg2 = _config(tmp_path / "cfg", 'factory = "sub/models.py:conv_1ch"\nweights = "sub/w.pt"', (1, 28, 28), 4)
    teacher2, _ = load_teacher(load_config(cfg2, {"preset": "smoke"}))
    x = torch.randn(2, 1, 28, 28)
    torch.testing.assert_close(teacher(x), teacher2(x))


def test_vector_mean_and_std_are_per_feature(tmp_path):
    _models(tmp_path)
    ok = _config(tmp_path, 'factory = "models.py:tab"', (30,), 3, f"mean = {[0.0] * 30}\nstd = {[2.0] * 30}\n")
    assert load_config(ok).teacher.std == [2.0] * 30
    one = load_config(_config(tmp_path, 'factory = "models.py:tab"', (30,), 3, "mean = 0.5\nstd = 2\n")).teacher
    assert (one.mean, one.std) == ([0.5], [2.0])  # a bare number is one value
    bad = _config(tmp_path, 'factory = "models.py:tab"', (30,), 3, "mean = [0.0, 1.0]\n")
    with pytest.raises(UsageError, match="1 or 30 values"):
        load_config(bad)


@pytest.mark.parametrize("shape,classes,factory", [((3, 32, 32), 5, "conv_bn"), ((3, 24, 40), 5, "conv_bn"),
                                                   ((30,), 3, "tab")])
def test_auto_student_is_sized_from_the_teacher(tmp_path, shape, classes, factory):
    mod = _models(tmp_path)
    # Widths are whole numbers, so a teacher of a few thousand parameters is matched more coarsely.
    teacher = mod.TabNet(w=128) if factory == "tab" else mod.ConvNet(c=shape[0], k=classes, w=48)
    for ratio in (0.25, 0.5):
        spec = student_spec(shape, classes, param_count(teacher), ratio)
        n = param_count(build_student(spec))
        assert abs(n / param_count(teacher) - ratio) < 0.35 * ratio, (n, param_count(teacher), ratio)
        with torch.no_grad():
            assert build_student(spec).eval()(torch.randn(2, *shape)).shape == (2, classes)


@pytest.mark.parametrize("form", ["factory", "scripted.pt", "program.pt2"])
def test_auto_student_of_an_image_teacher_that_never_convolves_is_an_mlp(tmp_path, form):
    mod = _models(tmp_path)
    shape = (3, 13, 22)
    model = mod.image_mlp().eval()
    if form == "factory":
        save_file(model.state_dict(), str(tmp_path / "t.safetensors"))
        section = 'factory = "models.py:image_mlp"\nweights = "t.safetensors"'
    else:
        x = torch.randn(4, *shape)
        if form == "scripted.pt":
            torch.jit.script(model).save(str(tmp_path / form))
        else:
            torch.export.save(torch.export.export(model, (x,)), str(tmp_path / form))
        section = f'program = "{form}"'
    cfg = load_config(_config(tmp_path, section, shape, 5), {"preset": "smoke"})
    teacher, spec = load_teacher(cfg)
    student, s_spec = student_for(cfg, teacher, spec)
    assert s_spec["family"] == "mlp" and not any(isinstance(m, nn.Conv2d) for m in student.modules())
    assert student.eval()(torch.randn(2, *shape)).shape == (2, 5)
    # The same image shape with a convolving teacher keeps the conv student.
    conv = mod.ConvNet(k=5).eval()
    assert student_for(cfg, conv, spec)[1]["family"] == "conv"


def test_teacher_without_batchnorm_warns_once_and_factory_student_without_bn(tmp_path, capfd):
    mod = _models(tmp_path / "cfg")
    save_file(mod.conv_no_bn().state_dict(), str(tmp_path / "cfg" / "t.safetensors"))
    cfg = _config(tmp_path / "cfg", 'factory = "models.py:conv_no_bn"\nweights = "t.safetensors"', (3, 15, 9), 5,
                  '[student]\narch = "models.py:student_no_bn"\n')
    out = tmp_path / "bundle"
    capfd.readouterr()
    run_all(load_config(cfg, {"preset": "smoke", "target": "jetson", **TINY}), out, Console(quiet=False), force=True)
    err = capfd.readouterr().err
    # the console wraps long lines
    assert " ".join(err.split()).count("BN-statistics and feature-diversity terms are dropped") == 1, err
    _check_bundle(out, (3, 15, 9), 5)
    assert json.loads((out / "student.json").read_text())["family"] == "factory"


def test_batchnorm_without_running_statistics_counts_as_none_for_the_warning_and_the_prior():
    # Such a layer normalises each batch by itself: there is nothing to match, and the warning must say so
    per_batch = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.ReLU(),
                              nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    tracked = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    assert not has_batchnorm(per_batch) and BNStatistics(per_batch).layers == []
    assert has_batchnorm(tracked) and BNStatistics(tracked).layers == [tracked[1]]


def test_eval_npz_is_normalised_per_channel_and_checked(tmp_path):
    from core.evaluation import eval_set

    spec = {"input_shape": [3, 4, 6], "num_classes": 3, "scale": 0.5, "mean": [1.0, 2.0, 3.0], "std": [1.0, 2.0, 4.0]}
    x = np.full((2, 3, 4, 6), 10.0, dtype=np.float32)
    np.savez(tmp_path / "ok.npz", x=x, y=np.array([0, 2]))
    xs, ys, what = eval_set(str(tmp_path / "ok.npz"), spec)
    assert what.startswith("ok.npz (2 samples") and ys.tolist() == [0, 2]
    assert [float(xs[0, c, 0, 0]) for c in range(3)] == [4.0, 1.5, 0.5]  # (10 * 0.5 - mean) / std
    for name, arrays, match in [("hwc", {"x": x.transpose(0, 2, 3, 1), "y": np.array([0, 2])}, "do not match"),
                                ("nolabels", {"x": x}, "needs arrays"),
                                ("range", {"x": x, "y": np.array([0, 3])}, "labels in 0..2")]:
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(UsageError, match=match):
            eval_set(str(tmp_path / f"{name}.npz"), spec)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[eval]\ndata = "ok.npz"\n')
    assert load_config(cfg).eval == str(tmp_path / "ok.npz")  # relative to the config file
    cfg.write_text('[eval]\ndata = "digits"\n')
    assert load_config(cfg).eval == "digits"  # the built-in split by name, not a file beside the config
    cfg.write_text('[eval]\nfile = "ok.npz"\n')
    with pytest.raises(UsageError, match=r"\[eval\] takes one key"):
        load_config(cfg)


def test_pixel_range_follows_the_input_contract_for_images_only():
    mnist = TaskSpec((1, 28, 28), 10, None, [0.1307], [0.3081], 1 / 255, "test")
    low, high = mnist.pixel_range()
    assert low == pytest.approx(-0.4242, abs=1e-4) and high == pytest.approx(2.8215, abs=1e-4)
    rgb = TaskSpec((3, 32, 32), 10, None, [0.5, 0.4, 0.3], [0.25, 0.5, 0.2], 1 / 255, "test")
    assert rgb.pixel_range() == pytest.approx((-2.0, 3.5))  # channel 0 sets the low end, channel 2 the high
    assert TaskSpec((30,), 2, None, [0.0], [1.0], 1.0, "test").pixel_range() is None
    # no normalisation: the report shows [0.0, 1.0], not a negative zero
    assert str(list(TaskSpec((1, 8, 8), 10, None, [0.0], [1.0], 1.0, "test").pixel_range())) == "[0.0, 1.0]"
