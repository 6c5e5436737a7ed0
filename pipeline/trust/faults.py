"""Fault injection for crash tests: PIPELINE_FAULT_AT=N makes the process SIGKILL itself at the Nth
checkpoint of an install, exactly where a power cut or the OOM killer could strike."""

from __future__ import annotations

import os
import signal

FAULT_ENV = "PIPELINE_FAULT_AT"
_count = 0


def checkpoint() -> None:
    global _count
    target = os.environ.get(FAULT_ENV)
    if not target:
        return
    _count += 1
    if _count == int(target):
        os.kill(os.getpid(), signal.SIGKILL)
