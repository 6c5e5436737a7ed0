"""The ceiling of data-free distillation: the same student learning the same teacher by KD on the *real*
training split, which the pipeline never has.

    python benchmarks/real_ceiling.py --task mnist --seeds 0,1
    python benchmarks/real_ceiling.py --task digits --steps 3000
    python benchmarks/real_ceiling.py --task zoo --teachers gn_separable,wide_shallow --steps 4000 --shifts 0

The student, its optimiser and learning-rate schedule, the KD loss and the batch size are those of the
distillation stage (default preset); only the inputs differ. With a shift N in `--shifts` each training image
is also shifted by up to N pixels (the teacher labels the shifted image), the light augmentation the MNIST
teacher was trained with. A data-free student below the no-shift row is limited by what its generator
covers, not by its size. `--task zoo` takes teachers of benchmarks/zoo.py and the auto student a run builds for
each (the size `student.ratio` picks from the teacher's).
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
import zoo  # noqa: E402
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


def zoo_task(name: str, cfg):
    """(teacher, auto student, training images, evaluate, teacher accuracy) for a zoo teacher, as a run builds the
    student for it."""
    from core.teacher import computes_convolution
    from stages.distill.networks import build_student, param_count, student_spec

    entry = zoo.ZOO[name]
    teacher, teacher_acc = entry.train()
    x_train, x_test, _, y_test = entry.split()
    student = build_student(student_spec(entry.input_shape, entry.num_classes, param_count(teacher),
                                         cfg.student.ratio, computes_convolution(teacher, entry.input_shape)))

    @torch.no_grad()
    def evaluate(model):
        was = model.training
        accuracy = zoo.accuracy(model.eval(), x_test, y_test)
        model.train(was)
        return accuracy

    return teacher, student, x_train, evaluate, teacher_acc


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


def ceiling_tables(rows: list, n_train: set[int], steps: int, batch: int) -> list[dict]:
    """Per-run rows, and the mean final / teacher ratio per task and shift over the seeds. A row is
    (task, shift, seed, teacher accuracy, curve, wall seconds)."""
    per_run = [[task, shift, seed, f"{curve[-1][1]:.4f}", f"{max(a for _, a in curve):.4f}", f"{teacher_acc:.4f}",
                f"{curve[-1][1] / teacher_acc:.4f}", f"{wall:.0f}"]
               for task, shift, seed, teacher_acc, curve, wall in rows]
    means = []
    for task, shift in dict.fromkeys((r[0], r[1]) for r in rows):
        ratios = [r[4][-1][1] / r[3] for r in rows if (r[0], r[1]) == (task, shift)]
        means.append([task, shift, len(ratios), f"{statistics.mean(ratios):.4f}"])
    return [
        results.table("Student learning the teacher by KD on the real training split "
                      f"({' / '.join(f'{n:,}' for n in sorted(n_train))} images), "
                      f"{steps:,} steps of batch {batch}",
                      ["task", "shift", "seed", "final", "peak", "teacher", "final / teacher", "wall s"], per_run),
        results.table("Mean final / teacher over seeds", ["task", "shift", "seeds", "final / teacher"], means),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("digits", "mnist", "zoo"), default="mnist")
    ap.add_argument("--teachers", default="gn_separable,wide_shallow", help="zoo teachers, for --task zoo")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=10000, help="student steps (a default-preset distillation makes at most 400 x 5 x 2 = 4,000)")
    ap.add_argument("--shifts", default="0,2", help="comma-separated maximal shifts in pixels; 0: none")
    ap.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist10k.npz")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--name", default=None, help="results file name under benchmarks/results/ (default: real-ceiling-<task>)")
    args = ap.parse_args(argv)
    if args.steps < 1:
        raise SystemExit("--steps must be >= 1")

    from pipeline.config import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config(overrides={"preset": "default"})
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    shifts = [int(s) for s in args.shifts.split(",") if s.strip()]
    tasks = [t for t in args.teachers.split(",") if t.strip()] if args.task == "zoo" else [args.task]
    unknown = [t for t in tasks if args.task == "zoo" and t not in zoo.ZOO]
    if unknown:
        raise SystemExit(f"unknown zoo teacher {unknown[0]!r}; choose from: {', '.join(zoo.ZOO)}")
    rows, n_train = [], set()
    for task in tasks:
        for shift in shifts:
            for seed in seeds:
                torch.manual_seed(seed)
                if args.task == "zoo":
                    teacher, student, x_train, evaluate, teacher_acc = zoo_task(task, cfg)
                else:
                    x_train = train_split(task, args.mnist)
                    teacher, student, _, evaluate, teacher_acc = load_task(task, cfg, args.mnist, "standard",
                                                                          torch.device("cpu"))
                n_train.add(len(x_train))
                t0 = time.perf_counter()
                curve = kd_on_real(teacher, student, x_train, cfg.distill, args.steps, shift, evaluate,
                                   eval_every=max(1, args.steps // 5))
                wall = time.perf_counter() - t0
                rows.append((task, shift, seed, teacher_acc, curve, wall))
                print(f"  {task} shift {shift} seed {seed}: " + ", ".join(f"{s}: {a:.4f}" for s, a in curve)
                      + f" ({wall:.0f} s)", flush=True)

    tables = ceiling_tables(rows, n_train, args.steps, cfg.distill.batch_size)
    settings = {"steps": args.steps, "batch": cfg.distill.batch_size, "threads": args.threads}
    if args.task == "zoo":
        settings["teachers"] = tasks
    results.show(results.write(args.name or f"real-ceiling-{args.task}", tables, results.command_line(__file__, argv), settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
