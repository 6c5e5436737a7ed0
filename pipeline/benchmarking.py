"""`pipeline benchmark BUNDLE`: the target's latency rows on this machine, printed and saved."""

from __future__ import annotations

import json
from pathlib import Path

from core.bundle import REPORT, verify_bundle
from core.errors import UsageError
from core.target import BenchmarkRequest
from pipeline.report import latency_table, write_reports
from targets.registry import get_target


def benchmark_bundle(bundle: Path, batches, threads, runs, duration_s, warmup):
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
