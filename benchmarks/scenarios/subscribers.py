"""Lean WebSocket subscribers in bulk: connect many (each connect + subscribe + ping
barrier timed), read them all from one task, check every one got every offset, close them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import trio

from ..lean import SubscriberGroup, WsSubscriber
from .context import NET_ERRORS, ScenarioContext, note

# Connections opened at once: enough to measure the server's accept path, not so many that
# the listen backlog overflows into SYN retries (which measure the kernel's 1 s back-off).
CONNECT_CONCURRENCY = 500
CLOSE_TIMEOUT = 5.0


@dataclass
class ConnectedGroup:
    """Subscribers that completed connect + subscribe + ping, and what it took."""

    subscribers: list[WsSubscriber]
    ready: list[WsSubscriber] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)  # seconds, per ready subscriber
    seconds: float = 0.0  # first connect started -> last ready
    errors: list[str] = field(default_factory=list)
    failures: int = 0


async def connect_group(ctx: ScenarioContext, paths: list[str],
                        concurrency: int = CONNECT_CONCURRENCY) -> ConnectedGroup:
    """Connect one lean subscriber per path (`?topic=...` subscribes on connect); a ping's
    `ok` is the barrier that its subscriptions are in place. Bounded by `ctx.timeout`."""
    group = ConnectedGroup([WsSubscriber(ctx.ws.host, ctx.ws.port, p) for p in paths])
    limiter = trio.CapacityLimiter(concurrency)

    async def connect(sub: WsSubscriber) -> None:
        async with limiter:
            started = time.perf_counter()
            try:
                await sub.connect()
                await sub.ping(1)
            except NET_ERRORS as exc:
                group.failures += 1
                note(group.errors, f"subscriber connect: {exc!r}")
                return
            group.latencies.append(time.perf_counter() - started)
            group.ready.append(sub)
            ctx.progress.advance()

    started = time.perf_counter()
    with trio.move_on_after(ctx.timeout) as scope:
        async with trio.open_nursery() as nursery:
            for sub in group.subscribers:
                nursery.start_soon(connect, sub)
    group.seconds = time.perf_counter() - started
    if scope.cancelled_caught:
        missing = len(group.subscribers) - len(group.ready) - group.failures
        group.failures += missing
        note(group.errors, f"{missing} subscribers not ready within {ctx.timeout}s")
    return group


async def read_until(subscribers: list[WsSubscriber], count: int, seconds: float,
                     errors: list[str]) -> bool:
    """Read every subscriber until it has `count` messages, for at most `seconds`;
    True if all got there."""
    with trio.move_on_after(seconds) as scope:
        try:
            await SubscriberGroup(subscribers).read_messages(count)
        except NET_ERRORS as exc:
            note(errors, f"subscriber read: {exc!r}")
            return False
    return not scope.cancelled_caught


def check_complete(subscribers: list[WsSubscriber], messages: int, first: int = 0
                   ) -> list[dict[str, Any]]:
    """Subscribers that did not get exactly offsets first..first+messages-1 in order."""
    incomplete = []
    for index, sub in enumerate(subscribers):
        if (sub.received == messages and sub.out_of_order == 0 and not sub.others_seen
                and (messages == 0 or (sub.first_offset == first
                                       and sub.last_offset == first + messages - 1))):
            continue
        incomplete.append({
            "subscriber": index, "received": sub.received, "first_offset": sub.first_offset,
            "last_offset": sub.last_offset, "out_of_order": sub.out_of_order,
            "close_code": sub.close_code, "eof": sub.eof, "other_frames": sub.others[:2],
        })
    return incomplete


async def close_group(subscribers: list[WsSubscriber]) -> None:
    """Close politely within a bound, then drop whatever is left."""
    with trio.move_on_after(CLOSE_TIMEOUT):
        async with trio.open_nursery() as nursery:
            for sub in subscribers:
                if sub.sock is not None:
                    nursery.start_soon(sub.close)
    for sub in subscribers:
        sub.abort()
