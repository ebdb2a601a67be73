"""The suite's scenarios, in the order `python -m benchmarks` runs them.

Each scenario is `async def run(ctx, run_number) -> {case name: figures}`; one scenario may
report several cases (`connect-50` and `connect-1000`, one per load level, ...). Figures
follow naming conventions that the report and `--compare` rely on: `*_ms` latencies,
`*_per_s` rates, `failures`, `delivered` / `expected` / `lost`, `gen_cpu_pct` /
`broker_cpu_pct`; non-numeric `errors` (the first few) and `na` (why a target cannot run
it) are kept as they are.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from .connect import run_connect
from .context import QUICK, ScenarioContext, Sizes
from .e2e import run_e2e
from .fanout import run_broadcast, run_fanout, run_sustained
from .idle import idle_available, run_idle_scenario
from .levels import LEVEL_NAMES, run_levels
from .mixed import run_mixed
from .publish import run_bulk, run_concurrent, run_single
from .wrk import run_wrk
from .ws_publish import run_ws_publish

Cases = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Scenario:
    name: str
    run: Callable[[ScenarioContext, int], Awaitable[Cases]]
    summary: str
    in_quick: bool = True
    # Its figures include the server's RSS: run it on a freshly started server (when the
    # suite starts the server), not on one whose memory high-water earlier cases set.
    fresh_server: bool = False


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("single", run_single, "sequential publishes on one keep-alive connection"),
    Scenario("ws-publish", run_ws_publish,
             "sequential publish ops on one held WebSocket connection"),
    Scenario("wrk", run_wrk, "HTTP publishes driven by wrk, 16 keep-alive connections"),
    Scenario("bulk", run_bulk, "publishes in batches of 50 (latency per batch)"),
    Scenario("concurrent", run_concurrent, "20 publishers, one keep-alive connection each"),
    Scenario("connect", run_connect, "WebSocket connect + subscribe, 50 and 1,000 at once"),
    Scenario("e2e", run_e2e, "publish-to-receive latency, 20 subscribers, light load"),
    Scenario("broadcast", run_broadcast, "30 subscribers x 50 single publishes"),
    Scenario("fanout", run_fanout, "1,000 subscribers x 100 messages: 2 bulk / 100 single"),
    Scenario("sustained", run_sustained, "100 subscribers, one publisher flat out"),
    Scenario("levels", run_levels, "load ladder 10 .. 10,000 connections",
             fresh_server=True),
    Scenario("mixed", run_mixed, "rate-limited register / enumerate / multicast"),
    Scenario("idle", run_idle_scenario, "idle WebSocket subscribers: RSS and connect rate",
             in_quick=False, fresh_server=True),
)}

__all__ = ["LEVEL_NAMES", "QUICK", "SCENARIOS", "Cases", "Scenario", "ScenarioContext",
           "Sizes", "idle_available"]
