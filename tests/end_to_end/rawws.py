"""A hand-rolled WebSocket client on a raw trio socket, for tests that must misbehave.

It can stop reading (a stalled subscriber), send malformed or partial frames, and read
server frames exactly as sent, which a well-behaved client library will not do.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from dataclasses import dataclass

import trio

from gateways.websocket.frames import client_frame

from ..conftest import TIMEOUT


@dataclass(frozen=True)
class Frame:
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int:
        assert self.opcode == 0x8
        return struct.unpack("!H", self.payload[:2])[0]


def masked_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    """A client frame (clients must mask), FIN set unless `fin` is False."""
    return client_frame(opcode, payload, fin=fin)


class RawWebSocket:
    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = bytearray()
        self.response_head = b""

    @classmethod
    async def connect(
        cls, port: int, target: str = "/v1/ws", receive_buffer: int | None = None
    ) -> RawWebSocket:
        sock = trio.socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        key = base64.b64encode(os.urandom(16)).decode()
        await stream.send_all(
            (
                f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        raw = cls(stream)
        raw.response_head = await raw._read_head()
        return raw

    @property
    def status(self) -> int:
        return int(self.response_head.split(b" ", 2)[1])

    async def _read_head(self) -> bytes:
        with trio.fail_after(TIMEOUT):
            while b"\r\n\r\n" not in self.buffer:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.buffer += data
        head, _, rest = bytes(self.buffer).partition(b"\r\n\r\n")
        self.buffer = bytearray(rest)
        return head

    async def read_body(self) -> bytes:
        """After a rejected handshake: the rest of the response until the server closes."""
        with trio.fail_after(TIMEOUT):
            while data := await self.stream.receive_some(65536):
                self.buffer += data
        return bytes(self.buffer)

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send_text(self, text: str | bytes) -> None:
        payload = text.encode() if isinstance(text, str) else text
        await self.send(masked_frame(0x1, payload))

    async def _fill(self, need: int) -> bool:
        while len(self.buffer) < need:
            data = await self.stream.receive_some(65536)
            if not data:
                return False
            self.buffer += data
        return True

    async def read_frame(self) -> Frame | None:
        """The next server frame, or None if the server closed the TCP connection."""
        with trio.fail_after(TIMEOUT):
            if not await self._fill(2):
                return None
            first, second = self.buffer[0], self.buffer[1]
            assert second & 0x80 == 0, "server frames must not be masked"
            length, offset = second & 0x7F, 2
            if length == 126:
                if not await self._fill(4):
                    return None
                length, offset = struct.unpack("!H", self.buffer[2:4])[0], 4
            elif length == 127:
                if not await self._fill(10):
                    return None
                length, offset = struct.unpack("!Q", self.buffer[2:10])[0], 10
            if not await self._fill(offset + length):
                return None
            payload = bytes(self.buffer[offset:offset + length])
            del self.buffer[:offset + length]
            return Frame(first & 0x0F, payload)

    async def read_until_close(self) -> tuple[list[Frame], Frame | None]:
        """Data frames until the close frame (returned second; None if TCP just closed)."""
        frames = []
        while True:
            frame = await self.read_frame()
            if frame is None or frame.opcode == 0x8:
                return frames, frame
            frames.append(frame)

    async def aclose(self) -> None:
        await self.stream.aclose()
