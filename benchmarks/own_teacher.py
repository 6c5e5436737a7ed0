"""Own-teacher accuracy: teachers trained on data the pipeline never sees, distilled data-free, INT8.

    python benchmarks/own_teacher.py [--preset default] [--target-tabular mobile] [--target-image jetson]
                                     [--set key=value ...] [--work DIR]

Copies examples/own_teacher to a work folder, trains both teachers there (train.py), runs
`pipeline run --config {tabular,image}.toml` and prints teacher / student FP32 / student INT8
accuracy on each held-out test split, with the INT8 student's ratio to the teacher.
Writes benchmarks/results/own-teacher-<task>.json per task and prints its table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "own_teacher"
COLUMNS = ["task", "target", "teacher", "student FP32", "student INT8", "INT8 / teacher", "params (teacher -> student)",
           "wall s"]


def run_task(task: str, target: str, work: Path, args) -> dict:
    """`pipeline run` on one of the example's configs; its table, read from the run's report."""
    out = work / "runs" / task
    cmd = [sys.executable, "-m", "pipeline.cli", "--quiet", "run", "--target", target, "--config", f"{task}.toml",
           "--preset", args.preset, "--seed", str(args.seed), "--out", str(out), "--force"]
    for s in args.sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=work, stdout=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SystemExit(f"{task}: `pipeline run` failed with exit {done.returncode} (its error is above)")
    report = json.loads((out / "report.json").read_text())
    acc = report["accuracy"]
    d = report["distillation"]
    row = [task, target, f"{acc['teacher']:.2%}", f"{acc['student_fp32']:.2%}", f"{acc['student_int8']:.2%}",
           f"{acc['student_int8'] / acc['teacher']:.1%}", f"{d['teacher_params']:,} -> {d['student_params']:,}",
           f"{time.perf_counter() - t0:.0f}"]
    return results.table(f"Own teacher, {task}: preset {args.preset}, seed {args.seed}, sets {args.sets or '-'}",
                         COLUMNS, [row], notes=f"Evaluated on {acc['evaluated_on']}.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--target-tabular", default="mobile")
    ap.add_argument("--target-image", default="jetson")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="passed to `pipeline run --set`")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--only", choices=("tabular", "image"), default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)  # as `pipeline run` does by default, so the results' host line says what ran
    work = args.work or Path(tempfile.mkdtemp(prefix="own-teacher-"))
    shutil.copytree(EXAMPLE, work, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("runs", "*.safetensors", "*.npz", "__pycache__"))
    subprocess.run([sys.executable, "train.py"], cwd=work, check=True)
    print(f"work folder {work}", file=sys.stderr)
    settings = {"preset": args.preset, "seed": args.seed, "sets": args.sets}
    for task, target in (("tabular", args.target_tabular), ("image", args.target_image)):
        if args.only and task != args.only:
            continue
        tab = run_task(task, target, work, args)
        results.show(results.write(f"own-teacher-{task}", [tab], results.command_line(__file__), settings))


if __name__ == "__main__":
    main()
