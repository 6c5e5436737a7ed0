"""How well the "not converged" verdict separates good students from failed ones.

    python benchmarks/verdict.py                      # every run benchmarks/distill.py kept
    python benchmarks/verdict.py --floors 0.6,0.7,0.8

A user without data learns whether distillation worked from the verdict alone (stages/distill/stopping.py):
probe agreement below a floor, far below the agreement on the run's own training samples, or still rising fast
where the budget or the cap cut the run marks the student as not converged. Every evaluation of every kept run
(any teacher, seed, synthesizer, setting) is a student of known real accuracy: early ones are what a run cut
short, or a broken one, ships; late ones converged students. Each is judged by the product's own verdict as if
the run had ended there (an earlier evaluation as cut by a time budget), at each floor, with and without the
rule on rising agreement; the table counts the students at or above GOOD of their teacher's accuracy that it
flags (false alarms) and those under POOR of it that it passes (misses). Runs whose probe set was made robustly
get no verdict and are left out. Writes benchmarks/results/verdict.json.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import results  # noqa: E402
from distill import WORK  # noqa: E402

from stages.distill import stopping  # noqa: E402

GOOD = 0.97  # the target ratio: a student this close to its teacher must not be flagged
POOR = 0.90  # a student this far below its teacher must be


def kept_runs() -> list[dict]:
    """Each finished run under the cache: its teacher, run directory name, teacher accuracy and distillation."""
    out = []
    for path in sorted(WORK.glob("*/*/report.json")):
        rep = json.loads(path.read_text())
        if "distillation" in rep and rep.get("accuracy", {}).get("teacher"):
            out.append({"teacher": path.parent.parent.name, "run": path.parent.name,
                        "teacher_accuracy": rep["accuracy"]["teacher"], "distillation": rep["distillation"]})
    return out


def judged(run: dict, floor: float, trend: bool) -> list[dict]:
    """Each evaluation of the run with real accuracy, as its ratio to the teacher's, and whether the verdict at
    `floor` (with or without the rule on rising agreement) flags the student had the run ended there."""
    history = run["distillation"].get("history", [])
    out = []
    for i, h in enumerate(history):
        if h.get("accuracy") is None:
            continue
        final = i == len(history) - 1
        v = stopping.verdict(history[: i + 1], run["distillation"].get("stopped_by") if final else "time-budget",
                             floor=floor, rising=stopping.RISING if trend else float("inf"))
        out.append({"ratio": h["accuracy"] / run["teacher_accuracy"], "agreement": h["agreement"],
                    "flagged": v["converged"] is False, "final": final})
    return out


def per_floor(runs: list[dict], floors: list[float]) -> list[list]:
    rows = []
    for trend in (True, False):
        for f in floors:
            every = [e for r in runs for e in judged(r, f, trend)]
            good = [e for e in every if e["ratio"] >= GOOD]
            poor = [e for e in every if e["ratio"] < POOR]
            rows.append([f, "yes" if trend else "no", len(good), sum(e["flagged"] for e in good), len(poor),
                         sum(not e["flagged"] for e in poor), sum(e["flagged"] and e["final"] for e in good)])
    return rows


def per_run(runs: list[dict]) -> list[list]:
    """Per run at the product's settings: its final student, and the agreements that bound the good and poor
    students over its evaluations."""
    rows = []
    for r in runs:
        ev = judged(r, stopping.AGREEMENT_FLOOR, trend=True)
        if not ev:
            continue
        good = [e["agreement"] for e in ev if e["ratio"] >= GOOD]
        poor = [e["agreement"] for e in ev if e["ratio"] < POOR]
        last = ev[-1]
        rows.append([r["teacher"], r["run"], r["distillation"].get("stopped_by"), len(ev), round(last["ratio"], 4),
                     round(last["agreement"], 4), round(min(good), 4) if good else None,
                     round(max(poor), 4) if poor else None, "flagged" if last["flagged"] else "converged"])
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--floors", default="0.6,0.65,0.7,0.75,0.8", help="comma list of agreement floors to compare")
    args = ap.parse_args()
    torch.set_num_threads(1)  # nothing is computed here, but the header names the threads as every block's does
    floors = [float(f) for f in args.floors.split(",")]
    runs = [r for r in kept_runs() if not r["distillation"].get("probes_robust")]
    if not runs:
        raise SystemExit(f"no kept runs with a verdict under {WORK}: run benchmarks/distill.py first")
    tables = [results.table(f"Every evaluation: students at >= {GOOD} of the teacher flagged, under {POOR} passed",
                            ["floor", "rising rule", f">= {GOOD}", "flagged", f"< {POOR}", "passed",
                             f"final students >= {GOOD} flagged"], per_floor(runs, floors)),
              results.table(f"Per kept run, judged at the product's floor ({stopping.AGREEMENT_FLOOR}) and rising rule",
                            ["teacher", "run", "stopped by", "evaluations", "final ratio", "final agreement",
                             f"lowest agreement >= {GOOD}", f"highest agreement < {POOR}", "verdict"],
                            per_run(runs))]
    doc = results.write("verdict", tables, results.command_line(__file__), {"good": GOOD, "poor": POOR})
    results.show(doc)


if __name__ == "__main__":
    main()
