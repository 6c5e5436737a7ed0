"""`pipeline benchmark BUNDLE`: the target's latency rows on this machine, printed and saved."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.bundle import REPORT, verify_bundle
from pipeline.errors import UsageError


def benchmark_bundle(bundle: Path, batches, threads, runs, duration_s, warmup):
    from pipeline.report import latency_table, write_reports
    from targets.base import BenchmarkRequest
    from targets.registry import get_target

    manifest = verify_bundle(bundle)  # refuse a tampered bundle before running anything in it
    target = get_target(manifest.target)
    rows = target.benchmark(BenchmarkRequest(bundle, tuple(batches), tuple(threads), runs, duration_s, warmup))
    report_path = bundle / REPORT
    report = {}
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UsageError(f"{report_path} is corrupt: {exc}") from exc
    report["latency"] = rows
    write_reports(bundle, report)
    return latency_table(rows, report.get("accuracy"))
