"""The soak's subscribers: `SoakSubscriber` (a healthy one that also accounts for drop-oldest
`gap` frames) and `StalledSubscriber` (a raw socket that never reads, one per policy).
"""

from __future__ import annotations

import base64
import os
import time
from typing import Any

import orjson
import trio

from ..lean import (
    Endpoint,
    ProtocolError,
    WsSubscriber,
    close_socket,
    open_socket,
    send_all,
)
from .errors import _note

# -- subscribers ---------------------------------------------------------------------------


class SoakSubscriber(WsSubscriber):
    """A `WsSubscriber` that also accounts for drop-oldest `gap` frames.

    Each gap makes exactly one jump in the offsets (counted in `out_of_order`), so a stream
    is whole when `received + skipped` covers every offset and `out_of_order == gaps`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gaps = 0
        self.skipped = 0
        self.bad_gaps = 0  # gap frames whose skipped != to - from + 1
        self.closed_early = False  # the broker closed it before we did

    def _other(self, payload: bytes) -> None:
        if b'"gap"' in payload:
            try:
                frame = orjson.loads(payload)
            except orjson.JSONDecodeError:
                frame = None
            if isinstance(frame, dict) and frame.get("op") == "gap":
                self.gaps += 1
                try:
                    skipped = int(frame["skipped"])
                    if int(frame["to"]) - int(frame["from"]) + 1 != skipped:
                        self.bad_gaps += 1
                except (KeyError, TypeError, ValueError):
                    skipped = 0
                    self.bad_gaps += 1
                self.skipped += skipped
                return
        super()._other(payload)

    @property
    def accounted(self) -> int:
        """Offsets received or reported skipped."""
        return self.received + self.skipped

    def whole(self, expected: int) -> bool:
        """Offsets 0..expected-1, each received in order or inside a gap frame."""
        return (
            self.accounted == expected
            and self.out_of_order == self.gaps
            and self.bad_gaps == 0
            and (expected == 0 or self.last_offset == expected - 1)
        )


class StalledSubscriber:
    """Subscribes, then never reads: a raw socket with a tiny receive buffer.

    The handshake answer is read one byte at a time, so no frame is consumed with it; to
    read later (to learn its fate) the socket is handed to a `SoakSubscriber`.
    """

    def __init__(self, ws: Endpoint, topic: str, client: str, rcvbuf: int) -> None:
        sep = "&" if "?" in ws.path else "?"
        self.path = f"{ws.path}{sep}topic={topic}&client={client}"
        self.ws = ws
        self.topic = topic
        self.client = client
        self.rcvbuf = rcvbuf
        self.reader = SoakSubscriber(ws.host, ws.port, self.path)
        self.subscribed = False
        self.gone_at: float | None = None  # when it left the presence listing (elapsed s)
        self.kept_to_end: bool | None = None
        self.read_started: float | None = None
        self.expected: int | None = None
        self.errors: list[str] = []

    async def connect(self) -> None:
        host, port = self.ws.host, self.ws.port
        sock = await open_socket(host, port, receive_buffer=self.rcvbuf)
        try:
            key = base64.b64encode(os.urandom(16))
            await send_all(
                sock,
                b"GET %s HTTP/1.1\r\nhost: %s:%d\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                b"sec-websocket-key: %s\r\nsec-websocket-version: 13\r\n\r\n"
                % (self.path.encode(), host.encode(), port, key),
            )
            head = bytearray()
            while not head.endswith(b"\r\n\r\n"):
                await trio.lowlevel.wait_readable(sock)
                try:
                    byte = sock.recv(1)
                except BlockingIOError:
                    continue
                if not byte:
                    raise ProtocolError("closed during the WebSocket handshake")
                head += byte
            if not head.startswith(b"HTTP/1.1 101"):
                raise ProtocolError(f"handshake answered {bytes(head[:200])!r}")
        except BaseException:
            close_socket(sock)
            raise
        self.reader.sock = sock

    async def read_to_end(self, expected: int | None, timeout: float) -> None:
        """Read until `expected` offsets are accounted for (None: until the broker closes)."""
        self.read_started = time.perf_counter()
        self.expected = expected
        reader = self.reader
        if reader.sock is None:
            return
        with trio.move_on_after(timeout):
            try:
                while not reader.done and (expected is None or reader.accounted < expected):
                    await reader.read_messages(reader.received + 1)
            except OSError as exc:
                _note(self.errors, f"reading: {exc!r}")
