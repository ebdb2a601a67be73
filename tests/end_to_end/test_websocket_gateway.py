"""The WebSocket gateway under bad input: every kind gets the contract's answer.

Other clients are unaffected and the broker keeps serving; each test checks both.
"""

from __future__ import annotations

import socket
from functools import partial

import cbor2
import httpx
import orjson
import pytest
import trio
import trio.testing
from trio_websocket import ConnectionClosed, ConnectionRejected

from broker import Settings, SlowConsumerPolicy, TopicSettings
from gateways.websocket.handshake import Accept
from gateways.websocket.listener import _handshake

from ..conftest import RunningBroker, StartBroker, receive, request, wait_until, websocket
from .rawws import RawWebSocket, masked_frame


async def assert_still_serving(running: RunningBroker) -> None:
    """A fresh subscriber gets a freshly published message: the broker is fine."""
    async with websocket(running, "topic=canary") as ws, httpx.AsyncClient() as http:
        await request(ws, op="ping", id=0)
        response = await http.post(f"{running.http_url}/v1/topics/canary", json="alive")
        assert response.status_code == 202
        assert (await receive(ws))["data"] == "alive"


@pytest.mark.parametrize(
    ("frame", "code", "request_id"),
    [
        ("{not json", "invalid_frame", None),
        ("[1, 2]", "invalid_frame", None),
        ('{"id": 3}', "invalid_frame", 3),
        ('{"op": "dance", "id": 4}', "unknown_op", 4),
        ('{"op": "subscribe", "id": 5}', "invalid_frame", 5),
        ('{"op": "subscribe", "topic": 5, "id": 6}', "invalid_topic", 6),
        ('{"op": "subscribe", "topic": "a..b", "id": 7}', "invalid_topic", 7),
        ('{"op": "subscribe", "topic": "a", "from": -1, "id": 8}', "invalid_frame", 8),
        ('{"op": "publish", "topic": "a.*", "data": 1, "id": 9}', "invalid_topic", 9),
        ('{"op": "publish", "topic": "a", "id": 10}', "invalid_frame", 10),
        ('{"op": "unsubscribe", "topic": "never", "id": 11}', "not_subscribed", 11),
    ],
)
async def test_a_malformed_request_gets_an_error_frame_and_the_connection_stays_open(
    running: RunningBroker, frame: str, code: str, request_id: object
) -> None:
    async with websocket(running) as ws:
        await ws.send_message(frame)
        error = await receive(ws)
        assert error["op"] == "error"
        assert error["code"] == code
        assert error["id"] == request_id
        assert error["message"]
        assert await request(ws, op="ping", id="after") == {"op": "ok", "id": "after"}


async def test_a_binary_frame_on_a_json_connection_is_an_error_frame(
    running: RunningBroker,
) -> None:
    async with websocket(running) as ws:
        await ws.send_message(b"\x01\x02")
        assert (await receive(ws))["code"] == "invalid_frame"
        assert (await request(ws, op="ping", id=1))["op"] == "ok"


async def test_malformed_cbor_on_a_cbor_connection_is_an_error_frame(
    running: RunningBroker,
) -> None:
    async with websocket(running, subprotocol="broker.v1.cbor") as ws:
        await ws.send_message(b"\xff\x00")
        error = await receive(ws)
        assert error["op"] == "error" and error["code"] == "invalid_frame"
        await ws.send_message(cbor2.dumps({"op": "ping", "id": b"x"}))
        assert await receive(ws) == {"op": "ok", "id": b"x"}


async def test_a_publish_over_the_payload_limit_is_an_error_frame(
    start_broker: StartBroker,
) -> None:
    running = await start_broker(max_payload_bytes=100)
    async with websocket(running) as ws:
        reply = await request(ws, op="publish", topic="t", data="x" * 200, id=1)
        assert reply["code"] == "payload_too_large" and reply["id"] == 1


async def test_a_client_that_keeps_sending_garbage_is_closed_with_1008(
    running: RunningBroker,
) -> None:
    async with websocket(running) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(20):
                await ws.send_message("garbage")
                await receive(ws)
        assert closed.value.reason.code == 1008
    await assert_still_serving(running)


async def test_a_frame_over_the_size_limit_closes_with_1009(start_broker: StartBroker) -> None:
    running = await start_broker(max_payload_bytes=1000)
    raw = await RawWebSocket.connect(running.addresses.ws_port)
    # Header and the first chunk only: the broker must not wait for the whole frame.
    await raw.send(masked_frame(0x1, b"x" * 200_000)[:70_000])
    _, close = await raw.read_until_close()
    assert close is not None and close.close_code == 1009
    await raw.aclose()
    await assert_still_serving(running)


async def test_invalid_utf8_in_a_text_frame_closes_with_1007(running: RunningBroker) -> None:
    raw = await RawWebSocket.connect(running.addresses.ws_port)
    await raw.send(masked_frame(0x1, b"\xc3\x28"))
    _, close = await raw.read_until_close()
    assert close is not None and close.close_code == 1007
    await raw.aclose()


async def test_a_protocol_violation_closes_with_1002(running: RunningBroker) -> None:
    raw = await RawWebSocket.connect(running.addresses.ws_port)
    await raw.send(b"\x81\x05hello")  # an unmasked client frame breaks RFC 6455
    _, close = await raw.read_until_close()
    assert close is not None and close.close_code == 1002
    await raw.aclose()
    await assert_still_serving(running)


async def test_a_client_that_vanishes_mid_frame_disturbs_no_one(
    running: RunningBroker,
) -> None:
    broker = running.broker
    async with websocket(running, "topic=shared") as healthy:
        await request(healthy, op="ping", id=0)
        raws = []
        for _ in range(20):
            raw = await RawWebSocket.connect(running.addresses.ws_port, "/v1/ws?topic=shared")
            raws.append(raw)
        await wait_until(lambda: _subscribers(running, "shared", 21))
        for raw in raws:
            await raw.send(masked_frame(0x1, b'{"op": "ping", "id": 1}')[:9])
            await raw.aclose()
        await wait_until(lambda: _subscribers(running, "shared", 1))
        async with httpx.AsyncClient() as http:
            await http.post(f"{running.http_url}/v1/topics/shared", json="still here")
        assert (await receive(healthy))["data"] == "still here"
        await wait_until(_connections_equal(broker, 1))


async def _subscribers(running: RunningBroker, topic: str, count: int) -> bool:
    listing = await running.broker.subscribers(topic)
    return len(listing) == count


def _connections_equal(broker, count: int):  # type: ignore[no-untyped-def]
    async def check() -> bool:
        return broker.connections == count

    return check


async def test_a_request_for_another_path_is_a_json_404(running: RunningBroker) -> None:
    raw = await RawWebSocket.connect(running.addresses.ws_port, "/elsewhere")
    assert raw.status == 404
    body = await raw.read_body()
    assert orjson.loads(body)["error"]["code"] == "not_found"


async def test_an_invalid_topic_in_the_connect_query_is_rejected_with_400(
    running: RunningBroker,
) -> None:
    with pytest.raises(ConnectionRejected) as rejected:
        async with websocket(running, "topic=bad..name"):
            pass
    assert rejected.value.status_code == 400
    assert orjson.loads(rejected.value.body)["error"]["code"] == "invalid_topic"


async def test_a_plain_http_request_on_the_websocket_port_is_400(
    running: RunningBroker,
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", running.addresses.ws_port)
    await stream.send_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\n\r\n")
    with trio.fail_after(5):
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400")
    await stream.aclose()


async def test_the_client_name_appears_in_presence(running: RunningBroker) -> None:
    async with websocket(running, "topic=p&client=dashboard-1") as ws:
        await request(ws, op="ping", id=0)
        listing = await running.broker.subscribers("p")
        assert [s.client for s in listing] == ["dashboard-1"]
        assert listing[0].connection_id > 0


async def test_subscribers_of_a_topic_that_keeps_crashing_are_closed_with_1011(
    running: RunningBroker,
) -> None:
    async with websocket(running, "topic=doomed") as ws:
        await request(ws, op="ping", id=0)
        for _ in range(11):  # the restart policy allows 10 a minute, then stops the topic
            await running.broker.inject_crash("doomed")
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.reason.code == 1011
    await assert_still_serving(running)


async def test_a_connect_time_subscription_the_broker_refuses_gets_an_error_frame(
    start_broker: StartBroker,
) -> None:
    running = await start_broker(max_topics=1)
    async with httpx.AsyncClient() as http:
        await http.post(f"{running.http_url}/v1/topics/first", json=1)
    async with websocket(running, "topic=second") as ws:
        error = await receive(ws)
        assert (error["op"], error["code"]) == ("error", "too_many_topics")
        assert await request(ws, op="ping", id=1) == {"op": "ok", "id": 1}


async def test_an_empty_topic_in_the_connect_query_is_rejected_with_400(
    running: RunningBroker,
) -> None:
    with pytest.raises(ConnectionRejected) as rejected:
        async with websocket(running, "topic="):
            pass
    assert rejected.value.status_code == 400


async def test_each_connection_is_one_task(running: RunningBroker) -> None:
    """No reader/writer/watcher trio per connection: one task each, gone when it closes."""
    broker = running.broker
    async with websocket(running, "topic=tasks") as first:
        await request(first, op="ping", id=0)
        before = (await broker.gauges()).tasks
        raws = [await RawWebSocket.connect(running.addresses.ws_port, "/v1/ws?topic=tasks")
                for _ in range(10)]
        for raw in raws:
            await raw.send_text(b'{"op": "ping", "id": 1}')
            assert (await raw.read_frame()) is not None  # its ok: the task is serving
        assert (await broker.gauges()).tasks == before + 10
        for raw in raws:
            await raw.aclose()
        await wait_until(_connections_equal(broker, 1))
        await trio.testing.wait_all_tasks_blocked()
        assert (await broker.gauges()).tasks == before


async def test_frames_sent_together_with_the_handshake_are_answered(
    running: RunningBroker,
) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", running.addresses.ws_port)
    await stream.send_all(
        b"GET /v1/ws?topic=early HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
        + masked_frame(0x1, b'{"op": "ping", "id": "a"}')
        + masked_frame(0x1, b'{"op": "ping", "id": "b"}')
    )
    raw = RawWebSocket(stream)
    raw.response_head = await raw._read_head()
    assert raw.status == 101
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in raw.response_head  # RFC 6455's example
    answers = [orjson.loads((await raw.read_frame()).payload) for _ in range(2)]  # type: ignore[union-attr]
    assert answers == [{"op": "ok", "id": "a"}, {"op": "ok", "id": "b"}]
    await raw.aclose()


async def test_a_bad_sec_websocket_key_is_a_json_400(running: RunningBroker) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", running.addresses.ws_port)
    await stream.send_all(
        b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: not-a-key\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    raw = RawWebSocket(stream)
    raw.response_head = await raw._read_head()
    assert raw.status == 400
    assert orjson.loads(await raw.read_body())["error"]["code"] == "bad_request"
    await raw.aclose()


async def test_a_subscriber_whose_socket_was_full_gets_the_rest_in_order_when_it_reads(
    start_broker: StartBroker,
) -> None:
    """What the kernel did not take is written by the connection's task once the client
    reads again (the outbox wakes it out of its wait for input)."""
    running = await start_broker(outbox_size=1000)
    raw = await RawWebSocket.connect(
        running.addresses.ws_port, "/v1/ws?topic=full", receive_buffer=4096
    )
    await raw.send_text(b'{"op": "ping", "id": 0}')
    assert orjson.loads((await raw.read_frame()).payload)["op"] == "ok"  # type: ignore[union-attr]
    payload = "y" * 20_000
    async with httpx.AsyncClient(base_url=running.http_url, timeout=10) as http:
        for _batch in range(4):
            batch = [{"topic": "full", "data": payload} for _ in range(50)]
            assert (await http.post("/v1/publish", json={"messages": batch})).status_code == 202
    offsets = [orjson.loads((await raw.read_frame()).payload)["offset"]  # type: ignore[union-attr]
               for _ in range(200)]
    assert offsets == list(range(200))
    assert running.broker.counters.slow_consumer_disconnects == 0
    await raw.aclose()


async def test_the_benchmark_dialer_gets_every_connection_ready_and_closes_them(
    running: RunningBroker,
) -> None:
    """`benchmarks.lean.Dialer` (the connect scenario's clients) against the broker: each
    handshake checked, each ping answered, each connection closed politely."""
    from benchmarks.lean import Dialer

    dialer = Dialer("127.0.0.1", running.addresses.ws_port)
    with trio.fail_after(10):
        await dialer.open([f"/v1/ws?topic=dial&client=d{n}" for n in range(20)])
        # ...and with at most 4 in progress at a time, the rest started as those finish
        await dialer.open([f"/v1/ws?topic=dial&client=e{n}" for n in range(10)],
                          concurrency=4)
    assert [dial.error for dial in dialer.dials] == [None] * 30
    assert len({dial.ping_id for dial in dialer.dials}) == 30
    assert all(dial.ready and dial.latency > 0 for dial in dialer.dials)
    assert len(await running.broker.subscribers("dial")) == 30
    await dialer.close(5.0)
    await wait_until(_connections_equal(running.broker, 0))


async def test_the_benchmark_dialer_counts_a_wrong_accept_token_as_a_failure(
    nursery: trio.Nursery,
) -> None:
    from benchmarks.lean import Dialer

    async def serve(stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head:
            head += await stream.receive_some()
        await stream.send_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                              b"connection: Upgrade\r\nsec-websocket-accept: bm9wZQ==\r\n\r\n")
        await trio.sleep_forever()

    [listener] = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    dialer = Dialer("127.0.0.1", listener.socket.getsockname()[1])
    with trio.fail_after(10):
        await dialer.open(["/v1/ws", "/v1/ws"])
    assert [dial.ready for dial in dialer.dials] == [False, False]
    assert all("Sec-WebSocket-Accept" in (dial.error or "") for dial in dialer.dials)
    await dialer.close(0.5)


def test_accepted_connections_have_no_nagle_delay_and_a_low_unsent_mark() -> None:
    """As trio's SocketStream would set them; on Linux inherited from the listener."""
    import socket

    from gateways.tcp import NOTSENT_LOWAT, prepare, set_tcp_options

    with socket.socket() as listener, socket.socket() as client:
        set_tcp_options(listener)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        client.connect(listener.getsockname())
        accepted, _ = listener.accept()
        with accepted:
            assert prepare(accepted)
            assert not accepted.getblocking()
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            if hasattr(socket, "TCP_NOTSENT_LOWAT"):
                lowat = accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
                assert lowat == NOTSENT_LOWAT


@pytest.mark.parametrize("lead", [b"", masked_frame(0x9, b"ping")])
async def test_a_frame_begun_and_never_finished_is_closed_with_1008(
    start_broker: StartBroker, lead: bytes
) -> None:
    """Before, a connection holding half a frame and then silence was kept for good. Now
    it has header_timeout + bytes so far / min_receive_rate (here 0.2 + 0.09 s); with a
    ping first, wsproto parses the input and the same bound holds."""
    running = await start_broker(header_timeout=0.2, min_receive_rate=100.0)
    raw = await RawWebSocket.connect(running.addresses.ws_port)
    await raw.send(lead + masked_frame(0x1, b'{"op": "ping", "id": 1}' * 10)[:9])
    started = trio.current_time()
    frames, close = await raw.read_until_close()
    took = trio.current_time() - started
    assert close is not None and close.close_code == 1008
    assert close.payload[2:] == b"frame not completed in time"
    assert 0.2 <= took < 2.0
    assert [f.opcode for f in frames] == ([0xA] if lead else [])  # the pong
    await raw.aclose()


async def test_a_subscriber_that_stops_reading_is_dropped_after_write_timeout(
    start_broker: StartBroker,
) -> None:
    """drop-oldest never evicts; the write deadline does, and the topic forgets it."""
    running = await start_broker(write_timeout=0.3, topic_defaults=TopicSettings(
        slow_consumer_policy=SlowConsumerPolicy.DROP_OLDEST))
    stalled = await RawWebSocket.connect(running.addresses.ws_port, "/v1/ws?topic=feed",
                                         receive_buffer=4096)
    await wait_until(lambda: _subscribers(running, "feed", 1))
    async with httpx.AsyncClient(base_url=running.http_url) as http:
        for _ in range(16):  # 1 MiB: far more than the socket buffers hold
            assert (await http.post("/v1/topics/feed", content=b"x" * 65536)).status_code == 202
    await wait_until(lambda: _subscribers(running, "feed", 0), timeout=3)
    await wait_until(_connections_equal(running.broker, 0))
    await stalled.aclose()


async def test_a_handshake_trickled_byte_by_byte_is_read_whole() -> None:
    """The head's end is searched for in the new bytes only (with the 3 before them), so
    a `\\r\\n\\r\\n` split across receives is found, and a long head costs linear time."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    head = (b"GET /v1/ws?client=" + b"n" * 100 + b" HTTP/1.1\r\nHost: h\r\nUpgrade: websocket"
            b"\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n")
    early = masked_frame(0x1, b'{"op": "ping", "id": 1}')
    try:
        with trio.fail_after(5):
            accepted = await _handshake_trickled(ours, theirs, head, early)
        assert accepted is not None
        accept, rest = accepted
        assert accept.client == "n" * 100 and rest == early
        assert theirs.recv(4096).startswith(b"HTTP/1.1 101 ")
    finally:
        ours.close()
        theirs.close()


async def _handshake_trickled(
    ours: socket.socket, theirs: socket.socket, head: bytes, early: bytes
) -> tuple[Accept, bytes] | None:
    """`_handshake` reading `head` sent one byte per receive, `early` behind its end."""

    async def trickle() -> None:
        for at in range(len(head) - 1):
            theirs.send(head[at:at + 1])
            await trio.testing.wait_all_tasks_blocked()  # read before the next
        theirs.send(head[-1:] + early)  # a first frame right behind the head

    async with trio.open_nursery() as nursery:
        nursery.start_soon(trickle)
        return await _handshake(ours, Settings())
