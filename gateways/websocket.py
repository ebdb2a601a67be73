"""The WebSocket gateway: a listener serving `/v1/ws`, one `WebSocketConnection` each.

The opening handshake is ours (`ws_handshake`, pure, on `http_wire.parse_head`); after it,
each connection is one task (`ws_connection`). The listening sockets are opened by trio
and then served as plain sockets: every connection waiting in the backlog is taken per
wake-up, and a connection is a plain non-blocking socket, not a `trio.SocketStream` (the
stream, its trio socket and conflict detectors were objects per connection; the
connection's task reads and writes the socket through `trio.lowlevel`).

Drain: one task in the connections' nursery tells every open connection to write what it
has and close with 1001, so no connection needs a task of its own waiting for it.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from collections.abc import Callable
from functools import partial

import trio
from trio.lowlevel import notify_closing, wait_readable

from broker import Broker, CloseReason, Settings

from .http_wire import HttpError, parse_head
from .ws_connection import (
    RECEIVE_SIZE,
    RENDERERS,
    ConnectionLost,
    WebSocketConnection,
    render_cbor,
    render_json,
    send_all,
)
from .ws_handshake import Accept, answer, reject_unreadable

log = logging.getLogger("gateways.websocket")

PATH = "/v1/ws"
# Largest opening request head: a connect URL may carry many `?topic=` subscriptions
# (wsproto's h11 took up to 16 KiB more than one receive held; this is one receive).
MAX_HANDSHAKE_BYTES = 64 * 1024
# Connections accepted per wake-up of the listener before it lets other tasks run.
ACCEPT_BURST = 64
# Unsent bytes above which the kernel reports the socket not writable (as trio's
# SocketStream sets it: a writer waits instead of piling data into the kernel).
NOTSENT_LOWAT = 16 * 1024
# Linux copies TCP_NODELAY and TCP_NOTSENT_LOWAT from a listening socket to the sockets it
# accepts: set once on the listener, not twice per connection.
TCP_OPTIONS_INHERITED = sys.platform == "linux"
# accept() failures that mean "out of file descriptors or memory": wait, then go on
# (trio's serve_listeners does the same).
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_RETRY_SECONDS = 0.1
# accept() failures about one connection that died in the backlog: skip it.
ACCEPT_IGNORABLE_ERRNOS = {
    getattr(errno, name) for name in (
        "ECONNABORTED", "EPROTO", "EPERM", "ENETDOWN", "ENOPROTOOPT", "EHOSTDOWN",
        "ENONET", "EHOSTUNREACH", "EOPNOTSUPP", "ENETUNREACH",
    ) if hasattr(errno, name)
}


async def _handshake(sock: socket.socket, settings: Settings) -> tuple[Accept, bytes] | None:
    """Read the opening request and answer it; the acceptance and the bytes the client
    sent after its request, or None if rejected or abandoned (timeout, end of stream).

    The request is usually in the socket already: no wait (and no timer) then.
    """
    deadline = trio.current_time() + settings.handshake_timeout
    buffer = b""
    while True:
        try:
            data = sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            with trio.move_on_at(deadline) as scope:
                await wait_readable(sock)
            if scope.cancelled_caught:
                return None
            continue
        except OSError:
            return None
        if not data:
            return None
        buffer += data
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
    return result, buffer[consumed:]


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


def _set_tcp_options(sock: socket.socket) -> None:
    """What trio's SocketStream sets on a TCP socket: no Nagle delay, and a writer waits
    instead of piling data into the kernel."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    if hasattr(socket, "TCP_NOTSENT_LOWAT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)


def _prepare(sock: socket.socket) -> bool:
    """An accepted connection made non-blocking, with `_set_tcp_options` unless it has
    them from the listening socket; False (and the socket closed) if already unusable."""
    try:
        sock.setblocking(False)
        if not TCP_OPTIONS_INHERITED:
            _set_tcp_options(sock)
    except OSError:
        sock.close()
        return False
    return True


async def _accept_loop(
    listener: socket.socket,
    start_connection: Callable[[socket.socket], None],
) -> None:
    """Accept connections until cancelled; closes the listening socket when done.

    Every connection waiting in the backlog is taken per wake-up (up to ACCEPT_BURST; the
    next wait lets the connections run): a crowd connecting at once costs one wait, not
    one per connection.
    """
    try:
        while True:
            await wait_readable(listener)
            for _ in range(ACCEPT_BURST):
                try:
                    sock, _ = listener.accept()
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno in ACCEPT_IGNORABLE_ERRNOS:
                        continue
                    if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                        raise
                    log.error("accept: %s; retrying in %s s", exc, ACCEPT_RETRY_SECONDS)
                    await trio.sleep(ACCEPT_RETRY_SECONDS)
                    break
                if _prepare(sock):
                    start_connection(sock)
    finally:
        notify_closing(listener)
        listener.close()


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
    # trio opens the sockets (address families, SO_REUSEADDR, backlog); we take them over
    # as plain sockets so accepted connections are plain sockets too.
    listeners = [
        socket.socket(fileno=listener.socket.detach())
        for listener in await trio.open_tcp_listeners(settings.ws_port, host=settings.host)
    ]
    registry: set[WebSocketConnection] = set()
    try:
        for listener in listeners:
            listener.setblocking(False)
            if TCP_OPTIONS_INHERITED:
                _set_tcp_options(listener)
        port = listeners[0].getsockname()[1]
        start = partial(connection_nursery.start_soon, _serve_connection, broker, registry,
                        closing)
        connection_nursery.start_soon(_close_all_on_drain, closing, registry)
    except BaseException:
        for listener in listeners:
            listener.close()
        raise
    task_status.started(port)
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept_loop, listener, start)


__all__ = [
    "PATH",
    "RENDERERS",
    "WebSocketConnection",
    "render_cbor",
    "render_json",
    "serve_websocket",
]
