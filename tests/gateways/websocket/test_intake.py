"""The connection's reading of client frames against wsproto, differentially: random
frames (masked or not, every length encoding, fragments, control frames, bad UTF-8) cut at
random points and fed to the real `WebSocketConnection._receive` one piece at a time give
the messages a fresh wsproto gives for the whole stream, and both refuse or neither does.
Also `FrameBoundaries`, which follows frames in the stream wsproto parses."""

from __future__ import annotations

import itertools
import socket
import struct
from types import SimpleNamespace

import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from broker import CloseReason, Settings, WireFormat
from broker.metrics import BrokerCounters
from gateways.websocket.connection import WebSocketConnection
from gateways.websocket.handshake import Accept
from gateways.websocket.reader import FrameBoundaries


def raw_frame(
    opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0,
    key: bytes | None = b"\x01\x02\x03\x04", encoding: str = "minimal",
) -> bytes:
    """A client frame as given, valid or not: `key` None is unmasked; `encoding` "16" or
    "64" forces a (possibly non-minimal) extended length."""
    length = len(payload)
    mask_bit = 0x80 if key is not None else 0
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    if encoding == "16" and length >= 65536:
        encoding = "minimal"
    if encoding == "16" or (encoding == "minimal" and 126 <= length < 65536):
        header = struct.pack("!BBH", first, mask_bit | 126, length)
    elif encoding == "64" or (encoding == "minimal" and length >= 65536):
        header = struct.pack("!BBQ", first, mask_bit | 127, length)
    else:
        header = bytes((first, mask_bit | length))
    if key is None:
        return header + payload
    stream = (key * (length // 4 + 1))[:length]
    return header + key + bytes(a ^ b for a, b in zip(payload, stream, strict=True))


payloads = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.binary(min_size=126, max_size=300),
    st.integers(min_value=65530, max_value=65540).map(lambda n: b"p" * n),
)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """Mostly plain data frames (the fast path), sometimes anything else."""
    kind = draw(st.sampled_from(
        ["text", "text", "binary", "binary", "fragment", "ping", "pong", "close", "odd"]
    ))
    payload = draw(payloads)
    key = draw(st.binary(min_size=4, max_size=4))
    if kind in ("text", "binary"):
        return raw_frame(1 if kind == "text" else 2, payload, key=key)
    if kind == "fragment":
        first, rest = payload[: len(payload) // 2], payload[len(payload) // 2:]
        opcode = draw(st.sampled_from([1, 2]))
        return (raw_frame(opcode, first, fin=False, key=key)
                + draw(st.sampled_from([b"", raw_frame(9, b"mid", key=key)]))
                + raw_frame(0, rest, key=key))
    if kind in ("ping", "pong"):
        return raw_frame(9 if kind == "ping" else 10, payload[:125], key=key)
    if kind == "close":
        return raw_frame(8, struct.pack("!H", 1000) + payload[:100], key=key)
    return raw_frame(  # what a broken or hostile client sends
        draw(st.sampled_from([1, 2, 3, 0xB])), payload,
        fin=draw(st.booleans()), rsv=draw(st.sampled_from([0, 0, 1, 4])),
        key=draw(st.sampled_from([key, None])),
        encoding=draw(st.sampled_from(["minimal", "16", "64"])),
    )


def reference(stream: bytes) -> tuple[list[tuple[bool, bytes]], str | None]:
    """What a fresh wsproto server makes of the whole stream: the complete messages, and
    "closed" (the client's close), "error:<code>" (a refusal) or None (still open)."""
    ws = Connection(ConnectionType.SERVER)
    ws.receive_data(stream)
    messages: list[tuple[bool, bytes]] = []
    parts: list[bytes] = []
    for event in ws.events():
        if isinstance(event, TextMessage | BytesMessage):
            data = event.data.encode() if isinstance(event, TextMessage) else event.data
            parts.append(data)
            if event.message_finished:
                messages.append((isinstance(event, TextMessage), b"".join(parts)))
                parts = []
        elif isinstance(event, CloseConnection):
            if ws.state is ConnectionState.REMOTE_CLOSING:
                return messages, "closed"
            return messages, f"error:{event.code}"
    return messages, None


class RecordingConnection(WebSocketConnection):
    """The real reading path, with each complete message recorded instead of served."""

    __slots__ = ("served",)

    async def _serve_frame(self, frame: str | bytes, is_text: bool) -> CloseReason | None:
        self.served.append((is_text, frame.encode() if isinstance(frame, str) else frame))
        return None


async def read_in_pieces(stream: bytes, cuts: list[int]) -> tuple[list[tuple[bool, bytes]],
                                                                 str | None]:
    """Feed `stream` cut at `cuts` to a connection's `_receive`, as receives would."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    broker = SimpleNamespace(settings=Settings(), counters=BrokerCounters())
    accept = Accept(b"", WireFormat.JSON, [], "")
    connection = RecordingConnection(ours, broker, accept)  # type: ignore[arg-type]
    connection.served = []
    try:
        bounds = sorted({0, len(stream), *cuts})
        for start, end in itertools.pairwise(bounds):
            reason = await connection._receive(stream[start:end])
            if reason is not None:
                outcome = ("closed" if reason is CloseReason.CLIENT_CLOSED
                           else f"error:{reason.code}")
                return connection.served, outcome
        return connection.served, None
    finally:
        ours.close()
        theirs.close()


@settings(deadline=None, max_examples=300)
@given(st.lists(frames(), min_size=1, max_size=6), st.data())
def test_the_connection_reads_what_wsproto_reads_whatever_the_pieces(
    parts: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(parts)
    cuts = data.draw(st.lists(st.integers(min_value=0, max_value=len(stream)), max_size=12))
    expected_messages, expected_end = reference(stream)
    messages, end = trio.run(read_in_pieces, stream, cuts)
    if expected_end is None or expected_end == "closed":
        assert (messages, end) == (expected_messages, expected_end)
    else:  # a refusal: the same messages before it, and a refusal with the same code
        assert messages == expected_messages and end is not None
        assert end == expected_end or (end, expected_end) == ("error:1002", "error:1002")


def complete_points(stream: bytes) -> set[int]:
    """Offsets of `stream` between two frames and outside any fragmented message."""
    points = {0}
    at = 0
    in_message = False
    while at < len(stream):
        header_end = at + 2
        length = stream[at + 1] & 0x7F
        if length == 126:
            length = int.from_bytes(stream[at + 2:at + 4], "big")
            header_end += 2
        elif length == 127:
            length = int.from_bytes(stream[at + 2:at + 10], "big")
            header_end += 8
        if stream[at + 1] & 0x80:
            header_end += 4
        if stream[at] & 0x0F < 8:
            in_message = not stream[at] & 0x80
        at = header_end + length
        if not in_message:
            points.add(at)
    return points


@settings(deadline=None, max_examples=200)
@given(st.lists(frames(), min_size=1, max_size=6), st.data())
def test_frame_boundaries_know_when_input_stops_inside_a_frame_or_message(
    parts: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(parts)
    complete = complete_points(stream)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(stream)), max_size=12))))
    boundaries = FrameBoundaries()
    previous = 0
    for cut in [*cuts, len(stream)]:
        boundaries.feed(stream[previous:cut])
        previous = cut
        assert boundaries.incomplete == (cut not in complete), cut
        if not boundaries.incomplete:
            assert boundaries.received == 0


def test_frame_boundaries_count_the_bytes_of_the_frame_in_progress() -> None:
    boundaries = FrameBoundaries()
    frame = raw_frame(2, b"x" * 1000)
    boundaries.feed(frame[:1])
    assert boundaries.incomplete and boundaries.received == 1
    boundaries.feed(frame[1:600])
    assert boundaries.received == 600
    boundaries.feed(frame[600:] + frame[:3])  # the end of one, the start of the next
    assert boundaries.incomplete and boundaries.received == 3


def test_frame_boundaries_count_a_fragmented_message_until_its_last_frame() -> None:
    boundaries = FrameBoundaries()
    first = raw_frame(1, b"abc", fin=False)
    boundaries.feed(first + raw_frame(9, b"ping"))  # a control frame in between
    assert boundaries.incomplete and boundaries.received == len(first) + 10
    boundaries.feed(raw_frame(0, b"def"))
    assert not boundaries.incomplete and boundaries.received == 0
