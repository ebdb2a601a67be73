"""`HttpServer`: the HTTP gateway's HTTP/1.1 server, on a trio listener of our own.

It replaced hypercorn, whose per-request machinery (h11 events, two tasks per connection,
an idle-timer task restarted on every request) cost ~3/4 of the server CPU of a publish.
Here a connection is one task on a plain socket (`tcp`): read until a request is complete
(`reader`: llhttp, fed each read once), call the handler, write the answer with one
`send_all`, repeat (keep-alive, pipelining).

Bounded everywhere: a request head is at most `wire.MAX_HEAD_BYTES` and arrives within
`header_timeout` of its first byte; a body is at most `max_body` and arrives at
`min_receive_rate` after that grace; an answer is written within `write_timeout`; a
connection that is idle, or sends nothing for `keep_alive` seconds in the middle of a
request, is closed. Drain (`drain()`): stop accepting, close idle keep-alive
connections at once, let requests in flight finish and close their connections after
answering (`connection: close`).
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
import trio
from trio.lowlevel import checkpoint, notify_closing, wait_readable

from broker import Settings

from ..errors import HTTP_CODES, error_body
from ..tcp import ConnectionLost, accept_loop, receive, receive_deadline, send_all, take_over
from .reader import RequestReader
from .wire import CONTINUE, HttpError, RequestHead, response_head

log = logging.getLogger("gateways.http")

# Bytes read per receive: a whole publish (head and body) usually arrives in one read.
RECEIVE_SIZE = 65536
JSON = b"application/json"
# The time bounds' defaults are the settings' (one place says what they are).
_DEFAULTS = Settings()


@dataclass(frozen=True, slots=True)
class HttpRequest:
    """A complete request: its head, its whole body, and the peers' addresses."""

    head: RequestHead
    body: bytes
    client: tuple[str, int] | None
    server: tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """What a handler answers; `content-length` (and `connection`) are the server's."""

    status: int
    body: bytes = b""
    content_type: bytes | None = JSON
    headers: tuple[tuple[bytes, bytes], ...] = ()


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


def json_response(status: int, document: object,
                  headers: tuple[tuple[bytes, bytes], ...] = ()) -> HttpResponse:
    """A JSON answer (orjson)."""
    return HttpResponse(status, orjson.dumps(document), JSON, headers)


def error_response(status: int, message: str, code: str | None = None) -> HttpResponse:
    """The contract's JSON error body for a plain HTTP-level error."""
    return json_response(status, error_body(code or HTTP_CODES.get(status, "http_error"), message))


class _Closed(Exception):
    """The connection is done: the peer left, timed out, or the server is draining."""


class _Connection:
    """One client's socket, its request reader, and its cancel scope, which has a deadline
    only while the task waits for bytes, and which drain cancels only while it is idle.
    A scope per wait cost more than parsing the request (`python -m benchmarks single`):
    a new one is made only after one was cancelled. The request being read started at
    `started` (trio time of its first bytes) and, once its head is in, `body_started`,
    `body_received` bytes ago (both set lazily: by the first wait that needs them)."""

    __slots__ = ("body_received", "body_started", "continued", "reader", "received", "scope",
                 "sock", "started")

    def __init__(self, sock: socket.socket, reader: RequestReader) -> None:
        self.sock = sock
        self.reader = reader
        self.scope = trio.CancelScope()
        # Bytes came since the last request was taken (maybe only blank lines, which begin
        # no request but must not be sent forever): the connection is not idle.
        self.received = False
        self.started: float | None = None
        self.body_started: float | None = None
        self.body_received = 0
        self.continued = False


class HttpServer:
    """Serve `handler` on listeners until cancelled or drained (see the module docstring)."""

    def __init__(self, handler: Handler, *, max_body: int, keep_alive: float,
                 header_timeout: float = _DEFAULTS.header_timeout,
                 min_receive_rate: float = _DEFAULTS.min_receive_rate,
                 write_timeout: float = _DEFAULTS.write_timeout) -> None:
        self._handler = handler
        self._max_body = max_body
        self._keep_alive = keep_alive
        self._header_timeout = header_timeout
        self._min_receive_rate = min_receive_rate
        self._write_timeout = write_timeout
        self._accepting = trio.CancelScope()
        # Connections waiting for their next request: drain closes them.
        self._idle: set[_Connection] = set()
        self.draining = False

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on `listeners` (taken over as plain sockets, see `tcp`) until drained,
        then wait for the connections to finish."""
        sockets = take_over(listeners)
        async with trio.open_nursery() as connections:
            with self._accepting:
                async with trio.open_nursery() as accepting:
                    for sock in sockets:
                        accepting.start_soon(
                            accept_loop, sock, connections, self._serve_connection
                        )
                    task_status.started()

    def drain(self) -> None:
        """Stop accepting; close idle connections now and busy ones after their answer."""
        self.draining = True
        self._accepting.cancel()
        for connection in list(self._idle):
            connection.scope.cancel()

    async def _serve_connection(self, sock: socket.socket) -> None:
        connection = _Connection(sock, RequestReader(self._max_body))
        client = _address(sock.getpeername)
        server = _address(sock.getsockname)
        try:
            while True:
                with connection.scope:
                    await self._serve_requests(connection, client, server)
                    return
                # A wait was cancelled: by drain (the connection was idle), or by its
                # deadline. Bytes that came meanwhile (the loop may have been stalled past
                # the deadline) are served; a connection with none is done.
                if self.draining or not self._receive_nowait(connection):
                    return
                connection.scope = trio.CancelScope()  # a cancelled scope stays cancelled
        except (_Closed, ConnectionLost):
            pass
        finally:
            notify_closing(sock)
            sock.close()

    async def _serve_requests(
        self,
        connection: _Connection,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
    ) -> None:
        """Answer the connection's requests in order until one ends it (a refusal, an
        answer with `connection: close`) or the server drains."""
        sock = connection.sock
        while not self.draining:
            try:
                head, body = await self._read_request(connection)
            except HttpError as error:
                await send_all(sock, _encode(error_response(error.status, error.message),
                                             None, close=True),
                               trio.current_time() + self._write_timeout)
                await _linger(sock)
                return
            keep_alive = head.keep_alive
            try:
                response = await self._handler(HttpRequest(head, body, client, server))
            except Exception:
                log.exception("HTTP handler failed for %s %s", head.method, head.target)
                response = error_response(500, "internal error", "internal")
                keep_alive = False
            keep_alive = keep_alive and not self.draining
            # A client that does not read its answer within write_timeout is dropped,
            # and with it the answer's bytes.
            await send_all(sock, _encode(response, head, close=not keep_alive),
                           trio.current_time() + self._write_timeout)
            if not keep_alive:
                return

    async def _read_request(self, connection: _Connection) -> tuple[RequestHead, bytes]:
        """The next complete request (head and body); raises `HttpError` if refused."""
        reader = connection.reader
        while (request := reader.next_request()) is None:
            if reader.finished:
                raise _Closed  # after an Upgrade request: nothing more is HTTP
            head = reader.head
            if head is not None and head.expect_continue and not connection.continued:
                connection.continued = True
                await send_all(connection.sock, CONTINUE,
                               trio.current_time() + self._write_timeout)
            await self._receive(connection)
        connection.received = False
        if connection.started is not None:
            connection.started = connection.body_started = None
            connection.body_received = 0
            connection.continued = False
        return request

    async def _receive(self, connection: _Connection) -> None:
        """Read the next bytes into the connection's reader; `_Closed` on end of stream;
        Cancelled past the wait's deadline or (if idle) by drain.

        Bytes already there are read without waiting; a wait arms the connection's scope
        with its deadline, and disarms it after: the keep-alive bound on silence, and for
        a request begun, its head within `header_timeout` of its first bytes and its body
        at `min_receive_rate` after that grace (`tcp.receive_deadline`).
        """
        reader = connection.reader
        idle = not connection.received and not reader.in_progress
        if idle and self.draining:
            raise _Closed
        sock = connection.sock
        while True:
            try:
                data = sock.recv(RECEIVE_SIZE)
                break
            except BlockingIOError:
                pass
            except OSError:
                raise _Closed from None
            now = trio.current_time()
            deadline = now + self._keep_alive
            if not idle:
                deadline = min(deadline, self._request_deadline(connection, now))
            scope = connection.scope
            scope.deadline = deadline
            if idle:
                self._idle.add(connection)
            try:
                await wait_readable(sock)  # past the deadline, or drained: Cancelled
            finally:
                scope.deadline = math.inf
                if idle:
                    self._idle.discard(connection)
            if scope.cancel_called:  # cancelled just as bytes came: see _serve_connection
                await checkpoint()
        if not data:
            raise _Closed
        connection.received = True
        if connection.body_started is not None:
            connection.body_received += len(data)
        reader.feed(data)

    def _request_deadline(self, connection: _Connection, now: float) -> float:
        """When the request being read is given up (the first wait sets its clocks)."""
        if connection.started is None:
            connection.started = now
        if connection.reader.head is None:
            return connection.started + self._header_timeout
        if connection.body_started is None:
            connection.body_started = now
        return receive_deadline(connection.body_started, connection.body_received,
                                self._header_timeout, self._min_receive_rate)

    def _receive_nowait(self, connection: _Connection) -> bool:
        """Feed the reader what the socket holds now; False if nothing (or the end)."""
        try:
            data = connection.sock.recv(RECEIVE_SIZE)
        except OSError:  # BlockingIOError included: nothing there
            return False
        if not data:
            return False
        connection.received = True
        if connection.body_started is not None:
            connection.body_received += len(data)
        connection.reader.feed(data)
        return True


# After refusing a request whose body is still arriving: how long, and how many bytes, to
# read and discard so that closing does not reset the connection under the client's feet
# (a reset can destroy the answer before the client has read it).
LINGER_SECONDS = 1.0
LINGER_BYTES = 4 * 1024 * 1024


async def _linger(sock: socket.socket) -> None:
    """Half-close, then discard what the client still sends, within bounds."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        return
    deadline = trio.current_time() + LINGER_SECONDS
    discarded = 0
    while discarded < LINGER_BYTES:
        data = await receive(sock, deadline, RECEIVE_SIZE)
        if not data:  # end of stream, or out of time
            return
        discarded += len(data)


_KEEP_ALIVE_10 = ((b"connection", b"keep-alive"),)


def _encode(response: HttpResponse, request: RequestHead | None, *, close: bool) -> bytes:
    """The response's bytes (no body for HEAD; an HTTP/1.0 client is told it may keep
    the connection, which it otherwise assumes is closed)."""
    headers = response.headers
    if not close and request is not None and not request.http_11:
        headers = headers + _KEEP_ALIVE_10
    head = response_head(response.status, response.content_type, len(response.body),
                         headers, close)
    if request is not None and request.method == "HEAD":
        return head
    return head + response.body


def _address(which: Callable[[], object]) -> tuple[str, int] | None:
    """`sock.getpeername` / `getsockname` as (host, port), None if unknown."""
    try:
        address = which()
    except OSError:
        return None
    return (address[0], address[1]) if isinstance(address, tuple) else None


__all__ = [
    "Handler",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "error_response",
    "json_response",
]
