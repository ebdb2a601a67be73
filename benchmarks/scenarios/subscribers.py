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
# A subscriber's first receive buffer, and the room below which it grows (it moves a partial
# frame to the front first): a receive takes whatever fits.
COMPACT_BUFFER = 16 * 1024
COMPACT_MIN_ROOM = 4096
# Deliveries per second below which waiting for a large fan-out gives up (1M -> 100 s).
MIN_DELIVERY_RATE = 10_000.0
# Connections per second below which connecting a large group gives up (10,000 -> 200 s).
MIN_CONNECT_RATE = 50.0


class CompactSubscriber(WsSubscriber):
    """A `WsSubscriber` whose receive buffer starts small and grows only as frames need:
    the default 256 KiB each would be 2.5 GB for the 10,000-connection level."""

    def __init__(self, host: str, port: int, path: str) -> None:
        super().__init__(host, port, path)
        self._buf = bytearray(COMPACT_BUFFER)

    def _compact(self) -> None:
        buf, pos, end = self._buf, self._pos, self._end
        if pos:
            buf[: end - pos] = buf[pos:end]
            self._pos, self._end = 0, end - pos
        if len(buf) - self._end < COMPACT_MIN_ROOM:
            buf.extend(bytes(len(buf)))


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
    `ok` is the barrier that its subscriptions are in place. Bounded by `ctx.timeout`, or
    for many connections by `MIN_CONNECT_RATE` (a slow server shows as failures, late)."""
    group = ConnectedGroup([CompactSubscriber(ctx.ws.host, ctx.ws.port, p) for p in paths])
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
    timeout = max(ctx.timeout, len(paths) / MIN_CONNECT_RATE)
    with trio.move_on_after(timeout) as scope:
        async with trio.open_nursery() as nursery:
            for sub in group.subscribers:
                nursery.start_soon(connect, sub)
    group.seconds = time.perf_counter() - started
    if scope.cancelled_caught:
        missing = len(group.subscribers) - len(group.ready) - group.failures
        group.failures += missing
        note(group.errors, f"{missing} subscribers not ready within {timeout:.0f}s")
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


def delivery_wait(ctx: ScenarioContext, expected: int) -> float:
    """How long to wait for deliveries after the last publish: the delivery timeout, or
    longer for a large fan-out (a slow server shows as a low rate, a stuck one as loss)."""
    return max(ctx.delivery_timeout, expected / MIN_DELIVERY_RATE)


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
