"""The opening handshake as bytes: our 101 is what RFC 6455 and real clients expect, and
every refusal is the JSON error the broker has always answered."""

from __future__ import annotations

import base64
import os
from urllib.parse import parse_qsl, quote

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionState, ConnectionType, WSConnection
from wsproto.events import AcceptConnection, Request, TextMessage
from wsproto.utilities import generate_accept_token

from broker import WireFormat
from gateways.http.wire import HttpError, parse_head
from gateways.websocket.frames import text_frame
from gateways.websocket.handshake import (
    MAX_CLIENT_BYTES,
    Accept,
    Reject,
    accept_token,
    answer,
    query_fields,
    reject_unreadable,
    valid_key,
)

PATH = "/v1/ws"
LIMIT = 1000  # max_subscriptions
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (
    b"Host: 127.0.0.1:8081\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n"
)


def request(target: bytes = b"/v1/ws", headers: bytes = UPGRADE, line: bytes | None = None
            ) -> bytes:
    start = line if line is not None else b"GET " + target + b" HTTP/1.1"
    return start + b"\r\n" + headers + b"\r\n"


def answer_to(data: bytes, limit: int = LIMIT) -> Accept | Reject:
    parsed = parse_head(data)
    assert parsed is not None and parsed[1] == len(data)
    return answer(parsed[0], PATH, limit)


def response_parts(response: bytes) -> tuple[int, dict[bytes, bytes], bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(b" ")[1]), headers, body


def error_of(result: Accept | Reject) -> tuple[int, str]:
    assert isinstance(result, Reject), result
    status, headers, body = response_parts(result.response)
    assert status == result.status
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body)
    assert headers[b"connection"] == b"close"
    error = orjson.loads(body)["error"]
    assert error["message"] and error["code"] == result.code
    return status, error["code"]


# -- the accept token --------------------------------------------------------------------


def test_the_rfc_6455_example_key_gets_the_rfc_accept_token() -> None:
    # RFC 6455 section 1.3 (the whole token: it is 28 characters, a SHA-1 in base64).
    assert accept_token(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@given(st.binary(min_size=16, max_size=16))
def test_the_accept_token_is_wsprotos_for_any_key(nonce: bytes) -> None:
    key = base64.b64encode(nonce)
    assert valid_key(key)
    assert accept_token(key) == generate_accept_token(key)


@given(st.binary(max_size=40).filter(lambda raw: len(raw) != 16))
def test_a_key_that_is_not_16_bytes_in_base64_is_invalid(raw: bytes) -> None:
    assert not valid_key(base64.b64encode(raw))


@pytest.mark.parametrize(
    "key", [b"", b"x" * 24, b"dGhlIHNhbXBsZSBub25jZQ=", b"!GhlIHNhbXBsZSBub25jZQ=="]
)
def test_malformed_keys_are_invalid(key: bytes) -> None:
    assert not valid_key(key)


# -- accepted: a real client agrees -------------------------------------------------------


def client_handshake(target: str, subprotocols: list[str]) -> tuple[WSConnection, bytes]:
    client = WSConnection(ConnectionType.CLIENT)
    return client, client.send(Request(host="127.0.0.1", target=target,
                                       subprotocols=subprotocols))


@pytest.mark.parametrize(
    ("offered", "chosen", "wire_format"),
    [
        ([], None, WireFormat.JSON),
        (["broker.v1.json"], "broker.v1.json", WireFormat.JSON),
        (["broker.v1.cbor"], "broker.v1.cbor", WireFormat.CBOR),
        (["mqtt", "broker.v1.cbor", "broker.v1.json"], "broker.v1.cbor", WireFormat.CBOR),
        (["mqtt"], None, WireFormat.JSON),
        (["Broker.V1.CBOR"], None, WireFormat.JSON),  # names are case-sensitive
    ],
)
def test_wsprotos_client_accepts_our_101_with_the_subprotocol_we_chose(
    offered: list[str], chosen: str | None, wire_format: WireFormat
) -> None:
    client, data = client_handshake("/v1/ws?topic=a.b&topic=c.*&client=me", offered)
    result = answer_to(data)
    assert isinstance(result, Accept), result
    assert (result.wire_format, result.patterns, result.client) == (
        wire_format, ["a.b", "c.*"], "me"
    )
    client.receive_data(result.response + text_frame(b'{"op":"ok","id":1}'))
    events = list(client.events())
    assert isinstance(events[0], AcceptConnection)
    assert events[0].subprotocol == chosen
    assert events[0].extensions == []  # permessage-deflate is never accepted
    assert client.state is ConnectionState.OPEN
    # The bytes right behind the 101 are WebSocket frames to the client.
    assert events[1:] == [TextMessage(data='{"op":"ok","id":1}')]


def test_a_client_offering_permessage_deflate_gets_no_extension() -> None:
    data = request(headers=UPGRADE + b"Sec-WebSocket-Extensions: permessage-deflate\r\n")
    result = answer_to(data)
    assert isinstance(result, Accept)
    assert b"extensions" not in result.response.lower()


@settings(deadline=None)
@given(st.binary(min_size=16, max_size=16),
       st.sampled_from([b"Upgrade", b"upgrade", b"keep-alive, Upgrade", b"UPGRADE , x"]),
       st.sampled_from([b"websocket", b"WebSocket", b"WEBSOCKET"]))
def test_any_valid_upgrade_spelling_is_accepted_with_the_right_token(
    nonce: bytes, connection: bytes, upgrade: bytes
) -> None:
    key = base64.b64encode(nonce)
    headers = (b"host: x\r\nupgrade: %s\r\nconnection: %s\r\nsec-websocket-key: %s\r\n"
               b"sec-websocket-version: 13\r\n" % (upgrade, connection, key))
    result = answer_to(request(headers=headers))
    assert isinstance(result, Accept)
    status, response_headers, body = response_parts(result.response)
    assert (status, body) == (101, b"")
    assert response_headers[b"sec-websocket-accept"] == generate_accept_token(key)
    assert response_headers[b"upgrade"].lower() == b"websocket"
    assert response_headers[b"connection"].lower() == b"upgrade"


def test_duplicate_topics_count_once_and_the_last_client_name_wins() -> None:
    query = "&".join(f"topic=t.{n % LIMIT}" for n in range(LIMIT + 300))
    result = answer_to(request(f"/v1/ws?{query}&client=a&client=b".encode()))
    assert isinstance(result, Accept)
    assert result.patterns == [f"t.{n}" for n in range(LIMIT)]
    assert result.client == "b"


# -- refused: today's statuses and JSON bodies ----------------------------------------------


def without(name: bytes) -> bytes:
    return b"".join(line + b"\r\n" for line in UPGRADE.split(b"\r\n")
                    if line and not line.lower().startswith(name + b":"))


@pytest.mark.parametrize(
    "data",
    [
        request(line=b"POST /v1/ws HTTP/1.1"),
        request(line=b"GET /v1/ws HTTP/1.0"),
        request(headers=without(b"upgrade")),
        request(headers=without(b"upgrade") + b"Upgrade: h2c\r\n"),
        request(headers=without(b"connection")),
        request(headers=without(b"connection") + b"Connection: keep-alive\r\n"),
        request(headers=without(b"sec-websocket-version")),
        request(headers=without(b"sec-websocket-version") + b"Sec-WebSocket-Version: 8\r\n"),
        request(headers=without(b"sec-websocket-key")),
        request(headers=without(b"sec-websocket-key") + b"Sec-WebSocket-Key: short\r\n"),
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n",  # plain HTTP on the WebSocket port
        request(b"/elsewhere", headers=b"Host: x\r\n"),  # not an upgrade wins over the path
    ],
)
def test_anything_but_a_valid_upgrade_is_a_json_400(data: bytes) -> None:
    assert error_of(answer_to(data)) == (400, "bad_request")


@pytest.mark.parametrize(
    "version", [None, b"8", b"14", b"13, 8"]
)
def test_a_refused_version_is_told_the_version_we_speak(version: bytes | None) -> None:
    headers = without(b"sec-websocket-version")
    if version is not None:
        headers += b"Sec-WebSocket-Version: " + version + b"\r\n"
    result = answer_to(request(headers=headers))
    assert error_of(result) == (400, "bad_request")
    assert response_parts(result.response)[1][b"sec-websocket-version"] == b"13"


def test_other_refusals_do_not_mention_the_version() -> None:
    result = answer_to(request(line=b"POST /v1/ws HTTP/1.1"))
    assert b"sec-websocket-version" not in response_parts(result.response)[1]


@pytest.mark.parametrize(
    ("name", "accepted"),
    [
        ("x" * MAX_CLIENT_BYTES, True),
        ("x" * (MAX_CLIENT_BYTES + 1), False),
        ("é" * (MAX_CLIENT_BYTES // 2), True),  # two bytes each in UTF-8
        ("é" * (MAX_CLIENT_BYTES // 2 + 1), False),
        ("x" * 10_000, False),
    ],
)
def test_a_client_name_is_at_most_128_bytes(name: str, accepted: bool) -> None:
    result = answer_to(request(b"/v1/ws?client=" + quote(name).encode()))
    if accepted:
        assert isinstance(result, Accept) and result.client == name
    else:
        assert error_of(result) == (400, "bad_request")


@pytest.mark.parametrize("target", [b"/elsewhere", b"/v1/ws/", b"/v1/%77s", b"/"])
def test_an_upgrade_for_another_path_is_a_json_404(target: bytes) -> None:
    assert error_of(answer_to(request(target))) == (404, "not_found")


@pytest.mark.parametrize(
    "query", [b"topic=", b"topic=a..b", b"topic=a.%3E.b", b"topic=ok&topic=bad%20name"]
)
def test_an_invalid_topic_in_the_query_is_a_json_400(query: bytes) -> None:
    assert error_of(answer_to(request(b"/v1/ws?" + query))) == (400, "invalid_topic")


def test_more_distinct_topics_than_allowed_is_a_json_429() -> None:
    query = "&".join(f"topic=t.{n}" for n in range(4))
    result = answer_to(request(f"/v1/ws?{query}".encode()), limit=3)
    assert error_of(result) == (429, "too_many_subscriptions")


@pytest.mark.parametrize("status", [400, 431, 501, 505])
def test_an_unreadable_request_is_a_json_400_whatever_status_the_parser_names(
    status: int,
) -> None:
    result = reject_unreadable(HttpError(status, "nope"))
    assert error_of(result) == (400, "bad_request")
    assert b"nope" in result.response


# -- the query ----------------------------------------------------------------------------

QUERY_TEXT = st.text(alphabet="ab.=&+%2Fé_-~ 3", max_size=30)


@given(QUERY_TEXT)
def test_query_fields_read_a_query_as_parse_qsl_does(text: str) -> None:
    query = quote(text, safe="=&+%")  # keep the separators and escapes as they are
    expected = parse_qsl(query, keep_blank_values=True)
    assert query_fields(query.encode("ascii")) == expected


@given(st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=5))
def test_query_fields_decode_what_a_client_encoded(fields: list[tuple[str, str]]) -> None:
    query = "&".join(f"{quote(name, safe='')}={quote(value, safe='')}" for name, value in fields)
    assert query_fields(query.encode("ascii")) == fields


def test_a_random_key_from_os_urandom_is_valid() -> None:
    assert valid_key(base64.b64encode(os.urandom(16)))
