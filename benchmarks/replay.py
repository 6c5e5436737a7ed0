"""Replay modes side by side in the distillation stage: replay modes x seeds (x tasks) in one invocation.

    python benchmarks/replay.py --task digits --modes vae,none --seeds 0,1
    python benchmarks/replay.py --task mnist --mnist ../shared/data/mnist10k.npz
    python benchmarks/replay.py --task digits --scenario forgetting

Prints one table (one row per task x mode x seed) and a summary over seeds. Accuracy is measured on real
held-out data only for reporting; distillation itself never sees it. The history's second half gives the
robustness measures: expected accuracy (mean), variance and the largest drop between consecutive evaluations.

Scenarios:
  standard    the preset as is.
  forgetting  a setting where catastrophic forgetting shows without replay: the generator loses its class-balance
              term (so each phase covers few classes), the student learns with a constant, high learning rate
              (Adam 1e-2, no cosine decay), and the student is smaller (digits: ~1/10 of the teacher's parameters;
              MNIST: LeNet-5-quarter).
  drift       forgetting, with a generator learning rate ten times higher, so its distribution moves faster
              between phases.
  phases      the generator is steered through class groups ({0,5}, {1,6}, ... for 10 classes, each for a
              tenth of the run, the cycle run twice: `stress.class_phases=5`): the synthetic stream leaves
              whole classes behind for long stretches, the setting replay is meant for.
  class-by-class
              the generator is steered to one class at a time (10 phases of 30 iterations, run twice), and the
              student has nothing that steadies it beyond the paper's loop: no weight average, no input noise, a
              constant learning rate of 1e-2 (Adam), ~1/10 of the teacher's size (MNIST: LeNet-5-quarter).
              `--set stress.class_phases=5` gives two classes at a time.

The stresses (`stress.*` keys, which `--set` takes too) are the benchmark's, handed to the distillation loop;
the pipeline has no such settings:
  constant_lr   the student's learning rate stays where it starts (no cosine annealing)
  class_phases  the generator is steered to one group of classes at a time: the classes split into this many
                interleaved groups, each steered to for an equal stretch (0: none)
  phase_cycles  how many times the groups are cycled through over the run
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import results  # noqa: E402

# The scenarios keep the run length and the plain KD batch their tables in benchmarks/README.md were measured
# with (the default preset before it took the attacked KD batch and fewer iterations), and run that length:
# their stream moves by design, and the plateau rule would end a run between two of its phases.
MEASURED_WITH = {"distill.iterations": 600, "distill.input_attack": 0.0, "distill.patience": 0}
# A small student learning fast at a constant rate: what forgets when its stream moves.
HASTY_STUDENT = {**MEASURED_WITH, "stress.constant_lr": True, "distill.lr_student": 0.01, "student.ratio": 0.1}
FORGETTING = {**HASTY_STUDENT, "distill.w_balance": 0.0}
PHASES = {**MEASURED_WITH, "stress.class_phases": 5, "stress.phase_cycles": 2}
SCENARIOS = {
    "standard": {},
    "forgetting": FORGETTING,
    "drift": {**FORGETTING, "distill.lr_generator": 0.01},
    "phases": PHASES,
    # One class at a time, and a student without the steadying the default adds to the paper's loop.
    "class-by-class": {**HASTY_STUDENT, **PHASES, "stress.class_phases": 10, "distill.ema_decay": 0.0,
                       "distill.input_noise": 0.0},
}
STRESSES = {"constant_lr": False, "class_phases": 0, "phase_cycles": 2}  # unstressed (see the docstring)


def split_stress(overrides: dict) -> tuple[dict, dict]:
    """The config overrides, and the stresses (`stress.*` keys) over their defaults."""
    config, stress = {}, dict(STRESSES)
    for key, value in overrides.items():
        section, _, name = key.partition(".")
        if section != "stress":
            config[key] = value
        elif name in STRESSES:
            stress[name] = value
        else:
            raise SystemExit(f"unknown stress {key!r}; known: {', '.join('stress.' + k for k in STRESSES)}")
    return config, stress


def class_groups(num_classes: int, phases: int) -> list[list[int]]:
    """Split the classes into `phases` interleaved groups (phases=5 of 10: {0,5}, {1,6}, ...)."""
    return [list(range(g, num_classes, phases)) for g in range(phases)]


def phase_of(iteration: int, iterations: int, phases: int, cycles: int) -> int:
    """Which group the generator is steered to at `iteration`: `phases` equal phases, run `cycles` times."""
    length = max(1, iterations // (phases * cycles))
    return (iteration // length) % phases


def stress_kwargs(stress: dict, iterations: int, teacher: torch.nn.Module, shape: tuple[int, ...]) -> dict:
    """distill()'s keyword arguments that apply `stress` to a run of `iterations`."""
    kwargs = {"constant_lr": bool(stress["constant_lr"])}
    phases, cycles = stress["class_phases"], stress["phase_cycles"]
    if not phases:
        return kwargs
    with torch.no_grad():
        num_classes = teacher(torch.zeros(2, *shape, device=next(teacher.parameters()).device)).shape[1]
    if not 0 < phases <= num_classes or cycles < 1 or phases * cycles > iterations:
        raise SystemExit(f"stress.class_phases ({phases}) must be within the teacher's {num_classes} classes, and "
                         f"times stress.phase_cycles ({cycles}, >= 1) within distill.iterations ({iterations})")
    groups = class_groups(num_classes, phases)
    return {**kwargs, "steer": lambda it: groups[phase_of(it, iterations, phases, cycles)]}


def _parse_sets(items: list[str]) -> dict:
    """`--set` items read as the CLI reads them; a malformed one ends the benchmark with the CLI's message."""
    from core.errors import UsageError
    from pipeline.cli import parse_set

    try:
        return parse_set(tuple(items))
    except UsageError as exc:
        raise SystemExit(f"error: {exc}") from None


def load_task(name: str, cfg, mnist_path: Path, scenario: str, device: torch.device):
    """(teacher, student, shape, evaluate, teacher_accuracy), models and test split on `device`."""
    from stages.distill.networks import build_student, param_count, student_spec

    if name == "digits":
        from core.tasks import digits
        from core.teacher import load_teacher

        teacher, spec = load_teacher(cfg)
        xt, yt = digits.test_set()
        student = build_student(student_spec(spec.input_shape, spec.num_classes, param_count(teacher), cfg.student.ratio))
        shape = tuple(spec.input_shape)
    else:
        import mnist

        teacher, _ = mnist.teacher(mnist_path)
        _, xt, _, yt = mnist.load_split(mnist_path)
        # MNIST's students are fixed LeNets: a scenario that shrinks the student gets the quarter-width one.
        student = mnist.lenet5_quarter() if "student.ratio" in SCENARIOS[scenario] else mnist.lenet5_half()
        shape = mnist.INPUT_SHAPE
    teacher, student, xt, yt = teacher.to(device), student.to(device), xt.to(device), yt.to(device)

    @torch.no_grad()
    def evaluate(model):
        was = model.training
        model.eval()
        hits = sum((model(xt[i:i + 1000]).argmax(1) == yt[i:i + 1000]).sum().item() for i in range(0, len(xt), 1000))
        model.train(was)
        return hits / len(xt)

    return teacher.eval(), student, shape, evaluate, evaluate(teacher)


def run_one(task: str, mode: str, seed: int, preset: str, sets: dict, mnist_path: Path, scenario: str, out: Path,
            verbose: bool = False, device: torch.device = torch.device("cpu")) -> dict:
    from pipeline.config import load_config
    from stages.distill.engine import build_memory, distill, expected_accuracy, largest_drop

    overrides, stress = split_stress({"preset": preset, **SCENARIOS[scenario], **sets, "distill.replay": mode})
    cfg = load_config(overrides=overrides)
    torch.manual_seed(seed)
    teacher, student, shape, evaluate, teacher_acc = load_task(task, cfg, mnist_path, scenario, device)
    run_dir = out / f"{task}-{scenario}-{mode}-s{seed}"

    def progress(step, row):
        if verbose and row and row["step"] == step:
            print(f"    {task}/{mode}/seed {seed} step {step}: accuracy {row['accuracy']:.4f} agreement {row['agreement']:.3f} "
                  f"({row['elapsed_s']:.1f} s)", file=sys.stderr, flush=True)

    # Handed in, the memory is replayed from its first samples on, as in an update: the modes compare replay
    # within one run, which the pipeline's own runs leave out for the VAE.
    memory = build_memory(cfg.distill, shape, teacher, device)
    res = distill(cfg.distill, teacher, student, shape, run_dir, device, seed=seed, evaluate=evaluate,
                  progress=progress, memory=memory, **stress_kwargs(stress, cfg.distill.iterations, teacher, shape))
    accs = [r["accuracy"] for r in res.history if r["accuracy"] is not None]
    second = accs[len(accs) // 2:]
    final = evaluate(res.student)
    return {
        "task": task, "scenario": scenario, "mode": mode, "seed": seed, "teacher": teacher_acc, "final": final,
        "peak": max(accs), "expected": expected_accuracy(res.history),
        "variance": statistics.pvariance(second) if len(second) > 1 else 0.0,
        "largest_drop": largest_drop(res.history), "wall_s": res.wall_s, "it_per_s": res.iterations / res.wall_s,
        "memory_bytes": res.memory.nbytes(), "iterations": res.iterations, "history": res.history,
    }


COLUMNS = ["task", "mode", "seed", "final", "peak", "expected", "variance", "largest drop", "wall s", "it/s",
           "replay bytes", "final/teacher"]


def row_cells(r: dict) -> list:
    name = r["task"] if r["scenario"] == "standard" else f"{r['task']} ({r['scenario']})"
    return [name, r["mode"], r["seed"], round(r["final"], 4), round(r["peak"], 4), round(r["expected"], 4),
            f"{r['variance']:.2e}", round(r["largest_drop"], 4), round(r["wall_s"]), round(r["it_per_s"], 2),
            r["memory_bytes"], round(r["final"] / r["teacher"], 4)]


def summary_rows(rows: list[dict]) -> list[list]:
    def ms(vals, fmt):
        if len(vals) < 2:
            return format(vals[0], fmt)
        return f"{format(statistics.mean(vals), fmt)} ± {format(statistics.stdev(vals), fmt)}"

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["scenario"], r["mode"]), []).append(r)
    return [[task if scenario == "standard" else f"{task} ({scenario})", mode, len(rs),
             ms([r["final"] for r in rs], ".4f"), ms([r["expected"] for r in rs], ".4f"),
             ms([r["largest_drop"] for r in rs], ".4f"), ms([r["wall_s"] for r in rs], ".0f"),
             ms([r["final"] / r["teacher"] for r in rs], ".4f")] for (task, scenario, mode), rs in groups.items()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--task", choices=("digits", "mnist", "both"), default="digits")
    ap.add_argument("--modes", default="vae,none", help="comma-separated replay modes")
    ap.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--scenario", choices=tuple(SCENARIOS), default="standard")
    ap.add_argument("--mnist", type=Path, default=ROOT.parent / "shared" / "data" / "mnist10k.npz")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override or stress, e.g. distill.lr_student=0.001, stress.class_phases=5")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cuda: the same runs on the first GPU")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / ".cache" / "distill-runs")
    ap.add_argument("--quiet", action="store_true", help="no per-evaluation progress lines on stderr")
    ap.add_argument("--json", type=Path, default=None, help="also write all rows (with histories) here")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible to torch here")
    device = torch.device(args.device)
    tasks = ["digits", "mnist"] if args.task == "both" else [args.task]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    sets = _parse_sets(args.set)
    if "mnist" in tasks:
        import mnist

        t0 = time.perf_counter()
        _, acc = mnist.teacher(args.mnist)
        print(f"MNIST LeNet-5 teacher: test accuracy {acc:.4f} ({time.perf_counter() - t0:.0f} s incl. training if not cached)", flush=True)
    rows = []
    for task in tasks:
        for mode in modes:
            for seed in seeds:
                r = run_one(task, mode, seed, args.preset, sets, args.mnist, args.scenario, args.out,
                            verbose=not args.quiet, device=device)
                print(f"  done {task}/{mode}/seed {seed}: final {r['final']:.4f} expected {r['expected']:.4f} "
                      f"({r['wall_s']:.0f} s)", flush=True)
                rows.append(r)
    tables = [results.table("Runs", COLUMNS, [row_cells(r) for r in rows]),
              results.table("Over seeds (mean ± std)", ["task", "mode", "seeds", "final", "expected", "largest drop",
                                                        "wall s", "final/teacher"], summary_rows(rows))]
    doc = results.write(f"replay-{args.scenario}", tables, results.command_line(__file__),
                        {"preset": args.preset, "sets": args.set})
    results.show(doc)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
