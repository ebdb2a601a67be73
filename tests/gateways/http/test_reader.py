"""`RequestReader` with bytes only: framing by llhttp, our limits on top, the same requests
however the bytes are split, and the same reading as h11 (a differential test)."""

from __future__ import annotations

from itertools import pairwise

import h11
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateways.http.reader import RequestReader
from gateways.http.wire import MAX_HEAD_BYTES, HttpError, RequestHead, parse_head

from .test_wire import MALFORMED_HEADS

MAX_BODY = 100_000
CHUNKED = b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"

Request = tuple[RequestHead, bytes]


def read(data: bytes, cuts: list[int] | None = None, max_body: int = MAX_BODY) -> list[Request]:
    """Every request in `data`, fed in pieces split at `cuts`; raises the refusal."""
    reader = RequestReader(max_body)
    requests: list[Request] = []
    bounds = [0, *sorted(set(cuts or [])), len(data)]
    for start, end in pairwise(bounds):
        reader.feed(data[start:end])
        while (request := reader.next_request()) is not None:
            requests.append(request)
    return requests


def refused(data: bytes, cuts: list[int] | None = None, max_body: int = MAX_BODY) -> int:
    with pytest.raises(HttpError) as caught:
        read(data, cuts, max_body)
    return caught.value.status


def chunked(*chunks: bytes, extension: bytes = b"", trailers: bytes = b"") -> bytes:
    body = b"".join(b"%x%s\r\n%s\r\n" % (len(c), extension, c) for c in chunks)
    return CHUNKED + body + b"0\r\n" + trailers + b"\r\n"


POST = (b"POST /v1/topics/a.b?x=1 HTTP/1.1\r\nHost: example\r\n"
        b"Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"x\":1}")


def test_a_request_in_one_read_is_its_head_and_body() -> None:
    [(head, body)] = read(POST)
    assert (head.method, head.path, head.query, body) == ("POST", "/v1/topics/a.b", b"x=1",
                                                         b'{"x":1}')
    assert head.header(b"content-type") == b"application/json" and head.keep_alive


@given(st.lists(st.integers(0, len(POST)), max_size=8))
def test_a_request_split_anywhere_reads_the_same(cuts: list[int]) -> None:
    assert read(POST, cuts) == read(POST)


def test_nothing_is_returned_until_the_request_is_complete() -> None:
    reader = RequestReader(MAX_BODY)
    reader.feed(POST[:-1])
    assert reader.next_request() is None and reader.in_progress
    assert reader.head is not None and reader.head.content_length == 7  # the head is in
    reader.feed(POST[-1:])
    assert reader.next_request() is not None and not reader.in_progress


def test_pipelined_requests_come_out_in_order_and_a_refusal_after_them() -> None:
    reader = RequestReader(MAX_BODY)
    reader.feed(POST + b"GET /two HTTP/1.1\r\nHost: h\r\n\r\n" + b"GET / HTTP/9.9\r\n\r\n")
    first, second = reader.next_request(), reader.next_request()
    assert first is not None and first[0].path == "/v1/topics/a.b"
    assert second is not None and second[0].path == "/two"
    with pytest.raises(HttpError) as caught:
        reader.next_request()
    assert caught.value.status == 505 and reader.finished


def test_blank_lines_before_a_request_line_are_ignored() -> None:
    """RFC 9112 section 2.2: a server SHOULD ignore at least one empty line before it."""
    [(head, _)] = read(b"\r\n\r\n" + POST)
    assert head.path == "/v1/topics/a.b"
    assert len(read(POST + b"\r\n" + POST)) == 2


def test_a_body_of_400_000_one_byte_chunks_is_read_whole() -> None:
    """Issue #14's attack body: parsed once, in linear time (the attack test times it)."""
    data = CHUNKED + b"1\r\nx\r\n" * 400_000 + b"0\r\n\r\n"
    cuts = list(range(65536, len(data), 65536))
    [(head, body)] = read(data, cuts, max_body=1_000_000)
    assert head.chunked and body == b"x" * 400_000


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=8),
       st.lists(st.integers(0, 3000), max_size=10))
def test_chunked_bodies_decode_to_their_concatenation(chunks: list[bytes],
                                                      cuts: list[int]) -> None:
    data = chunked(*chunks)
    [(_, body)] = read(data, [c for c in cuts if c < len(data)])
    assert body == b"".join(chunks)


@pytest.mark.parametrize(("size", "step"), [(16, 7), (4096, 1000), (300, 1), (65536, 4096)])
def test_long_chunk_sizes_are_not_taken_for_extensions(size: int, step: int) -> None:
    """Sizes of several hex digits, read in small pieces: their digits are framing the
    chunks need, so no 431 (the excess is measured against what the sizes need)."""
    count = 400_000 // size + 1
    data = chunked(*[b"y" * size] * count)
    [(_, body)] = read(data, list(range(step, len(data), step)), max_body=1_000_000)
    assert len(body) == size * count


def test_chunk_extensions_and_trailers_within_the_limit_are_skipped() -> None:
    data = chunked(b"abc", b"de", extension=b";name=value", trailers=b"X-Trailer: 1\r\n")
    [(head, body)] = read(data)
    assert body == b"abcde" and head.header(b"x-trailer") is None


@pytest.mark.parametrize("step", [None, 1000, 7])
@pytest.mark.parametrize(
    "data",
    [
        chunked(b"x", extension=b";e=" + b"a" * MAX_HEAD_BYTES),  # one long extension
        chunked(*[b"x"] * 3000, extension=b";name=value"),  # many short ones
        chunked(b"x", trailers=b"X-T: " + b"a" * MAX_HEAD_BYTES + b"\r\n"),
        chunked(b"x", trailers=b"X: 1\r\n" * 101),
    ],
    ids=["long-extension", "many-extensions", "long-trailer", "many-trailers"],
)
def test_chunk_extensions_and_trailers_past_the_head_limit_are_431(
    data: bytes, step: int | None
) -> None:
    """Counted against the head's 16 KiB (as Node.js since CVE-2024-22019), in any reads."""
    assert refused(data, list(range(step, len(data), step)) if step else None) == 431


def test_bodies_past_the_limit_are_413_and_a_declared_length_at_once() -> None:
    reader = RequestReader(10)
    reader.feed(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n")  # no body yet
    with pytest.raises(HttpError) as caught:
        reader.next_request()
    assert caught.value.status == 413
    assert refused(chunked(b"123456", b"78901"), max_body=10) == 413
    assert refused(chunked(b"123456", b"78901"), list(range(1, 200)), max_body=10) == 413
    assert read(chunked(b"12345", b"67890"), max_body=10)[0][1] == b"1234567890"


@pytest.mark.parametrize("step", [None, 100])
def test_a_head_past_the_limit_is_431_in_one_read_or_many(step: int | None) -> None:
    start = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: "
    fits = start + b"a" * (MAX_HEAD_BYTES - len(start) - 2) + b"\r\n\r\n"
    cuts = list(range(step, len(fits) + 100, step)) if step else None
    assert read(fits, cuts)[0][0].header(b"x-big") is not None
    assert refused(start + b"a" * MAX_HEAD_BYTES, cuts) == 431  # before it ends
    assert refused(b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: 1\r\n" * 101 + b"\r\n", cuts) == 431
    assert refused(b"GET /" + b"a" * MAX_HEAD_BYTES + b" HTTP/1.1\r\n", cuts) == 431


@pytest.mark.parametrize(
    ("data", "status"),
    [
        *MALFORMED_HEADS,
        (b"GET / HTTP/1.2\r\nHost: h\r\n\r\n", 505),
        (b"GET / HTTP/1.1\nHost: h\n\n", 400),  # bare LF
        # llhttp refuses even equal repeated lengths (RFC 9110 8.6 lets a recipient).
        (b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: \r\nContent-Length: 3\r\n\r\nabc",
         400),  # an empty coding beside a length: a proxy in front may frame it differently
        (b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: br\r\n\r\n", 501),
        (CHUNKED + b"zz\r\nabc\r\n0\r\n\r\n", 400),
        (CHUNKED + b"3\r\nabcX\r\n0\r\n\r\n", 400),
        (CHUNKED + b"3 \r\nabc\r\n0\r\n\r\n", 400),
    ],
)
def test_malformed_requests_are_refused_with_the_rfc_status(data: bytes, status: int) -> None:
    assert refused(data) == status
    assert refused(data, list(range(1, len(data)))) == status


def test_http_10_with_transfer_encoding_is_read_then_the_connection_ends() -> None:
    """RFC 9112 section 6.1: close after such a request, even if asked to keep it."""
    [(head, body)] = read(b"POST / HTTP/1.0\r\nConnection: keep-alive\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n")
    assert body == b"a" and not head.keep_alive


def test_an_upgrade_request_is_served_once_and_ends_the_connection() -> None:
    reader = RequestReader(MAX_BODY)
    reader.feed(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
                b"GET /never HTTP/1.1\r\nHost: h\r\n\r\n")
    request = reader.next_request()
    assert request is not None and not request[0].keep_alive
    assert reader.finished and reader.next_request() is None
    assert refused(b"POST / HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n"
                   b"Content-Length: 3\r\n\r\nabc") == 400


# Differential: h11 reads what we read.

_NAMES = st.sampled_from([b"x-a", b"X-Trace", b"accept", b"user-agent", b"content-type"])
_VALUES = st.from_regex(rb"\A[!-~]([ \t!-~]{0,20}[!-~])?\Z").filter(lambda v: b"," not in v)
_HEADERS = st.lists(st.tuples(_NAMES, _VALUES), max_size=5)
_TARGETS = st.from_regex(rb"\A/[a-zA-Z0-9._~%!$&'()*+,;=:@/-]{0,30}(\?[a-z0-9=&%]{0,20})?\Z")


@st.composite
def requests(draw: st.DrawFn, last: bool) -> bytes:
    """One valid request: a method, target, headers, and a body framed by length, by chunks
    (with extensions and trailers), or absent. HTTP/1.0 only as the last (h11 closes)."""
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.0"])) if last else b"HTTP/1.1"
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]))
    headers = [(b"Host", b"example")] if version == b"HTTP/1.1" else []
    headers += draw(_HEADERS)
    body = draw(st.binary(max_size=200))
    framing = draw(st.sampled_from(["length", "chunked", "none"]))
    encoded = b""
    if framing == "length":
        headers.append((b"Content-Length", b"%d" % len(body)))
        encoded = body
    elif framing == "chunked":
        headers.append((b"Transfer-Encoding", b"chunked"))
        cuts = sorted(draw(st.lists(st.integers(1, max(len(body), 1)), max_size=4)))
        pieces = [body[a:b] for a, b in zip([0, *cuts], [*cuts, len(body)], strict=True)]
        extension = draw(st.sampled_from([b"", b";a", b";name=value", b';q="x y"']))
        for piece in pieces:
            if piece:
                encoded += b"%X%s\r\n%s\r\n" % (len(piece), extension, piece)
        trailers = draw(st.sampled_from([b"", b"X-Sum: 12\r\n"]))
        encoded += b"0\r\n" + trailers + b"\r\n"
    draw(st.randoms()).shuffle(headers)
    lines = b"".join(b"%s: %s\r\n" % header for header in headers)
    return b"%s %s %s\r\n%s\r\n%s" % (method, draw(_TARGETS), version, lines, encoded)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    count = draw(st.integers(1, 3))
    return b"".join(draw(requests(last=i == count - 1)) for i in range(count))


def read_with_h11(data: bytes) -> list[tuple[str, bytes, list[tuple[bytes, bytes]], bytes]]:
    """What h11, as a server, reads from `data`; raises h11.RemoteProtocolError."""
    connection = h11.Connection(h11.SERVER)
    connection.receive_data(data)
    connection.receive_data(b"")  # the end of the stream: anything incomplete is an error
    read: list[tuple[str, bytes, list[tuple[bytes, bytes]], bytes]] = []
    while True:
        event = connection.next_event()
        if isinstance(event, h11.Request):
            request, body = event, b""
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            read.append((request.method.decode(), request.target, list(request.headers), body))
            if connection.our_state is h11.MUST_CLOSE or connection.their_state is h11.MUST_CLOSE:
                return read
            connection.send(h11.Response(status_code=204, headers=[]))
            connection.send(h11.EndOfMessage())
            connection.start_next_cycle()
        elif isinstance(event, h11.ConnectionClosed) or event is h11.NEED_DATA:
            return read
        else:
            raise AssertionError(f"unexpected {event!r}")


def as_h11_reads(requests: list[Request]) -> list[tuple[str, bytes, list, bytes]]:
    return [(head.method, head.target.encode(), list(head.headers), body)
            for head, body in requests]


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.lists(st.integers(0, 2000), max_size=6))
def test_valid_requests_read_as_h11_reads_them_however_split(
    data: bytes, cuts: list[int]
) -> None:
    assert as_h11_reads(read(data, [c for c in cuts if c < len(data)])) == read_with_h11(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(streams(), st.data())
def test_a_damaged_request_is_refused_or_read_exactly_as_h11_reads_it(
    data: bytes, draw: st.DataObject
) -> None:
    """One byte replaced, inserted or removed: where both parsers accept the stream they
    read the same requests (no framing either could be talked into and the other not);
    where they differ in strictness, one refuses. The known differences (h11 refuses and
    llhttp accepts: a leading blank line, several spaces in a request line; the opposite:
    bare LF, a repeated equal Content-Length) all end in a refusal, never in two readings."""
    at = draw.draw(st.integers(0, len(data) - 1))
    byte = bytes([draw.draw(st.sampled_from(b"\r\n \t:;0aA\x00\x7f\xff"))])
    damaged = draw.draw(st.sampled_from([
        data[:at] + byte + data[at + 1:], data[:at] + byte + data[at:], data[:at] + data[at + 1:],
    ]))
    try:
        ours = as_h11_reads(read(damaged))
    except HttpError:
        return
    try:
        theirs = read_with_h11(damaged)
    except h11.RemoteProtocolError:
        return
    # An incomplete last request is read by neither; h11 drops it at the end of stream.
    assert ours == theirs


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(requests(last=True))
def test_the_handshakes_parse_head_reads_a_head_as_the_reader_does(data: bytes) -> None:
    """`wire.parse_head` (the WebSocket port's opening request) and llhttp agree."""
    parsed = parse_head(data)
    assert parsed is not None
    assert parsed[0] == read(data)[0][0]
