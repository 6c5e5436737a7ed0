"""INT8 from synthetic data: calibration source x task, before and after quantization-aware fine-tuning.

    python benchmarks/quantize.py [--task digits|mnist|both] [--target jetson|mobile] [--preset default]
                                  [--sources mixed,vae,generator,noise,real] [--mnist PATH]
    python benchmarks/quantize.py --task zoo [--teachers wide_shallow,bn_cnn,...] [--sources ...] [--seeds 0,1]
                                  [--qat-lr 0.0001,0.01] [--name quantize-zoo]

For each task a student is distilled once (default preset; cached under benchmarks/.cache/, where
`benchmarks/distill.py` also leaves its `vae` students of the standard scenario), then
quantized from the same FP32 student with each calibration source: `generator` (what stage 2 uses),
`mixed` (half VAE, half generator samples), `vae` and `noise`; `real` (the task's training images) is the upper bound, here only.
Accuracy is on the task's real test split, of the exported INT8 ONNX as onnxruntime runs it.
Writes benchmarks/results/quantize-<task>.json per task and prints its table. `--task zoo` quantizes, the same
way, the students `benchmarks/distill.py` kept for the zoo's teachers (`quantize-zoo.json`, or `--name`). With
`--qat-lr`, each row fine-tunes once per learning rate listed, from the same calibration.

    python benchmarks/quantize.py --peers [--max-drop 1.0] [--runs 300] [--modelopt-python PATH]

compares the INT8 peers instead (ONNX Runtime quantize_static, NNCF PTQ, NVIDIA Model Optimizer, ours) on
the digits, LeNet-5, wide-CNN, strided-CNN and MLP students and teachers, the MNIST BN CNN teacher and the
example image teacher (benchmarks/peers.py says how) and writes benchmarks/results/quantize-peers.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from core.evaluation import onnx_accuracy  # noqa: E402
from stages.distill.engine import distill  # noqa: E402
from stages.quantize.onnx_tidy import tidy_qdq  # noqa: E402
from stages.quantize.qat import export_onnx, quantize  # noqa: E402
from stages.quantize.stage import synthetic_sources  # noqa: E402
from targets.registry import TARGETS, get_target  # noqa: E402

CACHE = Path(__file__).resolve().parent / ".cache"


def task_parts(name: str, mnist_path: Path, cfg):
    """(teacher, student, shape, x_train, x_test, y_test)"""
    if name == "digits":
        from core.tasks import digits
        from core.teacher import load_teacher
        from stages.distill.networks import build_student, param_count, student_spec

        teacher, spec = load_teacher(cfg)
        x_train_raw, _, _, _ = digits.split()
        x_test, y_test = digits.test_set()
        student = build_student(student_spec(spec.input_shape, spec.num_classes, param_count(teacher), cfg.student.ratio))
        return teacher, student, tuple(spec.input_shape), digits.normalize(x_train_raw), x_test, y_test
    import mnist

    teacher, _ = mnist.teacher(mnist_path)
    x_train, x_test, _, y_test = mnist.load_split(mnist_path)
    return teacher.eval(), mnist.lenet5_half(), mnist.INPUT_SHAPE, x_train, x_test, y_test


def distilled_path(task: str, cfg, seed: int, student: torch.nn.Module) -> Path:
    """Where a distilled student (with its generator and VAE) for this task, settings and seed is cached.
    The key holds a digest of the distillation and student settings and of the student's layers: a changed
    default or a changed built-in student distils afresh."""
    settings = json.dumps({"distill": dataclasses.asdict(cfg.distill), "student": dataclasses.asdict(cfg.student),
                           "layers": repr(student)}, sort_keys=True)
    digest = hashlib.sha256(settings.encode()).hexdigest()[:10]
    return CACHE / f"quantize-{task}-{cfg.preset}-s{seed}-{digest}" / "distilled.pt"


def save_distilled(path: Path, student, generator, vae) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"student": student.state_dict(), "generator": generator.state_dict(), "vae": vae.state_dict()}, path)


def distilled(name: str, preset: str, seed: int, mnist_path: Path):
    cfg = load_config(overrides={"preset": preset, "seed": seed})
    torch.manual_seed(seed)  # before the student is built, as in distill.py: the same seed, the same student
    teacher, student, shape, x_train, x_test, y_test = task_parts(name, mnist_path, cfg)
    done = distilled_path(name, cfg, seed, student)
    out = done.parent
    result = None
    if done.is_file():
        state = torch.load(done, map_location="cpu", weights_only=True)
        from stages.distill.engine import build_vae, vae_memory
        from stages.distill.networks import build_generator

        student.load_state_dict(state["student"])
        generator = build_generator(cfg.distill.latent_dim, shape, width=cfg.distill.generator_width)
        generator.load_state_dict(state["generator"])
        vae = build_vae(cfg.distill, shape)
        vae.load_state_dict(state["vae"])
        memory = vae_memory(cfg.distill, vae, teacher, trained=True)
    else:
        t0 = time.perf_counter()
        result = distill(cfg.distill, teacher, student, shape, out, torch.device("cpu"), seed=seed)
        print(f"{name}: distilled in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        student, generator, memory = result.student, result.generator, result.memory
        save_distilled(done, student, generator, memory.vae)
    return cfg, teacher, student.eval(), generator.eval(), memory, shape, x_train, x_test, y_test


def kept_run(name: str, seed: int) -> Path | None:
    """The default-preset run `benchmarks/distill.py` kept for a zoo teacher and seed, where it holds a distilled
    student: the one without a time budget, else the one with the largest budget (the zoo blocks' own)."""
    budgets = {}
    for run in (CACHE / "distill-runs" / name).glob(f"adversarial-vae-{seed}*"):
        match = re.fullmatch(rf"adversarial-vae-{seed}(?:-budget([0-9.]+))?", run.name)
        if match and (run / "student.safetensors").is_file():
            budgets[run] = float(match[1] or "inf")
    return max(budgets, key=budgets.get, default=None)


def zoo_parts(name: str, seed: int):
    """A student `benchmarks/distill.py` left for a zoo teacher and seed, loaded as stage 2 loads it."""
    import zoo
    from stages.distill.engine import vae_memory
    from stages.quantize.stage import _load_stage_models

    run = kept_run(name, seed)
    if run is None:
        raise SystemExit(f"no kept student for {name} seed {seed}: run python benchmarks/distill.py --teachers {name} "
                         f"--seeds {seed}")
    cfg = load_config(run.parent / "config" / "teacher.toml", {"seed": seed})
    teacher, spec, student, generator, vae = _load_stage_models(cfg, run, torch.device("cpu"))
    x_train, x_test, _, y_test = zoo.ZOO[name].split()
    memory = vae_memory(cfg.distill, vae, teacher, trained=True)
    return cfg, teacher, student, generator, memory, tuple(spec.input_shape), x_train, x_test, y_test


def input_range(task: str) -> tuple[float, float]:
    """The pixel range the task's input contract gives, which stage 2's input quantizers hold."""
    from core.teacher import pixel_range

    if task == "digits":
        from core.tasks import digits

        return pixel_range(digits.INPUT_SHAPE, digits.MEAN, digits.STD)
    if task == "mnist":
        import mnist

        return pixel_range(mnist.INPUT_SHAPE, [mnist.MEAN], [mnist.STD])
    import zoo

    entry = zoo.ZOO[task]
    return pixel_range(entry.input_shape, [entry.mean], [entry.std])


def source_rows(name: str, args, cfg, teacher, student, generator, memory, shape, x_train, x_test, y_test, *,
                pixels: tuple[float, float]) -> list[list]:
    """One row per calibration source: FP32, INT8 from calibration alone and after QAT (at each rate compared), and
    their times (QAT's the mean over the rates). As in stage 2, the input's quantizers hold the task's pixel range
    (`pixels`)."""
    q = cfg.quantize
    example = torch.randn(1, *shape)
    fp32_path = export_onnx(student, CACHE / f"{name}-fp32.onnx", example)
    fp32 = onnx_accuracy(fp32_path, x_test, y_test)
    rng = np.random.default_rng(args.seed)
    # The stage's own sample sources; stage 2 calibrates on `generator` and fine-tunes on `mixed`.
    sources = synthetic_sources(cfg, teacher, generator, memory.vae, shape, torch.device("cpu"))
    sources["real"] = lambda n: x_train[torch.as_tensor(rng.choice(len(x_train), n, replace=False))]

    def qat_batch() -> torch.Tensor:
        return sources["mixed"](q.qat_batch)

    rows = []
    for source in args.sources.split(","):
        torch.manual_seed(args.seed)
        batches = [sources[source](min(q.qat_batch, q.calibration_samples - i)) for i in range(0, q.calibration_samples, q.qat_batch)]
        accs, times = [], []
        for steps, lr in [(0, q.qat_lr)] + [(q.qat_steps, lr) for lr in qat_lrs(args, q)]:
            cfg_q = type(q)(**{**q.__dict__, "qat_steps": steps, "qat_lr": lr})
            t0 = time.perf_counter()
            res = quantize(student, teacher, batches, qat_batch, cfg_q, get_target(args.target).scheme, source, example,
                           kd_loss=cfg.distill.kd_loss, kd_temperature=cfg.distill.kd_temperature, input_range=pixels)
            path = export_onnx(res.model, CACHE / f"{name}-{source}-{steps}.onnx", example)
            tidy_qdq(path)
            times.append(time.perf_counter() - t0)
            accs.append(onnx_accuracy(path, x_test, y_test))
        print(f"{name} {source}: fp32 {fp32:.4f} calib-only {accs[0]:.4f} qat {' '.join(f'{a:.4f}' for a in accs[1:])}",
              file=sys.stderr)
        rows.append([name, source + (" (bound)" if source == "real" else ""), f"{fp32:.4f}", f"{accs[0]:.4f}",
                     *[v for a in accs[1:] for v in (f"{a:.4f}", f"{100 * (a - fp32):+.2f}")],
                     f"{times[0]:.1f}", f"{sum(times[1:]) / len(times[1:]):.1f}"])  # QAT: the mean over the rates
    return rows


def qat_lrs(args, q) -> list[float]:
    """The QAT learning rates compared (`--qat-lr`), the preset's own where none are given."""
    return [float(v) for v in args.qat_lr.split(",")] if args.qat_lr else [q.qat_lr]


def result_columns(first: str, args) -> list[str]:
    """The table's columns: one INT8 accuracy and its gain over FP32 per QAT learning rate compared."""
    lrs = args.qat_lr.split(",") if args.qat_lr else []
    per_lr = [c for lr in lrs for c in (f"INT8 after QAT, qat_lr {lr}", f"QAT - FP32 (pt), qat_lr {lr}")]
    return [first, "calibration", "FP32", "INT8 calib only",
            *(per_lr or ["INT8 after QAT", "QAT - FP32 (pt)"]), "time calib s", "time QAT s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="digits", choices=["digits", "mnist", "both", "zoo"])
    ap.add_argument("--teachers", default="wide_shallow,gn_separable,strided_cnn,bn_cnn,resnet_small,lenet5,mlp,"
                    "digits_cnn,digits_mlp_bn", help="--task zoo: the zoo teachers whose kept students to quantize")
    ap.add_argument("--target", default="jetson", choices=list(TARGETS))
    ap.add_argument("--preset", default="default")
    ap.add_argument("--sources", default="generator,mixed,vae,noise,real")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--qat-lr", default=None, help="comma list of quantize.qat_lr values to compare (default: the "
                    "preset's)")
    ap.add_argument("--seeds", default="0", help="--task zoo: the seeds whose kept students to quantize (a "
                    "teacher without a kept student for a seed is skipped and named in the table's notes)")
    ap.add_argument("--mnist", type=Path, default=Path(__file__).resolve().parent.parent.parent / "shared/data/mnist10k.npz")
    ap.add_argument("--name", default=None, help="--task zoo: results file name (default quantize-zoo)")
    ap.add_argument("--peers", action="store_true", help="compare INT8 peers (benchmarks/peers.py) instead")
    ap.add_argument("--max-drop", type=float, default=1.0, help="--peers: quantize.max_drop of the sensitivity row")
    ap.add_argument("--runs", type=int, default=300, help="--peers: timed inferences per model")
    ap.add_argument("--resnet-calib", type=int, default=128, help="--peers: noise samples calibrating ResNet-18")
    ap.add_argument("--modelopt-python", type=Path, default=None,
                    help="--peers: the Python of an environment with nvidia-modelopt[onnx] "
                         "(default: benchmarks/.cache/modelopt-venv)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.peers:
        import peers

        results.show(peers.run(args, results.command_line(__file__)))
        return
    if args.task == "zoo":
        pairs = [(name, int(seed)) for name in args.teachers.split(",") for seed in args.seeds.split(",")]
        missing = [f"{name} s{seed}" for name, seed in pairs if kept_run(name, seed) is None]
        rows = [row for name, seed in pairs if kept_run(name, seed) is not None
                for row in source_rows(f"{name} s{seed}", args, *zoo_parts(name, seed), pixels=input_range(name))]
        tab = results.table(
            f"INT8 ({args.target} scheme) of the zoo's distilled students by calibration source: real test-split "
            "accuracy of the ONNX models in onnxruntime", result_columns("student", args), rows,
            notes="Each student is the one benchmarks/distill.py kept for the teacher and seed; QAT batches are "
                  "`mixed` in every row." + (f" No kept student: {', '.join(missing)}." if missing else ""))
        settings = {"target": args.target, "seeds": args.seeds, "teachers": args.teachers, "qat_lr": args.qat_lr}
        results.show(results.write(args.name or "quantize-zoo", [tab], results.command_line(__file__), settings))
        return
    tasks = ["digits", "mnist"] if args.task == "both" else [args.task]
    settings = {"target": args.target, "preset": args.preset, "seed": args.seed, "qat_lr": args.qat_lr}
    for name in tasks:
        parts = distilled(name, args.preset, args.seed, args.mnist)
        tab = results.table(
            f"INT8 ({args.target} scheme) from synthetic calibration, {name}: real test-split accuracy of the ONNX "
            "models in onnxruntime",
            result_columns("task", args), source_rows(name, args, *parts, pixels=input_range(name)),
            notes="The FP32 student is the seed's distilled student of the preset; `real` (the task's training "
                  "images) is the upper bound, which the pipeline never has.")
        results.show(results.write(f"quantize-{name}", [tab], results.command_line(__file__), settings))


if __name__ == "__main__":
    main()
