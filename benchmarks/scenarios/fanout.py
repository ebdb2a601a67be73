"""Fan-out: `broadcast` (30 subscribers x 50 single publishes), `fanout` (1,000 subscribers
x 100 messages, published as 2 bulk requests and, as `fanout-single`, as 100 single
publishes) and `sustained` (100 subscribers while one publisher publishes flat out).

Subscribers are lean readers (`benchmarks.lean`), all read from one task; single publishes
come from a publisher subprocess so they never wait behind the reading. deliveries/s =
delivered / (first publish sent -> last frame received by any subscriber). Every subscriber
must see offsets 0..M-1 in order; latency figures are per subscriber, from the first
publish to the moment it had every message (its completion time)."""

from __future__ import annotations

from typing import Any

import trio

from ..lean import HttpClient
from ..publisher import bulk_bodies, publish_from_subprocess, publish_sequentially
from ..stats import latency_summary, rate
from .context import ScenarioContext, delivery_figures, note
from .subscribers import check_complete, close_group, connect_group, delivery_wait, read_until

UNBOUNDED = 1 << 60  # a message count no subscriber reaches: read until told to stop


async def fan_out(ctx: ScenarioContext, run: int, kind: str, subscribers: int,
                  messages: int | None, bulk: int = 0, seconds: float | None = None
                  ) -> dict[str, Any]:
    """One fan-out case: connect, publish (bulk in-process when `bulk`, else singles from
    the publisher subprocess; flat out for `seconds` when given), read, check, close."""
    topic = ctx.topic(kind, run)
    label = f"{kind} {subscribers} subs x " + (f"{seconds:.0f}s" if seconds else f"{messages}")
    ctx.progress.begin(label, subscribers)
    group = await connect_group(ctx, [ctx.ws_path(topic) for _ in range(subscribers)])
    errors = list(group.errors)
    ready = group.ready
    publish: dict[str, Any] = {}
    meter = ctx.meter()
    meter.start()
    async with trio.open_nursery() as nursery:
        readers = trio.CancelScope()

        async def read() -> None:
            with readers:
                await read_until(ready, messages or UNBOUNDED, ctx.timeout * 4, errors)

        nursery.start_soon(read)
        if bulk:
            assert messages is not None
            bodies, sizes = bulk_bodies([(topic, i) for i in range(messages)], bulk)
            client = HttpClient(ctx.http.host, ctx.http.port)
            out = await publish_sequentially(client, b"/v1/publish", bodies, sizes, ctx.timeout)
            client.close()
            publish = {"accepted": out.accepted, "failures": out.failures,
                       "t_first": out.t_first, "errors": out.errors}
        else:
            try:
                publish = await publish_from_subprocess(
                    ctx.http_url, topic, messages or 1000, ctx.timeout, seconds)
            except (RuntimeError, trio.TooSlowError, OSError, ValueError) as exc:
                note(errors, f"publisher process: {exc!r}")
                publish = {"accepted": 0, "failures": messages or 0, "t_first": None}
        if seconds is not None:  # flat out: now we know how many to wait for
            readers.cancel()
        else:
            readers.deadline = trio.current_time() + delivery_wait(
                ctx, subscribers * (messages or 0))
    accepted = publish.get("accepted", 0)
    if seconds is not None:
        await read_until(ready, accepted, delivery_wait(ctx, subscribers * accepted), errors)
    cpu = meter.stop()
    errors += publish.get("errors", [])
    delivered = sum(min(sub.received, accepted) for sub in ready)
    incomplete = check_complete(ready, accepted)
    if incomplete:
        note(errors, f"{len(incomplete)} subscribers incomplete, e.g. {incomplete[:2]}")
    t0 = publish.get("t_first")
    done = [sub.t_last - t0 for sub in ready if sub.received and t0 is not None]
    span = max(done, default=None)
    await close_group(group.subscribers)
    expected = subscribers * (messages if messages is not None else accepted)
    figures = {
        "requests": subscribers,
        "failures": group.failures + publish.get("failures", 0) + len(incomplete),
        **latency_summary(done),
        "rate_per_s": rate(delivered, span),
        "deliveries_per_s": rate(delivered, span),
        "published": accepted,
        "publish_per_s": rate(accepted, span),
        "connect_per_s": rate(len(ready), group.seconds),
        **delivery_figures(delivered, expected),
        **cpu,
        "errors": errors,
    }
    ctx.progress.end(f"{figures['deliveries_per_s'] or 0:.0f} deliveries/s, "
                     f"{delivered}/{expected}")
    return figures


async def run_broadcast(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    subscribers, messages = ctx.sizes.broadcast
    return {"broadcast": await fan_out(ctx, run, "broadcast", subscribers, messages)}


async def run_fanout(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    subscribers, messages = ctx.sizes.fanout
    bulk = await fan_out(ctx, run, "fanout", subscribers, messages,
                         bulk=max(1, (messages + 1) // 2))
    await trio.sleep(0.3)  # let the server finish tearing the connections down
    single = await fan_out(ctx, run, "fanout-single", subscribers, messages)
    return {"fanout": bulk, "fanout-single": single}


async def run_sustained(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    return {"sustained": await fan_out(ctx, run, "sustained", ctx.sizes.sustained_subscribers,
                                       None, seconds=ctx.sizes.sustained_seconds)}
