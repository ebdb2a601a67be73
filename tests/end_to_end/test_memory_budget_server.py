"""The memory budget seen from outside, on a real server: at `max_memory`, HTTP and
WebSocket publishes are refused `overloaded` and /readyz and /metrics say why, the largest
stalled subscriber is shed first while a reader keeps reading, and it lifts once usage
falls. (`MemoryBudget` itself and the in-process accounting: tests/broker/test_memory_budget.py.)"""

from __future__ import annotations

import httpx

from broker import Subscriber, TopicSettings
from broker.memory_budget import QUEUED_FACTOR, SHED_AT, SHED_FLOOR_BYTES, SHED_TO

from ..conftest import TIMEOUT, StartBroker, receive, request, wait_until, websocket
from .rawws import RawWebSocket

BUDGET = 1_000_000

PAYLOAD = b"x" * 64_000


def metric(text: str, name: str) -> float:
    """The value of sample `name` (with its labels, if any) in a Prometheus text page."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")


async def test_overloaded_refuses_http_and_websocket_publishes_and_readyz_says_why(
    start_broker: StartBroker,
) -> None:
    running = await start_broker(max_memory=BUDGET, topic_idle_seconds=1.0)
    broker = running.broker
    async with httpx.AsyncClient(base_url=running.http_url, timeout=TIMEOUT) as http, \
            websocket(running, "client=publisher") as ws:
        assert (await http.post("/v1/topics/big", content=b"x" * BUDGET)).status_code == 202
        broker.memory.sample()  # what the budget's actor does every SAMPLE_SECONDS

        single = await http.post("/v1/topics/big", content=b"y")
        assert single.status_code == 503
        assert single.headers["retry-after"] == "1"
        assert single.json()["error"]["code"] == "overloaded"
        bulk = await http.post("/v1/publish", json={"messages": [{"topic": "c", "data": 1}]})
        assert (bulk.status_code, bulk.headers["retry-after"]) == (503, "1")
        assert bulk.json()["error"]["code"] == "overloaded"
        # The broker's state, not the client's fault: not counted towards the 1008 close.
        for n in range(12):
            frame = await request(ws, op="publish", topic="big", data=n, id=n)
            assert (frame["op"], frame["code"], frame["id"]) == ("error", "overloaded", n)
        assert (await request(ws, op="ping", id="still open"))["op"] == "ok"

        ready = await http.get("/readyz")
        assert ready.status_code == 503
        body = ready.json()
        assert body["status"] == "overloaded"
        assert body["memory"]["budget_bytes"] == BUDGET
        assert body["memory"]["used_bytes"] >= BUDGET
        assert body["memory"]["retained_bytes"] == BUDGET
        metrics = (await http.get("/metrics")).text
        assert metric(metrics, "broker_memory_budget_bytes") == BUDGET
        assert metric(metrics, "broker_memory_used_bytes") >= BUDGET
        assert metric(metrics, "broker_memory_overloaded") == 1
        assert metric(metrics, "broker_memory_refusals_total") == 14
        assert metric(metrics, 'broker_publish_rejections_total{code="overloaded"}') == 14

        # The idle topic is reaped with its history: usage falls and publishing resumes.
        async def ready_again() -> bool:
            return (await http.get("/readyz")).status_code == 200

        await wait_until(ready_again)
        assert (await http.post("/v1/topics/big", content=b"y")).status_code == 202
        assert (await request(ws, op="publish", topic="big", data=1, id="a"))["op"] == "ok"
        assert metric((await http.get("/metrics")).text, "broker_memory_overloaded") == 0


async def test_the_largest_stalled_subscriber_is_shed_first_and_a_reader_keeps_reading(
    start_broker: StartBroker,
) -> None:
    running = await start_broker(
        max_memory=1024**3,  # nothing happens while the queues fill; see below
        outbox_bytes=64 * 1024 * 1024,  # so the slow-consumer policy leaves this to the budget
        topic_idle_seconds=0,
        topic_defaults=TopicSettings(history_messages=0, slow_consumer_grace=60.0),
    )
    broker = running.broker
    port = running.addresses.ws_port
    big = await RawWebSocket.connect(port, "/v1/ws?topic=a&client=big", receive_buffer=4096)
    small = await RawWebSocket.connect(port, "/v1/ws?topic=b&client=small", receive_buffer=4096)
    async with websocket(running, "topic=a&topic=b&client=reader") as reader:
        await request(reader, op="ping", id=0)
        for topic, count in (("a", 120), ("b", 60)):  # a: 7.7 MB; b: 3.8 MB
            for _ in range(count):
                await broker.publish(topic, broker.payload(PAYLOAD, "text/plain"))
                assert (await receive(reader))["topic"] == topic  # the reader keeps up

        def client(name: str) -> Subscriber:
            found = [s for s in broker.open_connections.subscribers() if s.client == name]
            assert len(found) == 1
            return found[0]

        queued = {name: client(name).queued_bytes for name in ("big", "small", "reader")}
        assert queued["big"] > queued["small"] > SHED_FLOOR_BYTES > queued["reader"]
        # A budget whose shedding point the stalled queues pass (but not the budget), and
        # which shedding `big` alone brings under the shedding target.
        used = broker.memory_figures().used
        budget = int(used / ((SHED_AT + 1) / 2))
        assert budget * SHED_AT <= used < budget
        assert used - QUEUED_FACTOR * queued["big"] < budget * SHED_TO
        broker.memory.budget = budget
        broker.memory.sample()  # what the budget's actor does every SAMPLE_SECONDS

        frames, close = await big.read_until_close()  # shed: what it had is dropped, 4008
        assert close is not None and close.close_code == 4008
        assert len(frames) < 120
        survivor = client("small")
        assert not survivor.evicted and survivor.queued_bytes == queued["small"]
        assert broker.memory.shed == 1
        assert await broker.publish("a", broker.payload(b"after", "text/plain")) == 120
        assert (await receive(reader))["data"] == "after"
    await small.aclose()
    await big.aclose()
