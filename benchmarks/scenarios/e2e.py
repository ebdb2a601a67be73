"""`e2e`: publish-to-receive latency with 20 subscribers at a light, fixed publish rate.

Each payload carries `time.monotonic()` taken just before its publish request is written;
each subscriber decodes every frame it receives and takes `time.monotonic()` right after
reading it. CLOCK_MONOTONIC is system-wide on Linux, so the figures hold even across
processes. Subscribers are lean readers that parse each payload in full (the public client
costs more per frame, which would show up as latency here)."""

from __future__ import annotations

import time
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


async def run_e2e(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    subscribers, messages = ctx.sizes.e2e_subscribers, ctx.sizes.e2e_messages
    topic = ctx.topic("e2e", run)
    ctx.progress.begin(f"e2e {subscribers} subscribers x {messages} at "
                       f"{ctx.sizes.e2e_rate:.0f}/s", messages)
    group = await connect_group(ctx, [ctx.ws_path(topic) for _ in range(subscribers)])
    errors = list(group.errors)
    client = HttpClient(ctx.http.host, ctx.http.port)
    path = f"/v1/topics/{topic}".encode()
    latencies: list[float] = []
    counts = [0] * len(group.ready)
    accepted = failures = 0

    async def publish(seq: int) -> None:
        nonlocal accepted, failures
        body = orjson.dumps({"seq": seq, "sent": time.monotonic()})
        try:
            status, answer = await client.request(b"POST", path, body)
        except NET_ERRORS as exc:
            failures += 1
            note(errors, f"publish: {exc!r}")
            return
        if status == 202:
            accepted += 1
        else:
            failures += 1
            note(errors, f"publish {status}: {answer[:200]!r}")
        ctx.progress.advance()

    meter = ctx.meter()
    try:
        await client.connect()
        meter.start()
        async with trio.open_nursery() as nursery:
            readers = trio.CancelScope()

            async def read_all() -> None:
                with readers:
                    async with trio.open_nursery() as inner:
                        for i, sub in enumerate(group.ready):
                            inner.start_soon(read_latencies, sub, messages, latencies, counts,
                                             i, errors)

            nursery.start_soon(read_all)
            schedule = RateSchedule(ctx.sizes.e2e_rate, messages / ctx.sizes.e2e_rate,
                                    trio.current_time())
            with trio.move_on_after(ctx.timeout):
                await run_at_rate(schedule, publish)  # sequential: one keep-alive connection
            readers.deadline = trio.current_time() + ctx.delivery_timeout
    except NET_ERRORS as exc:
        note(errors, f"publisher: {exc!r}")
    cpu = meter.stop()
    client.close()
    await close_group(group.subscribers)
    delivered = sum(counts)
    figures = {
        "requests": messages,
        "failures": failures + group.failures + (messages - accepted - failures),
        **latency_summary(latencies),
        "rate_per_s": rate(delivered, cpu["window_s"]),
        **delivery_figures(delivered, subscribers * messages),
        **cpu,
        "errors": errors,
    }
    ctx.progress.end(f"p50 {figures['p50_ms'] or 0:.2f} ms")
    return {"e2e": figures}
