"""The WebSocket gateway: a trio listener serving `/v1/ws`, one `WebSocketConnection` each.

wsproto does the handshake, parses client frames and builds control frames; the data
write path is ours. Each connection is a small actor:

- the reader (the handler task) parses client requests and answers them;
- the writer owns the socket's sending side. It takes frames from the connection's
  bounded outbox and writes every frame waiting there with one `send_all` (nats-server's
  flush-per-batch), so a burst of N messages costs one syscall, not N;
- a watcher waits for the broker to drain and then queues a 1001 close behind what is
  already in the outbox.

Topics put frames into the outbox with `send_nowait` and never wait for a connection;
when it is full they apply their slow-consumer policy (default: close with 4008).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

from broker import (
    AlreadySubscribed,
    Broker,
    BrokerError,
    CloseReason,
    ControlFrame,
    Gap,
    Message,
    NotSubscribed,
    Outbox,
    Payload,
    Settings,
    Subscriber,
    SubscribeResult,
    TooManySubscriptions,
    WireFormat,
    codec,
    next_connection_id,
    validate_pattern,
)
from broker.codec import (
    PingRequest,
    PublishRequest,
    RequestRejected,
    SubscribeRequest,
    UnsubscribeRequest,
)

from .errors import error_body
from .wsframe import binary_frame, text_frame

log = logging.getLogger("gateways.websocket")

PATH = "/v1/ws"
# Bytes read per receive: large enough for a full publish frame in one read.
RECEIVE_SIZE = 65536
# Most bytes joined into one send_all: bounds the temporary buffer of a big batch.
MAX_BATCH_BYTES = 1024 * 1024
# Most items taken from the outbox per batch (a bound on the list, not on bytes).
MAX_BATCH_ITEMS = 4096
# A client frame may carry a payload of max_payload_bytes plus this much envelope.
FRAME_ENVELOPE_BYTES = 64 * 1024
# Consecutive invalid frames tolerated before the connection is closed with 1008.
MAX_CONSECUTIVE_INVALID = 10
# Seconds spent at most on unsubscribing and closing the socket at teardown.
TEARDOWN_SECONDS = 2.0


def render_json(message: Message) -> bytes:
    """A `message` frame for `broker.v1.json` connections (cached on the message)."""
    return text_frame(codec.encode_message_json(message))


def render_cbor(message: Message) -> bytes:
    """A `message` frame for `broker.v1.cbor` connections (cached on the message)."""
    return binary_frame(codec.encode_message_cbor(message))


RENDERERS: dict[WireFormat, Callable[[Message], bytes]] = {
    WireFormat.JSON: render_json,
    WireFormat.CBOR: render_cbor,
}


@dataclass(frozen=True, slots=True)
class _Close:
    """Outbox item: write this close frame after everything before it, then stop."""

    reason: CloseReason


class WebSocketConnection:
    """One accepted WebSocket. See the module docstring for its tasks."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        ws: WSConnection,
        broker: Broker,
        wire_format: WireFormat,
        client: str,
        closing: trio.Event,
    ) -> None:
        self.id = next_connection_id()
        self._stream = stream
        self._ws = ws
        self._broker = broker
        self._settings = broker.settings
        self._format = wire_format
        self._closing = closing
        self._max_frame = self._settings.max_payload_bytes + FRAME_ENVELOPE_BYTES
        self.outbox = Outbox(
            self._settings.outbox_size,
            RENDERERS[wire_format],
            broker.counters,
            _nonblocking_writer(stream),
        )
        self.subscriber = Subscriber(self.id, client, self.outbox, self._evict)
        self._patterns: set[str] = set()
        self._evicted: CloseReason | None = None
        self.close_reason: CloseReason | None = None
        self._writer_scope = trio.CancelScope()
        self._watcher_scope = trio.CancelScope()
        self._nursery_scope: trio.CancelScope | None = None
        self._frame_wrap = text_frame if wire_format is WireFormat.JSON else binary_frame

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self, initial_patterns: list[str]) -> None:
        """Serve until closed by either side; always unsubscribes and closes the socket."""
        counters = self._broker.counters
        counters.connections_opened += 1
        self._broker.connections += 1
        try:
            async with trio.open_nursery() as nursery:
                self._nursery_scope = nursery.cancel_scope
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._watch_drain)
                for pattern in initial_patterns:
                    try:
                        await self._subscribe(SubscribeRequest(pattern, "latest", None), ack=False)
                    except RequestRejected as exc:  # e.g. too_many_topics: say so, stay open
                        await self._reply(codec.encode_error(self._format, None, exc.error))
                await self._read_loop()
                # The reader is done: give the writer a bounded time to finish.
                nursery.cancel_scope.deadline = min(
                    nursery.cancel_scope.deadline,
                    trio.current_time() + self._settings.close_timeout,
                )
        finally:
            # Before the socket closes: no fast-path write may reach a recycled fd, and
            # topics' next offer answers CLOSED, so they forget us even if...
            self.outbox.close()
            with trio.CancelScope(shield=True), trio.move_on_after(TEARDOWN_SECONDS):
                # ...their unsubscribe does not fit (see Broker.disconnect).
                await self._broker.disconnect(self.id, list(self._patterns))
                await self._stream.aclose()
            counters.connections_closed += 1
            self._broker.connections -= 1

    def _evict(self, reason: CloseReason) -> None:
        """Called by a topic's policy: close after the write in progress, within a deadline."""
        if self._evicted is not None:
            return
        self._evicted = reason
        self._writer_scope.deadline = min(
            self._writer_scope.deadline, trio.current_time() + self._settings.close_timeout
        )
        # A full outbox means the writer is busy and will see `_evicted` after its write;
        # otherwise (e.g. a failed topic) this wakes it to write the close frame now.
        self.outbox.offer_control(_Close(reason))

    async def _watch_drain(self) -> None:
        with self._watcher_scope:
            await self._closing.wait()
            await self._queue(_Close(CloseReason.GOING_AWAY))

    # -- writing -------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        lost = False
        try:
            with self._writer_scope:
                await self._write_frames()
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.EndOfChannel):
            lost = True
        finally:
            self.outbox.close()
            self._watcher_scope.cancel()
            assert self._nursery_scope is not None
            if lost or self.close_reason is None:
                self._nursery_scope.cancel()  # nothing more can be said on this socket
            else:
                # We sent a close frame: let the reader wait for the client's close (a
                # lingering close, so our close frame is not lost to a TCP reset).
                self._nursery_scope.deadline = min(
                    self._nursery_scope.deadline,
                    trio.current_time() + self._settings.close_timeout,
                )

    async def _write_frames(self) -> None:
        """Write batches until a close frame has been written.

        Hot path (guarded by `python -m benchmarks.quick`): everything queued goes out in
        one send_all, up to MAX_BATCH_BYTES per call.
        """
        outbox = self.outbox
        render = outbox.render
        send_all = self._stream.send_all
        counters = self._broker.counters
        while self._evicted is None:
            batch = await outbox.take(MAX_BATCH_ITEMS)
            chunks: list[bytes] = []
            size = 0
            messages = 0
            close: _Close | None = None
            for item in batch:
                kind = type(item)
                if kind is Message:
                    data = render(item)  # type: ignore[arg-type]
                    messages += 1
                elif kind is bytes:  # the rest of a frame the fast path began
                    data = item  # type: ignore[assignment]
                    messages += 1
                elif kind is ControlFrame:
                    data = item.data  # type: ignore[attr-defined]
                elif kind is Gap:
                    data = self._gap_frame(item)  # type: ignore[arg-type]
                else:
                    assert isinstance(item, _Close)
                    close = item
                    break
                chunks.append(data)
                size += len(data)
                if size >= MAX_BATCH_BYTES:
                    await send_all(b"".join(chunks))
                    chunks.clear()
                    size = 0
            if chunks:
                await send_all(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            outbox.written()
            counters.delivered += messages
            if close is not None:
                await self._write_close(close.reason)
                return
        await self._write_close(self._evicted)

    def _gap_frame(self, gap: Gap) -> bytes:
        """`{"op": "gap", ...}`: messages of a topic dropped for this subscriber."""
        return self._frame_wrap(
            codec.encode_object(
                self._format,
                {"op": "gap", "topic": gap.topic, "skipped": gap.skipped,
                 "from": gap.first, "to": gap.last},
            )
        )

    async def _write_close(self, reason: CloseReason) -> None:
        self.outbox.close()  # nothing may follow a close frame, not even a fast-path write
        if self._ws.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            return
        data = self._ws.send(CloseConnection(code=reason.code, reason=reason.reason))
        self.close_reason = reason
        await self._stream.send_all(data)

    async def _queue(self, item: ControlFrame | _Close) -> None:
        """Queue a non-message item behind pending frames (the reader waits if the outbox
        is full: a client that does not read its replies slows only itself)."""
        try:
            await self.outbox.put(item)
        except trio.ClosedResourceError:
            pass  # the writer has finished; nothing more will be written

    async def _reply(self, data: bytes) -> None:
        await self._queue(ControlFrame(self._frame_wrap(data)))

    # -- reading -------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Parse client frames until the client closes, breaks protocol, or vanishes."""
        ws = self._ws
        parts: list[str | bytes] = []
        size = 0
        invalid = 0
        while True:
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                data = b""
            if not data:
                self._lost()
                return
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, TextMessage | BytesMessage):
                    size += len(event.data)
                    if size > self._max_frame:
                        await self._close(CloseReason.MESSAGE_TOO_BIG)
                        return
                    parts.append(event.data)
                    if not event.message_finished:
                        continue
                    frame = parts[0] if len(parts) == 1 else type(parts[0])().join(parts)  # type: ignore[arg-type]
                    parts.clear()
                    size = 0
                    if await self._handle_frame(frame, isinstance(event, TextMessage)):
                        invalid = 0
                    else:
                        invalid += 1
                        if invalid >= MAX_CONSECUTIVE_INVALID:
                            await self._close(CloseReason.POLICY_VIOLATION)
                            return
                elif isinstance(event, Ping):
                    await self._queue(ControlFrame(ws.send(event.response())))
                elif isinstance(event, CloseConnection):
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        # The client closes: answer with the same code after pending frames.
                        await self._queue(_Close(CloseReason.CLIENT_CLOSED))
                        return
                    if ws.state is ConnectionState.CLOSED:
                        return  # the client's answer to our close
                    # Still OPEN: wsproto failed to parse (bad opcode, bad UTF-8, ...).
                    await self._close(_protocol_reason_for(event.code))
                    return

    def _lost(self) -> None:
        self.outbox.close()
        if self.close_reason is None:
            self.close_reason = CloseReason.CONNECTION_LOST
            assert self._nursery_scope is not None
            self._nursery_scope.cancel()

    async def _close(self, reason: CloseReason) -> None:
        """Close now for a protocol-level reason (pending messages are still written first)."""
        log.info("connection %d: closing: %s", self.id, reason.reason)
        await self._queue(_Close(reason))

    async def _handle_frame(self, frame: str | bytes, is_text: bool) -> bool:
        """Serve one client request; False if it was invalid (an error frame was sent)."""
        fmt = self._format
        if (fmt is WireFormat.JSON) != is_text:
            expected = "text" if fmt is WireFormat.JSON else "binary"
            error = codec.InvalidFrame(f"{fmt.subprotocol} takes {expected} frames")
            await self._reply(codec.encode_error(fmt, None, error))
            return False
        try:
            request = codec.decode_request(fmt, frame, self._settings.max_payload_bytes)
            await self._dispatch(request)
        except RequestRejected as exc:
            await self._reply(codec.encode_error(fmt, exc.request_id, exc.error))
            return False
        return True

    async def _dispatch(self, request: Any) -> None:
        fmt = self._format
        match request:
            case PublishRequest(topic, data, content_type, kind, request_id):
                payload = Payload(data, content_type, kind)
                try:
                    offset = await self._broker.publish(topic, payload)
                except BrokerError as exc:
                    raise RequestRejected(exc, request_id) from exc
                await self._reply(codec.encode_ok(fmt, request_id, topic=topic, offset=offset))
            case SubscribeRequest():
                await self._subscribe(request, ack=True)
            case UnsubscribeRequest(pattern, request_id):
                if pattern not in self._patterns:
                    raise RequestRejected(
                        NotSubscribed(f"not subscribed to {pattern!r}"), request_id
                    )
                self._patterns.discard(pattern)
                try:
                    await self._broker.unsubscribe(self.id, pattern)
                except BrokerError as exc:
                    raise RequestRejected(exc, request_id) from exc
                await self._reply(codec.encode_ok(fmt, request_id, topic=pattern))
            case PingRequest(request_id):
                await self._reply(codec.encode_ok(fmt, request_id))

    async def _subscribe(self, request: SubscribeRequest, *, ack: bool) -> None:
        pattern, request_id = request.topic, request.id
        if pattern in self._patterns:
            raise RequestRejected(
                AlreadySubscribed(f"already subscribed to {pattern!r}"), request_id
            )
        if len(self._patterns) >= self._settings.max_subscriptions:
            raise RequestRejected(
                TooManySubscriptions(
                    f"a connection holds at most {self._settings.max_subscriptions} "
                    "subscriptions"
                ),
                request_id,
            )
        fmt = self._format
        wrap = self._frame_wrap

        def render_ack(result: SubscribeResult) -> ControlFrame:
            return ControlFrame(
                wrap(
                    codec.encode_ok(
                        fmt,
                        request_id,
                        topic=pattern,
                        first_offset=result.first_offset,
                        next_offset=result.next_offset,
                    )
                )
            )

        self._patterns.add(pattern)
        try:
            await self._broker.subscribe(
                self.subscriber, pattern, request.start, render_ack if ack else None
            )
        except BrokerError as exc:
            self._patterns.discard(pattern)
            raise RequestRejected(exc, request_id) from exc


def _protocol_reason_for(code: int | None) -> CloseReason:
    if code == CloseReason.MESSAGE_TOO_BIG.code:
        return CloseReason.MESSAGE_TOO_BIG
    if code == 1007:
        return CloseReason.INVALID_PAYLOAD
    return CloseReason.PROTOCOL_ERROR


def _nonblocking_writer(stream: trio.abc.Stream) -> Callable[[bytes], int] | None:
    """`os.write` on the socket's (non-blocking) fd: the outbox's write-now path (`flush`).

    Only used while no send_all is in progress, and never after the outbox is closed,
    which happens before the socket is.
    """
    sock = getattr(stream, "socket", None)
    if sock is None:
        return None
    return partial(os.write, sock.fileno())


# -- the listener -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Handshake:
    ws: WSConnection
    wire_format: WireFormat
    patterns: list[str]
    client: str


def _http_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = orjson.dumps(error_body(code, message))
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _handshake(stream: trio.abc.Stream, settings: Settings) -> _Handshake | None:
    """Read the opening request and accept or reject it; None if rejected or abandoned."""
    ws = WSConnection(ConnectionType.SERVER)
    request: Request | None = None
    with trio.move_on_after(settings.handshake_timeout):
        while request is None:
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            if not data:
                return None
            try:
                ws.receive_data(data)
            except RemoteProtocolError as exc:
                await stream.send_all(
                    _http_response(400, "Bad Request", "bad_request", f"not a WebSocket "
                                   f"upgrade: {exc}")
                )
                return None
            for event in ws.events():
                if isinstance(event, Request):
                    request = event
                    break
    if request is None:
        return None

    url = urlsplit(request.target)
    if url.path != PATH:
        await stream.send_all(
            _http_response(404, "Not Found", "not_found", f"the WebSocket endpoint is {PATH}")
        )
        return None
    query = parse_qs(url.query, keep_blank_values=True)  # ?topic= is an invalid name
    patterns = query.get("topic", [])
    client = query.get("client", [""])[-1]
    try:
        for pattern in patterns:
            validate_pattern(pattern)
        if len(set(patterns)) > settings.max_subscriptions:
            raise TooManySubscriptions(
                f"a connection holds at most {settings.max_subscriptions} subscriptions"
            )
    except BrokerError as exc:
        status = 429 if isinstance(exc, TooManySubscriptions) else 400
        await stream.send_all(_http_response(status, "Rejected", exc.code, exc.message))
        return None

    wire_format = WireFormat.JSON
    chosen: str | None = None
    for offered in request.subprotocols:
        if offered in (WireFormat.JSON.subprotocol, WireFormat.CBOR.subprotocol):
            wire_format = WireFormat(offered)
            chosen = offered
            break
    await stream.send_all(ws.send(AcceptConnection(subprotocol=chosen, extensions=[])))
    return _Handshake(ws, wire_format, list(dict.fromkeys(patterns)), client)


async def _serve_connection(broker: Broker, closing: trio.Event, stream: trio.SocketStream) -> None:
    try:
        if broker.draining:
            return
        handshake = await _handshake(stream, broker.settings)
        if handshake is None:
            return
        connection = WebSocketConnection(
            stream, handshake.ws, broker, handshake.wire_format, handshake.client, closing
        )
        await connection.run(handshake.patterns)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the client vanished; nothing to tell it
    except Exception:
        log.exception("WebSocket connection failed")
    finally:
        with trio.move_on_after(TEARDOWN_SECONDS) as scope:
            scope.shield = True
            await stream.aclose()


async def serve_websocket(
    broker: Broker,
    closing: trio.Event,
    connection_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on `settings.host:ws_port`; report the bound port; serve until cancelled.

    Connections run in `connection_nursery`, so cancelling this listener stops accepting
    without touching open connections (they close on `closing`, with 1001).
    """
    settings = broker.settings
    listeners = await trio.open_tcp_listeners(settings.ws_port, host=settings.host)
    port = listeners[0].socket.getsockname()[1]
    task_status.started(port)
    await trio.serve_listeners(
        partial(_serve_connection, broker, closing),
        listeners,
        handler_nursery=connection_nursery,
    )


__all__ = ["PATH", "RENDERERS", "WebSocketConnection", "serve_websocket"]
