"""HTTP publishing: `single` (sequential publishes on one keep-alive connection), `bulk`
(batches of 50 in `POST /v1/publish`) and `concurrent` (20 publishers, each on its own
keep-alive connection). No subscribers, so the publishers run in the suite's process."""

from __future__ import annotations

from typing import Any

import orjson
import trio

from ..lean import HttpClient
from ..publisher import PublishOutcome, bulk_bodies, publish_sequentially, single_bodies
from ..stats import latency_summary, rate
from .context import NET_ERRORS, ScenarioContext, note

WARMUP_REQUESTS = 200  # connection set-up and first-call code paths; not measured


async def _warm_up(client: HttpClient, ctx: ScenarioContext, errors: list[str]) -> None:
    path = ctx.topic("warmup", 0).encode()
    with trio.move_on_after(ctx.timeout):
        for _ in range(WARMUP_REQUESTS):
            try:
                await client.request(b"POST", b"/v1/topics/" + path, b'{"warm":true}')
            except NET_ERRORS as exc:
                note(errors, f"warm-up: {exc!r}")
                return


def _last_offset(answer: bytes) -> int | None:
    try:
        body = orjson.loads(answer)
        return (body["results"][-1] if "results" in body else body)["offset"]
    except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
        return None


def _figures(out: PublishOutcome, messages: int, cpu: dict[str, Any],
             extra_errors: list[str]) -> dict[str, Any]:
    span = None if out.t_first is None or out.t_last is None else out.t_last - out.t_first
    return {
        "requests": out.requests,
        "messages": messages,
        "accepted": out.accepted,
        "failures": out.failures,
        **latency_summary(out.latencies),
        "rate_per_s": rate(out.accepted, span),
        "requests_per_s": rate(len(out.latencies), span),
        **cpu,
        "errors": extra_errors + out.errors,
    }


async def run_single(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    count = ctx.sizes.single_messages
    topic = ctx.topic("single", run)
    client = HttpClient(ctx.http.host, ctx.http.port)
    errors: list[str] = []
    ctx.progress.begin(f"single {count} publishes", count)
    await _warm_up(client, ctx, errors)
    meter = ctx.meter()
    meter.start()
    out = await publish_sequentially(client, f"/v1/topics/{topic}".encode(),
                                     single_bodies(count), None, ctx.timeout)
    cpu = meter.stop()
    client.close()
    ctx.progress.advance(count)
    if out.accepted == count and _last_offset(out.last_answer) != count - 1:
        note(errors, f"last offset {_last_offset(out.last_answer)}, expected {count - 1}")
    figures = _figures(out, count, cpu, errors)
    ctx.progress.end(f"{figures['rate_per_s'] or 0:.0f} msg/s")
    return {"single": figures}


async def run_bulk(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    size, batches = ctx.sizes.bulk_size, ctx.sizes.bulk_batches
    topic = ctx.topic("bulk", run)
    bodies, sizes = bulk_bodies([(topic, i) for i in range(size * batches)], size)
    client = HttpClient(ctx.http.host, ctx.http.port)
    errors: list[str] = []
    ctx.progress.begin(f"bulk {batches} x {size}", batches)
    await _warm_up(client, ctx, errors)
    meter = ctx.meter()
    meter.start()
    out = await publish_sequentially(client, b"/v1/publish", bodies, sizes, ctx.timeout)
    cpu = meter.stop()
    client.close()
    ctx.progress.advance(batches)
    total = size * batches
    if out.accepted == total and _last_offset(out.last_answer) != total - 1:
        note(errors, f"last offset {_last_offset(out.last_answer)}, expected {total - 1}")
    figures = _figures(out, total, cpu, errors)  # latency is per batch
    ctx.progress.end(f"{figures['rate_per_s'] or 0:.0f} msg/s")
    return {"bulk": figures}


async def run_concurrent(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    publishers, each = ctx.sizes.concurrent_publishers, ctx.sizes.concurrent_messages
    clients = [HttpClient(ctx.http.host, ctx.http.port) for _ in range(publishers)]
    outcomes = [PublishOutcome() for _ in range(publishers)]
    errors: list[str] = []
    ctx.progress.begin(f"concurrent {publishers} x {each}", publishers)
    with trio.move_on_after(ctx.timeout):
        async with trio.open_nursery() as nursery:  # connect first: not measured
            for client in clients:
                nursery.start_soon(client.connect)

    async def publish(index: int) -> None:
        topic = ctx.topic("concurrent", run, f"p{index}")
        await publish_sequentially(clients[index], f"/v1/topics/{topic}".encode(),
                                   single_bodies(each), None, ctx.timeout, outcomes[index])
        ctx.progress.advance()

    meter = ctx.meter()
    meter.start()
    async with trio.open_nursery() as nursery:
        for index in range(publishers):
            nursery.start_soon(publish, index)
    cpu = meter.stop()
    for client in clients:
        client.close()
    merged = PublishOutcome()
    for out in outcomes:
        merged.accepted += out.accepted
        merged.failures += out.failures
        merged.requests += out.requests
        merged.latencies += out.latencies
        merged.errors += out.errors[: max(0, 10 - len(merged.errors))]
    starts = [o.t_first for o in outcomes if o.t_first is not None]
    ends = [o.t_last for o in outcomes if o.t_last is not None]
    merged.t_first = min(starts, default=None)
    merged.t_last = max(ends, default=None)
    figures = _figures(merged, publishers * each, cpu, errors)
    figures["publishers"] = publishers
    ctx.progress.end(f"{figures['rate_per_s'] or 0:.0f} msg/s")
    return {"concurrent": figures}
