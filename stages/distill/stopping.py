"""When distillation ends and whether it worked, judged without data.

The only quality signal a user without data has is the student's agreement with the teacher on held-out
synthetic probes (probes.py), and its divergence from the teacher's outputs there. Distillation stops when
neither has improved for a while, when a wall-clock budget is spent, or at the iteration cap; afterwards, a
probe agreement far below what the student reached on its own training samples, below a floor, or still rising
fast where the budget or the cap cut the run, marks the student as not converged. Where the probe set had to be
made robustly (probes.make_probes), its agreement does not rank a teacher's students by real accuracy, so no
verdict is given.
"""

from __future__ import annotations

from dataclasses import dataclass

# A student whose probe agreement is below this did not learn the teacher, whatever it reached in training. How
# far agreement sits under real accuracy depends on the teacher (a label-smoothed one's converged students agree
# far less often than a plain BatchNorm CNN's; benchmarks/README.md, the verdict against real accuracy), so the
# floor is low: it catches students stuck far below, and RISING the ones a run cut while still learning.
AGREEMENT_FLOOR = 0.65
# A run cut by its budget or its cap while probe agreement rose this much over the last RISING_OVER evaluations
# stopped in mid-learning: its student is not yet what the teacher can teach. A run stopped by a plateau has no
# such trend (its cool-down may still lift agreement as the learning rate anneals).
RISING = 0.05
RISING_OVER = 3
# A fall in probe divergence (KL from the teacher) by this fraction of its best value within `patience` evaluations
# is progress, as a gain of `min_gain` in agreement is: agreement saturates at 1.0 on probes that every student
# reads as the teacher does (a teacher without BatchNorm), while the divergence still falls as long as the student
# learns the teacher, and real accuracy with it.
DIVERGENCE_DROP = 0.05
# On a plateau the student's learning rate first anneals to its floor over this fraction of the iterations run so far
# (at least one evaluation period), and the run stops after that: a student stopped where its schedule had left a
# high learning rate ships weights still moving about the plateau, not settled on it.
COOL_DOWN = 0.25
# Probe agreement this far below the training-sample agreement: the student fits its own samples only.
GAP_LIMIT = 0.15


def plateaued(agreements: list[float], divergences: list[float | None], patience: int, min_gain: float) -> bool:
    """True when none of the last `patience` evaluations beat the best one before them: by `min_gain` in probe
    agreement, or by a fall of `DIVERGENCE_DROP` in probe divergence (where every evaluation measured it)."""
    if patience <= 0 or len(agreements) <= patience:
        return False
    if max(agreements[-patience:]) >= max(agreements[:-patience]) + min_gain:
        return False
    if all(d is not None for d in divergences):
        return min(divergences[-patience:]) > (1 - DIVERGENCE_DROP) * min(divergences[:-patience])
    return True


def cool_down_end(step: int, eval_every: int, scheduled_end: int) -> int:
    """The iteration at which a run that plateaued at `step` stops, having annealed its learning rate by then;
    never later than the schedule's own end (the cap, or what a time budget's plan fits)."""
    return min(scheduled_end, step + max(eval_every, round(COOL_DOWN * step)))


def describe_stop(summary: dict) -> str:
    """Why a finished distillation stopped, from its summary in run.json, as the console and the report say it."""
    why, found = str(summary.get("stopped_by") or "—"), summary.get("plateau_at")
    if why == "plateau" and isinstance(found, int) and found != summary.get("steps"):
        return f"plateau at iteration {found}, then the learning rate annealed"
    return why


@dataclass
class Pace:
    """Seconds per iteration from the iterations timed so far, after a warm-up iteration that pays one-off costs."""

    warmup: int = 1
    timed: int = 0
    seconds: float = 0.0

    def add(self, seconds: float) -> None:
        if self.warmup > 0:
            self.warmup -= 1
            return
        self.timed += 1
        self.seconds += seconds

    @property
    def per_iteration(self) -> float | None:
        return self.seconds / self.timed if self.timed else None


def fitting_iterations(per_iteration: float, budget_s: float, elapsed_s: float, done: int, cap: int) -> int:
    """How many iterations in all fit into the budget at this pace (never more than the cap)."""
    return min(cap, done + max(0, int((budget_s - elapsed_s) / per_iteration)))


def verdict(history: list[dict], stopped_by: str | None, minimum: float = 0.0, robust: bool = False,
            floor: float = AGREEMENT_FLOOR, rising: float = RISING) -> dict:
    """Whether the shipped student learnt the teacher, from the run's evaluations (`history`: each with probe
    `agreement` and, where measured, `train_agreement`) and why it stopped, with what to try when it did not.
    `floor` and `rising` are the product's own but for a benchmark that compares others.
    On a `robust` probe set (the teacher's first one broke under noise) agreement is judged against `minimum`
    only, the user's own bar: on such sets poor students agreed with more probes than good ones of the same teacher
    (benchmarks/README.md, probe agreement against real accuracy), so a floor would flag good students and pass
    poor ones alike."""
    evaluated = [h for h in history if h.get("agreement") is not None]
    if not evaluated:
        return {"converged": None, "reason": "no probe evaluation"}
    last, earlier = evaluated[-1], evaluated[max(0, len(evaluated) - 1 - RISING_OVER)]
    probe_agreement, train_agreement = last["agreement"], last.get("train_agreement")
    if robust and not minimum:
        return {"converged": None,
                "reason": f"not judged: agreement on robust probes ({probe_agreement:.3f}) does not rank students"}
    floor = minimum if robust else max(floor, minimum)
    reasons = []
    if probe_agreement < floor:
        reasons.append(f"probe agreement {probe_agreement:.3f} is below {floor:.2f}")
    if not robust and train_agreement is not None and train_agreement - probe_agreement > GAP_LIMIT:
        reasons.append(f"probe agreement {probe_agreement:.3f} is far below the {train_agreement:.3f} reached on its "
                       "own training samples")
    if not robust and stopped_by != "plateau" and probe_agreement - earlier["agreement"] >= rising:
        cut = {"iterations": "the iteration cap", "time-budget": "the time budget"}.get(str(stopped_by), "its end")
        reasons.append(f"probe agreement was still rising ({earlier['agreement']:.3f} at iteration "
                       f"{earlier.get('step')}, {probe_agreement:.3f} at {last.get('step')}) when {cut} stopped the run")
    if not reasons:
        return {"converged": True, "reason": f"probe agreement {probe_agreement:.3f}"}
    return {"converged": False, "reason": "; ".join(reasons),
            "try": "a longer run (distill.iterations, --time-budget), a larger student (--student-ratio), "
                   "or another synthesizer (distill.synthesizer)"}
