"""`connect`: WebSocket connect + subscribe rate and latency for 50 and 1,000 clients
opening at once (latency: TCP connect -> handshake -> `?topic=` subscription -> the `ok`
of a ping, per client)."""

from __future__ import annotations

from typing import Any

from ..stats import latency_summary, rate
from .context import ScenarioContext
from .subscribers import close_group, connect_group


async def run_connect(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {}
    for clients in ctx.sizes.connect_clients:
        topic = ctx.topic("connect", run, clients)
        paths = [ctx.ws_path(topic, f"c{i}") for i in range(clients)]
        ctx.progress.begin(f"connect {clients} clients", clients)
        meter = ctx.meter()
        meter.start()
        group = await connect_group(ctx, paths, concurrency=clients)
        cpu = meter.stop()
        await close_group(group.subscribers)
        figures = {
            "requests": clients,
            "failures": group.failures,
            **latency_summary(group.latencies),
            "rate_per_s": rate(len(group.ready), group.seconds),
            **cpu,
            "errors": group.errors,
        }
        ctx.progress.end(f"{figures['rate_per_s'] or 0:.0f} conn/s")
        cases[f"connect-{clients}"] = figures
    return cases
