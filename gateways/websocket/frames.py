"""Server-to-client WebSocket frames for pre-encoded payloads (RFC 6455 section 5.2), pure.

Server frames are unmasked, so a message's whole frame (header + payload) is the same
bytes for every subscriber of one wire format: it is built once and written to each.
Checked against wsproto's parser in tests/gateways/websocket/test_frames.py.
"""

from __future__ import annotations

import os
import struct

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA

_FIN = 0x80
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def _header(first: int, length: int, mask_bit: int) -> bytes:
    if length < 126:
        return bytes((first, mask_bit | length))
    if length < 65536:
        return _HEADER_16.pack(first, mask_bit | 126, length)
    return _HEADER_64.pack(first, mask_bit | 127, length)


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked (server-to-client) frame carrying `payload`."""
    return _header(_FIN | opcode, len(payload), 0) + payload


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, key: bytes | None = None
) -> bytes:
    """A client-to-server frame, masked as RFC 6455 requires (clients, tests, benchmarks).

    `key` is the 4-byte masking key (random when None); `fin=False` starts a fragment.
    """
    key = os.urandom(4) if key is None else key
    length = len(payload)
    header = _header((_FIN if fin else 0) | opcode, length, 0x80)
    if not length:
        return header + key
    keystream = (key * (length // 4 + 1))[:length]
    masked = int.from_bytes(payload, "big") ^ int.from_bytes(keystream, "big")
    return header + key + masked.to_bytes(length, "big")


def text_frame(payload: bytes) -> bytes:
    """A text frame; `payload` must be UTF-8 (our JSON encoder guarantees it)."""
    return frame(OPCODE_TEXT, payload)


def binary_frame(payload: bytes) -> bytes:
    return frame(OPCODE_BINARY, payload)
