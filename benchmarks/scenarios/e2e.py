"""`e2e`: publish-to-receive latency with 20 subscribers at a light, fixed publish rate.

Each payload carries `time.monotonic()` taken just before its publish request is written
(lean keep-alive publisher, sequential, against absolute deadlines); each subscriber decodes
every message and takes `time.monotonic()` when it reads it. CLOCK_MONOTONIC is
system-wide on Linux, so the figures hold across processes too. Two cases:

- `e2e`: subscribers are the public client (`gateways.client`, what users run; its
  `Message.received` is the receive time), one task each;
- `e2e-lean`: lean readers that parse every payload in full: the broker's share alone."""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from ..lean import HttpClient, WsSubscriber, receive
from ..schedule import RateSchedule, run_at_rate
from ..stats import latency_summary, rate
from .context import NET_ERRORS, ScenarioContext, delivery_figures, note
from .subscribers import close_group, connect_group

RECEIVE_SIZE = 65536


def split_frames(buf: bytearray) -> list[tuple[int, bytes]]:
    """Remove every complete server frame (unmasked, unfragmented) from the front of `buf`;
    return (opcode, payload) for each."""
    frames = []
    pos = 0
    while len(buf) - pos >= 2:
        length = buf[pos + 1] & 0x7F
        start = pos + 2
        if length == 126:
            if len(buf) - pos < 4:
                break
            length, start = int.from_bytes(buf[pos + 2:pos + 4], "big"), pos + 4
        elif length == 127:
            if len(buf) - pos < 10:
                break
            length, start = int.from_bytes(buf[pos + 2:pos + 10], "big"), pos + 10
        if start + length > len(buf):
            break
        frames.append((buf[pos] & 0x0F, bytes(buf[start:start + length])))
        pos = start + length
    del buf[:pos]
    return frames


async def read_latencies(sub: WsSubscriber, expected: int, latencies: list[float],
                         counts: list[int], index: int, errors: list[str]) -> None:
    """Decode every frame of one subscriber until `expected` messages arrived."""
    sock = sub.sock
    assert sock is not None
    buf = bytearray(sub._buf[sub._pos:sub._end])  # anything read after the ping's ok
    while counts[index] < expected:
        for opcode, payload in split_frames(buf):
            if opcode == 0x8:
                note(errors, f"subscriber {index} closed: {payload[:80]!r}")
                return
            if opcode != 0x1:
                continue
            frame = orjson.loads(payload)
            if frame.get("op") != "message":
                continue
            now = time.monotonic()
            latencies.append(now - frame["data"]["sent"])
            counts[index] += 1
        if counts[index] >= expected:
            return
        chunk = await receive(sock, RECEIVE_SIZE)
        if not chunk:
            note(errors, f"subscriber {index}: end of stream")
            return
        buf += chunk


@dataclass
class LatencyRecord:
    """What the subscribers of one e2e case saw, and what the publisher achieved."""

    subscribers: int
    latencies: list[float] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    accepted: int = 0
    failures: int = 0


async def publish_at_rate(ctx: ScenarioContext, topic: str, record: LatencyRecord) -> None:
    """`e2e_messages` single publishes at `e2e_rate`, each stamped just before it is sent."""
    client = HttpClient(ctx.http.host, ctx.http.port)
    path = f"/v1/topics/{topic}".encode()

    async def publish(seq: int) -> None:
        body = orjson.dumps({"seq": seq, "sent": time.monotonic()})
        try:
            status, answer = await client.request(b"POST", path, body)
        except NET_ERRORS as exc:
            record.failures += 1
            note(record.errors, f"publish: {exc!r}")
            return
        if status == 202:
            record.accepted += 1
        else:
            record.failures += 1
            note(record.errors, f"publish {status}: {answer[:200]!r}")
        ctx.progress.advance()

    messages, per_second = ctx.sizes.e2e_messages, ctx.sizes.e2e_rate
    try:
        await client.connect()
        schedule = RateSchedule(per_second, messages / per_second, trio.current_time())
        with trio.move_on_after(ctx.timeout):
            await run_at_rate(schedule, publish)  # sequential: one keep-alive connection
    except NET_ERRORS as exc:
        note(record.errors, f"publisher: {exc!r}")
    finally:
        client.close()


def e2e_figures(record: LatencyRecord, cpu: dict[str, Any], connect_failures: int,
                messages: int) -> dict[str, Any]:
    delivered = sum(record.counts)
    return {
        "requests": messages,
        "failures": record.failures + connect_failures
        + (messages - record.accepted - record.failures),
        **latency_summary(record.latencies),
        "rate_per_s": rate(delivered, cpu["window_s"]),
        **delivery_figures(delivered, record.subscribers * messages),
        **cpu,
        "errors": record.errors,
    }


async def run_lean(ctx: ScenarioContext, run: int) -> dict[str, Any]:
    subscribers, messages = ctx.sizes.e2e_subscribers, ctx.sizes.e2e_messages
    topic = ctx.topic("e2e-lean", run)
    ctx.progress.begin(f"e2e-lean {subscribers} subscribers x {messages} at "
                       f"{ctx.sizes.e2e_rate:.0f}/s", messages)
    group = await connect_group(ctx, [ctx.ws_path(topic) for _ in range(subscribers)])
    record = LatencyRecord(subscribers, counts=[0] * len(group.ready), errors=group.errors)
    meter = ctx.meter()
    meter.start()
    async with trio.open_nursery() as nursery:
        readers = trio.CancelScope()

        async def read_all() -> None:
            with readers:
                async with trio.open_nursery() as inner:
                    for i, sub in enumerate(group.ready):
                        inner.start_soon(read_latencies, sub, messages, record.latencies,
                                         record.counts, i, record.errors)

        nursery.start_soon(read_all)
        await publish_at_rate(ctx, topic, record)
        readers.deadline = trio.current_time() + ctx.delivery_timeout
    cpu = meter.stop()
    await close_group(group.subscribers)
    figures = e2e_figures(record, cpu, group.failures, messages)
    ctx.progress.end(f"p50 {figures['p50_ms'] or 0:.2f} ms")
    return figures


async def run_client(ctx: ScenarioContext, run: int) -> dict[str, Any]:
    from gateways.client import ClientError, Message, open_client

    subscribers, messages = ctx.sizes.e2e_subscribers, ctx.sizes.e2e_messages
    topic = ctx.topic("e2e", run)
    ctx.progress.begin(f"e2e {subscribers} gateways.client subscribers x {messages} at "
                       f"{ctx.sizes.e2e_rate:.0f}/s", messages)
    record = LatencyRecord(subscribers, counts=[0] * subscribers)
    ws_url = f"ws://{ctx.ws.host}:{ctx.ws.port}{ctx.ws.path}"
    connect_failures = 0

    async def subscriber(index: int, *, task_status: trio.TaskStatus[None]) -> None:
        nonlocal connect_failures
        started = False
        try:
            async with open_client(ctx.http_url, ws_url, timeout=ctx.timeout) as client, \
                    client.subscribe(topic, name=f"e2e-{index}") as subscription:
                task_status.started()
                started = True
                async for item in subscription:
                    if isinstance(item, Message):
                        record.latencies.append(item.received - item.data["sent"])
                        record.counts[index] += 1
                        if record.counts[index] >= messages:
                            return
        except (ClientError, *NET_ERRORS) as exc:
            note(record.errors, f"subscriber {index}: {exc!r}")
            if not started:
                connect_failures += 1
                task_status.started()

    meter = ctx.meter()
    async with trio.open_nursery() as nursery:
        readers = trio.CancelScope()

        async def read_all() -> None:
            with readers:
                async with trio.open_nursery() as inner:
                    with trio.move_on_after(ctx.timeout):
                        for index in range(subscribers):
                            await inner.start(subscriber, index)
                    inner_ready.set()

        inner_ready = trio.Event()
        nursery.start_soon(read_all)
        await inner_ready.wait()
        meter.start()
        await publish_at_rate(ctx, topic, record)
        readers.deadline = trio.current_time() + ctx.delivery_timeout
    cpu = meter.stop()
    figures = e2e_figures(record, cpu, connect_failures, messages)
    ctx.progress.end(f"p50 {figures['p50_ms'] or 0:.2f} ms")
    return figures


def client_available() -> bool:
    return importlib.util.find_spec("gateways.client") is not None


async def run_e2e(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    cases = {}
    if client_available():
        cases["e2e"] = await run_client(ctx, run)
    else:
        ctx.progress.note("e2e: gateways.client is not there; lean subscribers only")
    cases["e2e-lean"] = await run_lean(ctx, run)
    return cases
