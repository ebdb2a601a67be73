"""The rest of the v1 contract over real sockets: wildcards, replay, limits, CBOR publish."""

from __future__ import annotations

import cbor2
import httpx
import trio

from broker import TopicSettings

from ..conftest import RunningBroker, StartBroker, receive, request, websocket


async def test_wildcard_subscribers_get_matching_topics_only(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with websocket(running, "topic=orders.*") as star, \
            websocket(running, "topic=orders.>") as tail:
        for ws in (star, tail):
            await request(ws, op="ping", id=0)
        for topic in ("orders.eu", "orders.eu.created", "users.eu", "orders.us"):
            await http.post(f"/v1/topics/{topic}", json=topic)
        star_topics = [(await receive(star))["topic"] for _ in range(2)]
        tail_topics = [(await receive(tail))["topic"] for _ in range(3)]
        assert star_topics == ["orders.eu", "orders.us"]
        assert tail_topics == ["orders.eu", "orders.eu.created", "orders.us"]
        for ws in (star, tail):  # nothing else was queued for them
            assert await request(ws, op="ping", id=1) == {"op": "ok", "id": 1}


async def test_replay_joins_live_messages_without_gap_or_duplicate_under_load(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    total = 400
    done = trio.Event()

    async def publish(start: int) -> None:
        batch = [{"topic": "seam", "data": n} for n in range(start, start + 20)]
        response = await http.post("/v1/publish", json={"messages": batch})
        assert response.status_code == 202

    async def publish_the_rest() -> None:
        for start in range(20, total, 20):
            await publish(start)
        done.set()

    await publish(0)  # history exists; the rest is published while we subscribe
    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish_the_rest)
        async with websocket(running) as ws:
            ok = await request(ws, op="subscribe", topic="seam", **{"from": 0}, id="s")
            assert ok["op"] == "ok" and ok["first_offset"] == 0
            assert 20 <= ok["next_offset"] < total  # the seam fell mid-stream
            got = [(await receive(ws))["data"] for _ in range(total)]
    assert done.is_set()
    assert got == list(range(total))


async def test_from_older_than_retention_starts_at_the_oldest_retained(
    start_broker: StartBroker,
) -> None:
    running = await start_broker(topic_defaults=TopicSettings(history_messages=5))
    async with httpx.AsyncClient(base_url=running.http_url) as http:
        for n in range(12):
            await http.post("/v1/topics/short", json=n)
        history = (await http.get("/v1/topics/short/messages?from=0")).json()
        assert history["first_offset"] == 7 and history["next_offset"] == 12
        assert [m["offset"] for m in history["messages"]] == [7, 8, 9, 10, 11]
    async with websocket(running) as ws:
        ok = await request(ws, op="subscribe", topic="short", **{"from": 2}, id=1)
        assert (ok["op"], ok["first_offset"], ok["next_offset"]) == ("ok", 7, 12)
        assert [(await receive(ws))["offset"] for _ in range(5)] == [7, 8, 9, 10, 11]


async def test_earliest_on_a_wildcard_replays_each_matching_topic(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    for topic in ("m.a", "m.b", "m.a"):
        await http.post(f"/v1/topics/{topic}", json=topic)
    async with websocket(running) as ws:
        ok = await request(ws, op="subscribe", topic="m.*", **{"from": "earliest"}, id=1)
        assert ok["op"] == "ok"
        got = sorted((f["topic"], f["offset"]) for f in [await receive(ws) for _ in range(3)])
        assert got == [("m.a", 0), ("m.a", 1), ("m.b", 0)]
        error = await request(ws, op="subscribe", topic="n.*", **{"from": 3}, id=2)
        assert error["code"] == "invalid_frame"


async def test_cbor_connection_publishes_and_receives_cbor_values(
    running: RunningBroker, http: httpx.AsyncClient
) -> None:
    async with websocket(running, "topic=c", subprotocol="broker.v1.cbor") as ws:
        await ws.send_message(cbor2.dumps({"op": "publish", "topic": "c",
                                           "data": {"raw": b"\x00\x01"}, "id": 1}))
        frames = [await receive(ws) for _ in range(2)]
        frames.sort(key=lambda f: f["op"])
        assert frames[0] == {"op": "message", "topic": "c", "offset": 0,
                             "data": {"raw": b"\x00\x01"}}
        assert frames[1] == {"op": "ok", "id": 1, "topic": "c", "offset": 0}
    history = (await http.get("/v1/topics/c/messages")).json()
    assert history["messages"][0]["content_type"] == "application/cbor"
    assert history["messages"][0]["data"] == {"raw": {"base64": "AAE="}}


async def test_subscription_and_topic_limits_are_enforced(start_broker: StartBroker) -> None:
    running = await start_broker(max_subscriptions=2, max_topics=3)
    async with websocket(running) as ws:
        for n, topic in enumerate(["a", "b"]):
            assert (await request(ws, op="subscribe", topic=topic, id=n))["op"] == "ok"
        over = await request(ws, op="subscribe", topic="c", id=9)
        assert (over["code"], over["id"]) == ("too_many_subscriptions", 9)
        again = await request(ws, op="subscribe", topic="a", id=10)
        assert again["code"] == "already_subscribed"
    async with httpx.AsyncClient(base_url=running.http_url) as http:
        assert (await http.post("/v1/topics/c", json=1)).status_code == 202
        refused = await http.post("/v1/topics/d", json=1)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "too_many_topics"


async def test_per_pattern_topic_settings_apply_to_matching_topics(
    start_broker: StartBroker,
) -> None:
    overrides = (("metrics.>", TopicSettings(history_messages=2)),)
    running = await start_broker(topic_overrides=overrides)
    async with httpx.AsyncClient(base_url=running.http_url) as http:
        for topic in ("metrics.cpu", "orders.eu"):
            for n in range(5):
                await http.post(f"/v1/topics/{topic}", json=n)
        assert (await http.get("/v1/topics/metrics.cpu")).json()["retained"] == 2
        assert (await http.get("/v1/topics/orders.eu")).json()["retained"] == 5
