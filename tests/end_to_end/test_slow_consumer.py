"""A subscriber that stops reading is closed with 4008; nobody else notices.

The stalled client is a raw socket with a tiny receive buffer that completes the
handshake and then reads nothing, so the broker's kernel buffers and the connection's
outbox really fill up.
"""

from __future__ import annotations

import httpx
import orjson
import trio

from broker import SlowConsumerPolicy, TopicSettings

from ..conftest import StartBroker, receive, request, wait_until, websocket
from .rawws import RawWebSocket

MESSAGES = 320
BATCH = 16
PAYLOAD = "x" * 64_000  # 320 x 64 kB = 20 MB: far more than loopback socket buffers hold
# Outbox capacity is the grace, counted in frames: it must exceed one burst (BATCH) so a
# subscriber that keeps reading is never mistaken for a stalled one.
OUTBOX = 64


async def test_a_stalled_subscriber_is_closed_with_4008_and_others_get_everything(
    start_broker: StartBroker,
) -> None:
    running = await start_broker(outbox_size=OUTBOX, close_timeout=5.0)
    broker = running.broker
    stalled = await RawWebSocket.connect(
        running.addresses.ws_port, "/v1/ws?topic=feed&client=stalled", receive_buffer=4096
    )
    async with websocket(running, "topic=feed&client=healthy") as healthy:
        await request(healthy, op="ping", id=0)
        assert len(await broker.subscribers("feed")) == 2

        bounds = Bounds()
        # The publisher keeps pace with the healthy reader (that is what healthy means:
        # it keeps up with the publish rate); the stalled one falls further behind.
        offsets: list[int] = []
        async with httpx.AsyncClient(base_url=running.http_url, timeout=10) as http:
            for start in range(0, MESSAGES, BATCH):
                batch = [{"topic": "feed", "data": PAYLOAD} for _ in range(BATCH)]
                response = await http.post("/v1/publish", json={"messages": batch})
                assert response.status_code == 202
                assert response.json()["results"][0]["offset"] == start
                await bounds.sample(broker)
                offsets.extend([(await receive(healthy))["offset"] for _ in range(BATCH)])

        # (a) the healthy subscriber got every message, in order, no gaps
        assert offsets == list(range(MESSAGES))
        # (b) memory: the stalled one's outbox grew into its grace and no further
        assert OUTBOX < bounds.outbox <= 2 * OUTBOX

    # (c) the stalled one was closed by the policy, exactly once, and forgotten by the topic
    await wait_until(lambda: _evicted(broker))
    assert [s.client for s in await broker.subscribers("feed")] == []

    # When it reads again it finds a gap-free prefix of the stream and then the 4008 close.
    frames, close = await stalled.read_until_close()
    assert close is not None
    assert close.close_code == 4008
    assert close.payload[2:] == b"slow consumer"
    got = [orjson.loads(f.payload)["offset"] for f in frames]
    assert got == list(range(len(got)))
    assert len(got) < MESSAGES
    await stalled.aclose()


class Bounds:
    """The deepest subscriber outbox and topic mailbox seen: memory is bounded by the
    configured sizes (messages are shared, so queued items are what grows)."""

    def __init__(self) -> None:
        self.outbox = 0
        self.mailbox = 0

    async def sample(self, broker, topic: str = "feed") -> None:  # type: ignore[no-untyped-def]
        stats = await broker.topic(topic)
        self.outbox = max(self.outbox, stats.deepest_outbox)
        self.mailbox = max(self.mailbox, stats.mailbox_depth)


async def _evicted(broker) -> bool:  # type: ignore[no-untyped-def]
    return broker.counters.slow_consumer_disconnects == 1


async def test_drop_oldest_keeps_a_stalled_subscriber_and_accounts_for_every_message(
    start_broker: StartBroker,
) -> None:
    running = await start_broker(
        outbox_size=OUTBOX,
        topic_defaults=TopicSettings(slow_consumer_policy=SlowConsumerPolicy.DROP_OLDEST),
    )
    broker = running.broker
    stalled = await RawWebSocket.connect(
        running.addresses.ws_port, "/v1/ws?topic=feed", receive_buffer=4096
    )
    bounds = Bounds()
    async with websocket(running, "topic=feed") as healthy:
        await request(healthy, op="ping", id=0)
        async with httpx.AsyncClient(base_url=running.http_url, timeout=10) as http:
            for start in range(0, MESSAGES, BATCH):
                batch = [{"topic": "feed", "data": PAYLOAD} for _ in range(BATCH)]
                response = await http.post("/v1/publish", json={"messages": batch})
                assert response.status_code == 202
                await bounds.sample(broker)
                got = [(await receive(healthy))["offset"] for _ in range(BATCH)]
                assert got == list(range(start, start + BATCH))
    # Memory: the stalled outbox filled to its capacity and stayed there (drops make room).
    assert bounds.outbox == OUTBOX
    assert broker.counters.dropped > 0
    assert broker.counters.slow_consumer_disconnects == 0
    # The stalled one was kept; reading now, every offset is either received or inside a
    # gap frame that comes right where the hole is, and the stream ends at the last one.
    expected_next, skipped = 0, 0
    while expected_next < MESSAGES:
        frame = await stalled.read_frame()
        assert frame is not None and frame.opcode == 0x1
        body = orjson.loads(frame.payload)
        if body["op"] == "gap":
            assert body["topic"] == "feed" and body["from"] == expected_next
            assert body["to"] - body["from"] + 1 == body["skipped"]
            expected_next = body["to"] + 1
            skipped += body["skipped"]
        else:
            assert body["offset"] == expected_next
            expected_next += 1
    assert skipped == broker.counters.dropped
    await stalled.aclose()


async def test_block_loses_nothing_and_refuses_publishers_while_a_subscriber_stalls(
    start_broker: StartBroker,
) -> None:
    running = await start_broker(
        outbox_size=OUTBOX,
        publish_timeout=0.2,
        topic_defaults=TopicSettings(slow_consumer_policy=SlowConsumerPolicy.BLOCK,
                                     mailbox_size=4),
    )
    stalled = await RawWebSocket.connect(
        running.addresses.ws_port, "/v1/ws?topic=feed", receive_buffer=4096
    )
    accepted: list[int] = []
    async with websocket(running, "topic=feed") as healthy, \
            httpx.AsyncClient(base_url=running.http_url, timeout=10) as http:
        await request(healthy, op="ping", id=0)
        refused, bounds = None, Bounds()
        for _ in range(MESSAGES):
            response = await http.post("/v1/topics/feed", json=PAYLOAD)
            await bounds.sample(running.broker)
            if response.status_code != 202:
                refused = response
                break
            accepted.append(response.json()["offset"])
        # Memory: the outbox filled to capacity, the topic's mailbox to its size, no more.
        assert bounds.outbox == OUTBOX
        assert 0 < bounds.mailbox <= 4
        # Backpressure reached the publisher as the contract's 503, with a retry hint.
        assert refused is not None and refused.status_code == 503
        assert refused.json()["error"]["code"] == "topic_busy"
        assert refused.headers["retry-after"] == "1"
        assert running.broker.counters.slow_consumer_disconnects == 0
        # Once the stalled reader reads, everything accepted reaches both, in order.
        async with trio.open_nursery() as nursery:

            async def read_stalled() -> None:
                offsets = []
                while len(offsets) < len(accepted):
                    frame = await stalled.read_frame()
                    assert frame is not None
                    offsets.append(orjson.loads(frame.payload)["offset"])
                assert offsets == accepted

            nursery.start_soon(read_stalled)
            got = [(await receive(healthy))["offset"] for _ in accepted]
            assert got == accepted == list(range(len(accepted)))
        # The refused message was never published.
        assert (await http.get("/v1/topics/feed")).json()["next_offset"] == len(accepted)
    await stalled.aclose()
