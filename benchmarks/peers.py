"""INT8 peers side by side: one FP32 model, one set of synthetic calibration samples, every quantizer.

Run through `python benchmarks/quantize.py --peers`. Per model:

- ONNX Runtime `quantize_static` at its defaults (QDQ, per-tensor int8, MinMax calibration) on random
  normal inputs (what a user without data gets today), on our synthetic samples, and on the task's real
  training images (the upper bound a user holding data gets);
- NNCF post-training quantization as it comes (its bias correction on; the pipeline's scheme, no QAT), on noise
  and on the samples;
- NVIDIA Model Optimizer's ONNX INT8 PTQ (benchmarks/modelopt_ptq.py, in its own environment), likewise;
- ours: NNCF PTQ without its bias correction, then QAT by KD from the FP32 model itself, its input quantizer holding
  the pixel range of the model's input contract, without and with the sensitivity step.

Synthetic samples are data-free and drawn as stage 2 draws them: a distilled student is calibrated on its run's
generator samples and fine-tuned on batches half VAE, half generator samples; a teacher's come from the generator
`pipeline quantize --config` trains against the model's priors alone (its BatchNorm statistics where it has
BatchNorm, class balance and confidence always), fresh for every QAT batch. Accuracy is of each INT8 ONNX file in onnxruntime on the real test
split; latency is its p50 at batch 1, one thread. A random-weight ResNet-18 (3x32x32) adds latency only.

The sensitivity check: the layers are ranked on synthetic probes (stages.quantize.sensitivity), then the
top- and the bottom-ranked layer are each quantized alone (NNCF's ignored scope holds every other layer)
and scored on the real test split.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import logging
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

import results
from core.evaluation import onnx_accuracy
from core.teacher import pixel_range
from stages.distill.probes import synthesize_probes
from stages.quantize.onnx_tidy import tidy_qdq
from stages.quantize.samples import train_generator
from stages.quantize.stage import QUANTIZE_PROBE_STEPS, synthetic_sources
from stages.quantize.qat import calibrate, export_onnx, fold_batchnorm, quantize, use_reference_quantizer
from stages.quantize.sensitivity import find_layers, rank_layers
from targets.runners import measure_onnx

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
WORK = CACHE / "peers"
EXAMPLE = HERE.parent / "examples" / "own_teacher"
MODELOPT_PYTHON = CACHE / "modelopt-venv" / "bin" / "python"
SCHEME = "onnxruntime"  # the mobile target's: ONNX Runtime on the host is what the table measures


@dataclass
class Case:
    name: str
    model: nn.Module  # FP32, eval mode, frozen
    shape: tuple[int, ...]
    num_classes: int
    calib: torch.Tensor  # the synthetic calibration samples every method gets
    source: str  # where they come from, for the table
    qat_batch: Callable[[], torch.Tensor]  # fresh synthetic inputs for QAT
    probes: torch.Tensor | None  # synthetic probes for the sensitivity ranking, from the teacher as in stage 2
    x_train: torch.Tensor | None = None  # real images: the data-holding bound only
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    input_range: tuple[float, float] | None = None  # the pixel range its input contract gives (ours only uses it)


# ---- the models --------------------------------------------------------------------------------------

def frozen(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def model_samples(model: nn.Module, shape, num_classes: int, cfg, seed: int) -> Callable[[int], torch.Tensor]:
    """Data-free samples of a model quantized as it is, as `pipeline quantize --config` makes them: a generator
    trained against the model's priors alone (stages.quantize.samples)."""
    torch.manual_seed(seed)
    generator, _ = train_generator(cfg.distill, model, tuple(shape), cfg.quantize.generator_steps, num_classes,
                                   torch.device("cpu"), lambda *_: None)

    def draw(n: int) -> torch.Tensor:
        with torch.no_grad():
            return generator(torch.randn(n, cfg.distill.latent_dim))
    return draw


def probes_of(teacher: nn.Module, shape, num_classes: int, per_class: int, seed: int) -> torch.Tensor:
    # Another seed than the calibration pool's, as stage 2 does: ranking is not judged on what calibrated
    return synthesize_probes(teacher, shape, num_classes, per_class, steps=QUANTIZE_PROBE_STEPS, seed=seed + 777)[0]


def teacher_case(name, model, shape, num_classes, split, cfg, seed, norm) -> Case:
    model, q = frozen(model), cfg.quantize
    draw = model_samples(model, shape, num_classes, cfg, seed)
    probes = probes_of(model, shape, num_classes, max(8, cfg.distill.probe_per_class), seed)
    return Case(name, model, tuple(shape), num_classes, draw(q.calibration_samples), "model's generator",
                lambda: draw(q.qat_batch), probes, *split, pixel_range(shape, *norm))


def student_case(name, student, teacher, memory, generator, shape, split, cfg, seed, norm) -> Case:
    q = cfg.quantize
    teacher = frozen(teacher)
    sources = synthetic_sources(cfg, teacher, frozen(generator), memory.vae, shape, torch.device("cpu"))
    probes = probes_of(teacher, shape, 10, max(8, cfg.distill.probe_per_class), seed)
    return Case(name, frozen(student), tuple(shape), 10, sources["generator"](q.calibration_samples), "run's generator",
                lambda: sources["mixed"](q.qat_batch), probes, *split, pixel_range(shape, *norm))


def digits_cases(cfg, seed: int, mnist_path: Path) -> list[Case]:
    import quantize as bench

    from core.tasks import digits

    _, teacher, student, generator, memory, shape, x_train, x_test, y_test = bench.distilled("digits", cfg.preset, seed,
                                                                                          mnist_path)
    split, norm = (x_train, x_test, y_test), (digits.MEAN, digits.STD)
    return [student_case("digits student", student, teacher, memory, generator, shape, split,
                         cfg, seed, norm),
            teacher_case("digits teacher", copy.deepcopy(teacher), shape, digits.NUM_CLASSES, split, cfg, seed, norm)]


def zoo_cases(name: str, label: str, cfg, seed: int) -> list[Case]:
    """A zoo MNIST teacher and the student `benchmarks/distill.py --teachers <name>` distilled from it at seed 0
    (its bundle under benchmarks/.cache/distill-runs/), loaded as stage 2 loads it."""
    import quantize as bench
    import zoo

    _, teacher, student, generator, memory, shape, x_train, x_test, y_test = bench.zoo_parts(name, 0)
    split, norm = (x_train, x_test, y_test), ([zoo.ZOO[name].mean], [zoo.ZOO[name].std])
    return [student_case(f"{label} student", student, teacher, memory, generator, shape,
                         split, cfg, seed, norm),
            teacher_case(f"{label} teacher", copy.deepcopy(teacher), shape, 10, split, cfg, seed, norm)]


def bn_cnn_case(cfg, seed: int) -> Case:
    """The zoo's plain BatchNorm CNN on MNIST: the kind of model users bring most often, quantized as it is."""
    import zoo

    entry = zoo.ZOO["bn_cnn"]
    teacher, _ = entry.train()
    x_train, x_test, _, y_test = entry.split()
    return teacher_case("BN CNN teacher (MNIST)", teacher, entry.input_shape, 10, (x_train, x_test, y_test), cfg, seed,
                        ([entry.mean], [entry.std]))


def _example(name: str, models=None):
    """A module of examples/own_teacher by file. Its train.py imports `models` and puts its folder first on
    sys.path, where it and benchmarks/models.py would shadow each other: both are restored afterwards."""
    spec = importlib.util.spec_from_file_location(f"own_teacher_{name}", EXAMPLE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    saved, path = sys.modules.get("models"), list(sys.path)
    if models is not None:
        sys.modules["models"] = models
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path[:] = path
        if saved is not None:
            sys.modules["models"] = saved
        else:
            sys.modules.pop("models", None)
    return module


def image_teacher_case(cfg, seed: int) -> Case:
    """The example's colour-digits teacher, trained by the example's own train.py (in a cached copy)."""
    from safetensors.torch import load_file

    digest = hashlib.sha256(b"".join((EXAMPLE / f).read_bytes() for f in ("train.py", "models.py"))).hexdigest()[:10]
    folder = CACHE / f"own-teacher-{digest}"
    if not (folder / "image_teacher.safetensors").is_file():
        shutil.copytree(EXAMPLE, folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns("runs", "__pycache__"))
        subprocess.run([sys.executable, "train.py"], cwd=folder, check=True, stdout=subprocess.DEVNULL)
    models = _example("models")
    train = _example("train", models)
    model = models.build_image_teacher()
    model.load_state_dict(load_file(str(folder / "image_teacher.safetensors")))
    x_tr, x_te, _, y_te = train.image_data()
    norm = train.normaliser(EXAMPLE / "image.toml", 3)
    split = (norm(x_tr), norm(x_te), torch.as_tensor(y_te, dtype=torch.long))
    contract = tomllib.loads((EXAMPLE / "image.toml").read_text())["teacher"]
    return teacher_case("image teacher (example)", model, (3, 16, 16), 10, split, cfg, seed,
                        (contract["mean"], contract["std"]))


def resnet18_case(seed: int, n: int) -> Case:
    """Latency only: random weights, noise for calibration (it has no data to synthesize from)."""
    import models

    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 3, 32, 32, generator=g)
    return Case("ResNet-18 3x32x32 (latency)", frozen(models.resnet18_with_stats(seed)), (3, 32, 32), 10, noise,
                "noise", lambda: noise, None)


# ---- the quantizers ----------------------------------------------------------------------------------

def batches_of(x: torch.Tensor, size: int) -> list[torch.Tensor]:
    return [x[i:i + size] for i in range(0, len(x), size)]


def ort_static(fp32: Path, calib: torch.Tensor, out: Path) -> Path:
    """ONNX Runtime's quantize_static at its defaults, fed `calib` in batches."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.feeds = iter([{"input": b.numpy()} for b in batches_of(calib, 64)])

        def get_next(self):
            return next(self.feeds, None)

    logging.disable(logging.WARNING)  # its advice to pre-process the model: the defaults are what is measured
    try:
        quantize_static(str(fp32), str(out), Reader())
    finally:
        logging.disable(logging.NOTSET)
    return out


def modelopt(fp32: Path, calib: torch.Tensor, out: Path, python: Path) -> Path:
    npy = out.with_suffix(".npy")
    np.save(npy, calib.numpy().astype(np.float32))
    done = subprocess.run([str(python), str(HERE / "modelopt_ptq.py"), str(fp32), str(npy), str(out)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"Model Optimizer failed: {(done.stderr.strip().splitlines() or ['?'])[-1][:200]}")
    return out


def nncf_ptq(case: Case, calib: torch.Tensor, q, out: Path) -> Path:
    """NNCF's post-training quantization as it comes (its bias correction on) in the pipeline's scheme."""
    import nncf

    example = torch.randn(1, *case.shape)
    qmodel = calibrate(fold_batchnorm(case.model), batches_of(calib, q.qat_batch), q, SCHEME, bias_correction=True)
    export_onnx(nncf.strip(qmodel.eval(), example_input=example), out, example)
    tidy_qdq(out)
    return out


def ours(case: Case, calib: torch.Tensor, q, kd: tuple[str, float], out: Path, probes: torch.Tensor | None = None
         ) -> tuple[Path, str | None]:
    """Ours: PTQ + QAT with the FP32 model as its own teacher, the input holding the contract's pixel range; with
    `probes` and `q.max_drop`, the sensitivity step, and then how many layers it kept in float."""
    example = torch.randn(1, *case.shape)
    res = quantize(case.model, case.model, batches_of(calib, q.qat_batch), case.qat_batch, q, SCHEME, case.source,
                   example, kd_loss=kd[0], kd_temperature=kd[1], probes=probes, input_range=case.input_range)
    export_onnx(res.model, out, example)
    tidy_qdq(out)
    sens = res.sensitivity
    note = None if sens is None else f"{len(sens['kept_float'])} of {len(sens['ranking'])} layers kept in float"
    return out, note


# ---- measuring ---------------------------------------------------------------------------------------

@dataclass
class Measured:
    accuracy: float | None
    p50_ms: float
    size: int
    seconds: float


def measure(path: Path, case: Case, seconds: float, runs: int) -> Measured:
    acc = onnx_accuracy(path, case.x_test, case.y_test) if case.x_test is not None else None
    p50 = measure_onnx(path, batch=1, threads=1, runs=runs, warmup=20)["p50_ms"]
    return Measured(acc, p50, path.stat().st_size, seconds)


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def methods(case: Case, q, kd, max_drop: float, python: Path | None, seed: int):
    """(method, calibration, thunk writing the INT8 ONNX to a path) for every row of one model."""
    fp32 = WORK / f"{slug(case.name)}-fp32.onnx"
    noise = torch.randn(len(case.calib), *case.shape, generator=torch.Generator().manual_seed(seed))
    sens = replace(q, max_drop=max_drop)
    rows = []
    if case.x_test is None:  # latency only: one calibration, no QAT (it changes values, not the graph)
        rows += [("ORT quantize_static", "noise", lambda p: ort_static(fp32, noise, p)),
                 ("NNCF PTQ (= ours' graph)", "noise", lambda p: nncf_ptq(case, noise, q, p))]
        if python:
            rows.append(("Model Optimizer PTQ", "noise", lambda p: modelopt(fp32, noise, p, python)))
        return fp32, rows
    for label, calib in (("noise", noise), (case.source, case.calib)):
        rows += [("ORT quantize_static", label, lambda p, c=calib: ort_static(fp32, c, p)),
                 ("NNCF PTQ", label, lambda p, c=calib: nncf_ptq(case, c, q, p))]
        if python:
            rows.append(("Model Optimizer PTQ", label, lambda p, c=calib: modelopt(fp32, c, p, python)))
    real = case.x_train[torch.randperm(len(case.x_train), generator=torch.Generator().manual_seed(seed))[:len(case.calib)]]
    rows += [("ORT quantize_static (bound)", "real train images", lambda p: ort_static(fp32, real, p)),
             ("ours: PTQ + QAT", case.source, lambda p: ours(case, case.calib, q, kd, p)),
             (sensitivity_method(max_drop), case.source, lambda p: ours(case, case.calib, sens, kd, p, case.probes))]
    return fp32, rows


def sensitivity_method(max_drop: float) -> str:
    return f"ours: PTQ + sensitivity (max_drop {max_drop:g}) + QAT"


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def pct(v: float | None) -> str | None:
    return None if v is None else f"{100 * v:.2f}"


def model_rows(case: Case, q, kd, max_drop: float, python, seed: int, runs: int) -> tuple[list[list], dict]:
    """The table's rows for one model and, by method and calibration, what was measured."""
    fp32_path, todo = methods(case, q, kd, max_drop, python, seed)
    export_onnx(case.model, fp32_path, torch.randn(1, *case.shape))
    base = measure(fp32_path, case, 0.0, runs)
    found = {("FP32", "-"): base}
    rows = [[case.name, "FP32", "-", pct(base.accuracy), None, f"{base.p50_ms:.3f}", base.size, None, None]]
    for method, calib, make in todo:
        torch.manual_seed(seed)
        path = WORK / f"{slug(case.name)}-{slug(method)}-{slug(calib)}.onnx"
        try:
            made, seconds = timed(make, path)
            m = measure(path, case, seconds, runs)
        except Exception as exc:  # a peer that fails on a model is a result, not a crash
            rows.append([case.name, method, calib, None, None, None, None, None, f"failed: {str(exc)[:80]}"])
            continue
        found[(method, calib)] = m
        note = made[1] if isinstance(made, tuple) else None
        delta = None if m.accuracy is None else f"{100 * (m.accuracy - base.accuracy):+.2f}"
        rows.append([case.name, method, calib, pct(m.accuracy), delta, f"{m.p50_ms:.3f}", m.size, f"{seconds:.1f}",
                     note])
        print(f"{case.name} | {method} | {calib}: {pct(m.accuracy)} p50 {m.p50_ms:.3f} ms ({seconds:.1f} s)",
              file=sys.stderr, flush=True)
    return rows, found


# ---- the sensitivity check ---------------------------------------------------------------------------

def one_layer_accuracy(case: Case, folded, batches, q, layers: list[str], keep: str, out: Path) -> float:
    """Real test accuracy with only `keep` in INT8: every other layer in NNCF's ignored scope."""
    import nncf

    example = torch.randn(1, *case.shape)
    qmodel = calibrate(folded, batches, q, SCHEME, [n for n in layers if n != keep])
    export_onnx(nncf.strip(qmodel.eval(), example_input=example), out, example)
    tidy_qdq(out)
    return onnx_accuracy(out, case.x_test, case.y_test)


def sensitivity_row(case: Case, q, fp32_acc: float) -> list:
    use_reference_quantizer()
    example = torch.randn(1, *case.shape)
    folded = fold_batchnorm(case.model)
    batches = batches_of(case.calib, q.qat_batch)
    qmodel = calibrate(folded, batches, q, SCHEME)
    layers = find_layers(qmodel, folded, example)
    ranking = rank_layers(qmodel, layers, case.probes)
    top, bottom = ranking[0], ranking[-1]
    cost = {}
    for s in (top, bottom):
        acc = one_layer_accuracy(case, folded, batches, q, list(layers), s.layer,
                                 WORK / f"{slug(case.name)}-only-{slug(s.layer)}.onnx")
        cost[s.layer] = 100 * (fp32_acc - acc)
    holds = "yes" if cost[top.layer] > cost[bottom.layer] else ("tie" if cost[top.layer] == cost[bottom.layer] else "no")
    return [case.name, len(ranking), top.layer, f"{100 * (1 - top.agreement):.2f}", f"{top.kl:.2e}",
            f"{cost[top.layer]:+.2f}", bottom.layer, f"{100 * (1 - bottom.agreement):.2f}", f"{bottom.kl:.2e}",
            f"{cost[bottom.layer]:+.2f}", holds]


# ---- the summary -------------------------------------------------------------------------------------

def summary_row(name: str, found: dict, source: str, sens_method: str) -> list:
    """One model's distances (points) of ours from FP32, from the best noise-calibrated peer and from ORT
    on real data."""
    acc = lambda key: 100 * found[key].accuracy if key in found else None  # noqa: E731
    fp32, mine, mine_s = acc(("FP32", "-")), acc(("ours: PTQ + QAT", source)), acc((sens_method, source))
    noise = {m: acc((m, "noise")) for m in ("ORT quantize_static", "NNCF PTQ", "Model Optimizer PTQ")}
    noise = {m: a for m, a in noise.items() if a is not None}
    best = max(noise, key=noise.get)
    real = acc(("ORT quantize_static (bound)", "real train images"))
    f = lambda v: None if v is None or mine is None else f"{v:+.2f}"  # noqa: E731
    return [name, f"{fp32:.2f}", f(mine - fp32), None if mine_s is None else f"{mine_s - fp32:+.2f}",
            f"{best} {noise[best]:.2f}", f(mine - noise[best]), f(mine - real) if real is not None else None]


def verdicts(summary: list[list]) -> str:
    """The issue's targets, computed from the summary rows."""
    num = lambda s: float(s) if s is not None else float("nan")  # noqa: E731
    within = [num(r[2]) >= -0.3 for r in summary]
    ahead = [num(r[5]) for r in summary]
    bound = [abs(num(r[6])) <= 0.2 or num(r[6]) > 0 for r in summary]
    yes = lambda b: "met" if b else "not met"  # noqa: E731
    return (f"Targets: ours (PTQ + QAT) within 0.3 points of FP32 on every model: {yes(all(within))} "
            f"({sum(within)} of {len(within)}); ahead of every peer given noise on every model: "
            f"{yes(all(a > 0 for a in ahead))}, by at least 1 point on at least one: {yes(max(ahead) >= 1.0)} "
            f"(largest lead {max(ahead):+.2f}); within 0.2 points of ORT quantize_static on real data (or above it): "
            f"{yes(all(bound))} ({sum(bound)} of {len(bound)}).")


def sensitivity_verdict(rows: list[list]) -> str:
    held = [r[0] for r in rows if r[-1] == "yes"]
    return (f"The top-ranked layer alone costs more real accuracy than the bottom-ranked one on {len(held)} of "
            f"{len(rows)} models" + (f" ({', '.join(held)})." if held else "."))


# ---- the benchmark -----------------------------------------------------------------------------------

COLUMNS = ["model", "method", "calibration", "test acc %", "INT8 - FP32 (pt)", "p50 ms", "bytes", "quantize s",
           "note"]
SUMMARY = ["model", "FP32 %", "ours - FP32", "ours + sensitivity - FP32", "best peer on noise %",
           "ours - best noise peer", "ours - ORT on real data"]
SENSITIVITY = ["model", "layers", "top-ranked layer", "its probe drop (pt)", "its probe KL", "real cost alone (pt)",
               "bottom-ranked layer", "its probe drop (pt)", "its probe KL", "real cost alone (pt)", "top costs more"]


def modelopt_python(path: Path | None) -> tuple[Path | None, str]:
    """The Python of Model Optimizer's environment when it imports there, and what to say about it."""
    if path is None or not Path(path).is_file():
        return None, ("not installed: create it with `python3.11 -m venv benchmarks/.cache/modelopt-venv && "
                      "benchmarks/.cache/modelopt-venv/bin/pip install -c constraints-cpu.txt 'nvidia-modelopt[onnx]'`")
    done = subprocess.run([str(path), "-c", "import modelopt, onnxruntime; print(modelopt.__version__, "
                           "onnxruntime.__version__)"], capture_output=True, text=True)
    if done.returncode != 0:
        return None, f"does not import in {path}: {(done.stderr.strip().splitlines() or ['?'])[-1][:120]}"
    mo, ort = done.stdout.split()
    return Path(path), f"nvidia-modelopt {mo} with onnxruntime-gpu {ort} (CPU provider), in its own environment"


def all_cases(cfg, seed: int, mnist_path: Path) -> list[Callable[[], Case]]:
    """Builders, so one model's tensors are gone before the next is made."""
    return [lambda: digits_cases(cfg, seed, mnist_path), lambda: zoo_cases("lenet5", "LeNet-5", cfg, seed),
            lambda: zoo_cases("wide_shallow", "wide CNN", cfg, seed),
            lambda: zoo_cases("strided_cnn", "strided CNN", cfg, seed),
            lambda: zoo_cases("mlp", "MNIST MLP", cfg, seed),
            lambda: [bn_cnn_case(cfg, seed)], lambda: [image_teacher_case(cfg, seed)]]


def run(args, command: str) -> dict:
    from pipeline.config import load_config

    cfg = load_config(overrides={"preset": args.preset, "seed": args.seed})
    q, kd = cfg.quantize, (cfg.distill.kd_loss, cfg.distill.kd_temperature)
    python, mo_note = modelopt_python(args.modelopt_python or MODELOPT_PYTHON)
    WORK.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    use_reference_quantizer()
    rows, summary, sens = [], [], []
    sens_method = sensitivity_method(args.max_drop)
    for build in all_cases(cfg, args.seed, args.mnist):
        for case in build():
            r, found = model_rows(case, q, kd, args.max_drop, python, args.seed, args.runs)
            rows += r
            summary.append(summary_row(case.name, found, case.source, sens_method))
            sens.append(sensitivity_row(case, q, found[("FP32", "-")].accuracy))
    resnet = resnet18_case(args.seed, args.resnet_calib)
    rows += model_rows(resnet, q, kd, args.max_drop, python, args.seed, args.runs)[0]
    tables = [
        results.table("INT8 peers on one FP32 model and one set of synthetic calibration samples: real test-split "
                      "accuracy of each ONNX file in onnxruntime, p50 at batch 1, one thread", COLUMNS, rows,
                      notes=f"Model Optimizer: {mo_note}. `noise` is random normal inputs in the model's normalised "
                            "input space; `real train images` is the data-holding user's bound, which the pipeline "
                            "never has. Ours is the mobile target's scheme; QAT is 150 steps of KD from the FP32 "
                            "model itself; its input quantizer holds the pixel range of the model's input contract. "
                            "ResNet-18 has random weights: latency and size only."),
        results.table("Ours against FP32 and the peers (accuracy points; ours = PTQ + QAT)", SUMMARY, summary,
                      notes=verdicts(summary)),
        results.table("Sensitivity ranking (synthetic probes) against the truth (real test split): the top- and "
                      "the bottom-ranked layer each quantized alone", SENSITIVITY, sens,
                      notes="Probe drop and KL are the ranking's data-free scores (the layer alone in INT8 against "
                            "FP32 on the probes); real cost is FP32 accuracy minus the accuracy with that layer "
                            "alone in INT8, in points. " + sensitivity_verdict(sens)),
    ]
    settings = {"scheme": SCHEME, "preset": args.preset, "seed": args.seed, "calibration_samples": q.calibration_samples,
                "qat_steps": q.qat_steps, "max_drop": args.max_drop, "runs": args.runs,
                "modelopt": "yes" if python else "no"}
    return results.write("quantize-peers", tables, command, settings)
