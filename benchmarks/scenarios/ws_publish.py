"""`ws-publish`: sequential publishes over ONE held WebSocket connection (send a `publish`
op, wait for the `ok` with its id, repeat), the WebSocket counterpart of `single` (issue #6:
at least twice the baseline's single HTTP publish rate). Then `ws-publish-window`: the same
connection with up to `WINDOW` publishes unanswered at a time (pipelining, as a NATS
client publishes), answers matched by id.

The client is lean like the HTTP one: a raw socket, the hand-made handshake of
`lean.ws_handshake`, every masked publish frame built before the clock starts, and answers
walked from one buffer (one `orjson.loads` per answer, to check its id and offset).
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import orjson
import trio

from ..lean import (
    ProtocolError,
    close_socket,
    mask_frame,
    open_socket,
    receive,
    send_all,
    ws_handshake,
)
from ..publisher import PublishOutcome
from ..stats import latency_summary, rate
from .context import NET_ERRORS, ScenarioContext, note

WARMUP_PUBLISHES = 200  # connection set-up and first-call code paths; not measured
WINDOW = 64  # ws-publish-window: publishes in flight at once
RECEIVE_SIZE = 16384  # an answer is ~60 bytes: one small receive per publish
CLOSE_TIMEOUT = 5.0


def publish_frames(topic: str, count: int, first_id: int = 0) -> list[bytes]:
    """Masked text frames `{"op":"publish",...,"id":N}` for ids first_id.., with the payload
    `single` publishes (`{"seq":i,"source":"bench"}`)."""
    head = b'{"op":"publish","topic":"' + topic.encode() + b'","data":{"seq":%d,'
    return [mask_frame(0x1, head % i + b'"source":"bench"},"id":%d}' % (first_id + i))
            for i in range(count)]


class WsPublisher:
    """One held WebSocket connection that publishes and waits for each answer in turn.

    Answers are matched by id: a frame with another id (a late answer) is skipped and
    counted in `stray`. No timeouts here: callers bound every call with trio's scopes.
    """

    def __init__(self, host: str, port: int, path: str) -> None:
        self.host, self.port, self.path = host, port, path
        self.sock: socket.socket | None = None
        self.stray = 0
        self.close_code: int | None = None
        self._buf = bytearray()

    async def connect(self) -> None:
        self.sock = await open_socket(self.host, self.port)
        self._buf += await ws_handshake(self.sock, self.host, self.port, self.path)

    async def close(self) -> None:
        """Close 1000 politely (callers bound it), then close the socket in any case."""
        try:
            if self.sock is not None and self.close_code is None:
                await send_all(self.sock, mask_frame(0x8, struct.pack("!H", 1000)))
                while True:
                    await self._next_text()
        except (OSError, ProtocolError):
            pass  # the server's close frame (or its going away) ends the loop
        finally:
            if self.sock is not None:
                close_socket(self.sock)
                self.sock = None

    async def _next_text(self) -> bytes:
        """The next text frame's payload (pings answered, pongs skipped); `ProtocolError`
        on a close frame or end of stream."""
        sock = self.sock
        assert sock is not None
        buf = self._buf
        while True:
            frame = self._take_frame()
            if frame is None:
                data = await receive(sock, RECEIVE_SIZE)
                if not data:
                    raise ProtocolError("server closed the connection")
                buf += data
                continue
            opcode, payload = frame
            if opcode == 0x1:
                return payload
            if opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                raise ProtocolError(f"server closed with {self.close_code} {payload[2:]!r}")
            if opcode == 0x9:
                await send_all(sock, mask_frame(0xA, payload))
            elif opcode != 0xA:
                raise ProtocolError(f"unexpected frame opcode {opcode}")

    def buffered_text(self) -> bytes | None:
        """The next text frame's payload if it is already read (no I/O), else None."""
        frame = self._take_frame()
        if frame is None:
            return None
        opcode, payload = frame
        if opcode != 0x1:
            raise ProtocolError(f"unexpected frame opcode {opcode} between answers")
        return payload

    def _take_frame(self) -> tuple[int, bytes] | None:
        """Remove and return the first complete (unmasked, final) frame, if there is one."""
        buf = self._buf
        size = len(buf)
        if size < 2:
            return None
        length = buf[1] & 0x7F
        start = 2
        if length == 126:
            if size < 4:
                return None
            length, start = int.from_bytes(buf[2:4], "big"), 4
        elif length == 127:
            if size < 10:
                return None
            length, start = int.from_bytes(buf[2:10], "big"), 10
        end = start + length
        if size < end:
            return None
        opcode = buf[0] & 0x0F
        payload = bytes(buf[start:end])
        del buf[:end]
        return opcode, payload


async def publish_all(publisher: WsPublisher, frames: list[bytes], first_id: int,
                      timeout: float) -> tuple[PublishOutcome, int, int | None]:
    """Publish `frames` one after another, each after the previous one's answer: a window
    of one (see `publish_window`)."""
    return await publish_window(publisher, frames, first_id, 1, timeout)


async def publish_window(publisher: WsPublisher, frames: list[bytes], first_id: int,
                         window: int, timeout: float) -> tuple[PublishOutcome, int, int | None]:
    """Publish `frames` keeping up to `window` unanswered; every answer already read frees
    a slot, and the freed slots are refilled with one write. Bounded by `timeout`.
    Returns the outcome, how many `ok` offsets were not the publish's index (one topic:
    offsets follow the send order) and the highest offset. Unanswered publishes (errors,
    a broken connection, the timeout) count as failures; an answer with an id not in
    flight is skipped and counted in `publisher.stray`."""
    out = PublishOutcome()
    sent_at: dict[int, float] = {}
    misplaced = 0
    last: int | None = None
    sent = 0
    total = len(frames)
    assert publisher.sock is not None
    with trio.move_on_after(timeout) as scope:
        try:
            while out.accepted + out.failures < total:
                room = min(window - len(sent_at), total - sent)
                if room > 0:
                    now = time.perf_counter()
                    if out.t_first is None:
                        out.t_first = now
                    for index in range(sent, sent + room):
                        sent_at[first_id + index] = now
                    out.requests += room
                    await send_all(publisher.sock, frames[sent] if room == 1
                                   else b"".join(frames[sent:sent + room]))
                    sent += room
                payload: bytes | None = await publisher._next_text()
                while payload is not None:
                    answer = orjson.loads(payload)
                    request_id = answer.get("id") if isinstance(answer, dict) else None
                    started = sent_at.pop(request_id, None)
                    if started is None:
                        publisher.stray += 1
                    elif answer.get("op") == "ok":
                        out.t_last = time.perf_counter()
                        out.accepted += 1
                        out.latencies.append(out.t_last - started)
                        offset = answer.get("offset")
                        if offset != request_id - first_id:
                            misplaced += 1
                        if isinstance(offset, int) and (last is None or offset > last):
                            last = offset
                    else:
                        out.failures += 1
                        out.note(f"publish {request_id}: {answer}")
                    payload = publisher.buffered_text()
        except NET_ERRORS as exc:
            out.note(f"after {out.accepted} answers: {exc!r}")
    left = total - out.accepted - out.failures
    if left:
        out.failures += left
        why = f"within {timeout}s" if scope.cancelled_caught else "(connection lost)"
        out.note(f"{left} publishes not answered {why}")
    return out, misplaced, last


async def run_ws_publish(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    count = ctx.sizes.ws_publish_messages
    windowed = ctx.sizes.ws_window_messages
    frames = publish_frames(ctx.topic("wspublish", run), count, WARMUP_PUBLISHES)
    window_first = WARMUP_PUBLISHES + count
    window_frames = publish_frames(ctx.topic("wspublish", run, "window"), windowed, window_first)
    warm_up = publish_frames(ctx.topic("wspublish", run, "warmup"), WARMUP_PUBLISHES)
    publisher = WsPublisher(ctx.ws.host, ctx.ws.port, ctx.ws.path)
    errors: list[str] = []
    out, misplaced, last = PublishOutcome(), 0, None
    pipelined, window_misplaced, window_last = PublishOutcome(), 0, None
    cpu: dict[str, float | None] = {"gen_cpu_pct": None, "broker_cpu_pct": None}
    window_cpu = dict(cpu)
    stray = 0
    ctx.progress.begin(f"ws-publish {count} publishes", count)
    try:
        with trio.fail_after(ctx.timeout):
            await publisher.connect()
        warm, _, _ = await publish_all(publisher, warm_up, 0, ctx.timeout)
        if warm.failures:
            note(errors, f"warm-up: {warm.failures} failures, e.g. {warm.errors[:2]}")
        meter = ctx.meter()
        meter.start()
        out, misplaced, last = await publish_all(publisher, frames, WARMUP_PUBLISHES, ctx.timeout)
        cpu = meter.stop()
        stray = publisher.stray
        meter = ctx.meter()
        meter.start()
        pipelined, window_misplaced, window_last = await publish_window(
            publisher, window_frames, window_first, WINDOW, ctx.timeout)
        window_cpu = meter.stop()
    except (trio.TooSlowError, *NET_ERRORS) as exc:
        note(errors, f"connect: {exc!r}")
        out.failures = count
    finally:
        with trio.move_on_after(CLOSE_TIMEOUT):
            await publisher.close()
    ctx.progress.advance(count)
    sequential = _figures(out, count, last, misplaced, stray, cpu, errors)
    window_errors: list[str] = []
    pipelined.failures = max(pipelined.failures, windowed - pipelined.accepted)
    figures = _figures(pipelined, windowed, window_last, window_misplaced,
                       publisher.stray - stray, window_cpu, window_errors)
    figures["window"] = WINDOW
    ctx.progress.end(f"{sequential['rate_per_s'] or 0:.0f} msg/s; {WINDOW} in flight: "
                     f"{figures['rate_per_s'] or 0:.0f} msg/s")
    return {"ws-publish": sequential, "ws-publish-window": figures}


def _figures(out: PublishOutcome, count: int, last: int | None, misplaced: int, stray: int,
             cpu: dict[str, float | None], errors: list[str]) -> dict[str, Any]:
    """One case's figures; every ok offset must be its publish's index (one fresh topic)."""
    if out.accepted == count and last != count - 1:
        note(errors, f"last offset {last}, expected {count - 1}")
    if misplaced:
        note(errors, f"{misplaced} ok offsets not in publish order")
    if stray:
        note(errors, f"{stray} answers with an id not awaited")
    span = None if out.t_first is None or out.t_last is None else out.t_last - out.t_first
    return {
        "requests": out.requests,
        "messages": count,
        "accepted": out.accepted,
        "failures": out.failures,
        "last_offset": last,
        **latency_summary(out.latencies),
        "rate_per_s": rate(out.accepted, span),
        **cpu,
        "errors": errors + out.errors,
    }
