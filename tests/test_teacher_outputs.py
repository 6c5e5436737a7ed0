"""Teachers as they come: factories that import the modules beside them, and models whose forward returns
more than a logits tensor (a tuple, a dict, an object with .logits, probabilities).

Real models in real files; loading only, except one CLI run that goes through all three stages.
"""

from __future__ import annotations

import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from pipeline.config import load_config
from pipeline.teacher import load_teacher

torch.set_num_threads(1)

# The model code lives in a module of its own; the factory file imports it by name, as a user's does.
NETS = textwrap.dedent('''
    import torch
    from torch import nn

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
            if self.kind == "probs":
                return torch.softmax(logits, dim=1)
            return logits
''')

FACTORY = textwrap.dedent('''
    from nets import Net

    def build(kind="logits"):
        import helpers  # a lazy import of another sibling, while the factory runs

        return Net(kind, k=helpers.CLASSES)
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
