"""WebSocket publishes to a running topic are answered by the topic itself, later
(`Broker.publish_soon`): pipelining, the busy answer past `publish_timeout`, and a close
right behind a publish. A real server, a raw client."""

from __future__ import annotations

import struct

import orjson
import pytest
import trio
import trio.testing

from broker import Broker, TopicSettings
from gateways.websocket.dispatch import MAX_CONSECUTIVE_INVALID

from ..conftest import TIMEOUT, RunningBroker, StartBroker
from .rawws import RawWebSocket, masked_frame


def publish_frame(topic: str, data: object, request_id: object) -> bytes:
    body = {"op": "publish", "topic": topic, "data": data, "id": request_id}
    return masked_frame(0x1, orjson.dumps(body))


async def open_topic(running: RunningBroker, topic: str) -> None:
    """Make `topic` run (its first publish, which waits), so later ones are handed over."""
    assert running.broker is not None
    assert await running.broker.publish(topic, running.broker.payload(b"0", None)) == 0


async def stalled_topic(running: RunningBroker, topic: str) -> tuple[Broker, trio.Event]:
    """`topic` running (one message, offset 0) and paused until the event is set."""
    broker = running.broker
    assert broker is not None
    await open_topic(running, topic)
    resume = trio.Event()
    await broker.pause_topic(topic, resume)
    return broker, resume


async def test_pipelined_publishes_are_each_answered_with_their_offset(
    running: RunningBroker,
) -> None:
    await open_topic(running, "pipe")
    raw = await RawWebSocket.connect(running.addresses.ws_port)
    await raw.send(b"".join(publish_frame("pipe", n, n) for n in range(1, 51)))
    answers = []
    for _ in range(50):
        frame = await raw.read_frame()
        assert frame is not None
        answers.append(orjson.loads(frame.payload))
    # One topic takes them in order: the answers, in any order, give offsets 1..50.
    assert sorted((a["id"], a["offset"]) for a in answers) == [(n, n) for n in range(1, 51)]
    assert {a["op"] for a in answers} == {"ok"}
    page = await running.broker.history("pipe", 0, 100)  # type: ignore[union-attr]
    assert [orjson.loads(m.data) for m in page.messages] == list(range(51))
    await raw.aclose()


@pytest.mark.parametrize("waiting", ["publish", "subscribe"])
async def test_answers_queued_for_pipelined_publishes_do_not_wait_behind_a_waiting_request(
    start_broker: StartBroker, waiting: str
) -> None:
    """Answers to publishes read together go out together, after the last of them; but a
    request that has to wait (its topic's mailbox is full) does not hold back the
    answers already given to the publishes before it."""
    running = await start_broker(publish_timeout=TIMEOUT * 4,
                                 topic_defaults=TopicSettings(mailbox_size=1))
    await open_topic(running, "free")
    broker, resume = await stalled_topic(running, "full")
    assert broker.publish_soon("full", broker.payload(b"1", None), lambda _: None)  # 1 slot
    raw = await RawWebSocket.connect(running.addresses.ws_port)
    third = (publish_frame("full", 3, "c") if waiting == "publish" else masked_frame(
        0x1, b'{"op": "subscribe", "topic": "full", "id": "c"}'))
    await raw.send(publish_frame("free", 1, "a") + publish_frame("free", 2, "b") + third)
    answers = []
    with trio.fail_after(TIMEOUT):  # "c" waits until resumed: "a" and "b" come first
        for _ in range(2):
            frame = await raw.read_frame()
            assert frame is not None
            answers.append(orjson.loads(frame.payload))
    assert [(a["id"], a["offset"]) for a in answers] == [("a", 1), ("b", 2)]
    resume.set()
    frame = await raw.read_frame()
    assert frame is not None
    answer = orjson.loads(frame.payload)
    assert (answer["op"], answer["id"], answer["topic"]) == ("ok", "c", "full")
    if waiting == "publish":
        assert answer["offset"] == 2
    await raw.aclose()


async def test_a_publish_to_a_stalled_topic_is_answered_busy_and_not_accepted(
    start_broker: StartBroker,
) -> None:
    running = await start_broker(publish_timeout=0.3)
    broker, resume = await stalled_topic(running, "stalled")
    raw = await RawWebSocket.connect(running.addresses.ws_port)
    started = trio.current_time()
    await raw.send(publish_frame("stalled", "late", "p1"))
    await raw.send_text(b'{"op": "ping", "id": "still here"}')
    ping = await raw.read_frame()  # the connection reads on while the publish waits
    assert ping is not None and orjson.loads(ping.payload) == {"op": "ok", "id": "still here"}
    busy = await raw.read_frame()
    assert busy is not None
    answer = orjson.loads(busy.payload)
    assert (answer["op"], answer["code"], answer["id"]) == ("error", "topic_busy", "p1")
    assert 0.3 <= trio.current_time() - started < TIMEOUT
    resume.set()
    await raw.send(publish_frame("stalled", "next", "p2"))
    ok = await raw.read_frame()
    assert ok is not None
    assert orjson.loads(ok.payload) == {"op": "ok", "id": "p2", "topic": "stalled", "offset": 1}
    page = await broker.history("stalled", 0, 10)
    assert [m.data for m in page.messages] == [b"0", b'"next"']  # "late" was withdrawn
    await raw.aclose()


async def test_a_close_right_behind_a_publish_comes_after_its_answer(
    running: RunningBroker,
) -> None:
    await open_topic(running, "closing")
    raw = await RawWebSocket.connect(running.addresses.ws_port)
    await raw.send(
        publish_frame("closing", "last words", 7) + masked_frame(0x8, struct.pack("!H", 1000))
    )
    frames, close = await raw.read_until_close()
    assert [orjson.loads(f.payload) for f in frames] == [
        {"op": "ok", "id": 7, "topic": "closing", "offset": 1}
    ]
    assert close is not None and close.close_code == 1000
    await raw.aclose()


async def test_a_client_that_never_reads_its_answers_is_held_back_and_loses_nothing(
    start_broker: StartBroker,
) -> None:
    """Pipelined publishes whose answers are not read: the connection writes what is
    queued before it reads more, so once the socket is full it stops reading (TCP
    backpressure) instead of queueing answers without end. Large ids make each answer
    large, so the kernel's buffers fill after a few hundred."""
    running = await start_broker()
    await open_topic(running, "unread")
    raw = await RawWebSocket.connect(running.addresses.ws_port, receive_buffer=4096)
    count = 1500
    big = "x" * 30_000
    sent = 0

    async def publish_without_reading() -> None:
        nonlocal sent
        for n in range(count):
            await raw.send(publish_frame("unread", n, f"{big}{n}"))
            sent += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(publish_without_reading)
        await trio.testing.wait_all_tasks_blocked(cushion=0.05)  # everyone waits on TCP
        assert sent < count // 2  # held back: the broker stopped reading
        accepted = (await running.broker.topic("unread")).next_offset  # type: ignore[union-attr]
        assert accepted < count // 2
        answers = []
        while len(answers) < count:  # reading lets everything through, in order
            frame = await raw.read_frame()
            assert frame is not None
            answers.append(orjson.loads(frame.payload))
    assert sent == count
    assert sorted((int(a["id"][len(big):]), a["offset"]) for a in answers) == [
        (n, n + 1) for n in range(count)
    ]
    await raw.aclose()


async def test_busy_answers_do_not_count_as_garbage(start_broker: StartBroker) -> None:
    """A client publishing on into a stalled topic gets `topic_busy` again and again: the
    broker's state, not the client's fault, so the connection is not closed with 1008
    after MAX_CONSECUTIVE_INVALID of them (only invalid frames count)."""
    running = await start_broker(publish_timeout=0.05,
                                 topic_defaults=TopicSettings(mailbox_size=1))
    _, resume = await stalled_topic(running, "stuck")
    raw = await RawWebSocket.connect(running.addresses.ws_port)
    count = MAX_CONSECUTIVE_INVALID + 3
    codes = []
    for n in range(count):  # the first fills the one mailbox slot; the rest wait and fail
        await raw.send(publish_frame("stuck", n, n))
        frame = await raw.read_frame()
        assert frame is not None and frame.opcode == 0x1, frame
        codes.append(orjson.loads(frame.payload)["code"])
    assert codes == ["topic_busy"] * count
    await raw.send_text(b'{"op": "ping", "id": "open"}')
    pong = await raw.read_frame()
    assert pong is not None and orjson.loads(pong.payload) == {"op": "ok", "id": "open"}
    resume.set()
    await raw.aclose()
