"""Own-teacher accuracy: teachers trained on data the pipeline never sees, distilled data-free, INT8.

    python benchmarks/own_teacher.py [--preset default] [--target-tabular mobile] [--target-image jetson]
                                     [--set key=value ...] [--work DIR]

Copies examples/own_teacher to a work folder, trains both teachers there (train.py), runs
`pipeline run --config {tabular,image}.toml` and prints teacher / student FP32 / student INT8
accuracy on each held-out test split, with the INT8 student's ratio to the teacher.
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

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "own_teacher"


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

    work = args.work or Path(tempfile.mkdtemp(prefix="own-teacher-"))
    shutil.copytree(EXAMPLE, work, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("runs", "*.safetensors", "*.npz", "__pycache__"))
    subprocess.run([sys.executable, "train.py"], cwd=work, check=True)
    rows = []
    for task, target in (("tabular", args.target_tabular), ("image", args.target_image)):
        if args.only and task != args.only:
            continue
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
        rows.append((task, target, acc["teacher"], acc["student_fp32"], acc["student_int8"],
                     acc["student_int8"] / acc["teacher"], d["teacher_params"], d["student_params"],
                     time.perf_counter() - t0, acc["evaluated_on"]))

    print(f"\npreset {args.preset}, seed {args.seed}, sets {args.sets or '-'}; work folder {work}\n")
    print("| task | target | teacher | student FP32 | student INT8 | INT8 / teacher | params (teacher -> student) | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for task, target, t, f, q, r, tp, sp, wall, _ in rows:
        print(f"| {task} | {target} | {t:.2%} | {f:.2%} | {q:.2%} | {r:.1%} | {tp:,} -> {sp:,} | {wall:.0f} |")
    print()
    for row in rows:
        print(f"{row[0]}: evaluated on {row[-1]}")


if __name__ == "__main__":
    main()
