"""End to end over real sockets: HTTP publish, WebSocket subscribe, offsets and order."""

from __future__ import annotations

import httpx
import orjson
import trio

from ..conftest import RunningBroker, receive, request, websocket


async def test_publish_answers_202_with_consecutive_offsets(http: httpx.AsyncClient) -> None:
    for expected in range(3):
        response = await http.post("/v1/topics/orders.eu", json={"n": expected})
        assert response.status_code == 202
        assert response.json() == {"topic": "orders.eu", "offset": expected}


async def test_subscriber_receives_messages_in_offset_order(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with websocket(running, "topic=orders.eu") as ws:
        assert (await request(ws, op="ping", id=1)) == {"op": "ok", "id": 1}
        for n in range(20):
            await http.post("/v1/topics/orders.eu", json={"n": n})
        for n in range(20):
            frame = await receive(ws)
            assert frame == {"op": "message", "topic": "orders.eu", "offset": n, "data": {"n": n}}


async def test_every_subscriber_of_a_topic_gets_every_message(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with websocket(running, "topic=t") as a, websocket(running, "topic=t") as b:
        for ws in (a, b):
            await request(ws, op="ping", id=0)
        for n in range(10):
            await http.post("/v1/topics/t", content=str(n), headers={"content-type": "text/plain"})
        for ws in (a, b):
            got = [await receive(ws) for _ in range(10)]
            assert [m["offset"] for m in got] == list(range(10))
            assert [m["data"] for m in got] == [str(n) for n in range(10)]


async def test_subscribers_only_get_their_topics_and_topics_count_offsets_apart(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with websocket(running, "topic=a&topic=c") as ws:
        await request(ws, op="ping", id=0)
        for topic in ("a", "b", "c", "a"):
            await http.post(f"/v1/topics/{topic}", json=topic)
        got = [await receive(ws) for _ in range(3)]
        assert [(m["topic"], m["offset"]) for m in got] == [("a", 0), ("c", 0), ("a", 1)]


async def test_many_topics_at_once_each_keep_their_own_order(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    topics = [f"load.t{i}" for i in range(20)]
    query = "&".join(f"topic={t}" for t in topics)
    async with websocket(running, query) as ws:
        await request(ws, op="ping", id=0)

        async def publish_all(topic: str) -> None:
            for n in range(5):
                response = await http.post(f"/v1/topics/{topic}", json=n)
                assert response.status_code == 202

        async with trio.open_nursery() as nursery:
            for topic in topics:
                nursery.start_soon(publish_all, topic)
        seen: dict[str, list[int]] = {t: [] for t in topics}
        for _ in range(len(topics) * 5):
            frame = await receive(ws)
            seen[frame["topic"]].append(frame["offset"])
        assert all(offsets == list(range(5)) for offsets in seen.values())


async def test_subscribe_op_then_unsubscribe_stops_delivery(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with websocket(running) as ws:
        ok = await request(ws, op="subscribe", topic="news", id="s1")
        assert ok["op"] == "ok" and ok["id"] == "s1" and ok["topic"] == "news"
        await http.post("/v1/topics/news", json="first")
        assert (await receive(ws))["data"] == "first"
        assert (await request(ws, op="unsubscribe", topic="news", id="u1"))["op"] == "ok"
        await http.post("/v1/topics/news", json="second")
        # The ping's reply comes next: nothing for "news" was queued before it.
        assert await request(ws, op="ping", id="p") == {"op": "ok", "id": "p"}
        listing = (await http.get("/v1/topics/news/subscribers")).json()
        assert listing["subscribers"] == []


async def test_websocket_publish_is_acknowledged_with_its_offset(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with websocket(running, "topic=chat") as ws:
        reply = await request(ws, op="publish", topic="chat", data={"hi": 1}, id=7)
        # Both the ok and the message reach this subscriber; their order is not promised.
        other = await receive(ws)
        frames = sorted([reply, other], key=lambda f: f["op"])
        assert frames[0] == {"op": "message", "topic": "chat", "offset": 0, "data": {"hi": 1}}
        assert frames[1] == {"op": "ok", "id": 7, "topic": "chat", "offset": 0}


async def test_payloads_of_each_content_type_reach_json_subscribers_as_the_contract_says(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    import cbor2

    async with websocket(running, "topic=kinds") as ws:
        await request(ws, op="ping", id=0)
        await http.post("/v1/topics/kinds", content=b'{"a": [1, 2]}',
                        headers={"content-type": "application/json"})
        await http.post("/v1/topics/kinds", content="héllo".encode(),
                        headers={"content-type": "text/plain; charset=utf-8"})
        await http.post("/v1/topics/kinds", content=b"\x00\xff",
                        headers={"content-type": "application/octet-stream"})
        await http.post("/v1/topics/kinds", content=cbor2.dumps({"b": b"\x01"}),
                        headers={"content-type": "application/cbor"})
        datas = [(await receive(ws))["data"] for _ in range(4)]
        assert datas == [
            {"a": [1, 2]},
            "héllo",
            {"base64": "AP8="},
            {"b": {"base64": "AQ=="}},
        ]


async def test_cbor_subscriber_gets_binary_frames_with_native_values(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with websocket(running, "topic=bin", subprotocol="broker.v1.cbor") as ws:
        import cbor2

        await ws.send_message(cbor2.dumps({"op": "ping", "id": 1}))
        assert await receive(ws) == {"op": "ok", "id": 1}
        await http.post("/v1/topics/bin", content=b"\x00\x01",
                        headers={"content-type": "application/octet-stream"})
        await http.post("/v1/topics/bin", json={"x": 1})
        assert await receive(ws) == {"op": "message", "topic": "bin", "offset": 0,
                                     "data": b"\x00\x01"}
        assert (await receive(ws))["data"] == {"x": 1}


async def test_json_frames_are_compact_json_objects(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with websocket(running, "topic=raw") as ws:
        await request(ws, op="ping", id=0)
        await http.post("/v1/topics/raw", json=[1, "two"])
        with trio.fail_after(5):
            text = await ws.get_message()
        assert isinstance(text, str)
        assert orjson.loads(text) == {"op": "message", "topic": "raw", "offset": 0,
                                      "data": [1, "two"]}
