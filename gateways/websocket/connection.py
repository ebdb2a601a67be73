"""One accepted WebSocket connection, served by ONE task on a plain non-blocking socket.

- The task reads client frames and answers them; a reply goes straight to the socket when
  nothing is queued before it. Plain data frames (final, masked text or binary) are taken
  apart here (`client_data_frame`); at the first frame that is anything else, wsproto
  takes over this connection's input (and it does every close).
- Topics write message frames straight to the socket (`Outbox.flush`) and never wait for a
  connection. Only what the kernel did not take stays queued: the outbox then wakes the
  task (`wake_writer` cancels its wait for input), which writes everything waiting with
  one `sendmsg` per batch over the shared frames (nats-server's flush-per-batch; no
  private copy, items leave the outbox as written), waiting for the socket as it must,
  each batch within `write_timeout`: a client that stops reading is dropped.
- An incomplete client frame (or fragmented message) must be complete by
  `receive_deadline(first byte, bytes so far, header_timeout, min_receive_rate)`, else
  the connection is closed with 1008 `frame not completed in time`.
- A publish to a running topic is handed over without waiting (`Broker.publish_soon`):
  an idle topic takes it at once on this task (`TopicActor.publish_now`), a busy one
  answers later on its own task; either way through `_answer_publish`, which writes the
  `ok` via `Outbox.answer`, and this task reads on (no task switch, and no wait, per
  publish; `python -m benchmarks ws-publish`). A new topic, or a full mailbox, is asked
  and waited for. The answers of publishes read in one go (a pipelining client) are
  queued and written together after the last of them, or before any request that may
  wait: one write instead of one per publish (`ws-publish-window`).
- A close (drain, eviction, the client's close, a protocol error) is a decision recorded
  on the connection; the same task writes what it must still write (first waiting for
  the answers of publishes it handed over), then the close frame, then waits for the
  client's close.

Why one task, no nursery and no scope spanning the connection: with thousands of
connections, the reader, writer and drain-watcher tasks with their nursery, scopes and
coroutines were most of the ~120 objects per connection that CPython's full collections
walk (now ~36, with wsproto made only when needed), and starting them was a good part of
the CPU per connection (`python -m benchmarks connect idle`; the mixed scenario's p99 was
these collections' pauses).

Topics put frames into the outbox without waiting; when it is full they apply their
slow-consumer policy (default: close with 4008).
"""

from __future__ import annotations

import logging
import math
import socket
from functools import partial
from typing import Any

import trio
from trio.lowlevel import wait_readable, wait_writable
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from broker import (
    AlreadySubscribed,
    Broker,
    BrokerError,
    CloseReason,
    ControlFrame,
    InvalidFrame,
    NotSubscribed,
    Outbox,
    Payload,
    Subscriber,
    SubscribeResult,
    TooManySubscriptions,
    WireFormat,
    codec,
    next_connection_id,
)
from broker.codec import (
    PingRequest,
    PublishRequest,
    RequestRejected,
    SubscribeRequest,
    UnsubscribeRequest,
)

from ..errors import http_status
from ..tcp import ConnectionLost, receive, receive_deadline, send_all
from .frames import binary_frame, text_frame
from .handshake import Accept
from .protocol_log import ProtocolErrorLog
from .reader import DATA, INCOMPLETE, TOO_BIG, FrameBoundaries, client_data_frame, unmask
from .render import GAP_RENDERERS, RENDERERS

log = logging.getLogger("gateways.websocket")

# Bytes read per receive: large enough for a full publish frame in one read.
RECEIVE_SIZE = 65536
# A subscriber that has fallen behind must take this much of what is queued (or all of
# it, if less) within `write_timeout`, else it is dropped: at least 100 KiB/s by default.
WRITE_BATCH_BYTES = 1024 * 1024
# A client frame may carry a payload of max_payload_bytes plus this much envelope.
FRAME_ENVELOPE_BYTES = 64 * 1024
# Consecutive invalid frames tolerated before the connection is closed with 1008.
MAX_CONSECUTIVE_INVALID = 10
# Seconds spent at most on unsubscribing at teardown.
TEARDOWN_SECONDS = 2.0
_LINGERING = (ConnectionState.LOCAL_CLOSING,)
_CAN_CLOSE = (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)


# Protocol errors: debug per connection, a summary at info at most every 10 s.
protocol_errors = ProtocolErrorLog(log)


class WebSocketConnection:
    """One accepted WebSocket, served by the one task that calls `run` (see the module
    docstring). `evict` and `close_soon` may be called from any task.

    No cancel scope with a deadline spans the connection: each wait for room in the socket
    has its own, made only when the kernel is full, with the write's deadline
    (`write_timeout`) or the connection's `_deadline` (infinite until it is closing),
    whichever is first; a close decided while the task waits shortens the wait in
    progress. Waits for input are cut short by `_wake_up` (see `_serve`), and have a
    deadline only while a client frame is incomplete (`receive_deadline`).
    """

    __slots__ = (
        "_answered",
        "_boundaries",
        "_broker",
        "_capacity",
        "_close_requested",
        "_corked",
        "_deadline",
        "_evicted",
        "_format",
        "_frame_deadline",
        "_frame_started",
        "_frame_wrap",
        "_invalid",
        "_max_frame",
        "_more_input",
        "_need",
        "_opening",
        "_parts",
        "_patterns",
        "_pending",
        "_reading",
        "_settings",
        "_size",
        "_sock",
        "_unanswered",
        "_wait",
        "_wake",
        "_ws",
        "close_reason",
        "id",
        "outbox",
        "subscriber",
    )

    def __init__(
        self, sock: socket.socket, broker: Broker, accept: Accept, early: bytes = b""
    ) -> None:
        """`accept`: the handshake's outcome; `early`: bytes the client sent right behind
        its opening request."""
        self.id = next_connection_id()
        self._sock = sock
        # wsproto, made the first time a client frame is not a plain data frame, or to
        # close: from then on it parses everything (a new one is OPEN: no handshake).
        self._ws: Connection | None = None
        # The start of a client frame the fast path waits to complete (a bytearray while
        # it grows: each receive appends, nothing is joined again), and the bytes the
        # whole frame takes, once its header is there (0 before).
        self._pending: bytes | bytearray = b""
        self._need = 0
        # Frame boundaries in the input, once wsproto parses it (see `_receive_wsproto`).
        self._boundaries: FrameBoundaries | None = None
        # While input stops inside a frame: when that frame began, and by when it must be
        # complete (`receive_deadline`); None otherwise.
        self._frame_started: float | None = None
        self._frame_deadline: float | None = None
        self._broker = broker
        self._settings = settings = broker.settings
        self._format = wire_format = accept.wire_format
        self._max_frame = settings.max_payload_bytes + FRAME_ENVELOPE_BYTES
        self._capacity = settings.outbox_size
        self.outbox = Outbox(
            settings.outbox_size, RENDERERS[wire_format], broker.counters, sock.send,
            self._wake_up, settings.outbox_bytes, sock.sendmsg, GAP_RENDERERS[wire_format],
        )
        self.subscriber = Subscriber(self.id, accept.client, self.outbox, self.evict)
        self._patterns: set[str] = set()
        self._opening: tuple[list[str], bytes] | None = (accept.patterns, early)
        self._evicted: CloseReason | None = None
        self._close_requested: CloseReason | None = None
        self.close_reason: CloseReason | None = None
        self._deadline = math.inf  # by when a closing connection must be done
        self._wake = trio.CancelScope()  # cancelled by `_wake_up` (see `_serve`)
        self._reading = False  # waiting for input: a wake-up may cancel `_wake`
        self._wait: trio.CancelScope | None = None  # any other wait in progress
        self._frame_wrap = text_frame if wire_format is WireFormat.JSON else binary_frame
        self._parts: list[Any] | None = None  # a fragmented client message, so far
        self._size = 0
        self._invalid = 0
        # Publishes handed to their topic and not answered yet (`publish_soon`); a closing
        # connection waits for their answers (`_answered`) before its close frame.
        self._unanswered = 0
        # More client frames follow in the data being served (`_receive`); while a publish
        # is handed over with more to follow, its answer is only queued (`_corked`).
        self._more_input = False
        self._corked = False
        self._answered: trio.Event | None = None

    # -- lifecycle -----------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until closed by either side; always unsubscribes. The caller closes the
        socket afterwards."""
        counters = self._broker.counters
        counters.connections_opened += 1
        self._broker.connection_opened(self.subscriber)
        try:
            await self._open()
            await self._serve()
        except ConnectionLost:
            self._lost()
        finally:
            # Before the socket closes: no fast-path write may reach a recycled fd, and
            # topics' next offer answers CLOSED, so they forget us even if...
            self.outbox.close()
            self.outbox.discard()  # what it held is released now, not when topics forget
            self._pending = b""
            with trio.CancelScope(shield=True), trio.move_on_after(TEARDOWN_SECONDS):
                # ...their unsubscribe does not fit (see Broker.disconnect).
                await self._broker.disconnect(self.id, list(self._patterns))
            counters.connections_closed += 1
            self._broker.connection_closed(self.subscriber)

    async def _open(self) -> None:
        """The `?topic=` subscriptions, then any frames the client sent early."""
        assert self._opening is not None
        patterns, early = self._opening
        self._opening = None  # nothing of the handshake stays with the connection
        for pattern in patterns:
            try:
                await self._subscribe(SubscribeRequest(pattern, "latest", None), ack=False)
            except RequestRejected as exc:  # e.g. too_many_topics: say so, stay open
                await self._reply(codec.encode_error(self._format, None, exc.error))
        if early:
            self._request_close(await self._receive(early))

    def evict(self, reason: CloseReason) -> None:
        """Called by a topic's policy (or to shed memory): close after the rest of a begun
        frame, within `close_timeout`. What is still queued is dropped at once, and topics
        offering more are told CLOSED: the memory is released now, not at the close."""
        if self._evicted is not None:
            return
        self._evicted = reason
        self.outbox.close()
        self.outbox.discard()
        self._close_within(self._settings.close_timeout)
        self._wake_up()

    def close_soon(self, reason: CloseReason) -> None:
        """Close with `reason` after everything queued so far is written (drain: the
        drain's own deadline bounds it)."""
        if self._close_requested is None:
            self._close_requested = reason
            self._wake_up()

    def _request_close(self, reason: CloseReason | None) -> None:
        """Close after what is queued, all within `close_timeout` (a client's close, a
        protocol error)."""
        if reason is not None and self._close_requested is None:
            if reason is not CloseReason.CLIENT_CLOSED:
                protocol_errors.closed(self.id, reason.reason)
            self._close_requested = reason
            self._close_within(self._settings.close_timeout)

    def _close_within(self, seconds: float) -> None:
        self._deadline = deadline = min(self._deadline, trio.current_time() + seconds)
        wait = self._wait
        if wait is not None and deadline < wait.deadline:  # (its write deadline may be
            wait.deadline = deadline  # sooner; a wait for input is cut short by `_wake_up`)

    def _wake_up(self) -> None:
        """The outbox (or a close) needs the task: stop its wait for input, if it waits."""
        if self._reading:
            self._wake.cancel()

    def _lost(self) -> None:
        self.outbox.close()
        if self.close_reason is None:
            self.close_reason = CloseReason.CONNECTION_LOST

    # -- the connection's task -----------------------------------------------------------

    async def _serve(self) -> None:
        """Write what the fast path left, read and answer requests, until closed.

        One cancel scope lasts from one wake-up to the next, not one per wait for input:
        entering a scope costs about as much as parsing a request
        (`python -m benchmarks ws-publish`). `_wake_up` cancels it only while the task
        waits for input (`_reading`), so no other wait is ever cut short by a wake-up.
        """
        read_first = True
        while True:
            wake = self._wake = trio.CancelScope()
            with wake:
                woken = await self._serve_until_woken(wake, read_first)
                if woken is None:
                    return
                read_first = woken
                continue  # woken as input came: leave the cancelled scope, then read
            read_first = False  # woken while waiting for input: see what the wake is for

    async def _serve_until_woken(self, wake: trio.CancelScope, read_first: bool) -> bool | None:
        """`_serve` inside one wake scope: None when the connection is done; True when the
        scope was cancelled just as input arrived (leave it before awaiting anything)."""
        sock = self._sock
        outbox = self.outbox
        # A client's first request (after its subscriptions were made) is usually there
        # already: try to read it before waiting (a wait costs an epoll update and a
        # scheduler round).
        wait_first = not read_first
        while True:
            if self._evicted is not None:
                await self._finish(self._evicted)
                return None
            if len(outbox):  # what the kernel did not take at once
                await self._write_queued()
                continue
            if self._close_requested is not None:
                await self._finish(self._close_requested)
                return None
            if wait_first:
                deadline = self._frame_deadline
                self._reading = True
                try:
                    if deadline is None:
                        await wait_readable(sock)  # a wake-up raises Cancelled out of `wake`
                    else:  # a client frame is incomplete: a scope only for this wait
                        with trio.move_on_at(deadline):
                            await wait_readable(sock)
                finally:
                    self._reading = False
                if wake.cancel_called:
                    return True
                if deadline is not None and trio.current_time() >= deadline:
                    self._request_close(CloseReason.RECEIVE_TIMEOUT)
                    continue
            wait_first = True
            try:
                data = sock.recv(RECEIVE_SIZE)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                self._lost()
                return None
            self._request_close(await self._receive(data))

    async def _send(self, data: bytes) -> None:
        """Write all of `data` within `write_timeout` (the connection's deadline, if
        sooner); a close decided meanwhile shortens the wait (see `send_all`)."""
        deadline = min(self._deadline, trio.current_time() + self._settings.write_timeout)
        await send_all(self._sock, data, deadline, self._waiting)

    def _waiting(self, scope: trio.CancelScope | None) -> None:
        self._wait = scope

    async def _write_queued(self) -> None:
        """Write everything queued (`Outbox.write_queued`: scatter-gather over the shared
        frames, items leave the outbox as written), waiting for room as needed. Once the
        kernel is full, each WRITE_BATCH_BYTES of what is queued (all of it, if less) must
        go within `write_timeout` (or the connection's deadline, if sooner), else
        ConnectionLost: the client does not read, and what it held is released. After an
        eviction only the rest of a begun frame is written.

        Hot path for slow or bursty subscribers (guarded by `python -m benchmarks.quick`);
        a wait, its scope and the clock are only for a full kernel buffer.
        """
        outbox = self.outbox
        left = 0  # bytes of the batch in progress still to write by `deadline`
        deadline = math.inf
        while True:
            if self._evicted is not None:
                outbox.discard()
            try:
                sent = outbox.write_queued()
            except OSError as exc:
                raise ConnectionLost(exc) from exc
            if not len(outbox):
                return
            if sent:  # try again: wait only once the kernel takes nothing
                left -= sent
                continue
            if left <= 0:
                left = min(outbox.queued_bytes, WRITE_BATCH_BYTES)
                deadline = trio.current_time() + self._settings.write_timeout
            with trio.CancelScope(deadline=min(deadline, self._deadline)) as scope:
                self._wait = scope
                try:
                    await wait_writable(self._sock)
                finally:
                    self._wait = None
            if scope.cancelled_caught:
                raise ConnectionLost("the client did not read in time")

    async def _finish(self, reason: CloseReason) -> None:
        """Write what is queued (not after an eviction), then the close frame, then read
        until the client's close: a lingering close, so the close frame is not lost to a
        TCP reset. The connection's deadline bounds each step."""
        outbox = self.outbox
        if self._unanswered and self._evicted is None:
            await self._wait_for_answers()
        outbox.close()  # nothing more is queued; the task alone writes what is left
        if len(outbox):
            await self._write_queued()  # after an eviction, only a begun frame
        ws = self._ws
        if ws is None:  # wsproto takes over: it knows the closing handshake
            ws = self._ws = Connection(ConnectionType.SERVER)
        if ws.state not in _CAN_CLOSE:
            return
        reason = self._evicted or reason
        self.close_reason = reason
        await self._send(ws.send(CloseConnection(code=reason.code, reason=reason.reason)))
        self._close_within(self._settings.close_timeout)
        if self._pending:  # a client frame begun before our close: wsproto reads it on
            ws.receive_data(bytes(self._pending))  # (once, at the close)
            self._pending = b""
        while ws.state in _LINGERING:
            data = await receive(self._sock, self._deadline, RECEIVE_SIZE)
            if not data:  # end of stream, or out of time
                return
            ws.receive_data(data)
            for _ in ws.events():
                pass  # the client's close moves the state on; nothing else is answered

    async def _wait_for_answers(self) -> None:
        """Before closing: the answers of the publishes handed to topics, which come
        within `publish_timeout` (a busy answer if not accepted), by the deadline."""
        answered = self._answered = trio.Event()
        with trio.move_on_at(self._deadline) as scope:
            self._waiting(scope)
            try:
                await answered.wait()
            finally:
                self._waiting(None)

    def _answer_publish(self, request_id: Any, topic: str, outcome: int | BrokerError) -> None:
        """A publish handed to its topic is answered (on this task when the topic was idle,
        else on the topic's task or the publish deadlines actor's): the `ok` with its
        offset, or the error, written at once if nothing is queued before it."""
        fmt = self._format
        if type(outcome) is int:
            data = codec.encode_published(fmt, request_id, topic, outcome)
        else:  # not narrowed (int is not final); an isinstance per publish answer would cost
            data = codec.encode_error(fmt, request_id, outcome)  # type: ignore[arg-type]
        self.outbox.answer(self._frame_wrap(data), self._corked)
        self._unanswered -= 1
        if not self._unanswered and self._answered is not None:
            self._answered.set()

    async def _queue(self, item: ControlFrame) -> None:
        """Queue a reply behind pending frames; it is written at once if nothing is in
        flight. With the outbox full this task writes first (a client that does not read
        its replies slows only itself)."""
        outbox = self.outbox
        while len(outbox) >= self._capacity and not outbox.closed:
            await self._write_queued()
        try:
            await outbox.put(item)  # there is room: no wait, no checkpoint
        except trio.ClosedResourceError:
            pass  # closing; nothing more is written

    async def _reply(self, data: bytes) -> None:
        """Send a reply frame: straight to the socket when nothing is queued before it
        (the usual case: no outbox item, no flush; `python -m benchmarks ws-publish`),
        else behind what is queued."""
        frame = self._frame_wrap(data)
        outbox = self.outbox
        if len(outbox) or outbox.closed:
            await self._queue(ControlFrame(frame))
            return
        outbox.answer(frame)  # written now; what the kernel did not take goes first
        if outbox.closed:  # the write found the peer gone
            raise ConnectionLost("the client is gone")

    # -- reading -------------------------------------------------------------------------

    async def _receive(self, data: bytes) -> CloseReason | None:
        """Serve every complete client frame in `data`; the reason to close, if one of
        them calls for it (later frames are then ignored).

        Plain data frames are taken apart here (`client_data_frame`); at the first frame
        that is anything else, this connection hands all its input to wsproto for good.
        """
        if self._ws is not None:
            return await self._receive_wsproto(data)
        pending = self._pending
        if pending:
            pending += data  # (a bytearray: appended, not joined)
            if len(pending) < self._need:  # its end is not there yet: nothing to parse
                self._incomplete(len(pending), len(data))
                return None
            buffer: bytes | bytearray = pending
        else:
            buffer = data
        at = 0
        limit = self._max_frame
        while True:
            kind, start, end = client_data_frame(buffer, at, limit)
            if kind == DATA:
                payload = unmask(buffer, start, end)
                is_text = buffer[at] == 0x81
                frame: str | bytes = payload
                if is_text and not payload.isascii():  # ASCII is UTF-8: orjson reads bytes
                    try:
                        frame = payload.decode("utf-8")
                    except UnicodeDecodeError:
                        break  # wsproto closes with 1007
                at = end
                self._more_input = end < len(buffer)
                reason = await self._serve_frame(frame, is_text)
                self._more_input = False
                if reason is not None:
                    return reason
                continue
            if kind == INCOMPLETE:
                if at == len(buffer):  # the usual end: every frame was complete
                    if pending:
                        self._pending = b""  # (a big frame's buffer is not kept)
                        self._frame_deadline = self._frame_started = None
                else:
                    if at or buffer is not pending:  # what is left of one receive at most
                        self._pending = bytearray(buffer[at:])
                    self._need = end - at if end else 0  # 0: its header is not all there
                    self._incomplete(len(buffer) - at, len(data))
                self.outbox.flush()  # the answers queued while more frames followed
                return None
            if kind == TOO_BIG:
                return CloseReason.MESSAGE_TOO_BIG
            break  # OTHER
        self._pending = b""
        self._frame_deadline = self._frame_started = None
        self._ws = Connection(ConnectionType.SERVER)
        self._boundaries = FrameBoundaries()
        return await self._receive_wsproto(bytes(buffer[at:]))  # (once per connection)

    def _incomplete(self, received: int, arrived: int) -> None:
        """Input stopped inside a client frame (or message) of which `received` bytes came,
        the last `arrived` of them just now: it must be complete by `receive_deadline`."""
        started = self._frame_started
        if started is None or received <= arrived:  # it began in this receive
            started = self._frame_started = trio.current_time()
        settings = self._settings
        self._frame_deadline = receive_deadline(
            started, received, settings.header_timeout, settings.min_receive_rate
        )

    async def _serve_frame(self, frame: str | bytes, is_text: bool) -> CloseReason | None:
        """Serve one complete client message; POLICY_VIOLATION after too many invalid."""
        valid = await self._handle_frame(frame, is_text)
        if valid:
            self._invalid = 0
        elif valid is False:
            self._invalid += 1
            if self._invalid >= MAX_CONSECUTIVE_INVALID:
                return CloseReason.POLICY_VIOLATION
        return None

    async def _receive_wsproto(self, data: bytes) -> CloseReason | None:
        """`_receive` through wsproto: any frame, fragments, control frames, errors."""
        ws = self._ws
        boundaries = self._boundaries
        assert ws is not None and boundaries is not None
        boundaries.feed(data)
        ws.receive_data(data)
        try:
            return await self._serve_wsproto_events(ws)
        finally:
            if boundaries.incomplete:
                self._incomplete(boundaries.received, len(data))
            else:
                self._frame_deadline = self._frame_started = None

    async def _serve_wsproto_events(self, ws: Connection) -> CloseReason | None:
        """Serve the events wsproto made of the input so far; the reason to close, if any."""
        for event in ws.events():
            # `type(event) is X` in place, not kept in a local: the type checker narrows
            # `event` on it, and CPython specializes `type(x)` (no dearer than a local).
            if type(event) is TextMessage or type(event) is BytesMessage:
                self._size += len(event.data)
                if self._size > self._max_frame:
                    return CloseReason.MESSAGE_TOO_BIG
                parts = self._parts
                if not event.message_finished:
                    if parts is None:
                        parts = self._parts = []
                    parts.append(event.data)
                    continue
                if parts is None:
                    frame = event.data
                else:
                    parts.append(event.data)
                    frame = type(parts[0])().join(parts)
                    self._parts = None
                self._size = 0
                # wsproto may give a binary message as a bytearray: read as bytes are (the
                # CBOR decoder takes any bytes-like), not copied per message.
                reason = await self._serve_frame(
                    frame, type(event) is TextMessage  # type: ignore[arg-type]
                )
                if reason is not None:
                    return reason
            elif type(event) is Ping:
                await self._queue(ControlFrame(ws.send(event.response())))
            elif type(event) is CloseConnection:
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    # The client closes: answer after pending frames.
                    return CloseReason.CLIENT_CLOSED
                # Still OPEN: wsproto failed to parse (bad opcode, bad UTF-8, ...).
                return _protocol_reason_for(event.code)
        return None

    async def _handle_frame(self, frame: str | bytes, is_text: bool) -> bool | None:
        """Serve one client request; False if it was invalid (an error frame was sent),
        None if it was refused for the broker's own state (`topic_busy`, `draining`,
        `unavailable`: 5xx), which is no fault of the client's and counts neither way."""
        fmt = self._format
        if (fmt is WireFormat.JSON) != is_text:
            expected = "text" if fmt is WireFormat.JSON else "binary"
            error = InvalidFrame(f"{fmt.subprotocol} takes {expected} frames")
            await self._reply(codec.encode_error(fmt, None, error))
            return False
        try:
            request = codec.decode_request(fmt, frame, self._settings.max_payload_bytes)
            await self._dispatch(request)
        except RequestRejected as exc:
            await self._reply(codec.encode_error(fmt, exc.request_id, exc.error))
            return None if http_status(exc.error) >= 500 else False
        return True

    async def _dispatch(self, request: Any) -> None:
        fmt = self._format
        if type(request) is not PublishRequest:
            self.outbox.flush()  # answers queued for earlier frames: not behind a wait
        match request:
            case PublishRequest(topic, data, content_type, kind, request_id, rendering):
                payload = Payload(data, content_type, kind, rendering)
                # Usually answered at once (an idle topic) or later on the topic's task,
                # while this one reads on. Counted first: the answer may come before
                # `publish_soon` returns.
                self._unanswered += 1
                self._corked = self._more_input
                try:
                    handed = self._broker.publish_soon(
                        topic, payload, partial(self._answer_publish, request_id, topic)
                    )
                except BrokerError as exc:
                    self._unanswered -= 1
                    raise RequestRejected(exc, request_id) from exc
                finally:
                    self._corked = False
                if handed:
                    return
                self._unanswered -= 1
                self.outbox.flush()  # answers queued for earlier frames: not behind a wait
                try:
                    offset = await self._broker.publish(topic, payload)
                except BrokerError as exc:
                    raise RequestRejected(exc, request_id) from exc
                await self._reply(codec.encode_published(fmt, request_id, topic, offset))
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


__all__ = [
    "RECEIVE_SIZE",
    "ConnectionLost",
    "WebSocketConnection",
    "send_all",
]
