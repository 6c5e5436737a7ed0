"""How well probe agreement tells a student's real accuracy, with and without the probes' image prior.

    python benchmarks/probes.py                       # every zoo teacher with a kept run
    python benchmarks/probes.py --teachers bn_cnn,mlp

Probe agreement is the only quality figure a user without data has: it drives the plateau stop and the
"not converged" verdict. For every student that `benchmarks/distill.py` left in its cache (any seed, default
synthesizer and replay), this synthesises the teacher's probe set twice, as the pipeline does (BatchNorm
statistics, confidence) and without the total-variation prior, and sets the student's agreement on each
beside its accuracy on the real test split. Writes benchmarks/results/probes.json.
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
from stages.distill.probes import TV_PER_SIDE, agreement, synthesize_probes  # noqa: E402

PER_CLASS = 32  # distill.probe_per_class's default: the set a run evaluates on


def kept_students(name: str) -> list[tuple[int, torch.nn.Module]]:
    from safetensors.torch import load_file

    out = []
    for run in sorted((WORK / name).glob("adversarial-vae-*")):
        if (run / "student.safetensors").is_file() and (run / "report.json").is_file():
            student = build_student(json.loads((run / "student.json").read_text()))
            student.load_state_dict(load_file(str(run / "student.safetensors")))
            out.append((int(run.name.rsplit("-", 1)[1]), student.eval()))
    return out


def measure(name: str) -> list[list]:
    entry = zoo.ZOO[name]
    teacher, _ = entry.train()
    teacher.eval()
    x_test, y_test = entry.test_set()
    students = kept_students(name)
    if not students:
        return []
    sets, seconds = {}, {}
    for label, tv in (("without", 0.0), ("with", TV_PER_SIDE)):
        t0 = time.perf_counter()
        sets[label] = synthesize_probes(teacher, entry.input_shape, entry.num_classes, PER_CLASS, tv=tv)
        seconds[label] = time.perf_counter() - t0
    rows = []
    for seed, student in students:
        with torch.no_grad():
            real = float((student(x_test).argmax(1) == y_test).float().mean())
        without, with_tv = (agreement(student, *sets[k]) for k in ("without", "with"))
        rows.append([name, seed, round(100 * real, 2), round(without, 4), round(with_tv, 4),
                     round(without - real, 4), round(with_tv - real, 4), round(seconds["with"], 1)])
    return rows


def summary(rows: list[list]) -> list[list]:
    out = []
    for label, col in (("without the prior", 5), ("with the prior (the pipeline's)", 6)):
        errors = [r[col] for r in rows]
        agree, real = np.array([r[col - 2] for r in rows]), np.array([r[2] / 100 for r in rows])
        r = float(np.corrcoef(agree, real)[0, 1]) if len(rows) > 2 and agree.std() > 0 else float("nan")
        out.append([label, len(rows), round(max(abs(e) for e in errors), 4),
                    round(statistics.mean(abs(e) for e in errors), 4), round(r, 3)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", default="all", help=f"comma list or 'all': {', '.join(zoo.ZOO)}")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = list(zoo.ZOO) if args.teachers == "all" else args.teachers.split(",")
    rows = [row for name in names for row in measure(name)]
    if not rows:
        raise SystemExit(f"no kept runs under {WORK}: run benchmarks/distill.py first")
    tables = [results.table("Probe agreement against real accuracy, per kept student",
                            ["teacher", "seed", "real accuracy %", "agreement without prior", "agreement with prior",
                             "error without", "error with", "probe synthesis s"], rows),
              results.table("Across students", ["probes", "students", "largest |error|", "mean |error|",
                                                "pearson r"], summary(rows))]
    doc = results.write("probes", tables, results.command_line(__file__), {"per_class": PER_CLASS})
    results.show(doc)


if __name__ == "__main__":
    main()
