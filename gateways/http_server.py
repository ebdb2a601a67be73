"""`HttpServer`: the HTTP gateway's HTTP/1.1 server, on a trio listener of our own.

It replaced hypercorn, whose per-request machinery (h11 events, two tasks per connection,
an idle-timer task restarted on every request) cost ~3/4 of the server CPU of a publish.
Here a connection is one task: read until a request is complete (`http_wire` parses it),
call the handler, write the answer with one `send_all`, repeat (keep-alive, pipelining).

Bounded everywhere: a request head is at most `http_wire.MAX_HEAD_BYTES`, a body at most
`max_body`; a connection that is idle, or sends nothing for `keep_alive` seconds in the
middle of a request, is closed. Drain (`drain()`): stop accepting, close idle keep-alive
connections at once, let requests in flight finish and close their connections after
answering (`connection: close`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import orjson
import trio

from .errors import HTTP_CODES, error_body
from .http_wire import CONTINUE, HttpError, RequestHead, parse_chunked, parse_head, response_head

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


class HttpServer:
    """Serve `handler` on listeners until cancelled or drained (see the module docstring)."""

    def __init__(self, handler: Handler, *, max_body: int, keep_alive: float) -> None:
        self._handler = handler
        self._max_body = max_body
        self._keep_alive = keep_alive
        self._accepting = trio.CancelScope()
        # The receive scopes of connections waiting for their next request: drain closes them.
        self._idle: set[trio.CancelScope] = set()
        self.draining = False

    async def serve(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Accept on `listeners` until drained, then wait for the connections to finish."""
        async with trio.open_nursery() as connections:
            with self._accepting:
                await trio.serve_listeners(
                    self._serve_connection,
                    listeners,
                    handler_nursery=connections,
                    task_status=task_status,
                )

    def drain(self) -> None:
        """Stop accepting; close idle connections now and busy ones after their answer."""
        self.draining = True
        self._accepting.cancel()
        for scope in self._idle:
            scope.cancel()

    async def _serve_connection(self, stream: trio.SocketStream) -> None:
        client = _address(stream, "getpeername")
        server = _address(stream, "getsockname")
        buffer = bytearray()
        try:
            while not self.draining:
                try:
                    request = await self._read_request(stream, buffer, client, server)
                except HttpError as error:
                    await stream.send_all(_encode(error_response(error.status, error.message),
                                                  None, close=True))
                    await _linger(stream)
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
                await stream.send_all(_encode(response, request.head, close=not keep_alive))
                if not keep_alive:
                    return
        except (_Closed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            with trio.CancelScope(shield=True):
                await stream.aclose()

    async def _read_request(
        self,
        stream: trio.SocketStream,
        buffer: bytearray,
        client: tuple[str, int] | None,
        server: tuple[str, int] | None,
    ) -> HttpRequest:
        """The next complete request from `buffer` and the stream (consumed from `buffer`)."""
        parsed = parse_head(buffer) if buffer else None
        while parsed is None:
            await self._receive(stream, buffer, idle=not buffer)
            parsed = parse_head(buffer)
        head, at = parsed
        if head.chunked:
            if head.expect_continue:
                await stream.send_all(CONTINUE)
            while (decoded := parse_chunked(buffer, at, self._max_body)) is None:
                await self._receive(stream, buffer, idle=False)
            body, end = decoded
        else:
            length = head.content_length or 0
            if length > self._max_body:
                raise HttpError(413, f"body is {length} bytes; the limit is {self._max_body}")
            end = at + length
            if len(buffer) < end and head.expect_continue:
                await stream.send_all(CONTINUE)
            while len(buffer) < end:
                await self._receive(stream, buffer, idle=False)
            body = bytes(buffer[at:end])
        del buffer[:end]
        return HttpRequest(head, body, client, server)

    async def _receive(self, stream: trio.SocketStream, buffer: bytearray, *, idle: bool) -> None:
        """Append the next bytes to `buffer`; `_Closed` on EOF, timeout or (if idle) drain."""
        if idle and self.draining:
            raise _Closed
        with trio.move_on_after(self._keep_alive) as scope:
            if idle:
                self._idle.add(scope)
            try:
                data = await stream.receive_some(RECEIVE_SIZE)
            finally:
                if idle:
                    self._idle.discard(scope)
        if scope.cancelled_caught or not data:
            raise _Closed
        buffer += data


# After refusing a request whose body is still arriving: how long, and how many bytes, to
# read and discard so that closing does not reset the connection under the client's feet
# (a reset can destroy the answer before the client has read it).
LINGER_SECONDS = 1.0
LINGER_BYTES = 4 * 1024 * 1024


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then discard what the client still sends, within bounds."""
    with trio.move_on_after(LINGER_SECONDS):
        await stream.send_eof()
        discarded = 0
        while discarded < LINGER_BYTES:
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
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


def _address(stream: trio.SocketStream, which: str) -> tuple[str, int] | None:
    try:
        address = getattr(stream.socket, which)()
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
