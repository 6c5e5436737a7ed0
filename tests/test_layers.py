"""The import contract: entry points (pipeline) -> stages -> core, targets -> core, and nothing upward.

Every import statement counts, including those inside functions, so a lazy import cannot hide an
upward dependency. Inside `stages`, a later stage may use an earlier one's parts (quantize reads what
distillation left), never the reverse.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "stages", "targets", "pipeline")
STAGE_ORDER = ("distill", "quantize", "export")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, dotted module) for every import in the file; relative imports resolve against its package."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{a.name}") for a in node.names]  # `from core import workdir`
    return found


def allowed(importer: str, imported: str) -> bool:
    layer, target = importer.split(".")[0], imported.split(".")[0]
    if target not in PACKAGES:
        return True  # third-party and standard library
    if layer == "pipeline":
        return True
    if layer == "core":
        return target == "core"
    if layer == "targets":
        return target in ("core", "targets")
    if layer == "stages":
        if target == "core":
            return True
        if target != "stages":
            return False
        mine, theirs = importer.split(".")[1], (imported.split(".") + [""])[1]
        if theirs not in STAGE_ORDER or mine not in STAGE_ORDER:
            return True  # the `stages` package itself
        return STAGE_ORDER.index(theirs) <= STAGE_ORDER.index(mine)
    return False


def modules() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def test_every_layer_imports_only_downward():
    broken = []
    for path in modules():
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for line, imported in imported_modules(path):
            if not allowed(name, imported):
                broken.append(f"{path.relative_to(ROOT)}:{line} imports {imported}")
    assert not broken, "imports against the layer order:\n" + "\n".join(broken)


@pytest.mark.parametrize("importer, imported, ok", [
    ("core.bundle", "pipeline.config", False),
    ("core.teacher", "stages.distill.networks", False),
    ("targets.jetson", "stages.quantize.qat", False),
    ("targets.jetson", "core.bundle", True),
    ("stages.distill.engine", "targets.registry", False),
    ("stages.distill.engine", "stages.quantize.qat", False),
    ("stages.quantize.stage", "stages.distill.networks", True),
    ("stages.export.stage", "core.target", True),
    ("pipeline.cli", "targets.registry", True),
    ("stages.distill.stage", "pipeline.report", False),
])
def test_the_contract_itself(importer, imported, ok):
    assert allowed(importer, imported) is ok


def test_relative_and_function_local_imports_are_seen(tmp_path, monkeypatch):
    pkg = tmp_path / "core"
    pkg.mkdir()
    (pkg / "x.py").write_text("def f():\n    from ..pipeline import cli\n    import stages.distill\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    seen = [m for _, m in imported_modules(pkg / "x.py")]
    assert "pipeline.cli" in seen and "stages.distill" in seen


def test_docs_config_reference_is_current():
    """docs/cli.md's key table is generated from the config dataclasses; a new or removed key shows here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_reference", ROOT / "scripts" / "config_reference.py")
    ref = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ref)
    text = ref.DOC.read_text(encoding="utf-8")
    assert ref.document(text) == text, "run: python scripts/config_reference.py --write"
