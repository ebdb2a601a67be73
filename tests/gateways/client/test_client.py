"""The public client: keep-alive publishing, error mapping, subscriptions, gaps and closes.

Most tests run against a real broker; a counting TCP proxy in front of it shows how many
connections the client really opened and can close them the way an idle timeout does.
Frame and answer parsing is tested as pure functions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import cbor2
import orjson
import pytest
import trio
from trio_websocket import WebSocketRequest, serve_websocket

from broker import SlowConsumerPolicy, TopicSettings
from gateways import Client, ClientError, Gap, Message, open_client
from gateways.client.http import (
    HttpEndpoint,
    HttpResponse,
    batch_results,
    encode_batch,
    encode_payload,
    error_from_response,
    topic_path,
)
from gateways.client.websocket import (
    close_error,
    encode_request,
    parse_frame,
    subscription_url,
)

from ...conftest import TIMEOUT, RunningBroker, StartBroker


@pytest.fixture
async def client(running: RunningBroker) -> AsyncIterator[Client]:
    async with open_client(running.http_url, running.ws_url(), timeout=TIMEOUT) as client:
        yield client


# -- pure: request bodies, answers, frames ------------------------------------------------


def test_payloads_are_json_by_default_cbor_on_request_and_bytes_as_they_are() -> None:
    assert encode_payload({"x": 1}) == (b'{"x":1}', "application/json")
    assert encode_payload({"x": 1}, cbor=True) == (cbor2.dumps({"x": 1}), "application/cbor")
    assert encode_payload(b"\x00\x01") == (b"\x00\x01", "application/octet-stream")
    assert encode_payload(b"hi", content_type="text/plain") == (b"hi", "text/plain")
    with pytest.raises(ClientError) as caught:
        encode_payload(object())
    assert caught.value.code == "invalid_payload"


def test_a_batch_body_lists_topic_and_data_in_order() -> None:
    body, kind = encode_batch([("a.b", 1), ("c.d", {"y": 2})])
    assert kind == "application/json"
    assert orjson.loads(body) == {
        "messages": [{"topic": "a.b", "data": 1}, {"topic": "c.d", "data": {"y": 2}}]
    }


def test_topics_are_percent_encoded_into_paths() -> None:
    assert topic_path("a.b") == "/v1/topics/a.b"
    assert topic_path("a b/c", "/messages") == "/v1/topics/a%20b%2Fc/messages"


def test_an_error_answer_becomes_a_client_error_with_code_status_and_retry_after() -> None:
    body = orjson.dumps({"error": {"code": "topic_busy", "message": "full"}})
    error = error_from_response(HttpResponse(503, ((b"retry-after", b"1"),), body))
    assert (error.code, error.message, error.status, error.retry_after) == (
        "topic_busy", "full", 503, 1.0,
    )
    odd = error_from_response(HttpResponse(502, (), b"<html>bad gateway</html>"))
    assert (odd.code, odd.status) == ("http_502", 502)


def test_a_partially_refused_batch_reports_each_message() -> None:
    body = orjson.dumps({
        "error": {"code": "topic_busy", "message": "busy"},
        "results": [
            {"topic": "a", "offset": 4},
            {"topic": "b", "error": {"code": "topic_busy", "message": "busy"}},
        ],
    })
    outcomes = batch_results(HttpResponse(503, ((b"retry-after", b"1"),), body), 2)
    assert outcomes[0] == 4
    refused = outcomes[1]
    assert isinstance(refused, ClientError)
    assert (refused.code, refused.status, refused.retry_after) == ("topic_busy", 503, 1.0)


def test_a_wholly_refused_batch_raises() -> None:
    body = orjson.dumps({"error": {"code": "invalid_topic", "message": "messages[1]: bad"}})
    with pytest.raises(ClientError) as caught:
        batch_results(HttpResponse(400, (), body), 2)
    assert (caught.value.code, caught.value.status) == ("invalid_topic", 400)


def test_message_gap_and_control_frames_parse_from_json_and_cbor() -> None:
    frame = {"op": "message", "topic": "a.b", "offset": 7, "data": {"x": [1, 2]}}
    assert parse_frame(orjson.dumps(frame).decode(), 5.0) == Message("a.b", 7, {"x": [1, 2]}, 5.0)
    assert parse_frame(cbor2.dumps({**frame, "data": b"\x00"})) == Message("a.b", 7, b"\x00")
    gap = {"op": "gap", "topic": "a.b", "skipped": 3, "from": 4, "to": 6}
    assert parse_frame(orjson.dumps(gap).decode()) == Gap("a.b", 3, 4, 6)
    assert parse_frame(cbor2.dumps(gap)) == Gap("a.b", 3, 4, 6)
    assert parse_frame('{"op":"ok","id":3}') == {"op": "ok", "id": 3}


@pytest.mark.parametrize("raw", ["not json", "[1, 2]", '{"op":"message","topic":"a"}', b"\xff"])
def test_malformed_frames_are_protocol_errors(raw: str | bytes) -> None:
    with pytest.raises(ClientError) as caught:
        parse_frame(raw)
    assert caught.value.code == "protocol_error"


def test_a_normal_close_is_quiet_and_every_other_close_an_error_with_its_code() -> None:
    assert close_error(1000, "client closed") is None
    for code, reason in [(4008, "slow consumer"), (1001, "broker shutting down"),
                         (1011, "topic failed"), (None, None)]:
        error = close_error(code, reason)
        assert error is not None
        assert (error.code, error.close_code) == ("closed", code)
        assert reason is None or reason in error.message


def test_requests_are_text_json_or_binary_cbor() -> None:
    request = {"op": "ping", "id": 1}
    assert encode_request(request, "json") == '{"op":"ping","id":1}'
    assert cbor2.loads(encode_request(request, "cbor")) == request


def test_urls_parse_and_name_the_connection() -> None:
    assert HttpEndpoint.parse("http://h:81/base/") == HttpEndpoint("h", 81, "/base")
    assert HttpEndpoint.parse("http://h") == HttpEndpoint("h", 80, "")
    with pytest.raises(ClientError) as caught:
        HttpEndpoint.parse("https://h:81")
    assert caught.value.code == "invalid_url"
    assert subscription_url("ws://h:1/v1/ws", "me & you") == "ws://h:1/v1/ws?client=me+%26+you"
    assert subscription_url("ws://h:1/v1/ws?topic=a", "x") == "ws://h:1/v1/ws?topic=a&client=x"
    assert subscription_url("ws://h:1/v1/ws", None) == "ws://h:1/v1/ws"


# -- a TCP proxy that counts connections and can close them -------------------------------


class CountingProxy:
    """Forwards TCP to `port`; counts accepted connections; `close_all` drops them."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.accepted = 0
        self.port = 0
        self._streams: list[trio.SocketStream] = []

    async def start(self, nursery: trio.Nursery) -> None:
        listeners = await nursery.start(trio.serve_tcp, self._handle, 0)
        self.port = listeners[0].socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close_all(self) -> None:
        """Close every connection, as a server closing idle keep-alive connections does."""
        streams, self._streams = self._streams, []
        for stream in streams:
            await stream.aclose()

    async def _handle(self, downstream: trio.SocketStream) -> None:
        self.accepted += 1
        upstream = await trio.open_tcp_stream("127.0.0.1", self.target)
        self._streams += [downstream, upstream]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pump, downstream, upstream, nursery.cancel_scope)
            nursery.start_soon(self._pump, upstream, downstream, nursery.cancel_scope)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, scope: trio.CancelScope
    ) -> None:
        try:
            async for chunk in source:
                await sink.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # one side went away: the other is closed below
        finally:
            scope.cancel()
            await sink.aclose()


@pytest.fixture
async def proxy(running: RunningBroker, nursery: trio.Nursery) -> CountingProxy:
    proxy = CountingProxy(running.addresses.port)
    await proxy.start(nursery)
    return proxy


# -- HTTP against the broker ------------------------------------------------------------


async def test_publishes_get_consecutive_offsets(client: Client) -> None:
    assert [await client.publish("orders.eu", {"n": n}) for n in range(3)] == [0, 1, 2]
    assert await client.publish("orders.eu", b"\x00raw") == 3
    assert await client.publish("orders.eu", {"n": 4}, cbor=True) == 4
    page = await client.history("orders.eu", 0, 10)
    assert [m["data"] for m in page["messages"]] == [
        {"n": 0}, {"n": 1}, {"n": 2}, {"base64": "AHJhdw=="}, {"n": 4},
    ]
    assert [m["content_type"] for m in page["messages"]][3:] == [
        "application/octet-stream", "application/cbor",
    ]


async def test_publish_many_returns_each_offset_in_order(client: Client) -> None:
    await client.publish("x.one", 0)
    results = await client.publish_many([("x.one", 1), ("x.two", 2), ("x.one", 3)])
    assert results == [1, 0, 2]
    results = await client.publish_many([("x.two", b"\x01"), ("x.two", {"k": 1})], cbor=True)
    assert results == [1, 2]
    page = await client.history("x.two")
    assert [m["data"] for m in page["messages"]] == [2, {"base64": "AQ=="}, {"k": 1}]


async def test_listing_calls_wrap_the_topic_endpoints(client: Client) -> None:
    await client.publish("list.a", 1)
    await client.publish("other.b", 1)
    assert [t["name"] for t in await client.topics("list.")] == ["list.a"]
    assert {t["name"] for t in await client.topics()} >= {"list.a", "other.b"}
    assert (await client.topic("list.a"))["next_offset"] == 1
    with pytest.raises(ClientError) as caught:
        await client.topic("missing.topic")
    assert (caught.value.code, caught.value.status) == ("not_found", 404)
    assert await client.subscribers("list.a") == []


async def test_fifty_publishes_share_one_connection(
    running: RunningBroker, proxy: CountingProxy
) -> None:
    async with open_client(proxy.url, running.ws_url(), timeout=TIMEOUT) as client:
        offsets = [await client.publish("keep.alive", n) for n in range(50)]
        assert offsets == list(range(50))
        assert proxy.accepted == 1
        statistics = client.statistics()
        assert (statistics.connections_opened, statistics.requests) == (1, 50)


async def test_concurrent_publishes_take_turns_on_the_one_connection(
    running: RunningBroker, proxy: CountingProxy
) -> None:
    offsets: list[int] = []
    async with open_client(proxy.url, running.ws_url(), timeout=TIMEOUT) as client:

        async def publish_some(task: int) -> None:
            for n in range(10):
                offsets.append(await client.publish("shared.topic", {"task": task, "n": n}))

        async with trio.open_nursery() as nursery:
            for task in range(8):
                nursery.start_soon(publish_some, task)
    assert sorted(offsets) == list(range(80))
    assert proxy.accepted == 1


async def test_a_connection_the_server_closed_while_idle_is_reopened_transparently(
    running: RunningBroker, proxy: CountingProxy
) -> None:
    async with open_client(proxy.url, running.ws_url(), timeout=TIMEOUT) as client:
        assert await client.publish("idle.topic", 1) == 0
        await proxy.close_all()
        await trio.testing.wait_all_tasks_blocked()
        assert await client.publish("idle.topic", 2) == 1
        assert await client.publish("idle.topic", 3) == 2
        assert proxy.accepted == 2
        assert client.statistics().reconnects == 1
    async with open_client(running.http_url, timeout=TIMEOUT) as check:
        assert [m["data"] for m in (await check.history("idle.topic"))["messages"]] == [1, 2, 3]


async def test_bad_topics_and_oversized_payloads_map_to_their_codes(
    start_broker: StartBroker,
) -> None:
    running = await start_broker(max_payload_bytes=1024)
    async with open_client(running.http_url, timeout=TIMEOUT) as client:
        for topic in ("a..b", "a.*", "bad topic"):
            with pytest.raises(ClientError) as caught:
                await client.publish(topic, 1)
            assert (caught.value.code, caught.value.status) == ("invalid_topic", 400)
        with pytest.raises(ClientError) as caught:
            await client.publish("big.one", "x" * 2000)
        assert (caught.value.code, caught.value.status) == ("payload_too_large", 413)
        with pytest.raises(ClientError) as caught:
            await client.publish_many([("ok.topic", 1), ("a..b", 2)])
        assert (caught.value.code, caught.value.status) == ("invalid_topic", 400)
        # the connection survives error answers
        assert await client.publish("ok.topic", 1) == 0
        assert client.statistics().connections_opened == 1


async def test_an_unreachable_broker_is_connection_failed() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        async with open_client(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/v1/ws",
                               timeout=TIMEOUT) as client:
            with pytest.raises(ClientError) as caught:
                await client.publish("a.b", 1)
            assert caught.value.code == "connection_failed"
            with pytest.raises(ClientError) as caught:
                async with client.subscribe("a.b"):
                    pass
            assert caught.value.code == "connection_failed"


async def test_a_server_that_never_answers_is_a_timeout(nursery: trio.Nursery) -> None:
    accepted = trio.Event()

    async def silent(stream: trio.SocketStream) -> None:
        accepted.set()
        await trio.sleep_forever()

    listeners = await nursery.start(trio.serve_tcp, silent, 0)
    port = listeners[0].socket.getsockname()[1]
    async with open_client(f"http://127.0.0.1:{port}", timeout=0.3) as client:
        with pytest.raises(ClientError) as caught:
            await client.publish("a.b", 1)
    assert caught.value.code == "timeout"
    assert accepted.is_set()


# -- WebSocket against the broker -------------------------------------------------------


@pytest.mark.parametrize("wire_format", ["json", "cbor"])
async def test_a_subscription_replays_from_earliest_then_gets_live_messages_in_order(
    client: Client, wire_format: Any
) -> None:
    await client.publish("feed.a", {"n": 0})
    await client.publish("feed.a", b"\x01\x02")
    async with client.subscribe("feed.a", from_="earliest", format=wire_format,
                                name="tester") as subscription:
        assert subscription.subscribed["feed.a"]["next_offset"] == 2
        assert [s["client"] for s in await client.subscribers("feed.a")] == ["tester"]
        await client.publish("feed.a", {"n": 2}, cbor=True)
        await client.publish("feed.a", "text")
        items = [await subscription.__anext__() for _ in range(4)]
    raw = b"\x01\x02" if wire_format == "cbor" else {"base64": "AQI="}
    assert items == [
        Message("feed.a", 0, {"n": 0}, items[0].received),
        Message("feed.a", 1, raw, items[1].received),
        Message("feed.a", 2, {"n": 2}, items[2].received),
        Message("feed.a", 3, "text", items[3].received),
    ]
    received = [item.received for item in items if isinstance(item, Message)]
    assert received == sorted(received) and received[0] > 0


async def test_several_topics_and_patterns_on_one_subscription(client: Client) -> None:
    await client.publish("multi.x", 1)
    async with client.subscribe("multi.x", "other.*", from_="earliest") as subscription:
        await client.publish("other.y", 2)
        first, second = [await subscription.__anext__() for _ in range(2)]
        assert [(m.topic, m.offset, m.data) for m in (first, second)] == [  # type: ignore[union-attr]
            ("multi.x", 0, 1), ("other.y", 0, 2),
        ]
        await subscription.unsubscribe("multi.x")
        await client.publish("multi.x", 3)
        await client.publish("other.y", 4)
        item = await subscription.__anext__()
        assert (item.topic, item.data) == ("other.y", 4)  # type: ignore[union-attr]


async def test_ping_from_another_task_while_one_iterates(client: Client) -> None:
    got: list[int] = []
    async with client.subscribe("pinged") as subscription, trio.open_nursery() as nursery:

        async def iterate() -> None:
            async for item in subscription:
                assert isinstance(item, Message)
                got.append(item.data)
                if len(got) == 2:
                    return

        nursery.start_soon(iterate)
        await trio.testing.wait_all_tasks_blocked()
        await client.publish("pinged", 1)
        assert (await subscription.ping())["op"] == "ok"
        await client.publish("pinged", 2)
    assert got == [1, 2]


async def test_websocket_publish_answers_with_the_offset(client: Client) -> None:
    async with client.subscribe("ws.pub", from_="earliest") as subscription:
        assert await subscription.publish("ws.pub", {"v": 1}) == 0
        item = await subscription.__anext__()
        assert (item.offset, item.data) == (0, {"v": 1})  # type: ignore[union-attr]


async def test_a_refused_subscription_raises_its_error_code(client: Client) -> None:
    with pytest.raises(ClientError) as caught:
        async with client.subscribe("ok.topic", "a..b"):
            pass
    assert caught.value.code == "invalid_topic"
    async with client.subscribe("twice") as subscription:
        with pytest.raises(ClientError) as caught:
            await subscription.subscribe("twice")
        assert caught.value.code == "already_subscribed"
        assert (await subscription.ping())["op"] == "ok"  # the connection stays usable


async def test_broker_shutdown_ends_iteration_with_close_code_1001(
    running: RunningBroker, client: Client
) -> None:
    async with client.subscribe("closing") as subscription:
        await client.publish("closing", 1)
        running.stop.set()
        items = []
        with pytest.raises(ClientError) as caught:
            async for item in subscription:
                items.append(item)
    assert [m.data for m in items] == [1]  # type: ignore[union-attr]
    assert (caught.value.code, caught.value.close_code) == ("closed", 1001)


async def test_drop_oldest_gaps_arrive_as_gap_items(start_broker: StartBroker) -> None:
    """A subscriber that does not read while 400 messages are published must see each
    offset either as a `Message` or inside a `Gap` (payloads big enough to fill sockets)."""
    running = await start_broker(
        outbox_size=8,
        topic_defaults=TopicSettings(slow_consumer_policy=SlowConsumerPolicy.DROP_OLDEST),
    )
    count, payload = 400, "x" * 60_000
    async with (
        open_client(running.http_url, running.ws_url(), timeout=TIMEOUT) as client,
        client.subscribe("prices") as subscription,
    ):
        for _ in range(count // 20):
            await client.publish_many([("prices", payload)] * 20)
        last = await client.publish("prices", "last")
        seen: list[int] = []
        gaps: list[Gap] = []
        with trio.fail_after(TIMEOUT):
            async for item in subscription:
                if isinstance(item, Gap):
                    gaps.append(item)
                    seen.extend(range(item.first, item.last + 1))
                else:
                    seen.append(item.offset)
                    if item.offset == last:
                        break
    assert gaps, "the subscriber never fell behind: make the payloads bigger"
    assert all(gap.skipped == gap.last - gap.first + 1 for gap in gaps)
    assert seen == list(range(count + 1))  # in order: each gap comes where it belongs


# -- closes and gaps from a scripted server ------------------------------------------------


Script = Callable[[Any], Awaitable[None]]


async def _scripted_server(nursery: trio.Nursery, script: Script) -> str:
    """A WebSocket server answering each subscribe with `ok`, then running `script(ws)`."""

    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept(subprotocol=request.proposed_subprotocols[0])
        frame = orjson.loads(await ws.get_message())
        await ws.send_message(orjson.dumps({"op": "ok", "id": frame["id"]}).decode())
        await script(ws)

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    return f"ws://127.0.0.1:{server.port}/v1/ws"


@pytest.mark.parametrize(("code", "reason"), [(4008, "slow consumer"), (1011, "topic failed")])
async def test_a_broker_close_surfaces_as_client_error_after_what_came_before(
    nursery: trio.Nursery, code: int, reason: str
) -> None:
    async def script(ws: Any) -> None:
        await ws.send_message('{"op":"message","topic":"t","offset":5,"data":1}')
        await ws.send_message('{"op":"gap","topic":"t","skipped":2,"from":6,"to":7}')
        await ws.aclose(code=code, reason=reason)

    url = await _scripted_server(nursery, script)
    items: list[Message | Gap] = []
    async with (
        open_client(ws_url=url, timeout=TIMEOUT) as client,
        client.subscribe("t") as subscription,
    ):
        with pytest.raises(ClientError) as caught:
            async for item in subscription:
                items.append(item)
    assert [type(item) for item in items] == [Message, Gap]
    assert items[1] == Gap("t", 2, 6, 7)
    assert (caught.value.code, caught.value.close_code) == ("closed", code)
    assert reason in caught.value.message


async def test_a_normal_close_ends_iteration_quietly(nursery: trio.Nursery) -> None:
    async def script(ws: Any) -> None:
        await ws.send_message('{"op":"message","topic":"t","offset":0,"data":"bye"}')
        await ws.aclose(code=1000)

    url = await _scripted_server(nursery, script)
    async with (
        open_client(ws_url=url, timeout=TIMEOUT) as client,
        client.subscribe("t") as subscription,
    ):
        items = [item async for item in subscription]
    assert [item.data for item in items] == ["bye"]  # type: ignore[union-attr]


async def test_an_unanswered_subscribe_times_out(nursery: trio.Nursery) -> None:
    async def handler(request: WebSocketRequest) -> None:
        ws = await request.accept()
        await ws.get_message()
        await trio.sleep_forever()

    server = await nursery.start(serve_websocket, handler, "127.0.0.1", 0, None)
    async with open_client(ws_url=f"ws://127.0.0.1:{server.port}/v1/ws", timeout=0.3) as client:
        with pytest.raises(ClientError) as caught:
            async with client.subscribe("t"):
                pass
    assert caught.value.code == "timeout"
