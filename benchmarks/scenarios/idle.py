"""`idle`: helper "baseline"'s idle-connections measurement (`benchmarks.idle.run_idle`:
many idle subscribers, connect rate and latency, server RSS per connection, then one
message per topic that every connection must receive), run as a scenario of the suite."""

from __future__ import annotations

import importlib.util
from typing import Any

from .context import ScenarioContext, delivery_figures

# run_idle's figure names -> the suite's conventions (`*_ms`, `rate_per_s`, ...).
RENAMED = {
    "latency_p50_ms": "p50_ms", "latency_p95_ms": "p95_ms", "latency_p99_ms": "p99_ms",
    "latency_max_ms": "max_ms", "connect_per_s": "rate_per_s",
}


def idle_available() -> bool:
    return importlib.util.find_spec("benchmarks.idle") is not None


async def run_idle_scenario(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    if not idle_available():
        return {"idle": {"na": "benchmarks/idle.py is not there", "errors": []}}
    from ..idle import FileLimitTooLow, run_idle

    connections = ctx.sizes.idle_connections
    ctx.progress.begin(f"idle {connections} connections", 1)
    meter = ctx.meter()
    meter.start()
    ws_url = f"ws://{ctx.ws.host}:{ctx.ws.port}{ctx.ws.path}"
    try:
        result: dict[str, Any] = await run_idle(ctx.http_url, ws_url, connections,
                                                ctx.server_pid)
    except FileLimitTooLow as exc:
        ctx.progress.note(f"idle: skipped: {exc}")
        return {"idle": {"na": f"skipped: {exc}", "errors": []}}
    cpu = meter.stop()
    figures: dict[str, Any] = {"requests": connections}
    for key, value in result.items():
        if isinstance(value, int | float | str) or key == "errors":
            figures[RENAMED.get(key, key)] = value
    rss_kib = result.get("server_rss_per_connection_kib")
    if isinstance(rss_kib, int | float):
        figures["rss_per_connection_kib"] = figures.pop("server_rss_per_connection_kib")
    figures.update(delivery_figures(int(result.get("delivered") or 0),
                                    int(result.get("connected") or 0)))
    figures.setdefault("errors", [])
    figures.update(cpu)
    ctx.progress.end(f"{figures.get('rate_per_s') or 0:.0f} conn/s, "
                     f"{figures['delivered']}/{figures['expected']} alive")
    return {"idle": figures}
