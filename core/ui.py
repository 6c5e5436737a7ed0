"""Console output: progress bars on long steps, one-line notes and warnings, all on stderr."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console as RichConsole
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class Console:
    def __init__(self, quiet: bool = False, warnings: bool = True):
        self.err = RichConsole(stderr=True, highlight=False)
        # Pipes and CI logs get a wide table rather than rich's 80-column default.
        self.out = RichConsole(highlight=False, width=None if sys.stdout.isatty() else 160)
        self.quiet = quiet
        self.warnings = warnings
        self._said: set[str] = set()

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.err.print(msg, markup=False)

    def warn(self, msg: str) -> None:
        if self.warnings and msg not in self._said:  # say each thing once
            self._said.add(msg)
            self.err.print(f"warning: {msg}", style="yellow", markup=False)

    @contextmanager
    def progress(self, label: str, total: int) -> Iterator[Callable[[int, dict], None]]:
        if self.quiet or total <= 0:
            yield lambda step, row: None
            return
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn()]
        with Progress(*columns, console=self.err, transient=not self.err.is_terminal, disable=not self.err.is_terminal) as bar:
            task = bar.add_task(label, total=total, status="")
            reached = [0]

            def advance(step: int, row: dict) -> None:
                reached[0] = step
                status = ""
                if row.get("agreement") is not None:
                    status = f"agree {row['agreement']:.3f}"
                if row.get("accuracy") is not None:
                    status += f" acc {row['accuracy']:.3f}"
                bar.update(task, completed=step, status=status)

            yield advance
        if not self.err.is_terminal:
            self.err.print(f"{label}: done ({reached[0]} of {total} steps)", markup=False)
