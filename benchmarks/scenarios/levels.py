"""`levels`: a load ladder after a published WebSocket stress guide. Per level: C
connections in groups of S subscribers per topic, M messages per connection (each topic
gets M messages, as bulk publishes of 50 interleaving the topics), so C x M deliveries.

Per level: connections/s and connect p99, messages published / planned (publishing stops
at the phase timeout) and messages/s, deliveries/s, p95/p99 of per-connection completion
time (first publish -> that connection had every message of its topic), delivered /
expected (expected: what the server accepted for each connection's topic), the server's
RSS with every connection open; then the degradation from the
first level run to the last in % (deliveries/s down, p99 up: positive is worse).

Levels need about C file descriptors here and in the server: the suite raises its
RLIMIT_NOFILE to the hard limit first (a started server inherits it) and skips, saying
why, any level that does not fit."""

from __future__ import annotations

import math
import resource
from collections import Counter
from dataclasses import dataclass
from typing import Any

import trio

from ..lean import HttpClient
from ..process import rss_bytes
from ..publisher import bulk_bodies, publish_sequentially
from ..stats import latency_summary, rate
from .context import ScenarioContext, delivery_figures, note
from .subscribers import check_complete, close_group, connect_group, delivery_wait, read_until

# Descriptors needed besides the connections: publishers, the epoll set, stdio, logs.
FD_MARGIN = 200
MB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Level:
    name: str
    connections: int
    subscribers_per_topic: int


LEVELS = (
    Level("minimal", 10, 5),
    Level("light", 100, 20),
    Level("low", 500, 50),
    Level("medium", 1000, 100),
    Level("high", 5000, 200),
    Level("10k", 10000, 500),
)
LEVEL_NAMES = tuple(level.name for level in LEVELS)


def levels_up_to(name: str) -> tuple[Level, ...]:
    """The ladder up to and including level `name` ("max": all of it)."""
    if name == "max":
        return LEVELS
    index = LEVEL_NAMES.index(name)
    return LEVELS[: index + 1]


def fd_shortfall(connections: int) -> str | None:
    """Why a level cannot run with our descriptor limit, or None if it can."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = connections + FD_MARGIN
    if soft != resource.RLIM_INFINITY and soft < need:
        return (f"needs ~{need} open files, RLIMIT_NOFILE is {soft} "
                f"(raise the hard limit: ulimit -Hn)")
    return None


def degradation(first: float | None, last: float | None, higher_is_better: bool
                ) -> float | None:
    """How much worse `last` is than `first`, in % (positive = worse)."""
    if first is None or last is None or first == 0:
        return None
    change = 100.0 * (last - first) / first
    return -change if higher_is_better else change


async def run_level(ctx: ScenarioContext, run: int, level: Level) -> dict[str, Any]:
    messages = ctx.sizes.level_messages
    topics = math.ceil(level.connections / level.subscribers_per_topic)
    names = [ctx.topic("levels", run, level.name, f"t{t}") for t in range(topics)]
    paths = [ctx.ws_path(names[i % topics]) for i in range(level.connections)]
    ctx.progress.begin(f"levels {level.name}: {level.connections} connections x {messages}",
                       level.connections)
    meter = ctx.meter()
    meter.start()
    group = await connect_group(ctx, paths)
    errors = list(group.errors)
    rss = rss_bytes(ctx.server_pid)
    plan = [(names[t], seq) for seq in range(messages) for t in range(topics)]
    bodies, sizes = bulk_bodies(plan, 50)
    client = HttpClient(ctx.http.host, ctx.http.port)
    async with trio.open_nursery() as nursery:
        readers = trio.CancelScope()

        async def read() -> None:
            with readers:
                await read_until(group.ready, messages, ctx.timeout * 4, errors)

        nursery.start_soon(read)
        out = await publish_sequentially(client, b"/v1/publish", bodies, sizes, ctx.timeout)
        readers.deadline = trio.current_time() + delivery_wait(
            ctx, level.connections * messages)
    client.close()
    cpu = meter.stop()
    errors += out.errors
    t0 = out.t_first
    done = [sub.t_last - t0 for sub in group.ready if sub.received and t0 is not None]
    span = max(done, default=None)
    # Expected: what the server accepted for each connection's topic (publishing stops at
    # the phase timeout; what was never accepted is counted apart, as `unpublished`).
    accepted_per_topic = Counter(topic for topic, _ in plan[: out.accepted])
    topic_of_path = {path: names[i % topics] for i, path in enumerate(paths)}
    expected = 0
    incomplete = []
    for sub in group.ready:
        wanted = accepted_per_topic[topic_of_path[sub.path]]
        expected += wanted
        incomplete += check_complete([sub], wanted)
    delivered = sum(min(sub.received, accepted_per_topic[topic_of_path[sub.path]])
                    for sub in group.ready)
    if incomplete:
        note(errors, f"{len(incomplete)} connections incomplete, e.g. {incomplete[:2]}")
    await close_group(group.subscribers)
    connect = latency_summary(group.latencies, prefix="connect_")
    figures = {
        "connections": level.connections,
        "topics": topics,
        "requests": level.connections,
        "failures": group.failures + out.failures + len(incomplete),
        **latency_summary(done),
        "rate_per_s": rate(delivered, span),
        "connect_per_s": rate(len(group.ready), group.seconds),
        "connect_p99_ms": connect["connect_p99_ms"],
        "planned": len(plan),
        "published": out.accepted,
        "messages_per_s": rate(out.accepted, (out.t_last or 0) - (t0 or 0) or None),
        "deliveries_per_s": rate(delivered, span),
        **delivery_figures(delivered, expected),
        "unpublished": len(plan) - out.accepted,
        "rss_mb": None if rss is None else rss / MB,
        **cpu,
        "errors": errors,
    }
    ctx.progress.end(f"{figures['connect_per_s'] or 0:.0f} conn/s, "
                     f"{figures['deliveries_per_s'] or 0:.0f} deliveries/s, "
                     f"{delivered}/{figures['expected']}")
    return figures


async def run_levels(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {}
    for level in levels_up_to(ctx.sizes.max_level):
        reason = fd_shortfall(level.connections)
        if reason is not None:
            ctx.progress.note(f"levels: skipping {level.name} ({level.connections} "
                              f"connections): {reason}")
            continue
        cases[f"levels.{level.name}"] = await run_level(ctx, run, level)
        await trio.sleep(0.5)  # let the server finish tearing the connections down
    ran = list(cases.values())
    if len(ran) >= 2:
        first, last = ran[0], ran[-1]
        cases["levels.summary"] = {
            "levels": len(ran),
            "deliveries_degradation_pct": degradation(
                first["deliveries_per_s"], last["deliveries_per_s"], higher_is_better=True),
            "p99_degradation_pct": degradation(first["p99_ms"], last["p99_ms"], False),
            "connect_degradation_pct": degradation(
                first["connect_per_s"], last["connect_per_s"], higher_is_better=True),
            "errors": [],
        }
    return cases
