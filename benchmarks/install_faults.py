"""Installs and updates killed with SIGKILL at random points: does `current` always verify?

    python benchmarks/install_faults.py [--points 50] [--seed 0] [--work DIR]

A signed lineage of smoke-preset jetson bundles (version 1, and version 2 made by `update`) is built
once. Each point then kills one real CLI process with SIGKILL:

- install: `pipeline install` with PIPELINE_FAULT_AT=N, so the process kills itself at its Nth
  checkpoint (after a file copy, an fsync, a rename); N is drawn from all the checkpoints an
  install passes, so every step of the copy, the slot rename and the switch of `current` is hit.
- update: `pipeline update` followed by `pipeline install` of its output, killed after a delay drawn
  from the measured duration of the two together.

After each kill `current` must point at a slot whose signature and hashes verify and whose health
check passes, and the next install must succeed (it removes what the killed one left). The table
also gives the time of one install of the smoke bundle and of verifying a signed bundle.
Results: benchmarks/results/install_faults.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import results  # noqa: E402
from core.tasks import digits  # noqa: E402
from pipeline.trust.install import SLOTS, current_slot  # noqa: E402
from core.health import health_check  # noqa: E402
from core.signing import load_public_key  # noqa: E402
from core.trust import check_bundle  # noqa: E402

FAULT_ENV = "PIPELINE_FAULT_AT"


def cli(*args: str, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                       env=dict(os.environ, **(env or {})))
    if check and r.returncode != 0:
        raise SystemExit(f"pipeline {args[0]} failed: {r.stderr.strip()[-500:]}")
    return r


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def current_healthy(into: Path, pub: Path) -> tuple[bool, str]:
    slot = current_slot(into)
    if slot is None:
        return False, "no current"
    report = check_bundle(slot, load_public_key(pub))
    if not report.ok:
        return False, report.findings[0]
    health = health_check(slot, report.manifest)
    return health.ok, slot.name if health.ok else health.message


def build_lineage(work: Path) -> tuple[Path, Path, Path, Path]:
    cli("keygen", "--out", str(work / "keys"))
    priv, pub = work / "keys" / "signing_key.pem", work / "keys" / "signing_key.pub.pem"
    v1 = work / "v1"
    cli("run", "--target", "jetson", "--preset", "smoke", "--device", "cpu", "--out", str(v1), "--sign-key", str(priv))
    (work / "same.toml").write_text(f'[teacher]\nfactory = "core.tasks.digits:build_teacher"\nweights = "{digits.WEIGHTS}"\n'
                                    "input_shape = [1, 8, 8]\nnum_classes = 10\nmean = [0.3059]\nstd = [0.3782]\nscale = 0.0625\n")
    v2 = work / "v2"
    cli(*update_args(v1, work / "same.toml", v2, pub, priv))
    return priv, pub, v1, v2


def update_args(bundle: Path, config: Path, out: Path, pub: Path, priv: Path) -> list[str]:
    return ["update", str(bundle), "--config", str(config), "--out", str(out), "--preset", "smoke", "--device", "cpu",
            "--set", "distill.iterations=4", "--trust", str(pub), "--sign-key", str(priv)]


def count_checkpoints(bundle: Path, into: Path, pub: Path) -> int:
    """The number of checkpoints one install passes: the smallest N at which it is not killed, minus one."""
    def killed(n: int) -> bool:
        r = cli("install", str(bundle), "--into", str(into), "--trust", str(pub), "--allow-downgrade",
                env={FAULT_ENV: str(n)}, check=False)
        return r.returncode == -signal.SIGKILL

    hi = 1
    while killed(hi):
        hi *= 2
    lo = hi // 2  # killed at lo (or lo is 0), not at hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if killed(mid) else (lo, mid)
    return lo


def install_point(n: int, bundle: Path, into: Path, pub: Path) -> dict:
    before = current_slot(into)
    r = cli("install", str(bundle), "--into", str(into), "--trust", str(pub), "--allow-downgrade",
            env={FAULT_ENV: str(n)}, check=False)
    partials = len(list((into / SLOTS).glob(".partial-*")))
    ok, detail = current_healthy(into, pub)
    after = current_slot(into)
    return {"kind": "install", "checkpoint": n, "killed": r.returncode == -signal.SIGKILL, "survived": ok,
            "current": "switched" if after != before else "kept", "partial_slots_left": partials, "detail": detail}


def update_point(upper: float, rng: random.Random, parent: Path, config: Path, work: Path, into: Path, pub: Path,
                 priv: Path, i: int) -> dict:
    """Kill `update && install` after a delay drawn from [0, upper); if it finished first, draw again below
    the time it took, so the kill lands inside the operation."""
    out = work / f"update-{i}"
    py = [sys.executable, "-m", "pipeline.cli"]
    script = (shlex.join(py + update_args(parent, config, out, pub, priv)) + " && "
              + shlex.join(py + ["install", str(out), "--into", str(into), "--trust", str(pub), "--allow-downgrade"]))
    before = current_slot(into)
    for attempt in range(1, 4):
        delay = rng.uniform(0.0, upper)
        t0 = time.perf_counter()
        proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout=delay)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
        if killed:
            break
        upper = time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
    phase = "install" if (out / "manifest.json.sig").is_file() else "update"
    ok, detail = current_healthy(into, pub)
    after = current_slot(into)
    shutil.rmtree(out, ignore_errors=True)  # a device retries an interrupted update from scratch
    return {"kind": "update", "delay_s": round(delay, 2), "attempts": attempt, "killed": killed, "phase": phase,
            "survived": ok, "current": "switched" if after != before else "kept", "detail": detail}


def summary_rows(results: dict) -> list[list]:
    """(measure, value) rows of the fault-injection table, from the run's raw results."""
    pts = results["points"]
    by_kind = {k: [p for p in pts if p["kind"] == k] for k in ("install", "update")}
    t = results["timings"]
    lines = [
        f"| kills survived (afterwards `current` verifies and passes its health check) | "
        f"**{sum(p['survived'] for p in pts if p['killed'])} of {sum(p['killed'] for p in pts)}** ({len(pts)} points) |",
        *(f"| {k} killed (survived / killed / points) | {sum(p['survived'] for p in v)} / {sum(p['killed'] for p in v)} / {len(v)} |"
          for k, v in by_kind.items()),
        f"| update kills inside `update` / inside the `install` after it | "
        f"{sum(p.get('phase') == 'update' for p in by_kind['update'] if p['killed'])} / "
        f"{sum(p.get('phase') == 'install' for p in by_kind['update'] if p['killed'])} |",
        f"| install kills that left `current` on the previous slot / on the new one | "
        f"{sum(p['current'] == 'kept' for p in by_kind['install'])} / {sum(p['current'] == 'switched' for p in by_kind['install'])} |",
        f"| checkpoints in one install | {results['install_checkpoints']} |",
        f"| next install after every kill succeeded | {results['recovered_installs']} of {len(pts)} |",
        f"| install of the {results['bundle']} (in process, median of {t['repeats']}) | {t['install_ms']:.0f} ms |",
        f"| `pipeline install` command, interpreter start included (median) | {t['install_cli_ms']:.0f} ms |",
        f"| verify a signed bundle: signature + sha256 of {t['artifacts']} artifacts, {t['bundle_kib']} KiB (median) | "
        f"{t['verify_ms']:.1f} ms (target < 50 ms) |",
        f"| `pipeline verify` command, interpreter start included (median) | {t['verify_cli_ms']:.0f} ms |",
    ]
    return [[cell.strip() for cell in line.strip("|").split(" | ", 1)] for line in lines]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=50)
    ap.add_argument("--update-share", type=float, default=0.3, help="fraction of the points that kill an update")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--work", default=None, help="working directory (default: a temporary one, removed)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="install-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        priv, pub, v1, v2 = build_lineage(work)
        build_s = time.perf_counter() - t0
        timings = measure(work, v1, pub, args.repeats)
        into = work / "device"
        cli("install", str(v1), "--into", str(into), "--trust", str(pub))
        n_checkpoints = count_checkpoints(v2, into, pub)
        cli("install", str(v1), "--into", str(into), "--trust", str(pub), "--allow-downgrade")
        update_s = timed(lambda: cli(*update_args(v1, work / "same.toml", work / "timing-update", pub, priv)))
        update_s += timed(lambda: cli("install", str(work / "timing-update"), "--into", str(into), "--trust", str(pub)))
        shutil.rmtree(work / "timing-update")

        points, recovered = [], 0
        for i in range(args.points):
            target = v2 if i % 2 == 0 else v1
            if rng.random() < args.update_share:
                p = update_point(update_s, rng, v1, work / "same.toml", work, into, pub, priv, i)
            else:
                p = install_point(rng.randint(1, n_checkpoints), target, into, pub)
            recovered += cli("install", str(target), "--into", str(into), "--trust", str(pub), "--allow-downgrade",
                             check=False).returncode == 0
            p["recovered_ok"], p["recovered_detail"] = current_healthy(into, pub)
            points.append(p)
            print(f"[{i + 1}/{args.points}] {p['kind']}: killed={p['killed']} survived={p['survived']} "
                  f"current={p['current']} ({p['detail']})", file=sys.stderr)
        import onnxruntime

        raw = {
            "bundle": "smoke-preset jetson digits bundle",
            "seed": args.seed,
            "host": f"{platform.machine()}, {os.cpu_count()} cpus, python {platform.python_version()}, "
                    f"onnxruntime {onnxruntime.__version__}",
            "lineage_build_s": round(build_s, 1),
            "update_plus_install_s": round(update_s, 2),
            "install_checkpoints": n_checkpoints,
            "recovered_installs": recovered,
            "timings": timings,
            "points": points,
        }
        table = results.table("Installs and updates killed with SIGKILL", ["measure", "value"], summary_rows(raw))
        results.show(results.write("install_faults", [table], results.command_line(__file__), raw))
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def measure(work: Path, bundle: Path, pub: Path, repeats: int) -> dict:
    from pipeline.trust.install import install

    key = load_public_key(pub)
    scratch = work / "timing"
    install_s = [timed(lambda: install(bundle, scratch, key, allow_downgrade=True, keep=2)) for _ in range(repeats)]
    install_cli_s = [timed(lambda: cli("install", str(bundle), "--into", str(scratch), "--trust", str(pub), "--keep", "2"))
                     for _ in range(3)]
    verify_s = [timed(lambda: check_bundle(bundle, key)) for _ in range(repeats)]
    verify_cli_s = [timed(lambda: cli("verify", str(bundle), "--trust", str(pub))) for _ in range(3)]
    shutil.rmtree(scratch)
    report = check_bundle(bundle, key)
    size = sum(a.bytes for a in report.manifest.artifacts)
    return {"repeats": repeats, "install_ms": statistics.median(install_s) * 1e3,
            "install_cli_ms": statistics.median(install_cli_s) * 1e3, "verify_ms": statistics.median(verify_s) * 1e3,
            "verify_cli_ms": statistics.median(verify_cli_s) * 1e3, "artifacts": len(report.manifest.artifacts),
            "bundle_kib": round(size / 1024)}


if __name__ == "__main__":
    main()
