"""The targets by name."""

from __future__ import annotations

from pipeline.errors import UsageError
from targets.base import Target
from targets.jetson import JetsonTarget
from targets.mobile import MobileTarget

TARGETS: dict[str, Target] = {t.name: t for t in (JetsonTarget(), MobileTarget())}


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise UsageError(f"unknown target '{name}'; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name]
