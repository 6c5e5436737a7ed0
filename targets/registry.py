"""The targets by name."""

from __future__ import annotations

from core.errors import UsageError
from targets import TARGET_NAMES
from core.target import Target
from targets.jetson import JetsonTarget
from targets.mobile import MobileTarget

TARGETS: dict[str, Target] = {t.name: t for t in (JetsonTarget(), MobileTarget())}
assert tuple(TARGETS) == TARGET_NAMES, "targets.TARGET_NAMES and the registry must list the same targets"


def get_target(name: str) -> Target:
    if name not in TARGETS:
        raise UsageError(f"unknown target '{name}'; choose one of: {', '.join(TARGET_NAMES)}")
    return TARGETS[name]
