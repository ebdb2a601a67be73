"""`MemoryBudget`: what the broker holds, against `max_memory`, looked at ten times a second.

What is counted is the broker's own accounting, not the process's RSS:

    used = retained history bytes of every topic          (`BrokerCounters.retained_bytes`)
         + payload bytes waiting in topics' mailboxes     (`BrokerCounters.mailbox_bytes`)
         + QUEUED_FACTOR x bytes queued in every outbox   (`Outbox.queued_bytes`)
         + TOPIC_BYTES per topic + CONNECTION_BYTES per connection (measured, below)

Why not RSS: CPython's allocator (pymalloc arenas, glibc's heap) rarely gives freed memory
back to the OS, so after a spike RSS stays at its high-water mark while the broker holds
nothing: a budget on RSS would refuse publishes for ever after the first burst. The
accounted figure falls as soon as what it counts is released (a shed subscriber, a
reaped topic), and it is what the broker can act on. RSS is shown beside it, for
information (`/readyz`, `process_resident_memory_bytes`).

From `SHED_AT` (75%) of the budget, the subscribers with the most bytes queued are shed
(closed with 4008, largest first) until what remains is under `SHED_TO` (65%); when `used`
reaches the budget all the same (history, queued publishes and topics cannot be shed; or
a flood outruns the shedding), the broker is *overloaded*: publishes and topic creations
are refused (`Overloaded`, 503) until it falls under `LOW_WATER` (90%; hysteresis, no
flapping at the edge). The publish path pays one attribute read (`overloaded`); the sums
are taken here, every `SAMPLE_SECONDS`, not per publish.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import trio

from .policies import CloseReason

log = logging.getLogger("broker.memory")

# How often usage is summed: reaction time against CPU (a look walks every connection:
# ~1 ms for 10,000, so ~1% of a core at this rate).
SAMPLE_SECONDS = 0.1
# ... and from where shedding starts (`SHED_AT`): what arrives between two looks passes the
# budget unseen (at 250 MB/s of publishes, 2.5 MB in 10 ms), so look often near it.
NEAR_SAMPLE_SECONDS = 0.01
# Overloaded (publishes refused) from the budget down to this fraction of it.
LOW_WATER = 0.9
# From this fraction of the budget the largest queues are shed, down to `SHED_TO`: early
# enough that a flood is shed before it reaches the budget, unless it brings more than
# the headroom between two looks (and what shed subscribers still hold, see `sample`).
SHED_AT = 0.75
SHED_TO = 0.65
# What one idle topic costs (its actor's task, mailbox, history, directory entry), with a
# margin: 4.8 KB of RSS per topic over 10,000 topics made by HTTP publishes, 4.6 KB traced
# by tracemalloc (`tests/broker/test_memory_budget.py` keeps it under this).
TOPIC_BYTES = 6 * 1024
# What one idle WebSocket connection costs, with a margin, on top of the bytes its outbox
# queues: 6.4 KB of RSS per connection over 1,000 subscribed connections to a broker
# process (`python -m benchmarks.idle` found ~7 KiB before #14).
CONNECTION_BYTES = 8 * 1024
# A frame queued for a subscriber pins its message, payload included, once history has
# let go of it: counted as the frame twice (a JSON or text payload is about its frame's
# size). Measured: 8 stalled subscribers, one topic each, flooded with 256 KiB text
# messages (history 1) grew RSS by 2.0 x the sum of their `queued_bytes`. A frame shared
# by many subscribers (fan-out) is counted for each: the tally errs high there, so slow
# subscribers of a busy topic are shed early rather than late.
QUEUED_FACTOR = 2
# When `used` has fallen by this fraction of the budget since its high point, the C heap
# is trimmed (`give_back_memory`): RSS follows what the broker holds, not its past peak.
TRIM_FRACTION = 0.25
# A subscriber with less than this queued is keeping up (or nearly): never shed.
SHED_FLOOR_BYTES = 64 * 1024
# The default budget: this fraction of the machine's memory (or of the cgroup's limit).
DEFAULT_FRACTION = 0.5


MEMINFO = Path("/proc/meminfo")
# cgroup v2, then v1: the container's memory limit ("max" or a huge number: none).
CGROUP_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
)


def machine_memory(
    meminfo: Path = MEMINFO, cgroup_limits: tuple[Path, ...] = CGROUP_LIMITS
) -> int:
    """Bytes of memory this process may use: MemTotal, or the cgroup's limit if lower;
    0 if neither can be read (then there is no default budget)."""
    total = 0
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                total = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    for limit_file in cgroup_limits:
        try:
            limit = int(limit_file.read_text().strip())  # "max" raises: no limit
        except (OSError, ValueError):
            continue
        if 0 < limit < (total or limit + 1):
            total = limit
        break
    return total


def default_max_memory() -> int:
    """`max_memory`'s default: half of `machine_memory()`, read when settings are built."""
    return int(machine_memory() * DEFAULT_FRACTION)


def _malloc_trim() -> Callable[[], object] | None:
    """glibc's `malloc_trim(0)`, or None where there is none (musl, macOS)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return lambda: trim(0)


_TRIM = _malloc_trim()


def give_back_memory() -> None:
    """Return the C heap's free pages to the OS (glibc keeps them otherwise: large payloads
    come from its heap once it has freed one, and freed heap memory stays resident)."""
    if _TRIM is not None:
        _TRIM()


def process_rss() -> int:
    """This process's resident memory in bytes (/proc/self/statm; 0 where there is none)."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Sheddable(Protocol):
    """What shedding needs of a subscriber (`broker.connection.Subscriber`)."""

    @property
    def queued_bytes(self) -> int: ...

    @property
    def evicted(self) -> bool: ...

    def evict(self, reason: CloseReason) -> None: ...


@dataclass(frozen=True, slots=True)
class MemoryFigures:
    """What the broker holds now, by kind, as its source reports it."""

    retained: int = 0  # history bytes of every topic
    mailboxes: int = 0  # payload bytes waiting in topic mailboxes
    queued: int = 0  # bytes queued in connections' outboxes
    topics: int = 0
    connections: int = 0

    @property
    def used(self) -> int:
        return (
            self.retained + self.mailboxes + QUEUED_FACTOR * self.queued
            + self.topics * TOPIC_BYTES + self.connections * CONNECTION_BYTES
        )


@dataclass(frozen=True, slots=True)
class MemoryStatistics:
    """The budget's last look: figures, verdict, and what it has done so far."""

    budget: int  # 0: no budget
    used: int
    releasing: int  # of `used`: what shed subscribers, still closing, hold
    figures: MemoryFigures
    overloaded: bool
    shed: int  # subscribers closed to get under the budget, since start
    refused: int  # publishes and topic creations refused while overloaded, since start
    rss: int  # the process's resident memory, for information

    def view(self) -> dict[str, int | bool]:
        """The figures as `/readyz` shows them."""
        f = self.figures
        return {
            "budget_bytes": self.budget, "used_bytes": self.used,
            "releasing_bytes": self.releasing, "rss_bytes": self.rss,
            "retained_bytes": f.retained, "mailbox_bytes": f.mailboxes,
            "outbox_bytes": f.queued, "topics": f.topics, "connections": f.connections,
            "shed": self.shed, "refused": self.refused,
        }


class MemoryBudget:
    """See the module docstring. `overloaded` is read by the publish path; `sample` (run
    by `run` every `SAMPLE_SECONDS`, or called directly) updates it and sheds."""

    def __init__(
        self,
        budget: int,
        measure: Callable[[], MemoryFigures],
        subscribers: Callable[[], Iterable[Sheddable]],
    ) -> None:
        self.budget = budget
        self._measure = measure
        self._subscribers = subscribers
        self.overloaded = False
        self.shed = 0
        self.refused = 0
        # Bytes in `used` held by subscribers shed and still closing, at the last look.
        self.releasing = 0
        self._last = MemoryFigures()
        self._high = 0  # most `used` seen since the C heap was last trimmed
        self._trim_due = False

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Look every `SAMPLE_SECONDS`, every `NEAR_SAMPLE_SECONDS` from where shedding
        starts, for ever (a budget of 0 never looks: no budget)."""
        task_status.started()
        if not self.budget:
            await trio.sleep_forever()
        while True:
            used = self.sample().used
            near = self.overloaded or used >= self.budget * SHED_AT
            await trio.sleep(NEAR_SAMPLE_SECONDS if near else SAMPLE_SECONDS)

    def sample(self) -> MemoryFigures:
        """Measure; from `SHED_AT` of the budget, shed the subscribers with the most queued
        until under `SHED_TO`; at the budget, overloaded until under `LOW_WATER`.

        A shed subscriber drops its queue at once, but what it still holds until its
        close is done (the rest of a begun frame; within `close_timeout`) counts as on its
        way out for the next shedding decision, so no one is shed for it. Shedding starts
        below the budget so that a flood slower than the headroom between two looks never
        reaches it. The refusal counts everything still held: it is the hard bound."""
        figures = self._last = self._measure()
        budget = self.budget
        if not budget:
            return figures
        used = figures.used
        self.releasing = self._shed(used, budget) if used >= budget * SHED_AT else 0
        if self._trim_due:
            self._trim_due = False
            give_back_memory()
        if used > self._high:
            self._high = used
        elif self._high - used >= budget * TRIM_FRACTION:
            # A large part of the budget was released: let the OS have it, at the next
            # look (what is uncounted now is freed by then: a retired topic's task ends).
            self._trim_due = True
            self._high = used
        if used >= budget:
            if not self.overloaded:
                log.warning(
                    "memory budget reached: %d of %d bytes held; refusing publishes",
                    used, budget,
                )
            self.overloaded = True
        elif used < budget * LOW_WATER and self.overloaded:
            self.overloaded = False
            log.warning("memory back under the budget: %d of %d bytes held", used, budget)
        return figures

    def _shed(self, used: int, budget: int) -> int:
        """Close subscribers, most queued first, until what is held without the queues
        on their way out is under `SHED_TO`; returns those bytes (shed now and before)."""
        releasing = 0
        candidates = []
        for subscriber in self._subscribers():
            queued = subscriber.queued_bytes
            if subscriber.evicted:
                releasing += QUEUED_FACTOR * queued
            elif queued >= SHED_FLOOR_BYTES:
                candidates.append((queued, subscriber))
        if used - releasing < budget * SHED_AT or not candidates:
            return releasing
        candidates.sort(key=lambda candidate: candidate[0], reverse=True)
        for queued, subscriber in candidates:
            subscriber.evict(CloseReason.SLOW_CONSUMER)
            self.shed += 1
            log.warning(
                "memory budget: shedding a subscriber with %d bytes queued (4008)", queued
            )
            releasing += QUEUED_FACTOR * queued
            if used - releasing < budget * SHED_TO:
                break
        return releasing

    def check_topic_room(self, max_topics: int) -> None:
        """Warn at start when `max_topics` topics would not fit in the budget: topic
        creation is then refused (overloaded) before `max_topics` is reached."""
        if self.budget and max_topics * TOPIC_BYTES > self.budget:
            log.warning(
                "max_topics (%d) x %d bytes per topic is more than max_memory (%d bytes): "
                "topic creation will be refused (overloaded) before max_topics is reached",
                max_topics, TOPIC_BYTES, self.budget,
            )

    def refusing(self) -> None:
        """Count one request refused because the broker is overloaded."""
        self.refused += 1

    def statistics(self) -> MemoryStatistics:
        """The last look's figures; with no budget (no looks), measured now (a scrape)."""
        figures = self._last if self.budget else self._measure()
        return MemoryStatistics(
            budget=self.budget, used=figures.used, releasing=self.releasing, figures=figures,
            overloaded=self.overloaded, shed=self.shed, refused=self.refused,
            rss=process_rss(),
        )


__all__ = [
    "CONNECTION_BYTES",
    "LOW_WATER",
    "NEAR_SAMPLE_SECONDS",
    "QUEUED_FACTOR",
    "SAMPLE_SECONDS",
    "SHED_AT",
    "SHED_FLOOR_BYTES",
    "SHED_TO",
    "TOPIC_BYTES",
    "TRIM_FRACTION",
    "MemoryBudget",
    "MemoryFigures",
    "MemoryStatistics",
    "Sheddable",
    "default_max_memory",
    "give_back_memory",
    "machine_memory",
    "process_rss",
]
