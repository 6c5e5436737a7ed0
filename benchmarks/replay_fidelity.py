"""How faithful is the VAE's replay? A VAE memory and a sample-storing reservoir learn the same synthetic stream.

    python benchmarks/replay_fidelity.py --seeds 2,3
    python benchmarks/replay_fidelity.py --seeds 2 --set distill.vae_steps=5

The run is a `vae` run as in benchmarks/distill.py, same scenario and settings (its random stream is its own: the VAE
is built before the run starts, so the seed does not give the benchmark's run step for step; judging leaves the stream
alone); a reservoir of 4 MiB of stored samples only watches the stream the VAE learns. At each checkpoint both replay
`--samples` inputs and each is judged by
  classes     the teacher's argmax over them: the rarest and the commonest class's share (0.10 each when balanced)
  confidence  the teacher's mean top probability
  kd value    real accuracy of a fresh copy of the run's initial student trained only on them (KD from the
              teacher, Adam 1e-2, batch 128, `--kd-steps` steps): what the replay could teach on its own
Stored samples are what a perfect generative memory would replay, so their row is the bound for the VAE's.
Accuracy is on the real test split, for reporting only.
Writes benchmarks/results/replay-fidelity.json and prints its tables.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import results  # noqa: E402
from replay import SCENARIOS, _parse_sets, load_task, split_stress, stress_kwargs  # noqa: E402


class Reservoir:
    """Stored synthetic samples up to a byte budget, by reservoir sampling: every sample seen so far has the same
    chance of being kept. The reference a perfect generative memory would match."""

    def __init__(self, shape: tuple[int, ...], budget_bytes: int):
        self.buffer = torch.empty((max(1, budget_bytes // (4 * math.prod(shape))), *shape))
        self.size = self.seen = 0

    def observe(self, x: torch.Tensor) -> None:
        for row in x.detach():
            slot = self.size if self.size < len(self.buffer) else int(torch.randint(0, self.seen + 1, ()))
            if slot < len(self.buffer):
                self.buffer[slot] = row
                self.size = max(self.size, slot + 1)
            self.seen += 1

    def sample(self, n: int) -> torch.Tensor:
        return self.buffer[torch.randint(0, self.size, (n,))]


def kd_value(student: torch.nn.Module, samples: torch.Tensor, t_logits: torch.Tensor, evaluate, steps: int) -> float:
    """Real accuracy of `student` (a fresh copy) after `steps` KD steps on `samples` (teacher logits `t_logits`) alone."""
    from stages.distill import criteria

    student = copy.deepcopy(student).train()
    opt = torch.optim.Adam(student.parameters(), lr=1e-2)
    for _ in range(steps):
        idx = torch.randint(0, len(samples), (128,))
        loss = criteria.kd_loss("kl", student(samples[idx]), t_logits[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return evaluate(student)


def judge(samples: torch.Tensor, teacher, fresh_student, evaluate, kd_steps: int) -> dict:
    with torch.no_grad():
        t_logits = teacher(samples)  # one teacher pass serves the class shares and the KD targets
    p = F.softmax(t_logits, dim=1)
    share = torch.bincount(p.argmax(1), minlength=p.shape[1]).float() / len(samples)
    return {"rarest": share.min().item(), "commonest": share.max().item(), "confidence": p.max(1).values.mean().item(),
            "kd_value": kd_value(fresh_student, samples, t_logits, evaluate, kd_steps)}


def run_seed(seed: int, scenario: str, sets: dict, at: list[int] | None, n: int, kd_steps: int,
             out: Path) -> tuple[list[dict], float]:
    """The judged rows of one seed's run, and the final accuracy of the run's own student."""
    from pipeline.config import load_config
    from stages.distill.engine import build_memory, distill

    overrides, stress = split_stress({"preset": "default", **SCENARIOS[scenario], **sets, "distill.replay": "vae"})
    cfg = load_config(overrides=overrides)
    torch.manual_seed(seed)
    teacher, student, shape, evaluate, _ = load_task("digits", cfg, None, scenario, torch.device("cpu"))
    fresh = copy.deepcopy(student)
    memory = build_memory(cfg.distill, shape, teacher, torch.device("cpu"))
    stored = Reservoir(shape, 4 * 1024 * 1024)
    learn = memory.observe

    def observe(x, *args, **kwargs):  # the reservoir sees exactly what the VAE learns
        rng = torch.get_rng_state()  # and its draws leave the run's random stream alone
        stored.observe(x)
        torch.set_rng_state(rng)
        return learn(x, *args, **kwargs)

    memory.observe = observe
    steps = at or [cfg.distill.iterations * k // 4 for k in (1, 2, 3, 4)]
    rows = []

    def progress(step, _row):
        if step not in steps:
            return
        rng = torch.get_rng_state()  # judging draws random numbers: the run goes on as without it
        for source, draw in (("vae", memory.sample), ("stored", stored.sample)):
            # in batches of at most 512: the VAE's class-balancing step acts on one batch at a time
            samples = torch.cat([draw(min(512, n - i)) for i in range(0, n, 512)])
            rows.append({"seed": seed, "step": step, "source": source,
                         **judge(samples.detach(), teacher, fresh, evaluate, kd_steps)})
        torch.set_rng_state(rng)

    res = distill(cfg.distill, teacher, student, shape, out / f"fidelity-s{seed}", torch.device("cpu"), seed=seed,
                  evaluate=evaluate, progress=progress, memory=memory,
                  **stress_kwargs(stress, cfg.distill.iterations, teacher, shape))
    return rows, evaluate(res.student)


def fidelity_tables(rows: list[dict], finals: dict[int, float]) -> list[dict]:
    """Every judged checkpoint, and their means over seeds."""
    per_seed = [[r["seed"], r["step"], r["source"], f"{r['rarest']:.3f}", f"{r['commonest']:.3f}",
                 f"{r['confidence']:.3f}", f"{r['kd_value']:.4f}"] for r in rows]
    means = []
    for step in sorted({r["step"] for r in rows}):
        for source in ("vae", "stored"):
            rs = [r for r in rows if r["step"] == step and r["source"] == source]
            means.append([step, source, f"{statistics.mean(r['kd_value'] for r in rs):.4f}",
                          f"{statistics.mean(r['rarest'] for r in rs):.3f}",
                          f"{statistics.mean(r['commonest'] for r in rs):.3f}"])
    finals_note = "Final accuracy of each run (its own student): " + ", ".join(
        f"seed {s} {a:.4f}" for s, a in finals.items()) + "."
    return [
        results.table("Replay judged at each checkpoint",
                      ["seed", "iteration", "replay", "rarest class", "commonest class", "teacher confidence",
                       "kd value"], per_seed),
        results.table("Mean over seeds", ["iteration", "replay", "kd value", "rarest class", "commonest class"], means,
                      notes=finals_note),
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="2")
    ap.add_argument("--scenario", choices=tuple(SCENARIOS), default="class-by-class")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override; default: the one-pass smaller-student setting of benchmarks/README.md")
    ap.add_argument("--at", default="", help="comma-separated iterations to judge at (default: each quarter of the run)")
    ap.add_argument("--samples", type=int, default=4096)
    ap.add_argument("--kd-steps", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / ".cache" / "fidelity-runs")
    args = ap.parse_args(argv)
    if args.samples < 1 or args.kd_steps < 1:
        raise SystemExit("--samples and --kd-steps must be positive")
    torch.set_num_threads(1)
    sets = {"stress.phase_cycles": 1, "student.ratio": 0.05, "distill.lr_student": 3e-2, **_parse_sets(args.set)}
    at = [int(s) for s in args.at.split(",") if s.strip()] or None
    rows, finals = [], {}
    for seed in (int(s) for s in args.seeds.split(",") if s.strip()):
        seed_rows, finals[seed] = run_seed(seed, args.scenario, sets, at, args.samples, args.kd_steps, args.out)
        rows += seed_rows

    settings = {"scenario": args.scenario, "sets": sets, "samples": args.samples, "kd_steps": args.kd_steps}
    results.show(results.write("replay-fidelity", fidelity_tables(rows, finals), results.command_line(__file__, argv),
                               settings))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
