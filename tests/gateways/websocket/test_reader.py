"""The connection's own reading of client frames, as bytes: what it takes apart itself is
exactly what wsproto would make of it, and everything else is left to wsproto."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection, TextMessage

from gateways.websocket.frames import client_frame
from gateways.websocket.reader import (
    DATA,
    INCOMPLETE,
    OTHER,
    TOO_BIG,
    client_data_frame,
    unmask,
)

LIMIT = 100_000


def wsproto_messages(data: bytes) -> list[object]:
    """What a fresh wsproto server makes of `data`: complete messages (opcode, payload),
    "incomplete" if it waits for more, or "error" if it refuses the bytes."""
    ws = Connection(ConnectionType.SERVER)
    ws.receive_data(data)
    found: list[object] = []
    for event in ws.events():
        if isinstance(event, TextMessage | BytesMessage):
            if not (event.frame_finished and event.message_finished):
                return [*found, "incomplete"]
            opcode = 0x1 if isinstance(event, TextMessage) else 0x2
            payload = event.data.encode() if isinstance(event, TextMessage) else event.data
            found.append((opcode, payload))
        elif isinstance(event, CloseConnection):
            return [*found, "error"]
        else:
            return [*found, "other"]
    return found


def is_utf8(payload: bytes) -> bool:
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def fast_messages(data: bytes, limit: int = LIMIT) -> list[object]:
    """The same through `client_data_frame` + `unmask`, stopping where wsproto takes over."""
    found: list[object] = []
    at = 0
    while at < len(data):
        kind, start, end = client_data_frame(data, at, limit)
        if kind == DATA:
            payload = unmask(data, start, end)
            if data[at] == 0x81 and not is_utf8(payload):
                found.append("other")  # the connection hands it to wsproto (1007)
                break
            found.append((data[at] & 0x0F, payload))
            at = end
            continue
        found.append({INCOMPLETE: "incomplete", OTHER: "other", TOO_BIG: "too big"}[kind])
        break
    return found


payloads = st.binary(max_size=70_000).filter(lambda b: len(b) < 200 or len(b) > 65_530)
texts = st.text(max_size=300)


@settings(deadline=None, max_examples=200)
@given(st.lists(st.one_of(payloads.map(lambda b: (0x2, b)),
                          texts.map(lambda t: (0x1, t.encode()))), min_size=1, max_size=4),
       st.binary(min_size=4, max_size=4))
def test_plain_data_frames_are_read_as_wsproto_reads_them(
    messages: list[tuple[int, bytes]], key: bytes
) -> None:
    data = b"".join(client_frame(opcode, payload, key=key) for opcode, payload in messages)
    assert fast_messages(data) == wsproto_messages(data) == messages


@settings(deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=300))
def test_a_cut_frame_is_incomplete_until_its_last_byte(payload: bytes, cut: int) -> None:
    data = client_frame(0x2, payload)
    cut = min(cut, len(data) - 1)
    assert fast_messages(data[:cut]) == ([] if cut == 0 else ["incomplete"])
    assert fast_messages(data) == [(0x2, payload)]


@settings(deadline=None, max_examples=300)
@given(st.binary(min_size=2, max_size=40))
def test_whatever_is_read_as_data_from_random_bytes_wsproto_reads_the_same(
    data: bytes,
) -> None:
    fast = fast_messages(data)
    reference = wsproto_messages(data)
    taken = [m for m in fast if isinstance(m, tuple)]
    assert reference[: len(taken)] == taken
    if fast and fast[-1] == "incomplete":
        assert reference[len(taken):] in ([], ["incomplete"], ["error"], ["other"])


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (client_frame(0x9, b"ping"), OTHER),  # control frames are wsproto's
        (client_frame(0x8, struct.pack("!H", 1000)), OTHER),
        (client_frame(0x1, b"frag", fin=False), OTHER),  # so are fragments
        (client_frame(0x0, b"cont"), OTHER),
        (b"\x81\x05hello", OTHER),  # unmasked: wsproto closes with 1002
        (b"\xc1\x80abcd", OTHER),  # RSV1 (no extension was agreed): 1002 too
        (b"\x82\xfe\x00\x05abcd12345", OTHER),  # 2-byte length for 5 bytes: not minimal
        (b"\x82\xff" + (100).to_bytes(8, "big") + b"abcd", OTHER),
        (b"\x82\xff" + (1 << 63).to_bytes(8, "big") + b"abcd", OTHER),
        (b"\x82\xfe" + (200).to_bytes(2, "big") + b"abcd", INCOMPLETE),
        (b"\x82\xff" + (200_000).to_bytes(8, "big") + b"abcd", TOO_BIG),
        (b"\x81", INCOMPLETE),
    ],
)
def test_frames_the_fast_path_leaves_alone(data: bytes, kind: int) -> None:
    assert client_data_frame(data, 0, LIMIT)[0] == kind


def test_a_frame_announcing_more_than_the_limit_is_too_big_before_it_arrives() -> None:
    header = client_frame(0x1, b"x" * 1001)[:8]
    assert client_data_frame(header, 0, 1000)[0] == TOO_BIG
    assert client_data_frame(client_frame(0x1, b"x" * 1000), 0, 1000)[0] == DATA


def test_unmask_of_an_empty_payload() -> None:
    data = client_frame(0x1, b"", key=b"abcd")
    kind, start, end = client_data_frame(data, 0, LIMIT)
    assert kind == DATA and unmask(data, start, end) == b""
