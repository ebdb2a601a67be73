"""The WebSocket gateway's listener: `serve_websocket` serves `/v1/ws`, one
`WebSocketConnection` each.

The opening handshake is ours (`handshake`, pure, on `http.wire.parse_head`); after it,
each connection is one task (`connection`). The listening sockets are opened by trio
and then served as plain sockets: every connection waiting in the backlog is taken per
wake-up, and a connection is a plain non-blocking socket, not a `trio.SocketStream` (the
stream, its trio socket and conflict detectors were objects per connection; the
connection's task reads and writes the socket through `trio.lowlevel`).

Drain: one task in the connections' nursery tells every open connection to write what it
has and close with 1001, so no connection needs a task of its own waiting for it.
"""

from __future__ import annotations

import logging
import socket
from functools import partial

import trio
from trio.lowlevel import notify_closing

from broker import Broker, CloseReason, Settings

from ..http.wire import HttpError, parse_head
from ..tcp import ConnectionLost, accept_loop, receive, send_all, take_over
from .connection import RECEIVE_SIZE, WebSocketConnection
from .handshake import Accept, answer, reject_unreadable

log = logging.getLogger("gateways.websocket")

PATH = "/v1/ws"
# Largest opening request head: a connect URL may carry many `?topic=` subscriptions
# (wsproto's h11 took up to 16 KiB more than one receive held; this is one receive).
MAX_HANDSHAKE_BYTES = 64 * 1024


async def _handshake(sock: socket.socket, settings: Settings) -> tuple[Accept, bytes] | None:
    """Read the opening request and answer it; the acceptance and the bytes the client
    sent after its request, or None if rejected or abandoned (timeout, end of stream).

    The request is usually in the socket already: no wait (and no timer) then.
    """
    deadline = trio.current_time() + settings.handshake_timeout
    buffer = bytearray()
    while True:
        data = await receive(sock, deadline, RECEIVE_SIZE)
        if not data:  # end of stream, or out of time
            return None
        # Appended, and only the new bytes searched for the head's end: linear in the
        # bytes received, however small the pieces (a head trickled byte by byte was
        # joined and searched again per byte: quadratic, ~0.4 s of CPU for 64 KiB).
        searched = max(len(buffer) - 3, 0)
        buffer += data
        if (
            buffer.find(b"\r\n\r\n", searched) < 0
            and len(buffer) < MAX_HANDSHAKE_BYTES + 4
        ):
            continue
        try:
            parsed = parse_head(buffer, MAX_HANDSHAKE_BYTES)
        except HttpError as exc:
            await send_all(sock, reject_unreadable(exc).response, deadline)
            return None
        if parsed is not None:
            break
    head, consumed = parsed
    result = answer(head, PATH, settings.max_subscriptions)
    await send_all(sock, result.response, deadline)
    if not isinstance(result, Accept):
        return None
    return result, bytes(buffer[consumed:])


async def _serve_connection(
    broker: Broker, registry: set[WebSocketConnection], closing: trio.Event,
    sock: socket.socket,
) -> None:
    """One connection's task: handshake, serve, and close the socket in any case."""
    try:
        if broker.draining:
            return
        accepted = await _handshake(sock, broker.settings)
        if accepted is None:
            return
        connection = WebSocketConnection(sock, broker, *accepted)
        accepted = None  # or its bytes would live as long as the connection
        if closing.is_set():  # the drain began during the handshake
            connection.close_soon(CloseReason.GOING_AWAY)
        registry.add(connection)
        try:
            await connection.run()
        finally:
            registry.discard(connection)
    except ConnectionLost:
        pass  # the client vanished; nothing to tell it
    except Exception:
        log.exception("WebSocket connection failed")
    finally:
        notify_closing(sock)
        sock.close()


async def _close_all_on_drain(closing: trio.Event, registry: set[WebSocketConnection]) -> None:
    """When the broker drains: every connection writes what it has, then closes with
    1001 (connections still in their handshake see `closing` themselves)."""
    await closing.wait()
    for connection in list(registry):
        connection.close_soon(CloseReason.GOING_AWAY)


async def serve_websocket(
    broker: Broker,
    closing: trio.Event,
    connection_nursery: trio.Nursery,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on `settings.host:ws_port`; report the bound port; serve until cancelled.

    Connections run in `connection_nursery`, so cancelling this listener stops accepting
    without touching open connections; when `closing` is set they write what they have
    and close with 1001 (one task in `connection_nursery` tells them).
    """
    settings = broker.settings
    listeners = take_over(await trio.open_tcp_listeners(settings.ws_port, host=settings.host))
    registry: set[WebSocketConnection] = set()
    try:
        port = listeners[0].getsockname()[1]
        serve = partial(_serve_connection, broker, registry, closing)
        connection_nursery.start_soon(_close_all_on_drain, closing, registry)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    task_status.started(port)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(accept_loop, listener, connection_nursery, serve)


__all__ = [
    "MAX_HANDSHAKE_BYTES",
    "PATH",
    "serve_websocket",
]
