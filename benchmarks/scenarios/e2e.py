"""`e2e`: publish-to-receive latency with 20 subscribers at a light, fixed publish rate.

Each payload carries `time.monotonic()` taken just before its publish request is written
(lean keep-alive publisher, sequential, against absolute deadlines); each subscriber decodes
every message and takes `time.monotonic()` when it reads it. CLOCK_MONOTONIC is
system-wide on Linux, so the figures hold across processes too. Two cases:

- `e2e`: subscribers are the public client (`gateways.client`, what users run; its
  `Message.received` is the receive time), one task each;
- `e2e-lean`: lean readers, all in one task (one epoll), each read stamped as it returns
  and its payloads parsed in full after: the broker's share alone."""

from __future__ import annotations

import importlib.util
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from ..lean import HttpClient, WsSubscriber
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


def _decode(buf: bytearray, stamp: float, record: LatencyRecord, index: int) -> bool:
    """Take every complete frame off `buf`: each message's latency is `stamp` (when its
    bytes were read) minus its `sent`. False once the server closed."""
    for opcode, payload in split_frames(buf):
        if opcode == 0x8:
            note(record.errors, f"subscriber {index} closed: {payload[:80]!r}")
            return False
        if opcode != 0x1:
            continue
        frame = orjson.loads(payload)
        if frame.get("op") == "message":
            record.latencies.append(stamp - frame["data"]["sent"])
            record.counts[index] += 1
    return True


async def read_latencies(subscribers: list[WsSubscriber], expected: int,
                         record: LatencyRecord) -> None:
    """Read every subscriber from one task (one epoll) until each has `expected` messages.

    Every read is stamped the moment it returns, and the frames in it are decoded after
    this round's reads: the figure is the broker's and the kernel's share, not the time
    this process takes to decode the other subscribers' frames first (20 JSON decodes
    per message, on the generator's one core)."""
    buffers: dict[int, tuple[int, socket.socket, bytearray]] = {}
    for index, sub in enumerate(subscribers):
        assert sub.sock is not None
        buf = bytearray(sub._buf[sub._pos:sub._end])  # anything read after the ping's ok
        if _decode(buf, time.monotonic(), record, index):
            buffers[sub.sock.fileno()] = (index, sub.sock, buf)
    epoll = select.epoll(len(buffers) or 1)
    try:
        for fd in buffers:
            epoll.register(fd, select.EPOLLIN)
        while buffers:
            await trio.lowlevel.wait_readable(epoll)
            reads = []
            for fd, _ in epoll.poll(0):
                index, sock, buf = buffers[fd]
                try:
                    chunk = sock.recv(RECEIVE_SIZE)
                except BlockingIOError:
                    continue
                reads.append((time.monotonic(), fd, chunk))
            for stamp, fd, chunk in reads:
                index, sock, buf = buffers[fd]
                buf += chunk
                if not chunk:
                    note(record.errors, f"subscriber {index}: end of stream")
                if not chunk or not _decode(buf, stamp, record, index) \
                        or record.counts[index] >= expected:
                    epoll.unregister(fd)
                    del buffers[fd]
    finally:
        trio.lowlevel.notify_closing(epoll)
        epoll.close()


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
                await read_latencies(group.ready, messages, record)

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
