"""benchmarks/verdict.py: which students the product's verdict flags, counted over every evaluation of kept runs."""

from __future__ import annotations

from tests.bench_modules import load

verdict_bench = load("verdict")


def _run(teacher_accuracy: float, stopped_by: str, *evaluations: tuple[float, float, float | None]) -> dict:
    history = [{"step": 20 * (i + 1), "accuracy": acc, "agreement": agree, "train_agreement": train}
               for i, (acc, agree, train) in enumerate(evaluations)]
    return {"teacher": "t", "run": "r", "teacher_accuracy": teacher_accuracy,
            "distillation": {"history": history, "stopped_by": stopped_by}}


def test_per_floor_counts_false_alarms_and_misses_with_and_without_the_rising_rule():
    runs = [_run(1.0, "plateau", (0.5, 0.40, 0.5), (0.98, 0.75, 0.8)),  # failed early, converged under 0.8
            _run(0.9, "time-budget", (0.85, 0.72, None), (0.89, 0.80, 0.99)),  # 0.989 at the end, 0.19 under training
            _run(1.0, "iterations", (0.6, 0.60, None), (0.8, 0.70, None))]  # cut at the cap while still rising
    rows = verdict_bench.per_floor(runs, [0.7, 0.8])
    # columns: floor, rising rule, students >= 0.97, flagged, students < 0.9, passed, final students >= 0.97 flagged
    assert rows == [[0.7, "yes", 2, 1, 3, 0, 1],  # only the training gap's good student; every poor one flagged
                    [0.8, "yes", 2, 2, 3, 0, 2],  # the converged 0.75 student too
                    [0.7, "no", 2, 1, 3, 1, 1],  # without the rule the rising 0.80 student passes at 0.70
                    [0.8, "no", 2, 2, 3, 0, 2]]


def test_per_run_reports_the_lowest_good_and_highest_poor_agreement():
    runs = [_run(1.0, "plateau", (0.5, 0.40, 0.5), (0.6, 0.55, 0.5), (0.98, 0.75, 0.8))]
    assert verdict_bench.per_run(runs)[0][2:] == ["plateau", 3, 0.98, 0.75, 0.75, 0.55, "converged"]
