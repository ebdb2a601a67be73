"""`--compare OLD.json`: the ratio new/old of every median figure two result files share,
flagging each one worse by more than 10% in its good direction (latency: lower is better;
rates and delivered %: higher). Pure functions over two documents."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .results import medians
from .stats import direction, is_regression

TOLERANCE = 0.10


@dataclass(frozen=True, slots=True)
class Change:
    figure: str  # target/case.figure
    old: float
    new: float
    ratio: float | None  # new / old
    regression: bool


def compare(old: dict[str, Any], new: dict[str, Any], tolerance: float = TOLERANCE
            ) -> list[Change]:
    """Every figure present in both documents, in the new document's order."""
    before, after = medians(old), medians(new)
    changes = []
    for figure, value in after.items():
        if figure not in before:
            continue
        previous = before[figure]
        ratio = value / previous if previous else None
        changes.append(Change(figure, previous, value, ratio,
                              is_regression(figure, previous, value, tolerance)))
    return changes


def render(changes: list[Change]) -> str:
    """A plain table: figure, old, new, new/old, and WORSE where it regressed."""
    lines = [f"{'figure':<58} {'old':>12} {'new':>12} {'new/old':>8}"]
    for c in changes:
        ratio = "-" if c.ratio is None else f"{c.ratio:.3f}"
        way = direction(c.figure)
        mark = "  WORSE" if c.regression else ("" if way else "  (info)")
        lines.append(f"{c.figure:<58} {c.old:>12.4g} {c.new:>12.4g} {ratio:>8}{mark}")
    worse = [c for c in changes if c.regression]
    lines.append(f"{len(changes)} figures compared, {len(worse)} worse by more than "
                 f"{TOLERANCE:.0%}")
    return "\n".join(lines)
