"""Reading client WebSocket frames (RFC 6455 section 5.2), pure: no sockets, no trio.

- `client_data_frame` / `unmask`: the fast path, which takes plain data frames (final,
  masked text or binary) apart itself; everything else is wsproto's. Checked against
  wsproto in tests/gateways/websocket/test_reader.py and, through a connection,
  test_intake.py (differential, with hypothesis).
- `FrameBoundaries`: where frames end in a byte stream, without keeping their payloads,
  so a connection knows when input stops inside a frame (its receive deadline applies).
"""

from __future__ import annotations

# First bytes of the client frames the fast path serves itself: FIN set, no RSV bits,
# text or binary; anything else (control frames, fragments, extensions' bits) is wsproto's.
_FAST_FIRST = frozenset((0x81, 0x82))
DATA = 0  # a complete, final, masked text or binary frame: served by the fast path
INCOMPLETE = 1  # not all of the frame is there yet
OTHER = 2  # anything else (control, fragment, unmasked, non-minimal length): wsproto's
TOO_BIG = 3  # a data frame announcing more than the limit


def client_data_frame(buffer: bytes | bytearray, at: int, limit: int) -> tuple[int, int, int]:
    """Delimit the client frame starting at `buffer[at]`, pure: (kind, payload start,
    payload end = frame end; for INCOMPLETE, (0, 0) until the header is there). Only
    DATA frames are taken apart here (RFC 6455 5.2 as wsproto checks it: masked, minimal
    length encoding, length < 2**63); see `unmask`.
    Looks at the frame's header only: O(1) whatever the payload's size.

    Why not wsproto for every frame: its incremental parser was ~14 us a frame, an eighth
    of the server's CPU per publish over WebSocket (`python -m benchmarks ws-publish`).
    """
    size = len(buffer) - at
    if size < 2:
        return INCOMPLETE, 0, 0
    if buffer[at] not in _FAST_FIRST or not buffer[at + 1] & 0x80:
        return OTHER, 0, 0
    length = buffer[at + 1] & 0x7F
    if length < 126:
        start = at + 6
    elif length == 126:
        if size < 4:
            return INCOMPLETE, 0, 0
        length = (buffer[at + 2] << 8) | buffer[at + 3]
        if length < 126:
            return OTHER, 0, 0
        start = at + 8
    else:
        if size < 10:
            return INCOMPLETE, 0, 0
        length = int.from_bytes(buffer[at + 2:at + 10], "big")
        if length < 65536 or length >> 63:
            return OTHER, 0, 0
        start = at + 14
    if length > limit:
        return TOO_BIG, 0, 0
    end = start + length
    if end > len(buffer):
        return INCOMPLETE, start, end  # the header is there: the frame ends at `end`
    return DATA, start, end


def unmask(buffer: bytes | bytearray, start: int, end: int) -> bytes:
    """The payload `buffer[start:end]` of a masked frame (key: the 4 bytes before it),
    unmasked: one XOR of two big integers, not a loop over bytes."""
    length = end - start
    if not length:
        return b""
    key = bytes(buffer[start - 4:start]) * (length // 4 + 1)
    return (
        int.from_bytes(buffer[start:end], "little") ^ int.from_bytes(key[:length], "little")
    ).to_bytes(length, "little")


# Longest frame header: 2 bytes, 8 of extended length, 4 of masking key.
MAX_HEADER_BYTES = 14


class FrameBoundaries:
    """Follows frame boundaries in a client's byte stream (headers only; payload bytes are
    counted, not kept): `incomplete` after a `feed` that stopped inside a frame or inside a
    fragmented message, and `received`, the bytes of that frame or message so far. For the
    receive deadline of connections whose input wsproto parses (it keeps partial frames to
    itself)."""

    __slots__ = ("_header", "_in_message", "_remaining", "received")

    def __init__(self) -> None:
        self._header = b""  # the start of a header not complete yet
        self._remaining = 0  # payload bytes of the current frame still to come
        self._in_message = False  # a data frame without FIN began a message not ended yet
        self.received = 0  # bytes of the current (incomplete) frame or message so far

    @property
    def incomplete(self) -> bool:
        return bool(self._header) or self._remaining > 0 or self._in_message

    def feed(self, data: bytes | bytearray) -> None:
        """Account for the next bytes of the stream. O(frames in `data`)."""
        at = 0
        size = len(data)
        while at < size:
            if self._remaining:
                taken = min(self._remaining, size - at)
                self._remaining -= taken
                self.received += taken
                at += taken
                if not self._remaining and not self._in_message:
                    self.received = 0
                continue
            taken = min(MAX_HEADER_BYTES - len(self._header), size - at)
            header = self._header + bytes(data[at:at + taken])
            length = header_length(header)
            if length is None or len(header) < length:  # the header is not complete yet
                self._header = header
                self.received += taken
                at += taken
                continue
            used = length - len(self._header)
            self._header = b""
            self.received += used
            at += used
            if header[0] & 0x0F < 0x8:  # a data frame: FIN says whether its message ends
                self._in_message = not header[0] & 0x80
            self._remaining = payload_length(header)
            if not self._remaining and not self._in_message:
                self.received = 0


def header_length(header: bytes) -> int | None:
    """Bytes of the frame header that `header` begins (None: too few bytes to tell)."""
    if len(header) < 2:
        return None
    length = header[1] & 0x7F
    extended = 2 if length == 126 else 8 if length == 127 else 0
    return 2 + extended + (4 if header[1] & 0x80 else 0)


def payload_length(header: bytes) -> int:
    """The payload length a complete frame header announces."""
    length = header[1] & 0x7F
    if length == 126:
        return int.from_bytes(header[2:4], "big")
    if length == 127:
        return int.from_bytes(header[2:10], "big")
    return length


__all__ = [
    "DATA",
    "INCOMPLETE",
    "MAX_HEADER_BYTES",
    "OTHER",
    "TOO_BIG",
    "FrameBoundaries",
    "client_data_frame",
    "header_length",
    "payload_length",
    "unmask",
]
