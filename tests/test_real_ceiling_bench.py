"""benchmarks/real_ceiling.py: the ceiling's tables, per run and per task and shift over the seeds."""

from __future__ import annotations

from tests.bench_modules import load

ceiling = load("real_ceiling")


def test_means_are_taken_per_task_and_shift_over_the_seeds():
    rows = [("gn_separable", 0, 0, 0.98, [(800, 0.95), (1600, 0.98)], 10.0),
            ("gn_separable", 0, 1, 0.98, [(800, 0.96), (1600, 0.99)], 11.0),
            ("wide_shallow", 0, 0, 0.95, [(800, 0.90), (1600, 0.95)], 12.0),
            ("wide_shallow", 2, 0, 0.95, [(800, 0.90), (1600, 0.931)], 12.0)]
    per_run, means = ceiling.ceiling_tables(rows, {8000}, 1600, 128)
    assert per_run["title"].startswith("Student learning the teacher by KD on the real training split (8,000 images)")
    assert "(1,437 / 8,000 images)" in ceiling.ceiling_tables(rows, {8000, 1437}, 1600, 128)[0]["title"]
    assert [r[:5] for r in per_run["rows"]] == [["gn_separable", 0, 0, "0.9800", "0.9800"],
                                                ["gn_separable", 0, 1, "0.9900", "0.9900"],
                                                ["wide_shallow", 0, 0, "0.9500", "0.9500"],
                                                ["wide_shallow", 2, 0, "0.9310", "0.9310"]]
    assert means["rows"] == [["gn_separable", 0, 2, "1.0051"], ["wide_shallow", 0, 1, "1.0000"],
                             ["wide_shallow", 2, 1, "0.9800"]]


def test_an_unknown_zoo_teacher_is_refused_with_the_choices():
    import pytest

    with pytest.raises(SystemExit, match="unknown zoo teacher 'vgg'; choose from: lenet5"):
        ceiling.main(["--task", "zoo", "--teachers", "gn_separable,vgg"])
