"""`HttpServer` over real sockets: keep-alive, pipelining, 100-continue, limits, timeouts,
drain, and requests that break the protocol (each gets its status; nobody else notices)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
import pytest
import trio

from gateways.http_server import HttpRequest, HttpResponse, HttpServer, json_response

from .conftest import StartBroker

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
) -> tuple[HttpServer, int]:
    server = HttpServer(handler, max_body=max_body, keep_alive=keep_alive)
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
