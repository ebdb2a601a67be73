"""A subscriber that stops reading is closed with 4008; nobody else notices.

The stalled client is a raw socket with a tiny receive buffer that completes the
handshake and then reads nothing, so the broker's kernel buffers and the connection's
outbox really fill up.
"""

from __future__ import annotations

import httpx
import orjson

from .conftest import StartBroker, receive, request, wait_until, websocket
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

        # The publisher keeps pace with the healthy reader (that is what healthy means:
        # it keeps up with the publish rate); the stalled one falls further behind.
        offsets: list[int] = []
        async with httpx.AsyncClient(base_url=running.http_url, timeout=10) as http:
            for start in range(0, MESSAGES, BATCH):
                batch = [{"topic": "feed", "data": PAYLOAD} for _ in range(BATCH)]
                response = await http.post("/v1/publish", json={"messages": batch})
                assert response.status_code == 202
                assert response.json()["results"][0]["offset"] == start
                offsets.extend([(await receive(healthy))["offset"] for _ in range(BATCH)])

        # (a) the healthy subscriber got every message, in order, no gaps
        assert offsets == list(range(MESSAGES))

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


async def _evicted(broker) -> bool:  # type: ignore[no-untyped-def]
    return broker.counters.slow_consumer_disconnects == 1
