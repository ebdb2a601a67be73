"""Topic and directory actors in isolation: memory channels for outboxes, a mock clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from broker import (
    CloseReason,
    Message,
    Outbox,
    Settings,
    Subscriber,
    TopicBusy,
    TopicSettings,
    open_broker,
)
from broker.metrics import BrokerCounters

PAYLOAD_SETTINGS = Settings(topic_idle_seconds=0)


class FakeConnection:
    """A subscriber whose outbox we read by hand (or not at all: a stalled client)."""

    def __init__(self, connection_id: int, capacity: int, render: Callable[[Message], bytes]):
        self.outbox = Outbox(capacity, render, BrokerCounters())
        self.evicted: list[CloseReason] = []
        self.subscriber = Subscriber(connection_id, f"c{connection_id}", self.outbox,
                                     self.evicted.append)

    def drain(self) -> list[object]:
        """What the writer would write: frames for messages, other items as queued."""
        items: list[object] = []
        while len(self.outbox):
            batch = self.outbox._items  # the test reads the queue directly, in order
            item = batch.popleft()
            items.append(self.outbox.render(item) if isinstance(item, Message) else item)
        return items


def counting_render() -> tuple[Callable[[Message], bytes], list[int]]:
    calls: list[int] = []

    def render(message: Message) -> bytes:
        calls.append(message.offset)
        return f"frame-{message.offset}".encode()

    return render, calls


async def test_offsets_are_assigned_in_arrival_order_and_frames_rendered_once() -> None:
    render, calls = counting_render()
    async with open_broker(PAYLOAD_SETTINGS) as broker:
        connections = [FakeConnection(i, 100, render) for i in range(1, 4)]
        for connection in connections:
            await broker.subscribe(connection.subscriber, "t")
        offsets = [await broker.publish("t", broker.payload(b"1", "application/json"))
                   for _ in range(5)]
        assert offsets == [0, 1, 2, 3, 4]
        await broker.flush()
        for connection in connections:
            assert connection.drain() == [f"frame-{n}".encode() for n in range(5)]
        # Encoded once per message for all three subscribers, not once per subscriber.
        assert calls == [0, 1, 2, 3, 4]
        assert broker.counters.forwarded == 15


async def test_a_full_outbox_evicts_only_that_subscriber() -> None:
    render, _ = counting_render()
    async with open_broker(PAYLOAD_SETTINGS) as broker:
        slow = FakeConnection(1, 2, render)
        fast = FakeConnection(2, 100, render)
        await broker.subscribe(slow.subscriber, "t")
        await broker.subscribe(fast.subscriber, "t")
        for _ in range(5):
            await broker.publish("t", broker.payload(b"x", None))
        await broker.flush()
        assert slow.evicted == [CloseReason.SLOW_CONSUMER]
        assert len(slow.drain()) == 2  # what fit before it was full: no reordering, no gap
        assert len(fast.drain()) == 5
        assert [s.connection_id for s in await broker.subscribers("t")] == [2]
        assert broker.counters.slow_consumer_disconnects == 1


async def test_subscribing_from_an_offset_replays_history_then_continues_live() -> None:
    render, _ = counting_render()
    async with open_broker(PAYLOAD_SETTINGS) as broker:
        for _ in range(5):
            await broker.publish("t", broker.payload(b"x", None))
        connection = FakeConnection(1, 100, render)
        result = await broker.subscribe(
            connection.subscriber, "t", 2, ack=lambda r: ("ack", r.first_offset)
        )
        assert (result.first_offset, result.next_offset, result.replayed) == (2, 5, 3)
        await broker.publish("t", broker.payload(b"x", None))
        await broker.flush()
        assert connection.drain() == [("ack", 2), b"frame-2", b"frame-3", b"frame-4",
                                      b"frame-5"]


async def test_an_idle_topic_without_subscribers_is_reaped_and_recreated_fresh(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_broker(Settings(topic_idle_seconds=60)) as broker:
        await broker.publish("idle", broker.payload(b"x", None))
        render, _ = counting_render()
        held = FakeConnection(1, 10, render)
        await broker.subscribe(held.subscriber, "held")
        await trio.sleep(59)
        assert {t.name for t in await broker.topics()} == {"idle", "held"}
        await trio.sleep(2)
        assert {t.name for t in await broker.topics()} == {"held"}
        assert broker.counters.topics_reaped == 1
        # A publish after reaping creates the topic anew, offsets from 0.
        assert await broker.publish("idle", broker.payload(b"x", None)) == 0


async def test_a_crashed_topic_restarts_with_history_and_subscribers_intact() -> None:
    render, _ = counting_render()
    async with open_broker(PAYLOAD_SETTINGS) as broker:
        connection = FakeConnection(1, 100, render)
        await broker.subscribe(connection.subscriber, "t")
        await broker.subscribe(FakeConnection(2, 100, render).subscriber, "other")
        await broker.publish("t", broker.payload(b"x", None))
        await broker.inject_crash("t")
        assert await broker.publish("t", broker.payload(b"x", None)) == 1
        await broker.flush()
        assert connection.drain() == [b"frame-0", b"frame-1"]
        assert (await broker.topic("t")).retained_messages == 2
        assert broker.counters.topic_crashes == 1 and broker.counters.topic_restarts == 1
        assert [s.connection_id for s in await broker.subscribers("other")] == [2]


async def test_a_topic_that_keeps_crashing_is_stopped_and_its_subscribers_closed() -> None:
    render, _ = counting_render()
    async with open_broker(PAYLOAD_SETTINGS) as broker:
        connection = FakeConnection(1, 100, render)
        await broker.subscribe(connection.subscriber, "doomed")
        for _ in range(11):  # the restart policy allows 10 a minute
            await broker.inject_crash("doomed")
            await trio.testing.wait_all_tasks_blocked()
        assert connection.evicted == [CloseReason.TOPIC_FAILED]
        assert broker.counters.topic_crashes == 11
        # The name is free again: a new topic starts from offset 0.
        assert await broker.publish("doomed", broker.payload(b"x", None)) == 0


async def test_wildcard_subscribers_are_attached_to_existing_and_future_topics() -> None:
    render, _ = counting_render()
    async with open_broker(PAYLOAD_SETTINGS) as broker:
        await broker.publish("orders.eu", broker.payload(b"x", None))
        connection = FakeConnection(1, 100, render)
        await broker.subscribe(connection.subscriber, "orders.*")
        await broker.publish("orders.eu", broker.payload(b"x", None))
        await broker.publish("orders.us", broker.payload(b"x", None))
        await broker.publish("users.eu", broker.payload(b"x", None))
        await broker.flush()
        assert connection.drain() == [b"frame-1", b"frame-0"]
        assert await broker.unsubscribe(1, "orders.*") is True
        await broker.publish("orders.us", broker.payload(b"x", None))
        await broker.flush()
        assert connection.drain() == []


async def test_a_full_topic_mailbox_makes_publish_wait_then_fail_with_topic_busy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = Settings(topic_idle_seconds=0, publish_timeout=0.5,
                        topic_defaults=TopicSettings(mailbox_size=1))
    async with open_broker(settings) as broker:
        await broker.publish("t", broker.payload(b"x", None))
        resume = trio.Event()
        await broker.pause_topic("t", resume)
        offsets: list[int] = []
        async with trio.open_nursery() as nursery:

            async def queued_publisher() -> None:
                offsets.append(await broker.publish("t", broker.payload(b"queued", None)))

            nursery.start_soon(queued_publisher)
            await trio.testing.wait_all_tasks_blocked()  # it sits in the one mailbox slot
            started = trio.current_time()
            with pytest.raises(TopicBusy):
                await broker.publish("t", broker.payload(b"refused", None))
            assert trio.current_time() - started == pytest.approx(0.5)
            resume.set()
        # The queued one was accepted once the topic resumed; the refused one never was.
        assert offsets == [1]
        page = await broker.history("t", 0, 10)
        assert [m.data for m in page.messages] == [b"x", b"queued"]
        assert broker.counters.publish_rejections == {"topic_busy": 1}
