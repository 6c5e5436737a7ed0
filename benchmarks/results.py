"""Benchmark results as JSON: each benchmark writes benchmarks/results/<name>.json, and the tables it prints
and the ones benchmarks/README.md shows (benchmarks/render.py) are both rendered from that file's data.

    {"benchmark": name, "command": "python benchmarks/...", "measured_on": "host ..., torch ..., onnxruntime ...",
     "created": ISO time, "settings": {...},
     "tables": [{"title": str, "columns": [str, ...], "rows": [[cell, ...], ...], "notes": str (optional)}]}

Cells are strings, numbers or null, kept as displayed: a benchmark formats its numbers once, so what it
prints, what the JSON holds and what the README shows agree to the digit.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import socket
import statistics
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def pearson(xs, ys, xs_name: str = "agreement", ys_name: str = "accuracy") -> float | str:
    """Pearson r of two series as a table cell (3 decimals). Where one series never moves r is undefined, and NaN
    is not JSON: the cell says which series was constant."""
    xs, ys = [float(v) for v in xs], [float(v) for v in ys]
    for name, series in ((xs_name, xs), (ys_name, ys)):
        if len(set(series)) < 2:
            return f"- ({name} constant)"
    return round(statistics.correlation(xs, ys), 3)


def table(title: str, columns: list[str], rows: list[list], notes: str | None = None) -> dict:
    out = {"title": title, "columns": list(columns), "rows": [list(r) for r in rows]}
    if notes:
        out["notes"] = notes
    return out


def command_line(script: str, argv: list[str] | None = None) -> str:
    """The command as run from the project root, e.g. `python benchmarks/latency.py --runs 50`."""
    args = sys.argv[1:] if argv is None else argv
    return shlex.join(["python", f"benchmarks/{Path(script).name}", *args])


def measured_on() -> str:
    # Imported here, not at the top: rendering and its test need neither library.
    import onnxruntime
    import torch

    from targets.runners import cpu_model

    return (f"host {socket.gethostname()}, {cpu_model()} ({os.cpu_count()} cores), "
            f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, onnxruntime {onnxruntime.__version__}")


def write(name: str, tables: list[dict], command: str, settings: dict | None = None, path: Path | None = None) -> dict:
    """Write benchmarks/results/<name>.json (or `path`) and return the document as read back from it."""
    doc = {"benchmark": name, "command": command, "measured_on": measured_on(),
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "settings": settings or {}, "tables": tables}
    path = Path(path) if path is not None else RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_dumps(doc), encoding="utf-8")
    return json.loads(path.read_text(encoding="utf-8"))


def _dumps(doc: dict) -> str:
    """JSON with one line per table row, so a rerun's diff shows the rows that changed."""
    head = json.dumps({k: v for k, v in doc.items() if k != "tables"}, indent=1)[:-2]

    def one(tab: dict) -> str:
        rest = {k: v for k, v in tab.items() if k != "rows"}
        rows = ",\n".join("   " + json.dumps(r) for r in tab["rows"])
        return "  " + json.dumps(rest)[:-1] + ', "rows": [\n' + rows + "\n  ]}"

    return head + ',\n "tables": [\n' + ",\n".join(one(t) for t in doc["tables"]) + "\n ]\n}\n"


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    return str(value).replace("|", "\\|")


def markdown(tab: dict) -> str:
    """One table as Markdown: its title in bold, the table, then its notes."""
    lines = [f"**{tab['title']}**", "", "| " + " | ".join(tab["columns"]) + " |",
             "|" + "---|" * len(tab["columns"])]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in tab["rows"]]
    if tab.get("notes"):
        lines += ["", tab["notes"]]
    return "\n".join(lines)


def tables_markdown(doc: dict) -> str:
    return "\n\n".join(markdown(t) for t in doc["tables"])


def show(doc: dict) -> None:
    """Print a written document's command, host and tables to stdout."""
    print(f"\n{doc['benchmark']}: {doc['command']}\nmeasured on {doc['measured_on']}\n")
    print(tables_markdown(doc))
    print()
