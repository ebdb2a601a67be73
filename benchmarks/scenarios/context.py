"""What every scenario is given: where the server is, what it can do, how large to run,
how long anything may take, and where to report progress."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ..lean import Endpoint, ProtocolError
from ..process import CpuMeter
from ..progress import ProgressReporter

# Errors a network call of the lean clients may raise; scenarios count them as failures.
NET_ERRORS = (OSError, ProtocolError, ValueError, KeyError)
# Error strings kept per case (the count is always complete).
MAX_ERRORS = 10
# What each target can do beyond the slice every target speaks (exact topics, single and
# bulk JSON publish, `?topic=` subscribe, ping/subscribe/publish ops, healthz).
CAPABILITIES: dict[str, frozenset[str]] = {
    "broker": frozenset({"listing", "presence"}),
    "fastapi": frozenset(),
}


@dataclass(frozen=True)
class Sizes:
    """How large each scenario runs; `QUICK` keeps the whole suite under a minute."""

    single_messages: int = 5000
    wrk_seconds: float = 5.0  # `wrk` drives publishes this long
    ws_publish_messages: int = 5000  # sequential publishes on one WebSocket connection
    ws_window_messages: int = 20000  # then the same with 64 in flight (pipelined)
    bulk_batches: int = 200
    bulk_size: int = 50
    concurrent_publishers: int = 20
    concurrent_messages: int = 250  # per publisher
    connect_clients: tuple[int, ...] = (50, 1000)
    e2e_subscribers: int = 20
    e2e_messages: int = 500
    e2e_rate: float = 100.0  # messages/s: light load, latency is the figure
    broadcast: tuple[int, int] = (30, 50)  # subscribers, messages
    fanout: tuple[int, int] = (1000, 100)
    sustained_subscribers: int = 100
    sustained_seconds: float = 5.0
    level_messages: int = 100  # per connection
    max_level: str = "max"
    mixed_rate: float = 100.0
    mixed_seconds: float = 30.0
    mixed_groups: int = 10
    idle_connections: int = 10000


QUICK = Sizes(
    single_messages=300, wrk_seconds=1.0, ws_publish_messages=300, ws_window_messages=300,
    bulk_batches=20,
    concurrent_messages=20,
    connect_clients=(50, 200),
    e2e_messages=50, fanout=(200, 20), sustained_seconds=1.0, level_messages=10,
    max_level="medium", mixed_seconds=5.0, idle_connections=200,
)


@dataclass
class ScenarioContext:
    """One target's server, as the scenarios of one suite invocation see it."""

    target: str
    http: Endpoint
    ws: Endpoint
    server_pid: int | None
    sizes: Sizes
    progress: ProgressReporter
    timeout: float = 30.0  # bound on each phase: connecting, publishing
    delivery_timeout: float = 5.0  # how long subscribers wait after the last publish
    capabilities: frozenset[str] = frozenset()
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def topic(self, kind: str, run: int, *more: object) -> str:
        """A fresh topic name per scenario, run and target (no history carried over)."""
        suffix = "".join(f".{part}" for part in more)
        return f"bench.{kind}.{self.tag}.r{run}{suffix}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http.host}:{self.http.port}"

    def ws_path(self, topic: str, client: str | None = None) -> str:
        sep = "&" if "?" in self.ws.path else "?"
        path = f"{self.ws.path}{sep}topic={topic}"
        return path if client is None else f"{path}&client={client}"

    def meter(self) -> CpuMeter:
        return CpuMeter(self.server_pid)

    def can(self, capability: str) -> bool:
        return capability in self.capabilities


def note(errors: list[str], what: str) -> None:
    """Keep the first few error strings of a case."""
    if len(errors) < MAX_ERRORS:
        errors.append(what)


def delivery_figures(delivered: int, expected: int) -> dict[str, Any]:
    """delivered, expected, lost and delivered % as every fan-out case reports them."""
    return {
        "delivered": delivered,
        "expected": expected,
        "lost": expected - delivered,
        "delivered_pct": 100.0 * delivered / expected if expected else None,
    }
