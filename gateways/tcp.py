"""Plain non-blocking TCP sockets served on trio: both gateways' listeners and writes.

trio opens the listening sockets (address families, SO_REUSEADDR, backlog); `take_over`
turns them into plain sockets, so accepted connections are plain sockets too: no
`trio.SocketStream`, trio socket or conflict detector per connection (objects, and
per-call overhead on every read and write). Connections are read and written through
`trio.lowlevel` (`wait_readable`, `wait_writable`); `send_all` is the one write loop.
"""

from __future__ import annotations

import errno
import logging
import socket
import sys
from collections.abc import Awaitable, Callable

import trio
from trio.lowlevel import notify_closing, wait_readable, wait_writable

log = logging.getLogger("gateways.tcp")

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


def set_tcp_options(sock: socket.socket) -> None:
    """What trio's SocketStream sets on a TCP socket: no Nagle delay, and a writer waits
    instead of piling data into the kernel."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    if hasattr(socket, "TCP_NOTSENT_LOWAT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, NOTSENT_LOWAT)


def prepare(sock: socket.socket) -> bool:
    """An accepted connection made non-blocking, with `_set_tcp_options` unless it has
    them from the listening socket; False (and the socket closed) if already unusable."""
    try:
        sock.setblocking(False)
        if not TCP_OPTIONS_INHERITED:
            set_tcp_options(sock)
    except OSError:
        sock.close()
        return False
    return True


async def accept_loop(
    listener: socket.socket,
    connection_nursery: trio.Nursery,
    serve_connection: Callable[[socket.socket], Awaitable[object]],
) -> None:
    """Accept connections until cancelled, each served by `serve_connection(sock)` in
    `connection_nursery`; closes the listening socket when done.

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
                if prepare(sock):
                    connection_nursery.start_soon(serve_connection, sock)
    finally:
        notify_closing(listener)
        listener.close()


def take_over(listeners: list[trio.SocketListener]) -> list[socket.socket]:
    """The plain, non-blocking sockets of trio's `listeners` (which must not be used
    afterwards), with `set_tcp_options` for what they accept where that is inherited."""
    sockets = [socket.socket(fileno=listener.socket.detach()) for listener in listeners]
    try:
        for sock in sockets:
            sock.setblocking(False)
            if TCP_OPTIONS_INHERITED:
                set_tcp_options(sock)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def receive_deadline(started: float, received: int, grace: float, min_rate: float) -> float:
    """When an incomplete request or frame begun at `started` (trio time), `received` bytes
    of it so far, is given up: `grace` seconds, plus one more per `min_rate` bytes that
    arrived. A slow link keeps going; a trickle (slowloris) runs out of time."""
    return started + grace + received / min_rate


class ConnectionLost(Exception):
    """Nothing more can be said on this socket: the peer is gone (a send failed), or a
    write did not finish by the connection's deadline."""


async def receive(sock: socket.socket, deadline: float, size: int = 65536) -> bytes:
    """The next bytes from `sock` by `deadline` (trio time); b"" at the end of the stream,
    on an error or at the deadline. Bytes already there are read with no wait or timer."""
    while True:
        try:
            return sock.recv(size)
        except BlockingIOError:
            pass
        except OSError:
            return b""
        with trio.move_on_at(deadline) as scope:
            await wait_readable(sock)
        if scope.cancelled_caught:
            return b""


async def send_all(
    sock: socket.socket,
    data: bytes | memoryview,
    deadline: float,
    waiting: Callable[[trio.CancelScope | None], None] | None = None,
) -> None:
    """Write all of `data` to the non-blocking `sock` by `deadline`, waiting while the
    kernel's buffer is full. Raises `ConnectionLost` if it cannot. `waiting` is told the
    scope of each wait for room (and None after it), so a caller can shorten it."""
    while True:
        try:
            sent = sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            raise ConnectionLost(exc) from exc
        if sent == len(data):
            return
        if sent:
            data = memoryview(data)[sent:]
        with trio.CancelScope(deadline=deadline) as scope:
            if waiting is not None:
                waiting(scope)
            try:
                await wait_writable(sock)
            finally:
                if waiting is not None:
                    waiting(None)
        if scope.cancelled_caught:
            raise ConnectionLost("the client did not read in time")


__all__ = [
    "ConnectionLost",
    "accept_loop",
    "prepare",
    "receive",
    "receive_deadline",
    "send_all",
    "set_tcp_options",
    "take_over",
]
