"""One accepted WebSocket connection, served by ONE task on a plain non-blocking socket.

`WebSocketConnection` is one object written as three parts, mixins over the slots they
share (`connection_slots.ConnectionSlots`): its reading side (`intake.FrameIntake`), its
requests (`dispatch.RequestDispatch`), and, here, its lifecycle, its task and its writing.

- The task reads client frames and answers them; a reply goes straight to the socket when
  nothing is queued before it. Plain data frames (final, masked text or binary) are taken
  apart by `intake` (`reader.client_data_frame`); at the first frame that is anything
  else, wsproto takes over this connection's input (and it does every close).
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
  answers later on its own task; either way through `_answer_publish` (`dispatch`),
  which writes the `ok` via `Outbox.answer`, and this task reads on (no task switch, and
  no wait, per publish; `python -m benchmarks ws-publish`). A new topic, or a full
  mailbox, is asked and waited for. The answers of publishes read in one go (a
  pipelining client) are queued and written together after the last of them, or before
  any request that may wait: one write instead of one per publish (`ws-publish-window`).
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

Why mixins, not objects or functions of their own for the parts: a connection stays one
object with one set of slots (nothing more per connection for the collector to walk),
every call on the hot path stays the same method call on `self` (a method found on a base
class is looked up and cached as one on the class itself), and a test can still replace
one part's method on a subclass (`tests/gateways/websocket/test_intake.py`).

Topics put frames into the outbox without waiting; when it is full they apply their
slow-consumer policy (default: close with 4008).
"""

from __future__ import annotations

import logging
import math
import socket

import trio
from trio.lowlevel import wait_readable, wait_writable
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import CloseConnection

from broker import (
    Broker,
    CloseReason,
    ControlFrame,
    Outbox,
    Subscriber,
    WireFormat,
    codec,
    next_connection_id,
)
from broker.codec import RequestRejected, SubscribeRequest

from ..tcp import ConnectionLost, receive, send_all
from .dispatch import RequestDispatch
from .frames import binary_frame, text_frame
from .handshake import Accept
from .intake import FrameIntake
from .protocol_log import ProtocolErrorLog
from .render import GAP_RENDERERS, RENDERERS

log = logging.getLogger("gateways.websocket")

# Bytes read per receive: large enough for a full publish frame in one read.
RECEIVE_SIZE = 65536
# A subscriber that has fallen behind must take this much of what is queued (or all of
# it, if less) within `write_timeout`, else it is dropped: at least 100 KiB/s by default.
WRITE_BATCH_BYTES = 1024 * 1024
# A client frame may carry a payload of max_payload_bytes plus this much envelope.
FRAME_ENVELOPE_BYTES = 64 * 1024
# Seconds spent at most on unsubscribing at teardown.
TEARDOWN_SECONDS = 2.0
_LINGERING = (ConnectionState.LOCAL_CLOSING,)
_CAN_CLOSE = (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING)


# Protocol errors: debug per connection, a summary at info at most every 10 s.
protocol_errors = ProtocolErrorLog(log)


class WebSocketConnection(FrameIntake, RequestDispatch):
    """One accepted WebSocket, served by the one task that calls `run` (see the module
    docstring). `evict` and `close_soon` may be called from any task.

    No cancel scope with a deadline spans the connection: each wait for room in the socket
    has its own, made only when the kernel is full, with the write's deadline
    (`write_timeout`) or the connection's `_deadline` (infinite until it is closing),
    whichever is first; a close decided while the task waits shortens the wait in
    progress. Waits for input are cut short by `_wake_up` (see `_serve`), and have a
    deadline only while a client frame is incomplete (`receive_deadline`).
    """

    __slots__ = ()  # all declared by ConnectionSlots

    def __init__(
        self, sock: socket.socket, broker: Broker, accept: Accept, early: bytes = b""
    ) -> None:
        """`accept`: the handshake's outcome; `early`: bytes the client sent right behind
        its opening request."""
        self.id = next_connection_id()
        self._sock = sock
        # wsproto, made the first time a client frame is not a plain data frame, or to
        # close: from then on it parses everything (a new one is OPEN: no handshake).
        self._ws = None
        # The start of a client frame the fast path waits to complete (a bytearray while
        # it grows: each receive appends, nothing is joined again), and the bytes the
        # whole frame takes, once its header is there (0 before).
        self._pending = b""
        self._need = 0
        # Frame boundaries in the input, once wsproto parses it (see `_receive_wsproto`).
        self._boundaries = None
        # While input stops inside a frame: when that frame began, and by when it must be
        # complete (`receive_deadline`); None otherwise.
        self._frame_started = None
        self._frame_deadline = None
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
        self._patterns = set()
        self._opening = (accept.patterns, early)
        self._evicted = None
        self._close_requested = None
        self.close_reason = None
        self._deadline = math.inf  # by when a closing connection must be done
        self._wake = trio.CancelScope()  # cancelled by `_wake_up` (see `_serve`)
        self._reading = False  # waiting for input: a wake-up may cancel `_wake`
        self._wait = None  # any other wait in progress
        self._frame_wrap = text_frame if wire_format is WireFormat.JSON else binary_frame
        self._parts = None  # a fragmented client message, so far
        self._size = 0
        self._invalid = 0
        # Publishes handed to their topic and not answered yet (`publish_soon`); a closing
        # connection waits for their answers (`_answered`) before its close frame.
        self._unanswered = 0
        # More client frames follow in the data being served (`_receive`); while a publish
        # is handed over with more to follow, its answer is only queued (`_corked`).
        self._more_input = False
        self._corked = False
        self._answered = None

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


__all__ = [
    "RECEIVE_SIZE",
    "ConnectionLost",
    "WebSocketConnection",
    "send_all",
]
