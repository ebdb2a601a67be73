"""Running the suite against one or more targets: start (or reach) each target's server,
run every chosen scenario `runs` times interleaved (run 1 of each, then run 2, ...: noise
spreads evenly), collect the figures, stop the server, and list what went wrong.

Scenarios whose figures include the server's RSS (`Scenario.fresh_server`) get a freshly
started server each run: a process keeps its memory high-water mark, so on one that served
the cases before, RSS says more about those cases than about this one."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import trio

from .lean import Endpoint
from .process import BROKER_ARGV, BrokerProcess, proc_cpu_seconds, rss_bytes, stop_problems
from .progress import ProgressReporter
from .results import case_entry
from .scenarios import SCENARIOS, ScenarioContext, Sizes
from .scenarios.context import CAPABILITIES

# Pause between scenarios so the server finishes tearing down the last one's connections.
SETTLE_SECONDS = 0.5
# ...and then until it uses less than this share of a core over QUIET_WINDOW seconds.
QUIET_CPU_SHARE = 0.2
QUIET_WINDOW = 0.3
SETTLE_LIMIT = 30.0
MB = 1024 * 1024


def target_commands() -> dict[str, list[str]]:
    """Server argv per target: `benchmarks.baselines.TARGETS` when present, else the
    broker alone."""
    try:
        from .baselines import TARGETS  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        return {"broker": list(BROKER_ARGV)}
    return {name: list(argv) for name, argv in TARGETS.items()}


@dataclass
class SuiteOptions:
    scenarios: list[str]
    runs: int
    sizes: Sizes
    timeout: float
    delivery_timeout: float
    server_core: int | None
    url: str | None = None
    ws_url: str | None = None
    server_pid: int | None = None


async def run_scenarios(ctx: ScenarioContext, options: SuiteOptions,
                        restart: Callable[[], None] | None = None
                        ) -> dict[str, list[dict[str, Any]]]:
    """Every scenario `runs` times; a scenario that raises is recorded as failed, and the
    suite goes on with the next one. `restart` (when the suite owns the server) gives
    `fresh_server` scenarios a new server process first."""
    results: dict[str, list[dict[str, Any]]] = {}
    for run in range(1, options.runs + 1):
        for name in options.scenarios:
            if restart is not None and SCENARIOS[name].fresh_server:
                restart()
            ctx.progress.note(f"-- {ctx.target}: {name} (run {run}/{options.runs})")
            try:
                cases = await SCENARIOS[name].run(ctx, run)
            except Exception as exc:  # one scenario's crash must not lose the others
                cases = {name: {"failures": 1, "errors": [f"scenario crashed: {exc!r}"]}}
                ctx.progress.note(f"   {name} crashed: {exc!r}")
            for case, figures in cases.items():
                figures["run"] = run
                results.setdefault(case, []).append(figures)
            await settle(ctx.server_pid)
    return results


async def settle(pid: int | None) -> None:
    """Wait until the server is quiet (below `QUIET_CPU_SHARE` of a core over a short
    window), at most `SETTLE_LIMIT` seconds: closing 10,000 connections keeps it busy for
    seconds, which would land in the next scenario's figures. Without a pid: a pause."""
    await trio.sleep(SETTLE_SECONDS)
    if pid is None:
        return
    with trio.move_on_after(SETTLE_LIMIT):
        while True:
            before = proc_cpu_seconds(pid)
            await trio.sleep(QUIET_WINDOW)
            after = proc_cpu_seconds(pid)
            if before is None or after is None or after - before < QUIET_CPU_SHARE * QUIET_WINDOW:
                return


def problems_of(cases: dict[str, list[dict[str, Any]]], server: dict[str, Any]) -> list[str]:
    """Everything that should not happen: failures, losses, errors, an unclean exit."""
    problems = []
    for case, runs in cases.items():
        for figures in runs:
            where = f"{case} run {figures.get('run')}"
            if figures.get("failures"):
                problems.append(f"{where}: {figures['failures']} failures")
            if figures.get("lost"):
                problems.append(f"{where}: delivered {figures.get('delivered')}/"
                                f"{figures.get('expected')}")
            if figures.get("errors"):
                problems.append(f"{where}: {figures['errors'][:3]}")
    problems += stop_problems(server, "server")
    if server.get("stderr_problem_count"):
        problems.append(f"server stderr has {server['stderr_problem_count']} warning/error "
                        f"lines ({server.get('stderr_log')}), e.g. "
                        f"{server['stderr_problems'][:3]}")
    return problems


def run_target(target: str, argv: list[str] | None, options: SuiteOptions,
               progress: ProgressReporter) -> dict[str, Any]:
    """One target from start to stop: {"server": ..., "cases": ..., "problems": ...}."""
    server: BrokerProcess | None = None
    if options.url and options.ws_url:
        http_url, ws_url, pid = options.url, options.ws_url, options.server_pid
    else:
        assert argv is not None
        server = BrokerProcess(options.server_core, startup_timeout=30.0, argv=argv)
        http_url, ws_url, pid = server.http_url, server.ws_url, server.pid
        progress.note(f"{target} started in {server.startup_seconds:.2f}s: {http_url} "
                      f"{ws_url} (pid {pid}, cores {server.affinity()})")
    info: dict[str, Any] = {
        "pid": pid, "http_url": http_url, "ws_url": ws_url, "external": server is None,
        "argv": argv if server else None, "cores": server.affinity() if server else None,
    }
    ctx = ScenarioContext(
        target=target, http=Endpoint.parse(http_url), ws=Endpoint.parse(ws_url),
        server_pid=pid, sizes=options.sizes, progress=progress, timeout=options.timeout,
        delivery_timeout=options.delivery_timeout,
        capabilities=CAPABILITIES.get(target, frozenset()),
    )
    stopped: list[dict[str, Any]] = []  # servers stopped for a fresh one

    def restart() -> None:
        nonlocal server
        assert server is not None and argv is not None
        stopped.append(server.stop())
        server = BrokerProcess(options.server_core, startup_timeout=30.0, argv=argv)
        ctx.http, ctx.ws = Endpoint.parse(server.http_url), Endpoint.parse(server.ws_url)
        ctx.server_pid = server.pid
        progress.note(f"{target} restarted (a fresh process for RSS figures): pid "
                      f"{server.pid}, {server.startup_seconds:.2f}s")

    cases: dict[str, list[dict[str, Any]]] = {}
    try:
        cases = trio.run(run_scenarios, ctx, options, restart if server else None)
    finally:
        rss = rss_bytes(ctx.server_pid)
        info["rss_mb_at_end"] = None if rss is None else rss / MB
        if server is not None:
            info["shutdown"] = server.stop()
        info["restarted"] = stopped
    problems = problems_of(cases, info.get("shutdown", {}))
    for earlier in stopped:
        problems += problems_of({}, earlier)
    return {"server": info, "cases": {c: case_entry(r) for c, r in cases.items()},
            "problems": problems}


def pin_generator(core: int | None) -> None:
    if core is not None:
        os.sched_setaffinity(0, {core})
    print(f"load generator pid {os.getpid()} on cores {sorted(os.sched_getaffinity(0))}",
          file=sys.stderr)
