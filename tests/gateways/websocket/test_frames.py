"""Our pre-built server frames, parsed by wsproto's client: one message, same payload."""

from __future__ import annotations

import pytest
from wsproto import ConnectionState, ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    Event,
    Message,
    Ping,
    Request,
    TextMessage,
)

from gateways.websocket.frames import (
    OPCODE_BINARY,
    OPCODE_PING,
    binary_frame,
    client_frame,
    frame,
    text_frame,
)

LENGTHS = [0, 1, 125, 126, 127, 65535, 65536, 70000]


def open_client() -> WSConnection:
    """A wsproto client in the OPEN state, handshaken against a wsproto server in memory."""
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="x", target="/v1/ws")))
    assert any(isinstance(event, Request) for event in server.events())
    client.receive_data(server.send(AcceptConnection()))
    assert any(isinstance(event, AcceptConnection) for event in client.events())
    assert client.state is ConnectionState.OPEN
    return client


def messages(client: WSConnection, data: bytes) -> list[tuple[type[Message], bytes | str]]:
    """Feed `data` to the client; every complete message, its partial pieces joined."""
    client.receive_data(data)
    complete: list[tuple[type[Message], bytes | str]] = []
    parts: list[bytes | str] = []
    for event in client.events():
        assert isinstance(event, TextMessage | BytesMessage), event
        parts.append(event.data)
        if event.message_finished:
            joined = "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)
            complete.append((type(event), joined))
            parts = []
    assert parts == [], "a message was left unfinished"
    return complete


def payload_of(length: int) -> bytes:
    """ASCII (so valid UTF-8) and not constant, so misplaced bytes would show."""
    return bytes(65 + (i * 7) % 26 for i in range(length))


@pytest.mark.parametrize("length", LENGTHS)
def test_text_frame_is_one_text_message_with_the_same_payload(length: int) -> None:
    payload = payload_of(length)
    assert messages(open_client(), text_frame(payload)) == [(TextMessage, payload.decode())]


@pytest.mark.parametrize("length", LENGTHS)
def test_binary_frame_is_one_bytes_message_with_the_same_payload(length: int) -> None:
    payload = payload_of(length)
    assert messages(open_client(), binary_frame(payload)) == [(BytesMessage, payload)]


@pytest.mark.parametrize(
    ("length", "header_size"),
    [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10), (70000, 10)],
)
def test_frame_uses_the_shortest_length_encoding(length: int, header_size: int) -> None:
    encoded = binary_frame(payload_of(length))
    assert len(encoded) == header_size + length
    assert encoded[0] == 0x82  # FIN + binary
    assert encoded[1] & 0x80 == 0  # server frames are unmasked


def test_multibyte_utf8_text_survives_intact() -> None:
    text = "h\u00e9llo \u2603 \U0001f600 " * 20000  # well past the 64-bit length threshold
    assert messages(open_client(), text_frame(text.encode())) == [(TextMessage, text)]


def test_consecutive_frames_parse_as_consecutive_messages() -> None:
    client = open_client()
    stream = text_frame(b"one") + binary_frame(payload_of(300)) + text_frame(payload_of(70000))
    assert messages(client, stream) == [
        (TextMessage, "one"),
        (BytesMessage, payload_of(300)),
        (TextMessage, payload_of(70000).decode()),
    ]


@pytest.mark.parametrize("split", [1, 2, 5, 9, 10, 11, 500])
def test_a_frame_split_across_reads_still_parses_into_one_message(split: int) -> None:
    client = open_client()
    encoded = binary_frame(payload_of(65536))
    client.receive_data(encoded[:split])
    events = list(client.events())
    client.receive_data(encoded[split:])
    events += client.events()
    pieces = [event for event in events if isinstance(event, BytesMessage)]
    assert len(pieces) == len(events)
    assert [piece.message_finished for piece in pieces] == [False] * (len(pieces) - 1) + [True]
    assert b"".join(piece.data for piece in pieces) == payload_of(65536)


def test_ping_frame_is_a_control_frame_the_client_sees_as_ping() -> None:
    client = open_client()
    client.receive_data(frame(OPCODE_PING, b"hi"))
    events: list[Event] = list(client.events())
    assert len(events) == 1
    assert isinstance(events[0], Ping)
    assert events[0].payload == b"hi"



@pytest.mark.parametrize("length", [0, 1, 125, 126, 65536])
def test_client_frames_are_masked_and_parse_on_a_wsproto_server(length: int) -> None:
    client = WSConnection(ConnectionType.CLIENT)
    server = WSConnection(ConnectionType.SERVER)
    server.receive_data(client.send(Request(host="x", target="/v1/ws")))
    assert any(isinstance(e, Request) for e in server.events())
    client.receive_data(server.send(AcceptConnection()))
    list(client.events())
    payload = bytes(range(256)) * (length // 256) + bytes(range(length % 256))
    data = client_frame(OPCODE_BINARY, payload, key=b"\x01\x02\x03\x04")
    assert data[1] & 0x80  # the mask bit is set
    assert payload not in data or length == 0
    server.receive_data(data)
    received = b"".join(e.data for e in server.events() if isinstance(e, BytesMessage))
    assert received == payload
