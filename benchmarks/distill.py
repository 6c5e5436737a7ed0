"""Distillation across the teacher zoo, through the product itself: every run is `pipeline run` on a config
file, as a user with their own teacher would write it, at the preset given (the default unless --preset).

    python benchmarks/distill.py --teachers bn_cnn,lenet5 --seeds 0,1
    python benchmarks/distill.py --teachers all --synthesizers adversarial,meta,conditional --replay vae,none
    python benchmarks/distill.py --teachers digits --seeds 0,1,2,3   # the built-in default teacher, make demo's
    python benchmarks/distill.py --teachers digits_cnn --set distill.iterations=400
    python benchmarks/distill.py --teachers bn_cnn --seeds 0,1 --reuse   # seed 0 kept from an earlier call
    python benchmarks/distill.py --teachers all --seeds 0,1 --requantize   # kept students, stages 2-3 rerun

Each run's teacher is trained by benchmarks/zoo.py (cached); its real test split is handed to the run as
`[eval] data` and used for the report only. Per run: the teacher's, the FP32 and the INT8 student's test
accuracy, INT8 / teacher, the final probe agreement (the only quality figure a user without data has),
why distillation stopped, its estimated and actual time. Across runs: the worst INT8 / teacher ratio per
setting, and how well probe agreement predicts real accuracy (the correlation over every evaluation of every
run). Writes benchmarks/results/distill.json (tables) and benchmarks/results/distill.png (accuracy over time).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import results  # noqa: E402
import zoo  # noqa: E402
from core import workdir  # noqa: E402
from pipeline.cli import parse_set  # noqa: E402
from pipeline.config import load_config, to_dict  # noqa: E402

WORK = HERE / ".cache" / "distill-runs"

TEACHER_FILE = '''import sys
sys.path.insert(0, {bench!r})
from zoo import ZOO


def build():
    return ZOO[{name!r}].builder()
'''


# The product's own default teacher (`make demo`), next to the zoo: its config names no factory.
BUILTIN = "digits"


def write_config(name: str, folder: Path) -> Path:
    """A user's folder for one zoo teacher: model code, weights, the test split and the config naming them."""
    from safetensors.torch import save_file

    if name == BUILTIN:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "teacher.toml").write_text('[teacher]\nbuiltin = "digits"\n[eval]\ndata = "digits"\n')
        return folder / "teacher.toml"
    if name not in zoo.ZOO:
        sys.exit(f"unknown teacher '{name}'; choose from: {BUILTIN}, {', '.join(zoo.ZOO)}")
    entry = zoo.ZOO[name]
    teacher, _ = entry.train()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "teacher.py").write_text(TEACHER_FILE.format(bench=str(HERE), name=name))
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(folder / "teacher.safetensors"))
    x, y = entry.test_set()
    raw = (x * entry.std + entry.mean) / entry.scale  # the raw values the config's scale/mean/std normalise
    np.savez(folder / "test.npz", x=raw.numpy().astype(np.float32), y=y.numpy())
    cfg = folder / "teacher.toml"
    cfg.write_text(f'[teacher]\nfactory = "teacher.py:build"\nweights = "teacher.safetensors"\n'
                   f"input_shape = {list(entry.input_shape)}\nnum_classes = {entry.num_classes}\n"
                   f"scale = {entry.scale!r}\nmean = [{entry.mean!r}]\nstd = [{entry.std!r}]\n"
                   f'[eval]\ndata = "test.npz"\n')
    return cfg


# The code a run's result depends on: with --reuse, a kept run stands in for a new one only when these folders
# are committed and unchanged since it ran.
CODE = ("core", "stages", "pipeline", "targets")


def code_key() -> str | None:
    """The committed trees of CODE, or None where they have uncommitted changes (nothing is then reusable)."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True)

    if git("status", "--porcelain", "--", *CODE).stdout.strip():
        return None
    r = git("rev-parse", *(f"HEAD:{c}" for c in CODE))
    return " ".join(r.stdout.split()) if r.returncode == 0 else None


def run_name(synthesizer: str, replay: str, seed: int, sets: list[str], budget: float | None = None) -> str:
    """The kept run's directory under its teacher: a run with a time budget or `--set` values gets its own, so
    neither a budgeted run nor a variant overwrites the run without them (benchmarks/quantize.py reads these)."""
    name = f"{synthesizer}-{replay}-{seed}"
    if budget:
        name += f"-budget{budget:g}"
    return f"{name}-{hashlib.sha256(json.dumps(sets).encode()).hexdigest()[:8]}" if sets else name


def run_threads(sets: list[str]) -> int:
    """The runs' torch threads: one, as every target here is stated, unless `--set threads=N` says otherwise
    (read as `pipeline run` reads its --set items)."""
    return int(parse_set(tuple(sets)).get("threads", 1))


def run_one(cfg: Path, out: Path, preset: str, seed: int, synthesizer: str, replay: str, sets: list[str],
            budget: float | None, reuse: bool = False, requantize: bool = False) -> dict:
    plan = {"code": code_key(), "preset": preset, "seed": seed, "synthesizer": synthesizer, "replay": replay,
            "sets": sets, "budget": budget}
    kept = out / "benchmark-plan.json"
    old = json.loads(kept.read_text()) if kept.is_file() else None
    if reuse and plan["code"] and old and old.get("plan") == plan:
        return old["result"]
    if requantize and old and {**old["plan"], "code": None} == {**plan, "code": None}:
        return requantize_kept(out, old, later_stages(cfg, preset, sets))
    threads = run_threads(sets)
    args = [sys.executable, "-m", "pipeline.cli", "--quiet", "run", "--target", "mobile", "--config", str(cfg),
            "--out", str(out), "--force", "--preset", preset, "--seed", str(seed), "--threads", str(threads),
            "--device", "cpu", "--replay", replay, "--set", f'distill.synthesizer="{synthesizer}"']
    if budget:
        args += ["--time-budget", str(budget)]
    for s in sets:
        args += ["--set", s]
    t0 = time.perf_counter()
    r = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1], "wall_s": wall}
    result = {**json.loads((out / "report.json").read_text()), "wall_s": wall}
    if plan["code"]:
        kept.write_text(json.dumps({"plan": plan, "result": result}))
    return result


def later_stages(cfg: Path, preset: str, sets: list[str]) -> dict:
    """The `quantize` and `export` settings the current code resolves for this config, preset and --set items."""
    resolved = to_dict(load_config(cfg, {"preset": preset, **parse_set(tuple(sets))}))
    return {section: resolved[section] for section in ("quantize", "export")}


def requantize_kept(out: Path, old: dict, settings: dict) -> dict:
    """Stages 2 and 3 of the current code, at its current `settings` for them (a kept run.json holds the ones it
    was run with), on a kept run's distilled student (its distillation is not rerun)."""
    run = workdir.read_run(out)
    run["config"].update(settings)
    workdir.write_run(out, run)
    t0 = time.perf_counter()
    for stage in (["quantize", str(out), "--target", "mobile"], ["export", str(out), "--target", "mobile"]):
        r = subprocess.run([sys.executable, "-m", "pipeline.cli", "--quiet", *stage], cwd=ROOT, capture_output=True,
                           text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
        if r.returncode != 0:
            return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1], "wall_s": time.perf_counter() - t0}
    report = json.loads((out / "report.json").read_text())
    # Wall time as if run whole: the kept distillation's seconds plus this call's stages 2 and 3.
    wall = report["distillation"]["wall_s"] + time.perf_counter() - t0
    result = {**report, "wall_s": wall, "distilled_by_code": old["plan"]["code"]}
    (out / "benchmark-plan.json").write_text(json.dumps({**old, "result": result}))
    return result


def row_of(name: str, synthesizer: str, replay: str, seed: int, rep: dict) -> list:
    if "error" in rep:
        return [name, synthesizer, replay, seed, None, None, None, None, None, rep["error"][:60], None, None, None,
                round(rep["wall_s"]), _distilled_by(rep)]
    acc, dist = rep["accuracy"], rep["distillation"]
    ratio = acc["student_int8"] / acc["teacher"]
    return [name, synthesizer, replay, seed, _pct(acc["teacher"]), _pct(acc["student_fp32"]), _pct(acc["student_int8"]),
            round(ratio, 4), round(dist["history"][-1]["agreement"], 4), dist.get("stopped_by"),
            (dist.get("estimate") or {}).get("estimated_s"), round(dist["wall_s"]),
            None if dist.get("probes_s") is None else round(dist["probes_s"]), round(rep["wall_s"]), _distilled_by(rep)]


def _distilled_by(rep: dict) -> str:
    """'this run', or the kept distillation's stages tree (short) when only stages 2-3 were rerun."""
    kept = rep.get("distilled_by_code")
    return f"kept, stages tree {kept.split()[1][:8]}" if kept else "this run"


def _pct(v: float) -> float:
    return round(100 * v, 2)


def worst_ratios(rows: list[list]) -> list[list]:
    """Per setting (synthesizer, replay): the worst and mean INT8 / teacher ratio over every teacher and seed."""
    by: dict[tuple, list] = {}
    for r in rows:
        by.setdefault((r[1], r[2]), []).append(r[7] if r[7] is not None else 0.0)
    return [[s, rp, min(v), round(statistics.mean(v), 4), len(v)] for (s, rp), v in sorted(by.items())]


def agreement_vs_accuracy(reports: list[dict]) -> list[list]:
    """Pearson correlation of probe agreement, and of probe divergence (KL from the teacher), with real accuracy
    over every evaluation, per teacher and in all. Agreement is constant where the probes saturate; the
    divergence still moves there (a good predictor correlates negatively)."""
    pairs: dict[str, list] = {}
    for rep in reports:
        for h in rep.get("distillation", {}).get("history", []):
            if h.get("accuracy") is not None:
                pairs.setdefault(rep["_teacher"], []).append((h["agreement"], h["accuracy"], h.get("probe_kl")))
    pairs["all"] = [p for name, v in pairs.items() for p in v]
    out = []
    for name, v in pairs.items():
        if len(v) >= 3:
            a, b = np.array([p[:2] for p in v]).T
            kl = [(p[2], p[1]) for p in v if p[2] is not None]
            kl_r = results.pearson(*np.array(kl).T, xs_name="probe KL") if len(kl) >= 3 else None
            out.append([name, len(v), results.pearson(a, b), round(float(np.mean(b - a)), 4), kl_r])
    return out


def plot(reports: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for rep in reports:
        hist = [h for h in rep.get("distillation", {}).get("history", []) if h.get("accuracy") is not None]
        if hist:
            ax.plot([h["elapsed_s"] for h in hist], [h["accuracy"] for h in hist], marker=".",
                    label=f"{rep['_teacher']} {rep['_setting']}")
    ax.set(xlabel="distillation seconds (one CPU thread)", ylabel="student accuracy on the real test split",
           ylim=(0, 1.01), title="Accuracy against wall-clock time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teachers", default="bn_cnn,lenet5,digits_cnn", help=f"comma list or 'all' (the zoo): {BUILTIN} (built-in), {', '.join(zoo.ZOO)}")
    ap.add_argument("--synthesizers", default="adversarial")
    ap.add_argument("--replay", default="vae")
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--time-budget", type=float, default=None, help="seconds of distillation per run")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="any config key, as for pipeline run")
    ap.add_argument("--name", default="distill", help="results file name under benchmarks/results/")
    ap.add_argument("--reuse", action="store_true", help="take a run kept from the same plan on the same committed "
                    "code instead of running it again (runs measured at different times)")
    ap.add_argument("--requantize", action="store_true", help="for a run kept from the same plan on other code, "
                    "keep its distillation and rerun only quantization and export with the current code")
    args = ap.parse_args()
    torch.set_num_threads(run_threads(args.sets))  # so the results say what the runs used
    names = list(zoo.ZOO) if args.teachers == "all" else args.teachers.split(",")
    rows, reports = [], []
    for name in names:
        cfg = write_config(name, WORK / name / "config")
        for synthesizer in args.synthesizers.split(","):
            for replay in args.replay.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    out = WORK / name / run_name(synthesizer, replay, seed, args.sets, args.time_budget)
                    rep = run_one(cfg, out, args.preset, seed, synthesizer, replay, args.sets, args.time_budget,
                                  args.reuse, args.requantize)
                    rows.append(row_of(name, synthesizer, replay, seed, rep))
                    reports.append({**rep, "_teacher": name, "_setting": f"{synthesizer}/{replay}/{seed}"})
                    print(results.markdown(results.table("run", COLUMNS, [rows[-1]])), flush=True)
    tables = [results.table("Runs", COLUMNS, rows),
              results.table("Worst and mean INT8 / teacher per setting",
                            ["synthesizer", "replay", "worst", "mean", "runs"], worst_ratios(rows)),
              results.table("Probe agreement and probe KL as predictors of real accuracy (every evaluation)",
                            ["teacher", "evaluations", "pearson r", "mean accuracy - agreement",
                             "pearson r, probe KL"],
                            agreement_vs_accuracy(reports))]
    settings = {"preset": args.preset, "time_budget": args.time_budget, "sets": args.sets, "reuse": args.reuse,
                "requantize": args.requantize}
    doc = results.write(args.name, tables, results.command_line(__file__), settings)
    plot(reports, results.RESULTS / f"{args.name}.png")
    results.show(doc)


COLUMNS = ["teacher", "synthesizer", "replay", "seed", "teacher %", "FP32 %", "INT8 %", "INT8 / teacher",
           "probe agreement", "stopped by", "estimated s", "distill s", "probes s", "total s", "distilled by"]


if __name__ == "__main__":
    main()
