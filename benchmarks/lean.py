"""Lean load-generating clients on raw sockets driven by trio, so the client is never the
bottleneck.

- `HttpClient`: one keep-alive HTTP/1.1 connection, one request at a time. Request bytes are
  built by hand; the response is parsed just enough (status line, `content-length` or
  chunked body). httpx manages ~1,300 requests/s on a small machine; this is several times
  faster and leaves the broker as the thing being measured.
- `WsSubscriber`: a WebSocket reader. The handshake is done by hand; server frames (unmasked)
  are walked in bulk from one preallocated receive buffer. Message frames are counted and
  only their `"offset":` is parsed (a byte search, no JSON decoding), which is enough to
  check that a subscriber saw offsets in order with no gap. Other frames (`ok`, `error`)
  are rare and are decoded with orjson. Client frames (ping, close) are masked as RFC 6455
  requires.
- `Dialer`: many WebSocket connections opened (handshake checked, ping answered) and
  closed at once from one task through one epoll set, for connect-rate figures that
  measure the server rather than the generator.

Why plain non-blocking stdlib sockets and not `trio.socket`: with hundreds of subscribers a
receive usually finds one or two frames, so the per-receive cost is what limits the client.
`trio.socket.recv` tries the call first (usually EAGAIN), waits, calls again, and adds two
checkpoints; here each receive is one `trio.lowlevel.wait_readable` and one `recv_into`
into a reused buffer (no allocation). Every receive still goes through trio's scheduler,
so no task can starve the others, and every wait is a cancellation point.

Neither class applies timeouts itself: callers wrap calls in `trio.move_on_after` /
`trio.fail_after`. A request interrupted that way leaves `HttpClient` closed (it reconnects
on its next request).
"""

from __future__ import annotations

import base64
import errno
import hashlib
import os
import select
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
import trio

from gateways.wsframe import client_frame

# HTTP responses are small: a modest receive size keeps recv's allocation cheap.
HTTP_RECEIVE_SIZE = 65536
# WebSocket frames are received into one preallocated buffer of this size (recv_into: no
# allocation per receive); it grows only for a frame larger than itself.
WS_BUFFER_SIZE = 256 * 1024
# Move a partial frame to the front when less than this much room is left after it.
WS_MIN_ROOM = 64 * 1024
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OFFSET_KEY = b'"offset":'
_OFFSET_KEY_LEN = len(_OFFSET_KEY)
_DIGITS = frozenset(b"0123456789-")


class ProtocolError(Exception):
    """The server said something this lean client does not understand."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Host, port and path (with query) parsed from an `http://` or `ws://` URL."""

    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "ws") or parts.hostname is None or parts.port is None:
            raise ValueError(f"need http://HOST:PORT or ws://HOST:PORT/..., got {url!r}")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.hostname, parts.port, path)


# -- raw sockets under trio ----------------------------------------------------------------


async def open_socket(
    host: str, port: int, receive_buffer: int | None = None
) -> socket.socket:
    """A connected, non-blocking TCP socket with Nagle off (small requests leave at once).

    `receive_buffer` sets SO_RCVBUF before connecting, so the advertised window is small
    from the start (a stalled subscriber that fills up fast).
    """
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.connect(address)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, f"connect to {host}:{port}: {os.strerror(error)}") from None
    except BaseException:
        close_socket(sock)
        raise
    return sock


def close_socket(sock: socket.socket) -> None:
    """Close, first waking any trio task waiting on it (trio requires this order)."""
    try:
        trio.lowlevel.notify_closing(sock)
    except RuntimeError:
        pass  # outside trio: nobody can be waiting
    sock.close()


async def send_all(sock: socket.socket, data: bytes) -> None:
    """Write all of `data` (a loopback send usually takes it in one call, without waiting)."""
    view = memoryview(data)
    while view:
        try:
            sent = sock.send(view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        view = view[sent:]


async def receive(sock: socket.socket, size: int) -> bytes:
    """Wait until readable, then one `recv` (b"" at end of stream)."""
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            return sock.recv(size)
        except BlockingIOError:
            continue  # spurious wake-up


# -- HTTP --------------------------------------------------------------------------------


class HttpClient:
    """A keep-alive HTTP/1.1 client on one raw socket. Never opens a connection per request.

    `await client.request(b"POST", b"/v1/topics/a.b", body)` returns `(status, body_bytes)`.
    Any exception (including cancellation by a caller's timeout) closes the socket, since its
    state is then unknown; the next request reconnects and counts it in `reconnects`.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reconnects = 0
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._host_header = f"{host}:{port}".encode()
        self._connected_once = False

    async def connect(self) -> None:
        self.close()
        self._sock = await open_socket(self.host, self.port)
        if self._connected_once:
            self.reconnects += 1
        self._connected_once = True

    def close(self) -> None:
        if self._sock is not None:
            close_socket(self._sock)
            self._sock = None
        self._buf.clear()

    async def request(
        self,
        method: bytes,
        path: bytes,
        body: bytes = b"",
        content_type: bytes = b"application/json",
    ) -> tuple[int, bytes]:
        """Send one request and read its whole response: `(status, body)`."""
        if self._sock is None:
            await self.connect()
        sock = self._sock
        assert sock is not None
        head = b"%s %s HTTP/1.1\r\nhost: %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n" % (
            method,
            path,
            self._host_header,
            content_type,
            len(body),
        )
        try:
            await send_all(sock, head + body)
            return await self._read_response(sock)
        except BaseException:
            self.close()
            raise

    async def _fill(self, sock: socket.socket) -> None:
        data = await receive(sock, HTTP_RECEIVE_SIZE)
        if not data:
            raise ConnectionError("server closed the connection")
        self._buf += data

    async def _read_response(self, sock: socket.socket) -> tuple[int, bytes]:
        buf = self._buf
        while (end := buf.find(b"\r\n\r\n")) < 0:
            await self._fill(sock)
        head = bytes(buf[:end]).lower()
        if not head.startswith(b"http/1.") or len(head) < 12:
            raise ProtocolError(f"bad status line {bytes(buf[:40])!r}")
        status = int(head[9:12])
        start = end + 4
        at = head.find(b"\r\ncontent-length:")
        if at >= 0:
            stop = head.find(b"\r\n", at + 2)
            length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            while len(buf) < start + length:
                await self._fill(sock)
            body = bytes(buf[start : start + length])
            del buf[: start + length]
        elif b"\r\ntransfer-encoding:" in head and b"chunked" in head:
            del buf[:start]
            body = await self._read_chunked(sock)
        elif status in (204, 304) or status < 200:
            body = b""
            del buf[:start]
        else:
            raise ProtocolError("response without content-length or chunked encoding")
        if b"\r\nconnection: close" in head:
            self.close()
        return status, body

    async def _read_chunked(self, sock: socket.socket) -> bytes:
        """A chunked body (trailers are not supported: the broker sends none)."""
        buf = self._buf
        parts = []
        while True:
            while (eol := buf.find(b"\r\n")) < 0:
                await self._fill(sock)
            size = int(bytes(buf[:eol]).split(b";")[0], 16)
            need = eol + 2 + size + 2
            while len(buf) < need:
                await self._fill(sock)
            if size == 0:
                del buf[:need]
                return b"".join(parts)
            parts.append(bytes(buf[eol + 2 : eol + 2 + size]))
            del buf[:need]


# -- WebSocket ---------------------------------------------------------------------------


def mask_frame(opcode: int, payload: bytes) -> bytes:
    """One final client-to-server frame, masked with a random key."""
    return client_frame(opcode, payload)


class WsSubscriber:
    """A lean WebSocket subscriber: hand-made handshake, bulk frame walking, offset checks.

    Accounting of `message` frames (text frames carrying `"offset":`):
    `received`, `first_offset`, `last_offset`, `out_of_order` (frames whose offset was not
    the previous one + 1, or not `expect_from` for the first), and `t_first` / `t_last`
    (`time.perf_counter()` after the receive that brought the first / latest message).
    Other text or binary frames are decoded and kept in `others` (the first `max_others`;
    `others_seen` counts them all). A close frame from the server sets `close_code` /
    `close_reason`; end of stream sets `eof`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        *,
        expect_from: int = 0,
        max_others: int = 50,
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.sock: socket.socket | None = None
        self.received = 0
        self.first_offset: int | None = None
        self.last_offset: int | None = None
        self.out_of_order = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.others: list[object] = []
        self.others_seen = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self.eof = False
        self.handshake_status: int | None = None
        self._next = expect_from
        self._max_others = max_others
        self._buf = bytearray(WS_BUFFER_SIZE)
        self._pos = 0  # start of the first frame not yet walked
        self._end = 0  # end of the received bytes in _buf
        self._pongs: list[bytes] = []
        self._awaited_ok: object = None  # id of the ping whose `ok` we wait for
        self._ok_seen = False

    @property
    def done(self) -> bool:
        """The server closed (close frame or end of stream): nothing more will arrive."""
        return self.eof or self.close_code is not None

    async def connect(self) -> None:
        """Open the socket and do the opening handshake; raise `ProtocolError` unless 101."""
        self.sock = sock = await open_socket(self.host, self.port)
        early = await ws_handshake(sock, self.host, self.port, self.path)
        self.handshake_status = 101
        self._buf[: len(early)] = early  # frames the server sent right after its answer
        self._end = len(early)
        self._walk()

    async def send_text(self, payload: bytes) -> None:
        assert self.sock is not None
        await send_all(self.sock, mask_frame(0x1, payload))

    async def ping(self, request_id: int = 1) -> None:
        """Send `{"op":"ping","id":N}` and read until its `ok` (the subscription barrier).

        Message frames arriving meanwhile are accounted as usual. Raises `ProtocolError`
        if the server closes first.
        """
        self._awaited_ok, self._ok_seen = request_id, False
        await self.send_text(orjson.dumps({"op": "ping", "id": request_id}))
        while not self._ok_seen:
            if self.done:
                raise ProtocolError(
                    f"closed before the ping answer: {self.close_code} {self.close_reason}"
                )
            await self._receive()
        self._awaited_ok = None

    async def read_messages(self, count: int) -> None:
        """Read until `received >= count` or the server closes."""
        while self.received < count and not self.done:
            await self._receive()

    async def close(self) -> None:
        """Send a close (1000), wait for the server's close frame, close the socket.

        Callers bound this with a timeout; the socket is closed in any case.
        """
        if self.sock is None:
            return
        try:
            if not self.done:
                await send_all(self.sock, mask_frame(0x8, struct.pack("!H", 1000)))
                while not self.done:
                    await self._receive()
        except OSError:
            pass  # the server went away first: nothing to close politely
        finally:
            self.abort()

    def abort(self) -> None:
        """Close the socket now, without a closing handshake."""
        if self.sock is not None:
            close_socket(self.sock)
            self.sock = None

    async def _receive(self) -> None:
        """Wait until readable, then one receive (see `receive_ready`); answer pings."""
        sock = self.sock
        assert sock is not None
        while True:
            await trio.lowlevel.wait_readable(sock)
            if self.receive_ready():
                break
        await self.send_pongs()

    def receive_ready(self) -> bool:
        """One non-blocking `recv_into` the buffer, then walk every complete frame.

        False if there was nothing to read (EAGAIN). For callers that wait themselves, like
        `SubscriberGroup`; they must then call `send_pongs`.
        """
        sock = self.sock
        assert sock is not None
        if len(self._buf) - self._end < WS_MIN_ROOM:
            self._compact()
        try:
            count = sock.recv_into(memoryview(self._buf)[self._end :])
        except BlockingIOError:
            return False
        if not count:
            self.eof = True
            return True
        self._end += count
        before = self.received
        self._walk()
        if self.received != before:
            now = time.perf_counter()
            if not before:
                self.t_first = now
            self.t_last = now
        return True

    async def send_pongs(self) -> None:
        """Answer the server's pings seen so far (the broker sends none today)."""
        if self._pongs and self.sock is not None:
            pongs, self._pongs = self._pongs, []
            for payload in pongs:
                await send_all(self.sock, mask_frame(0xA, payload))

    def _walk(self) -> None:
        """Account for every complete frame in the buffer; keep a partial one for later."""
        buf = self._buf
        pos = self._pos
        size = self._end
        received = self.received
        expected = self._next
        out_of_order = 0
        last = self.last_offset
        while size - pos >= 2:
            length = buf[pos + 1] & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if size - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 4
            else:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            opcode = buf[pos] & 0x0F
            pos = end
            if opcode == 0x1:
                at = buf.find(_OFFSET_KEY, start, end)
                if at >= 0:
                    at += _OFFSET_KEY_LEN
                    stop = at
                    while stop < end and buf[stop] in _DIGITS:
                        stop += 1
                    offset = int(buf[at:stop])
                    if offset != expected:
                        out_of_order += 1
                    if received == 0 and self.first_offset is None:
                        self.first_offset = offset
                    expected = offset + 1
                    last = offset
                    received += 1
                else:
                    self._other(bytes(buf[start:end]))
            elif opcode == 0x8:
                payload = bytes(buf[start:end])
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.close_reason = payload[2:].decode("utf-8", "replace")
            elif opcode == 0x9:
                self._pongs.append(bytes(buf[start:end]))
            elif opcode != 0xA:
                self._other(bytes(buf[start:end]))  # binary or fragmented: not expected here
        self.received = received
        self._next = expected
        self.out_of_order += out_of_order
        self.last_offset = last
        if pos == size:  # the usual case: everything walked, start again at the front
            pos = self._end = 0
        self._pos = pos

    def _compact(self) -> None:
        """Make room: move the partial frame to the front, or grow for a huge frame."""
        buf, pos, end = self._buf, self._pos, self._end
        if pos:
            buf[: end - pos] = buf[pos:end]
            self._pos, self._end = 0, end - pos
        if len(buf) - self._end < WS_MIN_ROOM:
            buf.extend(bytes(len(buf)))

    def _other(self, payload: bytes) -> None:
        try:
            frame: object = orjson.loads(payload)
        except orjson.JSONDecodeError:
            frame = payload
        if (
            self._awaited_ok is not None
            and isinstance(frame, dict)
            and frame.get("op") == "ok"
            and frame.get("id") == self._awaited_ok
        ):
            self._ok_seen = True  # the barrier's answer, not an unexpected frame
            return
        self.others_seen += 1
        if len(self.others) < self._max_others:
            self.others.append(frame)


class SubscriberGroup:
    """Reads many connected `WsSubscriber`s from ONE trio task through one epoll set.

    With one task per subscriber every frame costs a trio wake-up (an epoll_ctl, a task
    switch, scheduler bookkeeping): tens of microseconds in CPython, which makes the client
    the bottleneck long before the broker with a hundred subscribers. Here trio waits on the
    epoll fd itself; each wake-up then serves every subscriber that is ready (`epoll.poll(0)`),
    so the client's cost per frame is one `recv_into` shared by however many frames arrived
    plus the frame walk. Linux only (epoll), like the broker's own deployment.
    """

    def __init__(self, subscribers: list[WsSubscriber]) -> None:
        self.subscribers = subscribers

    async def read_messages(self, count: int) -> None:
        """Read until every subscriber has `count` messages or its server side closed."""
        pending = {
            sub.sock.fileno(): sub
            for sub in self.subscribers
            if sub.sock is not None and not sub.done and sub.received < count
        }
        if not pending:
            return
        epoll = select.epoll(len(pending))
        try:
            for fd in pending:
                epoll.register(fd, select.EPOLLIN)
            while pending:
                await trio.lowlevel.wait_readable(epoll)
                for fd, _ in epoll.poll(0):
                    sub = pending.get(fd)
                    if sub is None:
                        continue
                    sub.receive_ready()
                    if sub._pongs:
                        await sub.send_pongs()
                    if sub.received >= count or sub.done:
                        epoll.unregister(fd)
                        del pending[fd]
        finally:
            trio.lowlevel.notify_closing(epoll)
            epoll.close()


def handshake_request(host: str, port: int, path: str) -> tuple[bytes, bytes]:
    """A client's opening request with a fresh key, and the `Sec-WebSocket-Accept` value
    (lower-cased) the server must answer it with."""
    key = base64.b64encode(os.urandom(16))
    request = (b"GET %s HTTP/1.1\r\nhost: %s:%d\r\nupgrade: websocket\r\n"
               b"connection: Upgrade\r\nsec-websocket-key: %s\r\n"
               b"sec-websocket-version: 13\r\n\r\n" % (path.encode(), host.encode(), port, key))
    return request, base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).lower()


def check_handshake(head: bytes, accept: bytes) -> None:
    """`ProtocolError` unless the response head (without its blank line) is a 101 with
    the `accept` token of `handshake_request`."""
    lowered = head.lower()
    if lowered[9:12] != b"101":
        raise ProtocolError(f"handshake answered {head[:300]!r}")
    if b"sec-websocket-accept: " + accept not in lowered:
        raise ProtocolError("bad Sec-WebSocket-Accept")


async def ws_handshake(sock: socket.socket, host: str, port: int, path: str) -> bytes:
    """The client's opening handshake on a connected socket, made by hand; returns the
    bytes the server sent after its 101 answer.
    Raises `ProtocolError` unless the server accepts with the right Sec-WebSocket-Accept."""
    request, accept = handshake_request(host, port, path)
    await send_all(sock, request)
    buf = bytearray()
    while (end := buf.find(b"\r\n\r\n")) < 0:
        data = await receive(sock, HTTP_RECEIVE_SIZE)
        if not data:
            raise ProtocolError("connection closed during the WebSocket handshake")
        buf += data
    check_handshake(bytes(buf[:end]), accept)
    return bytes(buf[end + 4 :])


# -- many connections opened at once, from one task ----------------------------------------

_DIAL_CONNECTING, _DIAL_HANDSHAKE, _DIAL_PING, _DIAL_READY, _DIAL_CLOSING = range(5)


class Dial:
    """One connection of `dial_websockets`: its socket, where it is, what it took."""

    __slots__ = ("accept", "buf", "error", "path", "ping_id", "ready_at", "sock", "started",
                 "state")

    def __init__(self, sock: socket.socket, path: str, accept: bytes, ping_id: int) -> None:
        self.sock: socket.socket | None = sock
        self.path = path
        self.accept = accept
        self.ping_id = ping_id
        self.state = _DIAL_CONNECTING
        self.buf = b""
        self.started = time.perf_counter()
        self.ready_at = 0.0
        self.error: str | None = None

    @property
    def ready(self) -> bool:
        return self.state == _DIAL_READY

    @property
    def latency(self) -> float:
        """Connect -> 101 -> the ping's `ok`, in seconds (for ready connections)."""
        return self.ready_at - self.started


class Dialer:
    """Opens many WebSocket connections at once and closes them, from ONE trio task
    through one epoll set (Linux), as `SubscriberGroup` reads many: per connection no task,
    no trio wait, no handshake coroutine; a connection is a small state machine driven by
    readiness events. So the generator costs a fraction of the server's CPU per connection
    and a connect-rate figure measures the server.

    Each connection: non-blocking connect, the opening request (`handshake_request`), the
    101 checked with its exact accept token (`check_handshake`), a `{"op":"ping"}` and its
    `ok` (the barrier: `?topic=` subscriptions are in place). Anything else (a refusal, a
    close, a reset, an `error` frame) fails that connection with the reason.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.dials: list[Dial] = []
        self._epoll = select.epoll()
        self._live: dict[int, Dial] = {}

    async def open(self, paths: list[str], progress: Callable[[], object] | None = None,
                   concurrency: int | None = None) -> None:
        """Connect one client per path: all at once, or at most `concurrency` in progress
        (a sliding window: the next starts as soon as one is ready or failed, no waves).
        Returns when every one is ready or failed (callers bound it with a trio scope; the
        unfinished ones then count as not ready)."""
        infos = await trio.socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        epoll, live = self._epoll, self._live
        first = len(self.dials)
        todo = iter(enumerate(paths, first + 1))

        def start_next() -> bool:
            """Start the next connection; False when none is left."""
            for ping_id, path in todo:
                request, accept = handshake_request(self.host, self.port, path)
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                dial = Dial(sock, path, accept, ping_id)
                dial.buf = request  # until sent
                self.dials.append(dial)
                error = sock.connect_ex(address)
                if error not in (0, errno.EINPROGRESS):
                    self._fail(dial, f"connect: {os.strerror(error)}")
                    continue
                live[sock.fileno()] = dial
                epoll.register(sock.fileno(), select.EPOLLOUT)
                return True
            return False

        for _ in range(len(paths) if concurrency is None else concurrency):
            if not start_next():
                break
        while live:
            await trio.lowlevel.wait_readable(self._epoll)
            for fd, _ in epoll.poll(0):
                dial = live.get(fd)
                if dial is None:
                    continue
                try:
                    done = self._step(dial)
                except (OSError, ProtocolError, ValueError) as exc:
                    self._fail(dial, repr(exc))
                    done = True
                if done:
                    if dial.ready and progress is not None:
                        progress()
                    start_next()

    def _step(self, dial: Dial) -> bool:
        """Advance `dial` on a readiness event; True once it is ready (or failed)."""
        sock = dial.sock
        assert sock is not None
        if dial.state == _DIAL_CONNECTING:
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if error:
                raise OSError(error, f"connect: {os.strerror(error)}")
            if sock.send(dial.buf) != len(dial.buf):  # ~200 bytes, an empty buffer
                raise ProtocolError("the opening request did not fit the socket buffer")
            dial.buf = b""
            dial.state = _DIAL_HANDSHAKE
            self._epoll.modify(sock.fileno(), select.EPOLLIN)
            return False
        data = sock.recv(HTTP_RECEIVE_SIZE)
        if not data:
            raise ProtocolError("the server closed the connection")
        buf = dial.buf + data
        if dial.state == _DIAL_HANDSHAKE:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                dial.buf = buf
                return False
            check_handshake(buf[:end], dial.accept)
            sock.send(mask_frame(0x1, b'{"op":"ping","id":%d}' % dial.ping_id))
            dial.state = _DIAL_PING
            buf = buf[end + 4:]
        frames, dial.buf = server_frames(buf)
        for opcode, payload in frames:
            if opcode == 0x8:
                raise ProtocolError(f"closed before the ping's ok: {payload[:60]!r}")
            if opcode == 0x1:
                answer = orjson.loads(payload)
                if answer.get("op") == "ok" and answer.get("id") == dial.ping_id:
                    dial.ready_at = time.perf_counter()
                    dial.state = _DIAL_READY
                    self._epoll.unregister(sock.fileno())
                    del self._live[sock.fileno()]
                    return True
                raise ProtocolError(f"unexpected frame before the ping's ok: {payload[:120]!r}")
        return False

    def _fail(self, dial: Dial, why: str) -> None:
        dial.error = why
        dial.state = _DIAL_CLOSING
        if dial.sock is not None:
            fd = dial.sock.fileno()
            if self._live.pop(fd, None) is not None:
                self._epoll.unregister(fd)
            dial.sock.close()
            dial.sock = None

    async def close(self, timeout: float) -> None:
        """Close every connection politely (1000, then the server's close or end of
        stream) within `timeout`, then drop whatever is left; closes the epoll set."""
        epoll = self._epoll
        closing: dict[int, Dial] = {}
        for dial in self.dials:
            sock = dial.sock
            if sock is None:
                continue
            fd = sock.fileno()
            if self._live.pop(fd, None) is not None:
                epoll.unregister(fd)
            try:
                sock.send(mask_frame(0x8, struct.pack("!H", 1000)))
            except OSError:
                continue  # closed below
            closing[fd] = dial
            dial.buf = b""
            epoll.register(fd, select.EPOLLIN)
        try:
            with trio.move_on_after(timeout):
                while closing:
                    await trio.lowlevel.wait_readable(epoll)
                    for fd, _ in epoll.poll(0):
                        dial = closing[fd]
                        assert dial.sock is not None
                        try:
                            data = dial.sock.recv(HTTP_RECEIVE_SIZE)
                        except BlockingIOError:
                            continue
                        except OSError:
                            data = b""
                        frames, dial.buf = server_frames(dial.buf + data)
                        if not data or any(opcode == 0x8 for opcode, _ in frames):
                            epoll.unregister(fd)
                            del closing[fd]
        finally:
            for dial in self.dials:
                if dial.sock is not None:
                    dial.sock.close()
                    dial.sock = None
            epoll.close()


def server_frames(data: bytes) -> tuple[list[tuple[int, bytes]], bytes]:
    """Complete server (unmasked) frames at the start of `data` as (opcode, payload), and
    the rest."""
    frames = []
    pos, size = 0, len(data)
    while size - pos >= 2:
        length = data[pos + 1] & 0x7F
        start = pos + 2
        if length == 126:
            if size - pos < 4:
                break
            length, start = int.from_bytes(data[pos + 2 : pos + 4], "big"), pos + 4
        elif length == 127:
            if size - pos < 10:
                break
            length, start = int.from_bytes(data[pos + 2 : pos + 10], "big"), pos + 10
        if start + length > size:
            break
        frames.append((data[pos] & 0x0F, data[start : start + length]))
        pos = start + length
    return frames, data[pos:]
