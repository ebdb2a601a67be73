"""`idle`: helper "baseline"'s idle-connections measurement (`benchmarks.idle.run_idle`),
run as a scenario of the suite when that module exists."""

from __future__ import annotations

import importlib.util
from typing import Any

from .context import ScenarioContext


def idle_available() -> bool:
    return importlib.util.find_spec("benchmarks.idle") is not None


async def run_idle_scenario(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    if not idle_available():
        return {"idle": {"na": "benchmarks/idle.py is not there", "errors": []}}
    from ..idle import run_idle  # type: ignore[import-not-found,unused-ignore]

    connections = ctx.sizes.idle_connections
    ctx.progress.begin(f"idle {connections} connections", 1)
    meter = ctx.meter()
    meter.start()
    ws_url = f"ws://{ctx.ws.host}:{ctx.ws.port}{ctx.ws.path}"
    result: dict[str, Any] = await run_idle(ctx.http_url, ws_url, connections, ctx.server_pid)
    cpu = meter.stop()
    figures = {key: value for key, value in result.items()
               if isinstance(value, int | float | str) or key == "errors"}
    figures.setdefault("errors", [])
    figures.update(cpu)
    ctx.progress.end("done")
    return {"idle": figures}
