"""`HttpServer`: the HTTP gateway's HTTP/1.1 server, on a trio listener of our own.

It replaced hypercorn, whose per-request machinery (h11 events, two tasks per connection,
an idle-timer task restarted on every request) cost ~3/4 of the server CPU of a publish.
Here a connection is one task on a plain socket (`tcp`): read until a request is complete
(`http_wire` parses it), call the handler, write the answer with one `send_all`, repeat
(keep-alive, pipelining).

Bounded everywhere: a request head is at most `http_wire.MAX_HEAD_BYTES`, a body at most
`max_body`; a connection that is idle, or sends nothing for `keep_alive` seconds in the
middle of a request, is closed. Drain (`drain()`): stop accepting, close idle keep-alive
connections at once, let requests in flight finish and close their connections after
answering (`connection: close`).
"""

from __future__ import annotations

import logging
import math
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial

import orjson
import trio
from trio.lowlevel import notify_closing, wait_readable

from .errors import HTTP_CODES, error_body
from .http_wire import CONTINUE, HttpError, RequestHead, parse_chunked, parse_head, response_head
from .tcp import ConnectionLost, accept_loop, receive, send_all, take_over

log = logging.getLogger("gateways.http_server")

# Bytes read per receive: a whole publish (head and body) usually arrives in one read.
RECEIVE_SIZE = 65536
JSON = b"application/json"


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
    """One client's socket and its one cancel scope, which has a deadline (keep-alive)
    only while the task waits for bytes, and which drain cancels only while it is idle.
    A scope per wait cost more than parsing the request (`python -m benchmarks single`)."""

    __slots__ = ("scope", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.scope = trio.CancelScope()


class HttpServer:
    """Serve `handler` on listeners until cancelled or drained (see the module docstring)."""

    def __init__(self, handler: Handler, *, max_body: int, keep_alive: float) -> None:
        self._handler = handler
        self._max_body = max_body
        self._keep_alive = keep_alive
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
            start = partial(connections.start_soon, self._serve_connection)
            with self._accepting:
                async with trio.open_nursery() as accepting:
                    for sock in sockets:
                        accepting.start_soon(accept_loop, sock, start)
                    task_status.started()

    def drain(self) -> None:
        """Stop accepting; close idle connections now and busy ones after their answer."""
        self.draining = True
        self._accepting.cancel()
        for connection in list(self._idle):
            connection.scope.cancel()

    async def _serve_connection(self, sock: socket.socket) -> None:
        connection = _Connection(sock)
        client = _address(sock.getpeername)
        server = _address(sock.getsockname)
        buffer = bytearray()
        try:
            with connection.scope:  # cancelled: timed out or drained while idle
                while not self.draining:
                    try:
                        request = await self._read_request(connection, buffer, client, server)
                    except HttpError as error:
                        await send_all(sock, _encode(error_response(error.status, error.message),
                                                     None, close=True), math.inf)
                        await _linger(sock)
                        return
                    keep_alive = request.head.keep_alive
                    try:
                        response = await self._handler(request)
                    except Exception:
                        log.exception("HTTP handler failed for %s %s",
                                      request.head.method, request.head.target)
                        response = error_response(500, "internal error", "internal")
                        keep_alive = False
                    keep_alive = keep_alive and not self.draining
                    await send_all(sock, _encode(response, request.head, close=not keep_alive),
                                   math.inf)
                    if not keep_alive:
                        return
        except (_Closed, ConnectionLost):
            pass
        finally:
            notify_closing(sock)
            sock.close()

    async def _read_request(
        self,
        connection: _Connection,
        buffer: bytearray,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
    ) -> HttpRequest:
        """The next complete request from `buffer` and the socket (consumed from `buffer`)."""
        parsed = parse_head(buffer) if buffer else None
        while parsed is None:
            await self._receive(connection, buffer, idle=not buffer)
            parsed = parse_head(buffer)
        head, at = parsed
        if head.chunked:
            if head.expect_continue:
                await send_all(connection.sock, CONTINUE, math.inf)
            while (decoded := parse_chunked(buffer, at, self._max_body)) is None:
                await self._receive(connection, buffer, idle=False)
            body, end = decoded
        else:
            length = head.content_length or 0
            if length > self._max_body:
                raise HttpError(413, f"body is {length} bytes; the limit is {self._max_body}")
            end = at + length
            if len(buffer) < end and head.expect_continue:
                await send_all(connection.sock, CONTINUE, math.inf)
            while len(buffer) < end:
                await self._receive(connection, buffer, idle=False)
            body = bytes(buffer[at:end])
        del buffer[:end]
        return HttpRequest(head, body, client, server)

    async def _receive(self, connection: _Connection, buffer: bytearray, *, idle: bool) -> None:
        """Append the next bytes to `buffer`; `_Closed` on EOF, timeout or (if idle) drain.

        Bytes already there are read without waiting; a wait arms the connection's scope
        with the keep-alive deadline, and disarms it after.
        """
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
            scope = connection.scope
            scope.deadline = trio.current_time() + self._keep_alive
            if idle:
                self._idle.add(connection)
            try:
                await wait_readable(sock)  # past the deadline, or drained: Cancelled
            finally:
                scope.deadline = math.inf
                if idle:
                    self._idle.discard(connection)
            if scope.cancel_called:
                raise _Closed  # cancelled just as bytes came: never half-serve a request
        if not data:
            raise _Closed
        buffer += data


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
