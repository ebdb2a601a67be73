"""`connect`: WebSocket connect + subscribe rate and latency for 50 and 1,000 clients
opening at once (latency: TCP connect -> handshake -> `?topic=` subscription -> the `ok`
of a ping, per client).

The clients are `lean.Dialer`'s: one task drives them all through one epoll set, so the
generator's CPU per connection stays well under the server's and the rate is the
server's. Every handshake is checked (101 with the exact Sec-WebSocket-Accept) and every
ping must get its `ok`; anything else counts as a failure, with its reason.
"""

from __future__ import annotations

import time
from typing import Any

import trio

from ..lean import Dialer
from ..stats import latency_summary, rate
from .context import ScenarioContext, note

CLOSE_TIMEOUT = 5.0


async def run_connect(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    cases: dict[str, dict[str, Any]] = {}
    for clients in ctx.sizes.connect_clients:
        topic = ctx.topic("connect", run, clients)
        paths = [ctx.ws_path(topic, f"c{i}") for i in range(clients)]
        ctx.progress.begin(f"connect {clients} clients", clients)
        dialer = Dialer(ctx.ws.host, ctx.ws.port)
        errors: list[str] = []
        meter = ctx.meter()
        meter.start()
        started = time.perf_counter()
        with trio.move_on_after(ctx.timeout) as scope:
            await dialer.open(paths, ctx.progress.advance)
        cpu = meter.stop()
        ready = [dial for dial in dialer.dials if dial.ready]
        seconds = (max(d.ready_at for d in ready) - started) if ready else None
        for dial in dialer.dials:
            if dial.error is not None:
                note(errors, f"subscriber connect: {dial.error}")
        if scope.cancelled_caught:
            note(errors, f"{clients - len(ready)} clients not ready within {ctx.timeout:.0f}s")
        await dialer.close(CLOSE_TIMEOUT)
        figures = {
            "requests": clients,
            "failures": clients - len(ready),
            **latency_summary(dial.latency for dial in ready),
            "rate_per_s": rate(len(ready), seconds),
            **cpu,
            "errors": errors,
        }
        ctx.progress.end(f"{figures['rate_per_s'] or 0:.0f} conn/s")
        cases[f"connect-{clients}"] = figures
    return cases
