"""benchmarks/README.md shows the benchmarks' JSON results, rendered, never hand-edited numbers."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
# Imported from benchmarks/, which then leaves sys.path: its models.py must not shadow other tests' imports.
sys.path.insert(0, str(BENCH))
try:
    import render
    import results
finally:
    sys.path[:] = [p for p in sys.path if p != str(BENCH)]

README = """# Benchmarks

## A

<!-- results:a -->
stale text
<!-- /results:a -->

## B

<!-- results:b -->
<!-- /results:b -->
"""


def doc(name: str, rows: list[list]) -> dict:
    return {"benchmark": name, "command": f"python benchmarks/{name}.py", "measured_on": "host h, 1 torch thread(s)",
            "created": "2000-01-01T00:00:00+00:00", "settings": {"runs": 3, "sets": {"k": 1}},
            "tables": [results.table("T", ["x", "y"], rows, notes="n")]}


def test_readme_blocks_match_the_json():
    text = render.README.read_text(encoding="utf-8")
    assert render.render(text, render.load_all(results.RESULTS)) == text, "run python benchmarks/render.py"


def test_every_result_has_a_block_and_every_block_renders():
    text = render.README.read_text(encoding="utf-8")
    names = [m.group("name") for m in render.BLOCK.finditer(text)]
    assert len(names) == len(set(names))
    assert set(render.load_all(results.RESULTS)) <= set(names)
    assert set(render.COMMANDS) <= set(names)


def test_render_fills_blocks_and_is_idempotent():
    docs = {"a": doc("a", [[1, "0.9917"], [2, "x | y"]])}
    once = render.render(README, docs)
    assert "stale text" not in once
    assert "`python benchmarks/a.py`, measured on host h" in once
    assert '| 2 | x \\| y |' in once and 'sets = {"k": 1}' in once
    assert "Not measured yet: run `python benchmarks/b.py`." in once
    assert render.render(once, docs) == once


def test_a_result_without_a_block_is_refused():
    with pytest.raises(SystemExit, match="orphan"):
        render.render(README, {"orphan": doc("orphan", [])})


def test_write_then_check(tmp_path, monkeypatch):
    monkeypatch.setattr(results, "measured_on", lambda: "host h")
    (tmp_path / "README.md").write_text(README, encoding="utf-8")
    written = results.write("a", [results.table("T", ["x"], [[1234]])], "python benchmarks/a.py", {"runs": 3},
                            path=tmp_path / "results" / "a.json")
    assert written == json.loads((tmp_path / "results" / "a.json").read_text())
    assert set(written) == {"benchmark", "command", "measured_on", "created", "settings", "tables"}
    args = ["--readme", str(tmp_path / "README.md"), "--results", str(tmp_path / "results")]
    assert render.main(["--check", *args]) == 1
    assert render.main(args) == 0
    assert render.main(["--check", *args]) == 0
    assert "| 1,234 |" in (tmp_path / "README.md").read_text()


def test_pearson_cell_is_numpys_r_or_names_the_constant_series():
    import numpy as np

    a, b = [0.2, 0.5, 0.6, 0.9], [0.3, 0.4, 0.8, 0.85]
    assert results.pearson(a, b) == round(float(np.corrcoef(a, b)[0, 1]), 3)
    # A series that never moves (agreement 1.0 throughout) has no correlation; NaN would not be valid JSON.
    assert results.pearson([1.0, 1.0, 1.0], [0.9, 0.92, 0.93]) == "- (agreement constant)"
    assert results.pearson([0.1, 0.2, 0.3], [0.5, 0.5, 0.5]) == "- (accuracy constant)"
    json.dumps(results.pearson([1.0, 1.0, 1.0], [0.9, 0.92, 0.93]), allow_nan=False)
