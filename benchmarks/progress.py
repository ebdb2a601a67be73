"""Live progress for the suite: a rich progress bar on a terminal, plain flushed lines
otherwise (CI logs, pipes), so a long scenario always shows it is alive."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any

# Plain-line mode prints a step's progress at most this often.
PLAIN_INTERVAL = 5.0


class ProgressReporter:
    """`with ProgressReporter() as progress:` then per step `progress.begin(label, total)`,
    `progress.advance(n)`, `progress.note(text)`, `progress.end(summary)`."""

    def __init__(self, live: bool | None = None) -> None:
        self.live = sys.stdout.isatty() if live is None else live
        self._rich: Any = None
        self._task: Any = None
        self._label = ""
        self._total = 0
        self._done = 0
        self._last_line = 0.0

    def __enter__(self) -> ProgressReporter:
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self._rich = Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), transient=False,
            )
            self._rich.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if self._rich is not None:
            self._rich.stop()

    def begin(self, label: str, total: int) -> None:
        self._label, self._total, self._done = label, max(total, 1), 0
        self._last_line = time.monotonic()
        if self._rich is not None:
            self._task = self._rich.add_task(label, total=self._total)
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {label} ...", flush=True)

    def advance(self, count: int = 1) -> None:
        self._done += count
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, completed=min(self._done, self._total))
        elif time.monotonic() - self._last_line >= PLAIN_INTERVAL:
            self._last_line = time.monotonic()
            print(f"    {self._label}: {self._done}/{self._total}", flush=True)

    def note(self, text: str) -> None:
        """A line of its own (skip reasons, the mixed workload's 5-second lines)."""
        if self._rich is not None:
            self._rich.console.print(text)
        else:
            print(f"    {text}", flush=True)

    def end(self, summary: str) -> None:
        if self._rich is not None and self._task is not None:
            self._rich.update(self._task, completed=self._total,
                              description=f"{self._label}: {summary}")
            self._task = None
        else:
            print(f"    {self._label}: {summary}", flush=True)
