"""The ceiling of data-free distillation: the same student learning the same teacher by KD on the *real*
training split, which the pipeline never has.

    python benchmarks/real_ceiling.py --task mnist --seeds 0,1
    python benchmarks/real_ceiling.py --task digits --steps 3000

The student, its optimiser and learning-rate schedule, the KD loss and the batch size are those of the
distillation stage (default preset); only the inputs differ. With a shift N in `--shifts` each training image
is also shifted by up to N pixels (the teacher labels the shifted image), the light augmentation the MNIST
teacher was trained with. A data-free student below the no-shift row is limited by what its generator
covers, not by its size.
Writes benchmarks/results/real-ceiling-<task>.json and prints its tables.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import results  # noqa: E402
from replay import load_task  # noqa: E402


def translate(x: torch.Tensor, max_shift: int) -> torch.Tensor:
    """Shift each image of an [N, C, H, W] batch by its own random integer offset in [-max_shift, max_shift]
    along both axes; the border is replicated (normalised backgrounds are not zero)."""
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dy, dx = torch.randint(0, 2 * p + 1, (2, n, 1), device=x.device)
    rows = (torch.arange(h, device=x.device) + dy)[:, :, None]  # [N, H, 1]
    cols = (torch.arange(w, device=x.device) + dx)[:, None, :]  # [N, 1, W]
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def train_split(task: str, mnist_path: Path) -> torch.Tensor:
    """The real training images of `task`, normalised as the teacher expects (labels are not needed: KD)."""
    if task == "digits":
        from core.tasks import digits

        return digits.normalize(digits.split()[0])
    import mnist

    return mnist.load_split(mnist_path)[0]


def kd_on_real(teacher: torch.nn.Module, student: torch.nn.Module, x_train: torch.Tensor, cfg, steps: int,
               shift: int, evaluate, eval_every: int) -> list[tuple[int, float]]:
    """Train `student` to match `teacher` on batches of real images; returns (step, accuracy) along the way."""
    from stages.distill import criteria
    from stages.distill.engine import student_optimizer

    opt = student_optimizer(cfg, student)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    curve = []
    student.train()
    for step in range(1, steps + 1):
        x = x_train[torch.randint(0, len(x_train), (cfg.batch_size,))]
        if shift and x.dim() == 4:
            x = translate(x, shift)
        with torch.no_grad():
            t = teacher(x)
        loss = criteria.kd_loss(cfg.kd_loss, student(x), t, cfg.kd_temperature)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            curve.append((step, evaluate(student)))
    student.eval()
    return curve


def ceiling_tables(task: str, rows: list, shifts: list[int], n_train: int, steps: int, batch: int) -> list[dict]:
    """Per-run rows, and the mean final / teacher ratio per shift over the seeds."""
    per_run = [[task, shift, seed, f"{curve[-1][1]:.4f}", f"{max(a for _, a in curve):.4f}", f"{teacher_acc:.4f}",
                f"{curve[-1][1] / teacher_acc:.4f}", f"{wall:.0f}"] for shift, seed, teacher_acc, curve, wall in rows]
    means = []
    for shift in shifts:
        ratios = [r[3][-1][1] / r[2] for r in rows if r[0] == shift]
        means.append([shift, len(ratios), f"{statistics.mean(ratios):.4f}"])
    return [
        results.table(f"Student learning the teacher by KD on the real training split ({n_train:,} images), "
                      f"{steps:,} steps of batch {batch}",
                      ["task", "shift", "seed", "final", "peak", "teacher", "final / teacher", "wall s"], per_run),
        results.table("Mean final / teacher over seeds", ["shift", "seeds", "final / teacher"], means),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("digits", "mnist"), default="mnist")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=10000, help="student steps (a default-preset distillation makes at most 400 x 5 x 2 = 4,000)")
    ap.add_argument("--shifts", default="0,2", help="comma-separated maximal shifts in pixels; 0: none")
    ap.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist10k.npz")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")

    from pipeline.config import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config(overrides={"preset": "default"})
    x_train = train_split(args.task, args.mnist)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    shifts = [int(s) for s in args.shifts.split(",") if s.strip()]
    rows = []
    for shift in shifts:
        for seed in seeds:
            torch.manual_seed(seed)
            teacher, student, _, evaluate, teacher_acc = load_task(args.task, cfg, args.mnist, "standard",
                                                                  torch.device("cpu"))
            t0 = time.perf_counter()
            curve = kd_on_real(teacher, student, x_train, cfg.distill, args.steps, shift, evaluate,
                               eval_every=max(1, args.steps // 5))
            wall = time.perf_counter() - t0
            rows.append((shift, seed, teacher_acc, curve, wall))
            print(f"  shift {shift} seed {seed}: " + ", ".join(f"{s}: {a:.4f}" for s, a in curve)
                  + f" ({wall:.0f} s)", flush=True)

    tables = ceiling_tables(args.task, rows, shifts, len(x_train), args.steps, cfg.distill.batch_size)
    settings = {"steps": args.steps, "batch": cfg.distill.batch_size, "threads": args.threads}
    results.show(results.write(f"real-ceiling-{args.task}", tables, results.command_line(__file__, argv), settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
