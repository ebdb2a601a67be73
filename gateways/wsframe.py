"""Server-to-client WebSocket frames for pre-encoded payloads (RFC 6455 section 5.2), pure.

Server frames are unmasked, so a message's whole frame (header + payload) is the same
bytes for every subscriber of one wire format: it is built once and written to each.
Checked against wsproto's parser in tests/test_wsframe.py.
"""

from __future__ import annotations

import struct

OPCODE_TEXT = 0x1
OPCODE_BINARY = 0x2
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
OPCODE_PONG = 0xA

_FIN = 0x80
_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def frame(opcode: int, payload: bytes) -> bytes:
    """One final, unmasked frame carrying `payload`."""
    length = len(payload)
    first = _FIN | opcode
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return _HEADER_16.pack(first, 126, length) + payload
    return _HEADER_64.pack(first, 127, length) + payload


def text_frame(payload: bytes) -> bytes:
    """A text frame; `payload` must be UTF-8 (our JSON encoder guarantees it)."""
    return frame(OPCODE_TEXT, payload)


def binary_frame(payload: bytes) -> bytes:
    return frame(OPCODE_BINARY, payload)
