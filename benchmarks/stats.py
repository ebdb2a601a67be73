"""Pure arithmetic of benchmark figures: percentiles, a Locust-like latency summary,
medians over runs, and which direction of change is better for a figure.

No I/O here, so every piece is unit-tested with plain lists.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping
from typing import Any, Literal

Direction = Literal["higher", "lower"]

# Figures that are totals over runs rather than medians: a loss in any run must show.
TOTALLED = ("failures", "lost", "errors_count")


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_summary(seconds: Iterable[float], prefix: str = "") -> dict[str, float | None]:
    """min/avg/p50/p95/p99/max in milliseconds of latencies given in seconds."""
    values = sorted(seconds)
    ms: dict[str, float | None] = {}
    for name, value in (
        ("min", values[0] if values else None),
        ("avg", statistics.fmean(values) if values else None),
        ("p50", percentile(values, 50)),
        ("p95", percentile(values, 95)),
        ("p99", percentile(values, 99)),
        ("max", values[-1] if values else None),
    ):
        ms[f"{prefix}{name}_ms"] = None if value is None else value * 1000.0
    return ms


def rate(count: float, seconds: float | None) -> float | None:
    """count / seconds, None when there was no time to divide by."""
    return count / seconds if seconds and seconds > 0 else None


def median_of(runs: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Per figure: the median over runs of every numeric figure present in all runs;
    failures and losses are summed instead, so one bad run is never hidden by the median."""
    if not runs:
        return {}
    out: dict[str, Any] = {}
    for key in runs[0]:
        if key == "run":  # which run a figure came from, not a figure
            continue
        values = [r.get(key) for r in runs]
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            continue
        numbers = [float(v) for v in values if v is not None]
        if any(key == t or key.endswith("." + t) for t in TOTALLED):
            out[key] = sum(numbers)
        else:
            out[key] = statistics.median(numbers)
    return out


def direction(figure: str) -> Direction | None:
    """Which way is better for a figure named by convention, None for plain facts (counts,
    sizes, CPU shares) that a comparison reports but never calls a regression."""
    name = figure.rsplit(".", 1)[-1]
    if name.startswith(("target_", "achieved_")) or name == "rate_accuracy_pct":
        return None  # a schedule's accuracy: closer to the target is better, not higher
    if name.endswith("_per_s") or name in ("delivered_pct", "success_pct"):
        return "higher"
    if "cpu" in name:
        return None
    if name.endswith(("_ms", "degradation_pct", "rss_mb", "per_connection_kib")) or name in (
            "failures", "lost", "errors_count"):
        return "lower"
    return None


def is_regression(figure: str, old: float, new: float, tolerance: float = 0.10) -> bool:
    """Worse by more than `tolerance` (a fraction; for `_pct` figures within +-100,
    that many hundred percentage points) in the figure's good direction."""
    way = direction(figure)
    if way is None:
        return False
    if figure.endswith("_pct") and max(abs(old), abs(new)) <= 100:
        # A percentage (delivered %, a small degradation) is compared in points: relative
        # to itself, -26% -> -21% would read as 19% worse, and 0% -> 1% as infinitely.
        # Past 100 it is a multiple (p99 at 10k connections vs minimal) and is relative.
        change = (new - old) / 100
    elif old == 0:
        return way == "lower" and new > 0
    else:
        change = (new - old) / abs(old)
    return change < -tolerance if way == "higher" else change > tolerance
