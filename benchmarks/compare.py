"""`--compare OLD.json`: the ratio new/old of every median figure two result files share,
flagging each one worse by more than 10% in its good direction (latency: lower is better;
rates and delivered %: higher; percentages in points). Pure functions over two documents.

Only the broker's figures can regress: a baseline's code does not change between runs,
so its figures moving is the machine's drift. They are reported as such, and each broker
figure shows the same figure's ratio for the baseline beside it, to read its change by.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .results import medians
from .stats import direction, is_regression

TOLERANCE = 0.10
SUBJECT = "broker"  # the target whose figures can regress; the others are baselines


@dataclass(frozen=True, slots=True)
class Change:
    figure: str  # target/case.figure
    old: float
    new: float
    ratio: float | None  # new / old
    worse: bool  # by more than the tolerance, in its good direction
    drift: float | None = None  # a baseline's ratio for the same figure, beside a broker one

    @property
    def target(self) -> str:
        return self.figure.split("/", 1)[0]

    @property
    def regression(self) -> bool:
        """Worse, and a figure of the broker's (a baseline being worse is drift)."""
        return self.worse and self.target == SUBJECT


def compare(old: dict[str, Any], new: dict[str, Any], tolerance: float = TOLERANCE
            ) -> list[Change]:
    """Every figure present in both documents, in the new document's order."""
    before, after = medians(old), medians(new)
    shared = [f for f in after if f in before]
    ratios = {f: after[f] / before[f] if before[f] else None for f in shared}
    # A baseline's ratio per "case.figure" (the first baseline's, if there are several).
    drifts: dict[str, float | None] = {}
    for figure in shared:
        target, _, rest = figure.partition("/")
        if target != SUBJECT:
            drifts.setdefault(rest, ratios[figure])
    return [
        Change(figure, before[figure], after[figure], ratios[figure],
               is_regression(figure, before[figure], after[figure], tolerance),
               drifts.get(figure.partition("/")[2]) if figure.startswith(SUBJECT + "/")
               else None)
        for figure in shared
    ]


def render(changes: list[Change]) -> str:
    """A plain table: figure, old, new, new/old, the baseline's new/old for the same
    figure, and WORSE where the broker regressed (drift where a baseline moved)."""
    lines = [f"{'figure':<58} {'old':>12} {'new':>12} {'new/old':>8} {'baseline':>8}"]
    for c in changes:
        ratio = "-" if c.ratio is None else f"{c.ratio:.3f}"
        drift = "" if c.drift is None else f"{c.drift:.3f}"
        way = direction(c.figure)
        if c.regression:
            mark = "  WORSE"
        elif c.worse:
            mark = "  (drift)"
        else:
            mark = "" if way else "  (info)"
        lines.append(
            f"{c.figure:<58} {c.old:>12.4g} {c.new:>12.4g} {ratio:>8} {drift:>8}{mark}"
        )
    worse = [c for c in changes if c.regression]
    drifted = [c for c in changes if c.worse and not c.regression]
    lines.append(f"{len(changes)} figures compared, {len(worse)} worse by more than "
                 f"{TOLERANCE:.0%}; {len(drifted)} baseline figures moved as much "
                 "(machine drift: the baseline's code did not change)")
    return "\n".join(lines)
