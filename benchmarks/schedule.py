"""A rate schedule against absolute deadlines: operation i is due at start + i / rate, so a
late wake-up never shifts the operations after it (no drift) and the achieved rate stays
within a small tolerance of the target however long each wait overshoots.

`RateSchedule` is pure (tested with a fake clock); `run_at_rate` drives it with trio.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio


@dataclass(frozen=True, slots=True)
class RateSchedule:
    """`rate` operations per second for `duration` seconds, starting at `start`."""

    rate: float
    duration: float
    start: float = 0.0

    @property
    def total(self) -> int:
        """How many operations the whole schedule holds."""
        return int(self.rate * self.duration)

    def deadline(self, index: int) -> float:
        """When operation `index` (0-based) is due."""
        return self.start + index / self.rate

    def due_by(self, now: float) -> int:
        """How many operations are due at `now` (capped at the total)."""
        if now < self.start:
            return 0
        return min(self.total, int((now - self.start) * self.rate) + 1)


def achieved_rate(count: int, first: float, last: float, rate: float) -> float:
    """Operations per second from `count` operations started between `first` and `last`:
    (count - 1) intervals over the span, the same measure the schedule's deadlines use."""
    if count < 2 or last <= first:
        return float(count) * rate if count else 0.0
    return (count - 1) / (last - first)


def accuracy_pct(achieved: float, target: float) -> float:
    """100 * achieved / target: 100 is exact; the suite promises 98-102."""
    return 100.0 * achieved / target if target > 0 else 0.0


async def run_at_rate(
    schedule: RateSchedule,
    launch: Callable[[int], Awaitable[None] | None],
    clock: Callable[[], float] = trio.current_time,
) -> list[float]:
    """Call `launch(i)` for every operation when due, in order; return the times each was
    launched. `launch` must not block for long (start work in a nursery and return):
    operations that fell behind are launched at once, catching up to the deadlines."""
    launched: list[float] = []
    index = 0
    while index < schedule.total:
        await trio.sleep_until(schedule.deadline(index))
        due = max(schedule.due_by(clock()), index + 1)  # this one, and any fallen behind
        while index < due:
            launched.append(clock())
            result = launch(index)
            if result is not None:
                await result
            index += 1
    return launched
