"""On-device update with and without replay, measured on real digits.

    python benchmarks/update.py [--preset default] [--update-iterations 150] [--out runs/bench-update]

T1 (the built-in teacher) is distilled into a parent bundle. T2 is T1 fine-tuned so classes 1 and 7
trade places. The parent is updated toward T2 twice from the same starting point: with replay from
the bundle's VAE, and without replay. On the real digits test split the table shows agreement with
T2 on the changed classes (what the update must learn) and on the other classes (what it must keep).
Writes benchmarks/results/update.json and prints its table.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from pipeline.config import load_config
from core.evaluation import onnx_predict
from pipeline.run import run_all
from core.tasks import digits
from core.teacher import load_weights
from core.ui import Console
from pipeline.update import update_bundle

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402

SWAP = {1: 7, 7: 1}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default")
    ap.add_argument("--update-iterations", type=int, default=150)
    ap.add_argument("--out", default="runs/bench-update")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console(quiet=True)
    torch.set_num_threads(1)

    t1 = digits.build_teacher()
    load_weights(t1, digits.WEIGHTS)
    t2 = digits.fine_tune(t1, SWAP, epochs=3, seed=args.seed)
    save_file({k: v.contiguous() for k, v in t2.state_dict().items()}, str(out / "t2.safetensors"))
    (out / "new.toml").write_text(
        '[teacher]\nfactory = "core.tasks.digits:build_teacher"\nweights = "t2.safetensors"\n'
        "input_shape = [1, 8, 8]\nnum_classes = 10\nmean = [0.3059]\nstd = [0.3782]\nscale = 0.0625\n")

    t0 = time.perf_counter()
    parent = out / "parent"
    run_all(load_config(overrides={"preset": args.preset, "seed": args.seed, "target": "jetson"}), parent, console, force=True)
    parent_s = time.perf_counter() - t0
    rows = []
    x, y = digits.test_set()
    y2 = np.array([SWAP.get(int(v), int(v)) for v in y])
    changed = np.isin(y.numpy(), list(SWAP))

    def score(name: str, pred: np.ndarray, wall: float | None) -> None:
        rows.append([name, f"{(pred[changed] == y2[changed]).mean():.4f}", f"{(pred[~changed] == y2[~changed]).mean():.4f}",
                     f"{(pred == y2).mean():.4f}", "-" if wall is None else f"{wall:.1f}"])

    with torch.no_grad():
        score("T2 (new teacher)", t2(x).argmax(1).numpy(), None)
    score("parent student (T1)", onnx_predict(parent / "student_int8.onnx", x.numpy()).argmax(1), parent_s)
    for replay in ("vae", "none"):
        cfg = load_config(out / "new.toml", {"preset": args.preset, "seed": args.seed, "distill.replay": replay,
                                             "distill.iterations": args.update_iterations})
        t = time.perf_counter()
        dest = out / f"update-{replay}"
        update_bundle(parent, cfg, dest, console, force=True)
        score(f"updated, replay={replay}", onnx_predict(dest / "student_int8.onnx", x.numpy()).argmax(1),
              time.perf_counter() - t)

    tab = results.table(
        f"Update toward T2 (classes 1<->7 swapped), digits test split, INT8 students; preset {args.preset}, "
        f"{args.update_iterations} update iterations, seed {args.seed}",
        ["model", "changed classes (1<->7)", "other classes", "all", "wall s"], rows,
        notes="Agreement with T2's labels on the real test split: the changed classes are what the update must "
              "learn, the other classes what it must keep. The parent's wall time is its whole `pipeline run`.")
    settings = {"preset": args.preset, "update_iterations": args.update_iterations, "seed": args.seed}
    results.show(results.write("update", [tab], results.command_line(__file__), settings))


if __name__ == "__main__":
    main()
