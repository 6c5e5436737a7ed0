"""How well probe agreement tells a student's real accuracy, by how long the probes are optimised.

    python benchmarks/probes.py                       # every zoo teacher with a kept run
    python benchmarks/probes.py --teachers bn_cnn,mlp --steps 100,300

Probe agreement is the only quality figure a user without data has: it drives the plateau stop and the
"not converged" verdict. For every student that `benchmarks/distill.py` left in its cache (any seed and
synthesizer, VAE replay), this synthesises the teacher's probe set as the pipeline does (BatchNorm statistics,
confidence, the total-variation prior; made again robustly where the first set breaks under noise) once per
number of optimisation steps in `--steps`, and sets the student's agreement on each beside its accuracy on the
real test split. The other synthesizers' students are weaker ones of the same teacher: whether agreement ranks
them as real accuracy does is what a verdict needs. Writes benchmarks/results/probes.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import results  # noqa: E402
import zoo  # noqa: E402
from distill import WORK  # noqa: E402

from stages.distill.networks import build_student  # noqa: E402
from stages.distill.probes import TV_PER_SIDE, agreement, make_probes  # noqa: E402

PER_CLASS = 32  # distill.probe_per_class's default: the set a run evaluates on


def kept_students(name: str) -> list[tuple[str, torch.nn.Module]]:
    """The finished runs' students under the teacher's cache, named "synthesizer sSEED"."""
    from safetensors.torch import load_file

    out = []
    for run in sorted((WORK / name).glob("*-vae-*")):
        if (run / "student.safetensors").is_file() and (run / "report.json").is_file():
            student = build_student(json.loads((run / "student.json").read_text()))
            student.load_state_dict(load_file(str(run / "student.safetensors")))
            synthesizer, _, seed = run.name.split("-")
            out.append((f"{synthesizer} s{seed}", student.eval()))
    return out


def measure(name: str, steps: list[int]) -> list[list]:
    entry = zoo.ZOO[name]
    teacher, _ = entry.train()
    teacher.eval()
    x_test, y_test = entry.test_set()
    students = kept_students(name)
    if not students:
        return []
    sets, seconds = {}, {}
    for n in steps:
        t0 = time.perf_counter()
        sets[n] = make_probes(teacher, entry.input_shape, entry.num_classes, PER_CLASS, steps=n, tv=TV_PER_SIDE)
        seconds[n] = time.perf_counter() - t0
    rows = []
    for student_name, student in students:
        with torch.no_grad():
            real = float((student(x_test).argmax(1) == y_test).float().mean())
        for n in steps:
            agree = agreement(student, sets[n].inputs, sets[n].labels)
            rows.append([name, student_name, n, "yes" if sets[n].robust else "no", round(100 * real, 2),
                         round(agree, 4), round(agree - real, 4), round(seconds[n], 1)])
    return rows


def summary(rows: list[list], steps: list[int]) -> list[list]:
    out = []
    for n in steps:
        mine = [r for r in rows if r[2] == n]
        errors = [abs(r[6]) for r in mine]
        agree, real = np.array([r[5] for r in mine]), np.array([r[4] / 100 for r in mine])
        pearson = results.pearson(agree, real) if len(mine) > 2 else "- (under 3 students)"
        out.append([n, len(mine), round(float(agree.min()), 4), round(max(errors), 4),
                    round(statistics.mean(errors), 4), pearson, round(statistics.mean(r[7] for r in mine), 1)])
    return out


def ranking(rows: list[list], steps: list[int]) -> list[list]:
    """Per teacher with students of different quality: does the student with the higher real accuracy have the
    higher probe agreement? Counted over every pair of its students two points or more apart in real accuracy."""
    out = []
    for name in dict.fromkeys(r[0] for r in rows):
        for n in steps:
            mine = [r for r in rows if r[0] == name and r[2] == n]
            pairs = [(a, b) for i, a in enumerate(mine) for b in mine[i + 1:] if abs(a[4] - b[4]) >= 2]
            if pairs:
                right = sum((a[4] - b[4]) * (a[5] - b[5]) > 0 for a, b in pairs)
                out.append([name, n, mine[0][3], len(mine), len(pairs), right])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", default="all", help=f"comma list or 'all': {', '.join(zoo.ZOO)}")
    ap.add_argument("--steps", default="100,300", help="comma list of probe optimisation steps to compare")
    args = ap.parse_args()
    torch.set_num_threads(1)
    steps = [int(n) for n in args.steps.split(",")]
    names = list(zoo.ZOO) if args.teachers == "all" else args.teachers.split(",")
    rows = [row for name in names for row in measure(name, steps)]
    if not rows:
        raise SystemExit(f"no kept runs under {WORK}: run benchmarks/distill.py first")
    tables = [results.table("Probe agreement against real accuracy, per kept student",
                            ["teacher", "student", "probe steps", "made robustly", "real accuracy %", "agreement",
                             "agreement - real", "probe synthesis s"], rows),
              results.table("Across students", ["probe steps", "students", "lowest agreement", "largest |error|",
                                                "mean |error|", "pearson r", "mean synthesis s"],
                            summary(rows, steps)),
              results.table("Does agreement rank a teacher's students as real accuracy does? (pairs 2+ points apart)",
                            ["teacher", "probe steps", "made robustly", "students", "pairs", "ranked right"],
                            ranking(rows, steps))]
    doc = results.write("probes", tables, results.command_line(__file__), {"per_class": PER_CLASS})
    results.show(doc)


if __name__ == "__main__":
    main()
