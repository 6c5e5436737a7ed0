"""What distillation costs as the teacher grows: a ladder of teachers through the real distillation loop.

    python benchmarks/scale.py                        # every entry, CPU, 1 and 2 threads
    python benchmarks/scale.py --only digits,resnet18 --threads 1
    python benchmarks/scale.py --device cuda          # the same ladder on a GPU (skipped when there is none)

Each row is one (teacher, device, threads) run of `stages.distill.engine.distill` with the default DistillConfig
and the auto student, in a fresh process of its own (so its peak memory is its own), for a fixed number of
iterations with stopping on plateau off. The first iteration is a warm-up and is not timed, as in the stage's own
estimate. Per row: seconds per iteration, the samples that go through the teacher forward and backward per
iteration (counted by hooks on the teacher, and attributed to the part of the loop that sent them), the samples
the student learns from per second (its KD batches, fresh and replayed), the probe synthesis done once at the
start (setup, not in the iteration time), peak memory, and the stage's printed estimate against the actual time.

The teachers have random weights (the built-in digits teacher keeps its shipped ones): cost does not depend on
the weights. On the CPU the two 224x224 entries run with the KD batch, the replay batch and the probe set cut by
the row's divisor: at the default sizes one iteration needs more memory than the host has and hours of time.
Writes benchmarks/results/<name>.json and <name>.png (cost against the teacher's GFLOPs).
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

import results  # noqa: E402
from stages.distill.config import DistillConfig  # noqa: E402
from stages.distill.probes import probes_per_class  # noqa: E402

ROWS = HERE / ".cache" / "scale"  # every row measured, for --reuse
NUM_CLASSES = 10  # every rung's: the probe set and the class terms grow with it

# The parts of one iteration a teacher pass can come from, in loop order (engine.py). "KD labelling" is the
# loop's own teacher call on the student's batch; everything else in a KD step (sampling the generator,
# perturbing, the student's update) is timed with it.
PARTS = ("perturbation sizing", "generator step", "replay sampling", "attack", "KD labelling", "VAE memory")


# ---- the ladder ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """How long a row runs, and by how much its batches and probe set are cut (1: the defaults)."""

    iterations: int
    divisor: int = 1
    probe_steps: int | None = None  # None: all of the probe synthesis' steps; else this many, scaled up


@dataclass(frozen=True)
class Rung:
    name: str
    shape: tuple[int, int, int]
    build: Callable[[], nn.Module]
    cpu: Plan
    cuda: Plan = Plan(20)


def _digits() -> nn.Module:
    from core.tasks import digits
    from core.teacher import load_weights

    model = digits.build_teacher()
    load_weights(model, digits.WEIGHTS)
    return model


def _zoo(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import zoo

        return zoo.ZOO[name].builder()
    return build


def _model(cls_name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import models

        return getattr(models, cls_name)(num_classes=10)
    return build


# The digits default runs its whole default length (the estimate's check); the ResNet-18 rung runs long enough
# past the estimate (made after the warm-up and ESTIMATE_AFTER iterations) to check it too.
LADDER = {r.name: r for r in [
    Rung("digits", (1, 8, 8), _digits, Plan(DistillConfig.iterations), Plan(DistillConfig.iterations)),
    Rung("mnist_lenet5", (1, 32, 32), _zoo("lenet5"), Plan(12)),
    Rung("mnist_bn_cnn", (1, 28, 28), _zoo("bn_cnn"), Plan(12)),
    Rung("resnet18", (3, 32, 32), _model("ResNet18"), Plan(7, probe_steps=5)),
    Rung("mobilenetv2_96", (3, 96, 96), _model("MobileNetV2"), Plan(3, probe_steps=5)),
    Rung("mobilenetv2_224", (3, 224, 224), _model("MobileNetV2"), Plan(3, divisor=16, probe_steps=3)),
    Rung("resnet50_224", (3, 224, 224), _model("ResNet50"), Plan(2, divisor=16, probe_steps=2)),
]}


# ---- instruments -----------------------------------------------------------------------------------

class Parts:
    """Which part of the loop is running, and the seconds spent in each (a nested part's time is its own)."""

    def __init__(self, base: str = "setup"):
        self.stack = [base]
        self.seconds: Counter = Counter()
        self._since = time.perf_counter()

    @property
    def current(self) -> str:
        return self.stack[-1]

    def _charge(self) -> None:
        now = time.perf_counter()
        self.seconds[self.current] += now - self._since
        self._since = now

    @contextmanager
    def inside(self, name: str):
        self._charge()
        self.stack.append(name)
        try:
            yield
        finally:
            self._charge()
            self.stack.pop()

    def totals(self) -> Counter:
        self._charge()
        return Counter(self.seconds)


class TeacherPasses:
    """Samples through the teacher, forward and backward, by the part of the loop whose forward pass it was.
    A backward pass is counted when the gradient reaches the teacher's output (backward() or autograd.grad)."""

    def __init__(self, teacher: nn.Module, parts: Parts):
        self.parts = parts
        self.forward: Counter = Counter()
        self.backward: Counter = Counter()
        self._handle = teacher.register_forward_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        part = self.parts.current
        self.forward[part] += output.shape[0]
        if output.requires_grad:
            output.register_hook(functools.partial(self._on_backward, part))

    def _on_backward(self, part: str, grad: torch.Tensor) -> None:
        self.backward[part] += grad.shape[0]

    def remove(self) -> None:
        self._handle.remove()


class StudentSamples:
    """Samples the student learns from: its forward passes in training mode (its KD batches). The generator's
    step, the attack and evaluation run it in eval mode."""

    def __init__(self, student: nn.Module):
        self.count = 0
        self._handle = student.register_forward_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if module.training:
            self.count += output.shape[0]


def gflops(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> float:
    """Forward GFLOPs per sample of input `shape` (a multiply-add is two), as torch's FLOP counter counts them."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros((1, *shape), device=device))
    model.train(was)
    return counter.get_total_flops() / 1e9


# ---- one row, in its own process ---------------------------------------------------------------------

class Recorder:
    """Wraps the loop's parts so their teacher passes and time are attributed, and snapshots every iteration."""

    def __init__(self, parts: Parts, passes: TeacherPasses, student: StudentSamples):
        self.parts, self.passes, self.student = parts, passes, student
        self.snapshots: list[dict] = []  # one at the loop's start, then one per iteration
        self.durations: list[float] = []  # each iteration's seconds, as the stage's Pace times them
        self.probe_s = 0.0

    def snapshot(self) -> dict:
        return {"forward": Counter(self.passes.forward), "backward": Counter(self.passes.backward),
                "seconds": self.parts.totals(), "student": self.student.count, "cpu": time.process_time()}

    def install(self, probe_steps: int | None) -> None:
        from stages.distill import augment, engine, session
        from stages.distill.memory import VAEMemory
        from stages.distill.synthesizer import AdversarialSynthesizer

        self._wrap(AdversarialSynthesizer, "step", "generator step")
        self._wrap(VAEMemory, "sample", "replay sampling")
        self._wrap(augment, "toward_disagreement", "attack")
        self._wrap(augment, "label_safe_reach", "perturbation sizing")
        self._wrap(VAEMemory, "observe", "VAE memory")
        train = engine._train

        def _train(*args, **kwargs):
            with self.parts.inside("KD labelling"):
                self.snapshots.append(self.snapshot())
                return train(*args, **kwargs)
        engine._train = _train
        after = session.Session.after_iteration

        def after_iteration(s, step, started, *args, **kwargs):
            self.durations.append(time.perf_counter() - started)
            self.snapshots.append(self.snapshot())
            with self.parts.inside("evaluation"):
                return after(s, step, started, *args, **kwargs)
        session.Session.after_iteration = after_iteration
        session.make_probes = self._probes(session.make_probes, probe_steps)

    def _wrap(self, owner, attr: str, part: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def wrapped(*args, **kwargs):
            with self.parts.inside(part):
                return original(*args, **kwargs)
        setattr(owner, attr, wrapped)

    def _probes(self, synthesize, steps: int | None):
        """The probe synthesis, timed; with `steps`, only that many of its steps, the time scaled to all of them."""
        full = inspect.signature(synthesize).parameters["steps"].default

        def timed(*args, **kwargs):
            with self.parts.inside("probe synthesis"):
                t0 = time.perf_counter()
                out = synthesize(*args, **kwargs, **({"steps": steps} if steps else {}))
                self.probe_s = (time.perf_counter() - t0) * full / (steps or full)
            return out
        return timed

    def per_iteration(self) -> dict:
        """Means over the timed iterations (all but the first): passes per part, seconds per part, KD samples."""
        first, last = self.snapshots[1], self.snapshots[-1]
        n = len(self.snapshots) - 2
        diff = lambda key: {p: (last[key][p] - first[key][p]) / n for p in set(last[key]) | set(first[key])}
        # CPU seconds (all of the process's threads) hardly move when other jobs share the host; wall seconds do
        return {"forward": diff("forward"), "backward": diff("backward"), "seconds": diff("seconds"),
                "student": (last["student"] - first["student"]) / n, "timed": n,
                "s_per_iteration": sum(self.durations[1:]) / n, "cpu_s_per_iteration": (last["cpu"] - first["cpu"]) / n}


def run_row(rung: Rung, plan: Plan, device: torch.device, iterations: int | None, recipe: DistillConfig) -> dict:
    """Distil `rung`'s teacher for the plan's iterations and measure it (run in a process of its own); `recipe` is
    the default config or one with some settings changed, measured beside it."""
    from stages.distill.config import StudentConfig
    from stages.distill.engine import distill
    from stages.distill.networks import build_generator, build_student, param_count, student_spec

    d = plan.divisor
    cfg = dataclasses.replace(recipe, iterations=iterations or plan.iterations, patience=0,
                              batch_size=recipe.batch_size // d, replay_batch=recipe.replay_batch // d,
                              probe_per_class=max(1, recipe.probe_per_class // d))
    torch.manual_seed(0)
    teacher = rung.build().to(device).eval()
    student = build_student(student_spec(rung.shape, NUM_CLASSES, param_count(teacher), StudentConfig().ratio))
    student = student.to(device)
    flops = {"teacher": gflops(teacher, rung.shape, device), "student": gflops(student, rung.shape, device),
             "generator": gflops(build_generator(cfg.latent_dim, rung.shape, width=cfg.generator_width).to(device),
                                 (cfg.latent_dim,), device)}
    parts = Parts()
    recorder = Recorder(parts, TeacherPasses(teacher, parts), StudentSamples(student))
    recorder.install(plan.probe_steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = distill(cfg, teacher, student, rung.shape, Path(out), device, seed=0)
        total = time.perf_counter() - t0
    return {"gflops": flops, "batch": cfg.batch_size, "probes": NUM_CLASSES * probes_per_class(NUM_CLASSES, cfg.probe_per_class),
            "iterations": res.iterations, "wall_s": res.wall_s, "total_s": total, "estimate": res.estimate,
            "probe_s": recorder.probe_s, "probe_steps": plan.probe_steps, **recorder.per_iteration(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None}


def child(args) -> int:
    threads = int(args.threads)
    torch.set_num_threads(threads)
    rung = LADDER[args.row]
    device = torch.device(args.device)
    plan = rung.cuda if device.type == "cuda" else rung.cpu
    from core.errors import UsageError
    from pipeline.cli import parse_set
    from pipeline.config import load_config

    try:  # validated as a run's --set is: a malformed item, a bad key or value is a one-line error
        sets = parse_set(tuple(args.sets))
        recipe = load_config(overrides=sets).distill
    except UsageError as exc:
        raise SystemExit(str(exc)) from None
    row = {**run_row(rung, plan, device, args.iterations, recipe), "sets": sets}
    # The CPU time the timed iterations got out of what their threads could have had: below 1 when the host was
    # busy elsewhere (or a thread waited)
    row["cpu_share"] = row["cpu_s_per_iteration"] / (threads * row["s_per_iteration"])
    Path(args.row_out).write_text(json.dumps(row))
    return 0


def label(name: str, r: dict) -> str:
    """The row's teacher, with the settings its recipe changed (dotted keys, shown without their section)."""
    changed = [f"{key.split('.')[-1]}={value}" for key, value in (r.get("sets") or {}).items()]
    return name if not changed else f"{name} ({', '.join(changed)})"


def spawn(name: str, threads: int, device: str, iterations: int | None, reuse: bool, sets: list[str]) -> dict:
    """One row in a fresh process, with its thread count fixed before torch starts. Every row is kept under
    ROWS; with `reuse`, a kept row of the same plan stands in for a new run (rows measured at different times)."""
    rung = LADDER[name]
    plan = rung.cuda if device == "cuda" else rung.cpu
    suffix = "".join(f"-{item}" for item in sets)
    kept = ROWS / f"{device}-{threads}-{name}{suffix}.json"
    key = {"plan": repr(plan), "iterations": iterations, **({"sets": sets} if sets else {})}
    if reuse and kept.is_file() and (old := json.loads(kept.read_text())).get("key") == key:
        return old
    row = _spawn(name, threads, device, iterations, sets)
    if "error" not in row:
        kept.parent.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps({**row, "key": key}))
    return row


def _spawn(name: str, threads: int, device: str, iterations: int | None, sets: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "row.json"
        cmd = [sys.executable, __file__, "--row", name, "--threads", str(threads), "--device", device,
               "--row-out", str(out)] + (["--iterations", str(iterations)] if iterations else [])
        cmd += [a for item in sets for a in ("--set", item)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        load = os.getloadavg()[0]
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        if r.returncode != 0:
            return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1], "load": load}
        return {**json.loads(out.read_text()), "load": load}


# ---- tables and plot ---------------------------------------------------------------------------------

COLUMNS = ["teacher", "input", "teacher GFLOPs", "student GFLOPs", "generator GFLOPs", "device", "threads",
           "KD batch", "iterations timed", "s / iteration", "CPU s / iteration", "teacher fwd / it", "teacher bwd / it",
           "teacher samples / student sample", "student samples / s", "probe synthesis s", "peak MB", "load before", "CPU share"]


def _shape(shape) -> str:
    return "x".join(str(v) for v in shape)


def _round(v: float, digits: int = 3) -> float:
    return float(f"{v:.{digits}g}")


def cost_row(name: str, device: str, threads: int, r: dict) -> list:
    rung = LADDER[name]
    if "error" in r:
        return [name, _shape(rung.shape), None, None, None, device, threads, None, None, r["error"][:80]] + \
            [None] * 7 + [round(r["load"], 2), None]
    g = r["gflops"]
    peak = r["peak_gpu_mb"] if r["peak_gpu_mb"] is not None else r["peak_rss_mb"]
    probe = f"{r['probe_s']:.1f}" + ("" if not r["probe_steps"] else f" ({r['probe_steps']} steps scaled)")
    fwd, bwd = sum(r["forward"].values()), sum(r["backward"].values())
    return [label(name, r), _shape(rung.shape), _round(g["teacher"]), _round(g["student"]), _round(g["generator"]), device,
            threads, r["batch"], r["timed"], _round(r["s_per_iteration"]),
            _round(r["cpu_s_per_iteration"]),
            round(fwd), round(bwd), _round((fwd + bwd) / r["student"]),
            _round(r["student"] / r["s_per_iteration"]), probe, round(peak), round(r["load"], 2),
            round(r["cpu_share"], 2)]


def estimate_row(name: str, device: str, threads: int, r: dict) -> list | None:
    est = r.get("estimate") or {}
    if "estimated_s" not in est:
        return None
    err = (est["estimated_s"] - r["wall_s"]) / r["wall_s"]
    return [label(name, r), device, threads, r["iterations"], est["s_per_iteration"], est["estimated_s"], round(r["wall_s"], 1),
            f"{100 * err:+.1f}%"]


def passes_rows(measured: list[tuple[str, str, int, dict]]) -> list[list]:
    """Teacher samples per iteration by part, forward / backward: one row per batch size (the teacher does not
    change them), with the teachers measured at it; a teacher whose counts differ gets a row of its own."""
    groups: dict[tuple, list[str]] = {}
    for name, _, _, r in measured:
        if "error" in r:
            continue
        cells = tuple(f"{round(r['forward'].get(p, 0))} / {round(r['backward'].get(p, 0))}" for p in PARTS)
        total = f"{round(sum(r['forward'].values()))} / {round(sum(r['backward'].values()))}"
        key = (r["batch"], *cells, total)
        teachers = groups.setdefault(key, [])
        if label(name, r) not in teachers:
            teachers.append(label(name, r))
    return [[k[0], ", ".join(v), *k[1:]] for k, v in groups.items()]


def time_share_row(name: str, device: str, threads: int, r: dict) -> list | None:
    if "error" in r:
        return None
    secs = r["seconds"]
    total = sum(secs.get(p, 0.0) for p in PARTS)
    return [label(name, r), device, threads, _round(r["s_per_iteration"])] + \
        [f"{100 * secs.get(p, 0.0) / total:.0f}%" for p in PARTS]


def plot(measured: list[tuple[str, str, int, dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stages.distill.config import DistillConfig

    default_batch = DistillConfig().batch_size
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    series: dict[str, list] = {}
    for name, device, threads, r in measured:
        if "error" not in r:
            recipe = label("", r).strip() or "default recipe"
            series.setdefault(f"{device}, {threads} thread(s), {recipe}", []).append((name, r))
    for key, pts in series.items():
        pts.sort(key=lambda p: p[1]["gflops"]["teacher"])
        xs = [r["gflops"]["teacher"] for _, r in pts]
        left.plot(xs, [r["s_per_iteration"] for _, r in pts], "o:", label=key)
        right.plot(xs, [r["student"] / r["s_per_iteration"] for _, r in pts], "o:", label=key)
    for name, r in series[next(iter(series))] if series else []:
        note = name if r["batch"] == default_batch else f"{name} (batch {r['batch']})"
        left.annotate(note, (r["gflops"]["teacher"], r["s_per_iteration"]), fontsize=7, rotation=20)
    for ax, ylabel in ((left, "seconds per iteration"), (right, "student KD samples per second")):
        ax.set(xscale="log", yscale="log", xlabel="teacher GFLOPs per sample (forward)", ylabel=ylabel)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle("Distillation cost against the teacher's size (default config, auto student)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def report(measured: list[tuple[str, str, int, dict]], args) -> dict:
    estimates = [e for m in measured if (e := estimate_row(*m)) is not None]
    shares = [s for m in measured if (s := time_share_row(*m)) is not None]
    tables = [
        results.table("Cost per iteration across the teacher ladder", COLUMNS, [cost_row(*m) for m in measured],
                      notes="GFLOPs per sample, forward (a multiply-add is two FLOPs); the student is the auto one "
                            "(a quarter of the teacher's parameters). Teacher passes in samples per iteration. Student "
                            "samples: its KD batches (fresh and replayed) per second of timed iterations, a batch "
                            "counted once per student step it serves; teacher samples per student sample: forward "
                            "and backward together. Probe "
                            "synthesis is set-up, before the first iteration and outside the iteration time. Peak MB: "
                            "the process's peak resident memory (on a GPU, torch's peak allocation). Load: the host's "
                            "one-minute load average when the row started (the host is shared). CPU s: the process's CPU "
                            "time (all threads) per timed iteration; CPU share: that over threads x wall seconds, "
                            "below 1 when other jobs took the cores (1-thread CPU seconds are then the better "
                            "measure of an idle host's wall time)."),
        results.table("The stage's printed estimate against the actual distillation time",
                      ["teacher", "device", "threads", "iterations", "estimated s / it", "estimated s", "actual s",
                       "error"], estimates,
                      notes="The estimate is made after a warm-up iteration and three timed ones; actual is the "
                            "distillation's wall time over the same iterations (probe synthesis excluded, as in "
                            "the estimate)."),
        results.table("Teacher samples per iteration by part of the loop (forward / backward)",
                      ["KD batch", "teachers", *PARTS, "total"], passes_rows(measured),
                      notes="Counted by hooks on the teacher over the timed iterations. Perturbation sizing: the "
                            "bisection that sizes the KD batch's noise and attack to the teacher (every "
                            "distill.eval_every iterations). Generator step: the "
                            "generator's objective. Replay sampling: the class-balancing latent step of each replay "
                            "draw (one per KD step). Attack: the signed-gradient steps on part of the KD batch. KD "
                            "labelling: the teacher's answers on the student's batch. VAE memory: the memory's "
                            "updates (the batch's clean answers, then its reconstructions)."),
        results.table("Where an iteration's time goes", ["teacher", "device", "threads", "s / iteration", *PARTS],
                      shares,
                      notes="Share of the timed iterations' time in each part (teacher and the other networks "
                            "together). KD labelling includes the rest of each KD step: sampling the generator, "
                            "perturbing the batch and the student's update."),
    ]
    settings = {"device": args.device, "threads": [int(t) for t in args.threads.split(",")],
                "config": "default DistillConfig, patience 0, auto student", "host": "shared with other jobs",
                "recipes": args.recipes or ["default"]}
    return results.write(args.name, tables, results.command_line(__file__), settings)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="all", help=f"comma list of: {', '.join(LADDER)}")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--threads", default=None, help="comma list of torch thread counts (cpu: 1,2; cuda: 1)")
    ap.add_argument("--iterations", type=int, default=None, help="override every row's iterations (a smoke run)")
    ap.add_argument("--name", default=None, help="results file name (scale; scale-cuda on a GPU)")
    ap.add_argument("--reuse", action="store_true", help="take rows already measured (same plan) from "
                    "benchmarks/.cache/scale/ and run only the missing ones")
    ap.add_argument("--recipe", dest="recipes", action="append", default=None,
                    help="rows for each recipe given: 'default', or distill settings changed from their defaults, "
                         "comma-separated (e.g. distill.steps_per_batch=1); default: the default recipe only")
    ap.add_argument("--set", dest="sets", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--row", help=argparse.SUPPRESS)
    ap.add_argument("--row-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.iterations is not None and args.iterations < 2:
        ap.error("--iterations: at least 2 (the first one is not timed)")
    args.threads = args.threads or ("1,2" if args.device == "cpu" else "1")
    if args.row:
        return child(args)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no GPU here: the cuda rows are skipped")
        return 0
    args.name = args.name or ("scale" if args.device == "cpu" else "scale-cuda")
    names = list(LADDER) if args.only == "all" else args.only.split(",")
    measured = []
    recipes = [[] if r == "default" else r.split(",") for r in args.recipes or ["default"]]
    for threads in (int(t) for t in args.threads.split(",")):
        for name in names:
            for sets in recipes:
                r = spawn(name, threads, args.device, args.iterations, args.reuse, sets)
                measured.append((name, args.device, threads, r))
                print(results.markdown(results.table(name, COLUMNS, [cost_row(name, args.device, threads, r)])),
                      flush=True)
    # The host line names the most threads any row used; each row's own count is in its table.
    torch.set_num_threads(max(int(t) for t in args.threads.split(",")))
    doc = report(measured, args)
    plot(measured, results.RESULTS / f"{args.name}.png")
    results.show(doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
