"""`HttpServer` over real sockets: keep-alive, pipelining, 100-continue, limits, timeouts,
drain, and requests that break the protocol (each gets its status; nobody else notices)."""

from __future__ import annotations

import socket
import time
from collections.abc import Awaitable, Callable

import orjson
import pytest
import trio

from gateways.http.server import HttpRequest, HttpResponse, HttpServer, json_response

from ...conftest import StartBroker

TIMEOUT = 5.0


async def echo(request: HttpRequest) -> HttpResponse:
    if request.head.path == "/fail":
        raise RuntimeError("handler bug")
    return json_response(200, {"method": request.head.method, "path": request.head.path,
                               "body": request.body.decode()})


async def start_server(
    nursery: trio.Nursery,
    handler: Callable[[HttpRequest], Awaitable[HttpResponse]] = echo,
    *,
    keep_alive: float = TIMEOUT,
    max_body: int = 1000,
    **bounds: float,
) -> tuple[HttpServer, int]:
    server = HttpServer(handler, max_body=max_body, keep_alive=keep_alive, **bounds)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]  # the server takes the sockets over
    await nursery.start(server.serve, listeners)
    return server, port


async def read_response(stream: trio.SocketStream, buffer: bytearray) -> tuple[bytes, bytes]:
    """One response's head and body from `stream` (content-length framed)."""
    with trio.fail_after(TIMEOUT):
        while b"\r\n\r\n" not in buffer:
            data = await stream.receive_some(65536)
            assert data, f"closed before a response: {bytes(buffer)!r}"
            buffer += data
        head, _, _ = bytes(buffer).partition(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        end = len(head) + 4 + length
        while len(buffer) < end:
            data = await stream.receive_some(65536)
            assert data, "closed in the middle of a body"
            buffer += data
    body = bytes(buffer[len(head) + 4:end])
    del buffer[:end]
    return head, body


async def assert_closed(stream: trio.SocketStream) -> None:
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return


def post(path: bytes, body: bytes, extra: bytes = b"") -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n%s"
            % (path, len(body), extra, body))


async def test_pipelined_requests_are_answered_in_order_on_one_connection(
    nursery: trio.Nursery,
) -> None:
    _, port = await start_server(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = bytearray()
    await stream.send_all(post(b"/one", b"1") + post(b"/two", b"22") + post(b"/three", b""))
    bodies = [orjson.loads((await read_response(stream, buffer))[1]) for _ in range(3)]
    assert [(b["path"], b["body"]) for b in bodies] == [("/one", "1"), ("/two", "22"),
                                                        ("/three", "")]
    await stream.aclose()


async def test_a_request_split_into_single_bytes_is_served(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    for byte in post(b"/slow", b"abc"):
        await stream.send_all(bytes([byte]))
    head, body = await read_response(stream, bytearray())
    assert head.startswith(b"HTTP/1.1 200") and orjson.loads(body)["body"] == "abc"
    await stream.aclose()


async def test_expect_100_continue_gets_its_interim_answer_before_the_body(
    nursery: trio.Nursery,
) -> None:
    _, port = await start_server(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST /up HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                          b"Content-Length: 5\r\n\r\n")
    with trio.fail_after(TIMEOUT):
        interim = await stream.receive_some(65536)
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    await stream.send_all(b"hello")
    head, body = await read_response(stream, bytearray())
    assert head.startswith(b"HTTP/1.1 200") and orjson.loads(body)["body"] == "hello"
    await stream.aclose()


async def test_head_requests_get_the_length_but_no_body(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"HEAD /x HTTP/1.1\r\nHost: t\r\n\r\n" + post(b"/after", b"z"))
    buffer = bytearray()
    with trio.fail_after(TIMEOUT):
        while buffer.count(b"\r\n\r\n") < 2:
            buffer += await stream.receive_some(65536)
    first, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200") and b"content-length: " in first
    assert rest.startswith(b"HTTP/1.1 200")  # no body bytes between the two answers
    await stream.aclose()


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "bad_request"),
        (b"GET / HTTP/2.0\r\nHost: t\r\n\r\n", 505, "http_version_not_supported"),
        (b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 20_000, 431, "headers_too_large"),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: br\r\n\r\n", 501, "not_implemented"),
        (b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n", 413, "payload_too_large"),
        (b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
         + b"3e8\r\n" + b"a" * 1000 + b"\r\n" + b"1\r\nb\r\n", 413, "payload_too_large"),
    ],
)
async def test_protocol_violations_get_a_json_error_then_close_and_others_carry_on(
    nursery: trio.Nursery, data: bytes, status: int, code: str
) -> None:
    _, port = await start_server(nursery)
    bystander = await trio.open_tcp_stream("127.0.0.1", port)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(data)
    head, body = await read_response(stream, bytearray())
    assert head.startswith(b"HTTP/1.1 %d" % status), head
    assert b"connection: close" in head
    assert orjson.loads(body)["error"]["code"] == code
    await assert_closed(stream)
    await bystander.send_all(post(b"/still", b"ok"))
    head, _ = await read_response(bystander, bytearray())
    assert head.startswith(b"HTTP/1.1 200")
    await bystander.aclose()


async def test_a_failing_handler_is_a_500_and_the_server_keeps_serving(
    nursery: trio.Nursery,
) -> None:
    _, port = await start_server(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET /fail HTTP/1.1\r\nHost: t\r\n\r\n")
    head, body = await read_response(stream, bytearray())
    assert head.startswith(b"HTTP/1.1 500") and orjson.loads(body)["error"]["code"] == "internal"
    await assert_closed(stream)
    again = await trio.open_tcp_stream("127.0.0.1", port)
    await again.send_all(post(b"/fine", b""))
    assert (await read_response(again, bytearray()))[0].startswith(b"HTTP/1.1 200")
    await again.aclose()


async def test_idle_and_stalled_connections_are_closed_after_keep_alive(
    nursery: trio.Nursery,
) -> None:
    _, port = await start_server(nursery, keep_alive=0.3)
    idle = await trio.open_tcp_stream("127.0.0.1", port)
    await idle.send_all(post(b"/a", b""))
    await read_response(idle, bytearray())
    stalled = await trio.open_tcp_stream("127.0.0.1", port)
    await stalled.send_all(b"POST /b HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc")
    silent = await trio.open_tcp_stream("127.0.0.1", port)
    for stream in (idle, stalled, silent):
        await assert_closed(stream)  # within TIMEOUT: by the 0.3 s keep-alive


async def test_drain_closes_idle_connections_at_once_and_answers_busy_ones_first(
    nursery: trio.Nursery,
) -> None:
    release = trio.Event()
    entered = trio.Event()

    async def slow(request: HttpRequest) -> HttpResponse:
        if request.head.path == "/slow":
            entered.set()
            await release.wait()
        return await echo(request)

    server, port = await start_server(nursery, slow, keep_alive=60)
    idle = await trio.open_tcp_stream("127.0.0.1", port)
    await idle.send_all(post(b"/a", b""))
    await read_response(idle, bytearray())
    busy = await trio.open_tcp_stream("127.0.0.1", port)
    await busy.send_all(post(b"/slow", b"x"))
    await entered.wait()
    server.drain()
    await assert_closed(idle)  # long before its 60 s keep-alive
    release.set()
    head, _ = await read_response(busy, bytearray())
    assert head.startswith(b"HTTP/1.1 200") and b"connection: close" in head
    await assert_closed(busy)
    with pytest.raises(OSError):  # no longer accepting
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_a_publisher_that_vanishes_mid_body_loses_nothing_for_others(
    start_broker: StartBroker,
) -> None:
    running = await start_broker()
    port = running.addresses.port
    gone = await trio.open_tcp_stream("127.0.0.1", port)
    await gone.send_all(post(b"/v1/topics/t", b'{"whole": true}')[:-5])
    await gone.aclose()
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(post(b"/v1/topics/t", b"1", b"Content-Type: application/json\r\n"))
    head, body = await read_response(stream, bytearray())
    assert head.startswith(b"HTTP/1.1 202") and orjson.loads(body)["offset"] == 0
    await stream.aclose()


async def test_a_chunked_publish_within_the_limit_is_accepted(
    start_broker: StartBroker,
) -> None:
    running = await start_broker()
    stream = await trio.open_tcp_stream("127.0.0.1", running.addresses.port)
    await stream.send_all(b"POST /v1/topics/c HTTP/1.1\r\nHost: t\r\nContent-Type: "
                          b"application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                          b"2\r\n{\"\r\n6\r\na\": 1}\r\n0\r\n\r\n")
    head, body = await read_response(stream, bytearray())
    assert head.startswith(b"HTTP/1.1 202"), (head, body)
    await stream.send_all(b"GET /v1/topics/c/messages HTTP/1.1\r\nHost: t\r\n\r\n")
    _, body = await read_response(stream, bytearray())
    assert [m["data"] for m in orjson.loads(body)["messages"]] == [{"a": 1}]
    await stream.aclose()


async def test_http_10_closes_unless_asked_to_keep_alive(nursery: trio.Nursery) -> None:
    _, port = await start_server(nursery)
    kept = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = bytearray()
    for _ in range(2):  # the second request proves the connection stayed open
        await kept.send_all(b"GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        head, _ = await read_response(kept, buffer)
        assert head.startswith(b"HTTP/1.1 200") and b"connection: keep-alive" in head
    await kept.aclose()
    plain = await trio.open_tcp_stream("127.0.0.1", port)
    await plain.send_all(b"GET /p HTTP/1.0\r\n\r\n")
    head, _ = await read_response(plain, bytearray())
    assert b"connection: close" in head
    await assert_closed(plain)


async def test_blank_lines_before_a_request_are_ignored(nursery: trio.Nursery) -> None:
    """RFC 9112 section 2.2 (a client may send a CRLF after a POST's body)."""
    _, port = await start_server(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    buffer = bytearray()
    await stream.send_all(b"\r\n" + post(b"/a", b"1") + b"\r\n" + post(b"/b", b"2"))
    for path in ("/a", "/b"):
        head, body = await read_response(stream, buffer)
        assert head.startswith(b"HTTP/1.1 200") and orjson.loads(body)["path"] == path
    await stream.aclose()


async def test_http_10_with_transfer_encoding_is_answered_then_closed(
    nursery: trio.Nursery,
) -> None:
    """RFC 9112 section 6.1, even when the client asks to keep the connection."""
    _, port = await start_server(nursery)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"POST /te HTTP/1.0\r\nConnection: keep-alive\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n")
    head, body = await read_response(stream, bytearray())
    assert head.startswith(b"HTTP/1.1 200") and orjson.loads(body)["body"] == "hi"
    assert b"connection: close" in head
    await assert_closed(stream)


async def test_a_head_trickled_in_is_closed_within_header_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Slowloris: each byte comes well within keep-alive, the whole head does not come
    within header_timeout of its first byte."""
    _, port = await start_server(nursery, keep_alive=5, header_timeout=1)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    started = trio.current_time()
    with trio.fail_after(TIMEOUT):
        for byte in b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: " + b"a" * 100:
            try:
                await stream.send_all(bytes([byte]))
            except trio.BrokenResourceError:
                break
            await trio.sleep(0.2)
        await assert_closed(stream)
    assert 1.0 <= trio.current_time() - started <= 1.5


async def test_blank_lines_trickled_in_are_closed_within_header_timeout(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """Blank lines begin no request, but the bytes after an answer start its clock."""
    _, port = await start_server(nursery, keep_alive=5, header_timeout=1)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(post(b"/a", b""))
    await read_response(stream, bytearray())
    started = trio.current_time()
    with trio.fail_after(TIMEOUT):
        for _ in range(200):
            try:
                await stream.send_all(b"\r\n")
            except trio.BrokenResourceError:
                break
            await trio.sleep(0.2)
        await assert_closed(stream)
    assert 1.0 <= trio.current_time() - started <= 1.5


async def test_a_body_trickled_below_the_minimum_rate_is_closed_and_a_slow_one_is_not(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    """After a grace of header_timeout, a body must keep arriving at min_receive_rate."""
    _, port = await start_server(nursery, keep_alive=5, max_body=100_000, header_timeout=1,
                                 min_receive_rate=1000)
    trickle = await trio.open_tcp_stream("127.0.0.1", port)
    await trickle.send_all(b"POST /t HTTP/1.1\r\nHost: t\r\nContent-Length: 50000\r\n\r\n")
    started = trio.current_time()
    with trio.fail_after(TIMEOUT):
        for _ in range(1000):  # 50 bytes/s
            try:
                await trickle.send_all(b"a" * 10)
            except trio.BrokenResourceError:
                break
            await trio.sleep(0.2)
        await assert_closed(trickle)
    assert 1.0 <= trio.current_time() - started <= 1.5
    slow = await trio.open_tcp_stream("127.0.0.1", port)  # 2,000 bytes/s, for 25 s
    await slow.send_all(b"POST /s HTTP/1.1\r\nHost: t\r\nContent-Length: 50000\r\n\r\n")
    for _ in range(250):
        await slow.send_all(b"b" * 200)
        await trio.sleep(0.1)
    head, body = await read_response(slow, bytearray())
    assert head.startswith(b"HTTP/1.1 200") and len(orjson.loads(body)["body"]) == 50000
    await slow.aclose()


async def test_an_answer_not_read_within_write_timeout_ends_the_connection(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    big = b"x" * (16 * 1024 * 1024)

    async def large(request: HttpRequest) -> HttpResponse:
        return HttpResponse(200, big, b"application/octet-stream")

    _, port = await start_server(nursery, large, keep_alive=60, write_timeout=0.5)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting
    await sock.connect(("127.0.0.1", port))
    stream = trio.SocketStream(sock)
    await stream.send_all(b"GET /large HTTP/1.1\r\nHost: t\r\n\r\n")
    await trio.sleep(2)  # not reading, past write_timeout
    received = 0
    with trio.fail_after(TIMEOUT):
        while True:
            try:
                data = await stream.receive_some(65536)
            except trio.BrokenResourceError:
                break
            if not data:
                break
            received += len(data)
    assert received < len(big)  # the server gave up on the answer and closed
    await stream.aclose()


async def test_a_request_that_arrived_while_the_loop_was_stalled_is_served(
    nursery: trio.Nursery,
) -> None:
    """Issue #14 item 8: after a stall longer than keep-alive, an idle connection whose
    next request is already there is answered, not closed."""
    raw = socket.socket()
    waiting = raw  # the keep-alive client, written to from inside the stall

    async def stall(request: HttpRequest) -> HttpResponse:
        if request.head.path == "/stall":
            waiting.send(post(b"/after", b"arrived"))
            time.sleep(0.5)  # blocks the event loop past the 0.2 s keep-alive
        return await echo(request)

    _, port = await start_server(nursery, stall, keep_alive=0.2)
    raw.connect(("127.0.0.1", port))
    kept = trio.SocketStream(trio.socket.from_stdlib_socket(raw))
    buffer = bytearray()
    await kept.send_all(post(b"/first", b""))
    await read_response(kept, buffer)  # the server now waits for its next request
    staller = await trio.open_tcp_stream("127.0.0.1", port)
    await staller.send_all(post(b"/stall", b""))
    head, body = await read_response(kept, buffer)
    assert head.startswith(b"HTTP/1.1 200") and orjson.loads(body)["body"] == "arrived"
    await read_response(staller, bytearray())
    await kept.aclose()
    await staller.aclose()
