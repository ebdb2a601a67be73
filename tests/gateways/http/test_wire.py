"""The HTTP/1.1 wire functions, with bytes only: request heads and response heads."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateways.http.wire import (
    MAX_HEAD_BYTES,
    HttpError,
    parse_head,
    response_head,
)

POST = (b"POST /v1/topics/a.b?x=1&y=%20 HTTP/1.1\r\nHost: example\r\n"
        b"Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"x\":1}")


def refused(data: bytes) -> int:
    with pytest.raises(HttpError) as caught:
        parse_head(data)
    return caught.value.status


def test_a_complete_head_is_parsed_and_its_length_returned() -> None:
    parsed = parse_head(POST)
    assert parsed is not None
    head, used = parsed
    assert POST[used:] == b'{"x":1}'
    assert (head.method, head.path, head.query) == ("POST", "/v1/topics/a.b", b"x=1&y=%20")
    assert head.header(b"content-type") == b"application/json"  # names are lower-cased
    assert head.content_length == 7 and not head.chunked
    assert head.keep_alive and head.http_11 and not head.expect_continue


@given(st.integers(0, len(POST.split(b"\r\n\r\n")[0]) + 3))
def test_an_incomplete_head_asks_for_more(cut: int) -> None:
    assert parse_head(POST[:cut]) is None


def test_percent_encoded_paths_are_decoded_and_the_raw_path_kept() -> None:
    head, _ = parse_head(b"GET /v1/topics/a%2Eb HTTP/1.1\r\nHost: h\r\n\r\n")  # type: ignore[misc]
    assert head.path == "/v1/topics/a.b" and head.raw_path == b"/v1/topics/a%2Eb"


def test_absolute_form_targets_keep_their_path() -> None:
    head, _ = parse_head(b"GET http://h:1/healthz?a=1 HTTP/1.1\r\nHost: h\r\n\r\n")  # type: ignore[misc]
    assert (head.path, head.query) == ("/healthz", b"a=1")


@pytest.mark.parametrize(
    ("tokens", "http_11", "keep_alive"),
    [(b"", True, True), (b"Connection: close\r\n", True, False),
     (b"Connection: Keep-Alive, Upgrade\r\n", True, True),
     (b"", False, False), (b"Connection: keep-alive\r\n", False, True)],
)
def test_keep_alive_follows_the_version_and_connection_header(
    tokens: bytes, http_11: bool, keep_alive: bool
) -> None:
    version = b"HTTP/1.1" if http_11 else b"HTTP/1.0"
    head, _ = parse_head(b"GET / " + version + b"\r\nHost: h\r\n" + tokens + b"\r\n")  # type: ignore[misc]
    assert head.keep_alive is keep_alive


def test_expect_100_continue_is_seen() -> None:
    head, _ = parse_head(b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n"  # type: ignore[misc]
                         b"Content-Length: 3\r\n\r\n")
    assert head.expect_continue


# Heads every request parser of ours refuses (`parse_head` for the WebSocket handshake,
# `reader.RequestReader` for HTTP), with the status RFC 9112 names.
MALFORMED_HEADS: list[tuple[bytes, int]] = [
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505),
    (b"GET / HTTX/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET nopath HTTP/1.1\r\nHost: h\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: h\r\nX-A : x\r\n\r\n", 400),  # space before the colon
    (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: x\r\n folded\r\n\r\n", 400),  # obs-fold
    (b"GET / HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n", 400),  # request smuggling shape
    (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
]


@pytest.mark.parametrize(
    ("data", "status"),
    [*MALFORMED_HEADS, (b"GET  / HTTP/1.1\r\nHost: h\r\n\r\n", 400)],
)
def test_malformed_heads_are_refused_with_the_rfc_status(data: bytes, status: int) -> None:
    assert refused(data) == status


def test_repeated_equal_lengths_are_one_length() -> None:
    head, _ = parse_head(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n"  # type: ignore[misc]
                         b"Content-Length: 2\r\n\r\n")
    assert head.content_length == 2


def test_a_head_past_the_limit_is_431_even_before_it_ends() -> None:
    start = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: "
    assert parse_head(start + b"a" * (MAX_HEAD_BYTES - len(start))) is None  # could still end
    assert refused(start + b"a" * MAX_HEAD_BYTES) == 431
    many = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: 1\r\n" * 200 + b"\r\n"
    assert refused(many) == 431


def test_an_empty_transfer_encoding_beside_a_length_is_refused() -> None:
    """A proxy in front may frame the body by either header: refuse what it could misread."""
    assert refused(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\n"
                   b"Content-Length: 3\r\n\r\n") == 400
    assert refused(b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n\r\n") == 400


def test_http_10_with_transfer_encoding_is_never_kept_alive() -> None:
    """RFC 9112 section 6.1: the connection closes after such a message."""
    head, _ = parse_head(b"POST / HTTP/1.0\r\nConnection: keep-alive\r\n"  # type: ignore[misc]
                         b"Transfer-Encoding: chunked\r\n\r\n")
    assert head.chunked and not head.keep_alive


@given(
    st.sampled_from([200, 202, 400, 404, 413, 503]),
    st.binary(max_size=50),
    st.booleans(),
    st.lists(st.tuples(st.sampled_from([b"retry-after", b"x-a"]),
                       st.from_regex(rb"\A[a-z0-9]{1,8}\Z")), max_size=2),
)
def test_response_heads_are_valid_http_for_h11(
    status: int, body: bytes, close: bool, headers: list[tuple[bytes, bytes]]
) -> None:
    """A real HTTP/1.1 implementation (h11, as a client) reads what we write."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method="GET", target="/", headers=[("host", "h")]))
    client.send(h11.EndOfMessage())
    client.receive_data(response_head(status, b"application/json", len(body), headers, close)
                        + body)
    response = client.next_event()
    assert isinstance(response, h11.Response) and response.status_code == status
    received = dict(response.headers)
    assert received[b"content-length"] == b"%d" % len(body)
    assert (received.get(b"connection") == b"close") is close
    data = b""
    while isinstance(event := client.next_event(), h11.Data):
        data += event.data
    assert isinstance(event, h11.EndOfMessage) and data == body
