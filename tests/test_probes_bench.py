"""benchmarks/probes.py: whether probe agreement ranks a teacher's students as real accuracy does."""

from __future__ import annotations

from tests.bench_modules import load

probes_bench = load("probes")


def _row(teacher: str, student: str, real: float, agreement: float, steps: int = 300) -> list:
    return [teacher, student, steps, "no", real, agreement, round(agreement - real / 100, 4), 1.0]


def test_ranking_counts_pairs_two_points_apart_and_a_tie_as_wrong():
    rows = [_row("a", "adversarial s0", 96.0, 0.90), _row("a", "meta s0", 93.0, 0.85),
            _row("a", "conditional s0", 76.0, 0.85),  # ties the 93% student: not ranked right
            _row("a", "adversarial s1", 95.5, 0.70),  # under 2 points from the 96% one: no pair with it
            _row("b", "adversarial s0", 97.0, 1.0), _row("b", "adversarial s1", 96.5, 1.0)]  # no pair 2+ apart
    table = probes_bench.ranking(rows, [300])
    # pairs of a: 96/93 and 96/76 ranked right; 93/76 tied; 95.5 agrees least, so wrong against 93 and 76
    assert table == [["a", 300, "no", 4, 5, 2]]
