"""The export stage's settings: the `[export]` section of a run's config."""

from __future__ import annotations

from dataclasses import dataclass

from core.settings import setting


@dataclass
class ExportConfig:
    opset: int = setting(17, ge=13, le=21, hint="Q/DQ needs >= 13")
    profile: str | None = None  # device profile; None: the target's default
    benchmark_runs: int = setting(200, gt=0)
