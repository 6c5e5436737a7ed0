"""Teachers as they come: factories that import the modules beside them, and models whose forward returns
more than a logits tensor (a tuple, a dict, an object with .logits, probabilities).

Real models in real files; loading only, except one CLI run that goes through all three stages.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from core.errors import UsageError
from core.teacher import TeacherLogits, build_from_factory, is_probabilities, load_teacher
from stages.distill.criteria import BNStatistics, PenultimateFeatures
from tests.conftest import run_cli

torch.set_num_threads(1)

# The model code lives in a module of its own; the factory file imports it by name, as a user's does.
NETS = textwrap.dedent('''
    from dataclasses import dataclass

    import torch
    from torch import nn

    @dataclass
    class Output:  # hub-style: logits and more, as attributes
        logits: torch.Tensor
        hidden: torch.Tensor

    class Net(nn.Module):
        """A small MLP with BatchNorm whose forward returns what `kind` says."""

        def __init__(self, kind="logits", d=6, k=4):
            super().__init__()
            self.kind = kind
            self.body = nn.Sequential(nn.Linear(d, 16), nn.BatchNorm1d(16), nn.ReLU())
            self.head = nn.Linear(16, k)

        def forward(self, x):
            feats = self.body(x)
            logits = self.head(feats)
            if self.kind == "tuple":
                return logits, feats
            if self.kind == "dict":
                return {"features": feats, "scores": logits}
            if self.kind == "object":
                return Output(logits, feats)
            if self.kind == "probs":
                return torch.softmax(logits, dim=1)
            if self.kind == "relu":  # logits that happen to be non-negative
                return torch.relu(logits)
            if self.kind == "sigmoid":  # independent scores in (0, 1), not a distribution
                return torch.sigmoid(logits)
            return logits
''')

FACTORY = textwrap.dedent('''
    from nets import Net

    def build(kind="logits"):
        import helpers  # a lazy import of another sibling, while the factory runs

        return Net(kind, k=helpers.CLASSES)

    def tuple_net():
        return build("tuple")

    def dict_net():
        return build("dict")

    def object_net():
        return build("object")

    def probs_net():
        return build("probs")

    def relu_net():
        return build("relu")

    def sigmoid_net():
        return build("sigmoid")
''')


def _folder(root: Path, factory: str = FACTORY) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "nets.py").write_text(NETS)
    (root / "helpers.py").write_text("CLASSES = 4\n")
    (root / "factory.py").write_text(factory)
    return root


def _config(folder: Path, factory: str, extra: str = "", classes: int = 4) -> Path:
    path = folder / f"{factory.partition(':')[2]}.toml"
    path.write_text(f'[teacher]\nfactory = "{factory}"\ninput_shape = [6]\nnum_classes = {classes}\n{extra}')
    return path


def _load(path: Path, **overrides):
    return load_teacher(load_config(path, {"preset": "smoke", **overrides}))


# ---- the factory's folder is importable -----------------------------------------------------------


def test_factory_imports_its_siblings_and_leaves_imports_as_they_were(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "user")
    foreign = types.ModuleType("nets")  # another 'nets' this process imported before
    monkeypatch.setitem(sys.modules, "nets", foreign)
    path_before = list(sys.path)
    teacher, _ = _load(_config(folder, "factory.py:build"))
    assert type(teacher).__name__ == "Net" and teacher.head.out_features == 4
    assert sys.path == path_before
    assert sys.modules["nets"] is foreign and "helpers" not in sys.modules


def test_two_folders_with_a_module_of_the_same_name(tmp_path):
    first = _folder(tmp_path / "first")
    second = _folder(tmp_path / "second")
    (second / "helpers.py").write_text("CLASSES = 3\n")
    a, _ = _load(_config(first, "factory.py:build"))
    b, _ = _load(_config(second, "factory.py:build", classes=3))
    assert a.head.out_features == 4 and b.head.out_features == 3
    assert type(a) is not type(b)  # each folder's own nets.py



def test_a_sibling_package_imports_and_the_standard_library_is_never_shadowed(tmp_path):
    folder = _folder(tmp_path, textwrap.dedent('''
        import json  # the standard library's, though a json.py lies beside this file

        from blocks import WIDTH
        from nets import Net

        def build():
            assert json.dumps([WIDTH]) == "[6]"
            return Net(d=WIDTH)
    '''))
    (folder / "json.py").write_text("raise ImportError('the folder shadowed the standard library')\n")
    (folder / "blocks").mkdir()
    (folder / "blocks" / "__init__.py").write_text("WIDTH = 6\n")
    teacher, _ = _load(_config(folder, "factory.py:build"))
    assert teacher.body[0].in_features == 6
    assert sys.modules["json"] is json and "blocks" not in sys.modules


# ---- teacher.output picks the logits ----------------------------------------------------------------


def _same_model(teacher: torch.nn.Module, pick) -> None:
    """The wrapped teacher gives `pick(model output)`, and the hooks still find the model's layers."""
    assert isinstance(teacher, TeacherLogits)
    x = torch.randn(5, 6)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), pick(teacher.model(x)))
    bn, feats = BNStatistics(teacher), PenultimateFeatures(teacher)
    xi = x.clone().requires_grad_(True)  # the generator's gradient flows through the frozen teacher
    with bn:
        logits = teacher(xi)
        bn_loss = bn.loss()
    (logits.square().mean() + bn_loss).backward()
    assert len(bn.layers) == 1 and bn_loss.item() > 0 and xi.grad.abs().sum() > 0
    assert feats.features is not None and feats.features.shape == (5, 16)
    bn.remove()
    feats.remove()


def test_tuple_output_by_index(tmp_path):
    folder = _folder(tmp_path)
    with pytest.raises(UsageError, match=r"^teacher returned a tuple of 2 \(tensor \[8, 4\], tensor \[8, 16\]\); "
                                         r"set teacher.output = 0 to pick the logits$"):
        _load(_config(folder, "factory.py:tuple_net"))
    teacher, _ = _load(_config(folder, "factory.py:tuple_net", "output = 0\n"))
    _same_model(teacher, lambda out: out[0])
    last, _ = _load(_config(folder, "factory.py:tuple_net", "output = -2\n"))  # Python's negative indices
    assert last.output == -2


def test_dict_output_by_key(tmp_path):
    folder = _folder(tmp_path)
    with pytest.raises(UsageError, match=r'set teacher.output = "scores" to pick the logits$'):
        _load(_config(folder, "factory.py:dict_net"))
    teacher, _ = _load(_config(folder, "factory.py:dict_net", 'output = "scores"\n'))
    _same_model(teacher, lambda out: out["scores"])


def test_object_with_logits_is_taken_with_a_warning(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr("core.teacher._WARNED", set())  # each warning is said once per process
    folder = _folder(tmp_path)
    capfd.readouterr()
    teacher, _ = _load(_config(folder, "factory.py:object_net"))
    err = capfd.readouterr().err
    assert "warning: teacher returned an Output (.logits: tensor [8, 4], .hidden: tensor [8, 16]): distilling " \
           "from its 'logits'" in err
    _same_model(teacher, lambda out: out.logits)
    named, _ = _load(_config(folder, "factory.py:object_net", 'output = "logits"\n'))  # said: no warning
    assert named.output == "logits" and "warning" not in capfd.readouterr().err


def test_program_teacher_output_by_index(tmp_path):
    folder = _folder(tmp_path)
    spec = importlib.util.spec_from_file_location("nets_to_export", folder / "nets.py")
    nets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nets)
    model = nets.Net("tuple").eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 6),)), str(folder / "tuple.pt2"))
    path = folder / "program.toml"
    path.write_text('[teacher]\nprogram = "tuple.pt2"\ninput_shape = [6]\nnum_classes = 4\noutput = 0\n')
    teacher, _ = _load(path)
    x = torch.randn(3, 6)
    with torch.no_grad():
        torch.testing.assert_close(teacher(x), model(x)[0])
    assert len(BNStatistics(teacher).layers) == 1  # lifted from the program's graph, inside the wrapper


@pytest.mark.parametrize("factory,setting,fragments", [
    ("tuple_net", "output = 2", ["teacher.output = 2 is out of range (0..1)", "a tuple of 2"]),
    ("tuple_net", "output = 1", ["teacher.output = 1 picks a tensor that has shape [8, 16], expected [batch, 4]"]),
    ("tuple_net", 'output = "logits"', ['teacher.output = "logits" is not one of its attributes; use an index']),
    ("dict_net", 'output = "logit"', ['teacher.output = "logit" is not one of its keys',
                                      "a dict ('features': tensor [8, 16], 'scores': tensor [8, 4])"]),
    ("dict_net", "output = 0", ["teacher.output = 0 is an index, for a tuple or list; name a key"]),
    ("object_net", 'output = "scores"', ['teacher.output = "scores" is not one of its attributes', ".logits"]),
    ("build", "output = 0", ["teacher.output = 0 selects from a structured output", "remove the setting"]),
])
def test_a_wrong_setting_is_one_line_naming_it(tmp_path, factory, setting, fragments):
    folder = _folder(tmp_path)
    with pytest.raises(UsageError) as info:
        _load(_config(folder, f"factory.py:{factory}", setting + "\n"))
    message = str(info.value)
    assert "\n" not in message and message.startswith("teacher")
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize("value", ["1.5", "true", '""', "[0]", '{ key = "logits" }'])
def test_the_setting_is_an_index_or_a_name(tmp_path, value):
    folder = _folder(tmp_path)
    with pytest.raises(UsageError, match=r"^config: teacher.output must be an index \(e.g. 0\) or a key or attribute name"):
        load_config(_config(folder, "factory.py:tuple_net", f"output = {value}\n"))


# ---- probabilities ----------------------------------------------------------------------------------


def test_probabilities_become_log_probabilities_with_a_warning(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr("core.teacher._WARNED", set())  # each warning is said once per process
    folder = _folder(tmp_path)
    capfd.readouterr()
    teacher, _ = _load(_config(folder, "factory.py:probs_net"))
    assert "warning: teacher returns probabilities (rows sum to 1)" in capfd.readouterr().err
    assert isinstance(teacher, TeacherLogits) and teacher.from_probabilities
    x = torch.randn(64, 6)
    with torch.no_grad():
        probs, logits = teacher.model(x), teacher(x)
    assert (logits <= 0).all() and torch.equal(logits.argmax(1), probs.argmax(1))
    torch.testing.assert_close(logits.softmax(1), probs)
    assert len(BNStatistics(teacher).layers) == 1


@pytest.mark.parametrize("factory", ["build", "relu_net", "sigmoid_net"])
def test_logits_are_not_taken_for_probabilities(tmp_path, capfd, factory):
    folder = _folder(tmp_path)
    for seed in range(20):  # fresh random weights each time
        torch.manual_seed(seed)
        teacher, _ = _load(_config(folder, f"factory.py:{factory}"))
        assert not isinstance(teacher, TeacherLogits), seed
    assert "probabilities" not in capfd.readouterr().err


def test_probability_check_on_near_misses():
    probs = torch.softmax(torch.randn(8, 10), dim=1)
    assert is_probabilities(probs)
    assert not is_probabilities(probs * 1.01)  # sums off by 1%
    shifted = probs.clone()
    shifted[0, 0] = -1e-4  # one negative entry
    assert not is_probabilities(shifted)
    assert not is_probabilities(torch.randn(8, 10).relu())


# ---- through the CLI ------------------------------------------------------------------------------


def test_cli_run_with_a_tuple_teacher_and_a_sibling_import(tmp_path):
    folder = _folder(tmp_path / "user")
    cfg = _config(folder, "factory.py:tuple_net", "output = 0\n")
    out = tmp_path / "bundle"
    r = run_cli("run", "--config", str(cfg), "--target", "mobile", "--preset", "smoke", "--out", str(out),
                "--set", "distill.iterations=3", "--set", "quantize.qat_steps=2", "--set", "export.benchmark_runs=3",
                cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["num_classes"] == 4 and manifest["input"]["shape"] == ["batch", 6]



def test_loading_leaves_the_random_stream_alone(tmp_path):
    folder = _folder(tmp_path)
    cfg = _config(folder, "factory.py:probs_net")  # probed, checked and wrapped
    torch.manual_seed(0)
    build_from_factory("factory.py:probs_net", str(folder))  # what the model's own initialisation draws
    after_build = torch.rand(3)
    torch.manual_seed(0)
    _load(cfg)
    assert torch.equal(torch.rand(3), after_build)
