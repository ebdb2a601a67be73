"""Topic and directory actors in isolation: memory channels for outboxes, a mock clock."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from actors import Reply
from broker import (
    Broker,
    CloseReason,
    Gap,
    Message,
    Outbox,
    Settings,
    SlowConsumerPolicy,
    Subscriber,
    TopicBusy,
    TopicSettings,
    Unavailable,
    open_broker,
)
from broker.messages import Pause, Payload, Publish
from broker.metrics import BrokerCounters
from broker.topic import ANSWER_FIRST_SUBSCRIBERS, TopicActor

from ..conftest import ONE_SLOT_MAILBOX, paused_topic

PAYLOAD_SETTINGS = Settings(topic_idle_seconds=0)
# `block` topics with a one-slot mailbox: backpressure reaches publishers at once.
BLOCKING = Settings(topic_idle_seconds=0, publish_timeout=0.5, topic_defaults=TopicSettings(
    slow_consumer_policy=SlowConsumerPolicy.BLOCK, mailbox_size=1))


class FakeConnection:
    """A subscriber whose outbox we read by hand (or not at all: a stalled client)."""

    def __init__(
        self,
        connection_id: int,
        capacity: int,
        render: Callable[[Message], bytes],
        counters: BrokerCounters | None = None,
    ) -> None:
        self.outbox = Outbox(capacity, render, counters or BrokerCounters())
        self.evicted: list[CloseReason] = []
        self.subscriber = Subscriber(connection_id, f"c{connection_id}", self.outbox,
                                     self.evicted.append)

    async def drain(self) -> list[object]:
        """Take what is queued as the writer would: frames for messages, others as queued."""
        if not len(self.outbox):
            return []
        batch = await self.outbox.take(10_000)
        self.outbox.written()
        return [self.outbox.render(i) if isinstance(i, Message) else i for i in batch]


async def drain_slowly(broker: Broker, connection: FakeConnection) -> list[object]:
    """Read a slow subscriber a little at a time, letting the topic go on between reads."""
    delivered: list[object] = []
    for _ in range(10):
        delivered.extend(await connection.drain())
        await trio.testing.wait_all_tasks_blocked()
    await broker.flush()
    delivered.extend(await connection.drain())
    return delivered


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
            assert await connection.drain() == [f"frame-{n}".encode() for n in range(5)]
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
        # What fit before the grace limit (2 x capacity) ran out: no reordering, no gap.
        assert len(await slow.drain()) == 4
        assert len(await fast.drain()) == 5
        assert [s.connection_id for s in await broker.subscribers("t")] == [2]
        assert broker.counters.slow_consumer_disconnects == 1


async def test_disconnect_waits_out_the_grace_period_of_a_subscriber_that_pauses(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Over capacity, a subscriber is kept for `slow_consumer_grace` seconds; its writer
    taking a batch starts a fresh grace period; one that takes nothing is closed."""
    settings = Settings(
        topic_idle_seconds=0, topic_defaults=TopicSettings(slow_consumer_grace=2.0)
    )
    render, _ = counting_render()
    async with open_broker(settings) as broker:
        pausing = FakeConnection(1, 2, render)  # each may hold 2 x 2 frames in grace
        stopped = FakeConnection(2, 2, render)
        await broker.subscribe(pausing.subscriber, "p")
        await broker.subscribe(stopped.subscriber, "s")

        async def publish(topic: str, count: int) -> None:
            for _ in range(count):
                await broker.publish(topic, broker.payload(b"x", None))
            await broker.flush()

        await publish("p", 3)  # both over capacity at t=0: grace begins
        await publish("s", 3)
        await trio.sleep(1.5)
        received = await pausing.drain()  # the pausing one reads again...
        await publish("p", 3)  # ...and is over capacity again at t=1.5: a fresh grace
        await trio.sleep(1.0)
        await publish("p", 1)  # t=2.5: 1 s into its grace, under 2 x capacity: kept
        await publish("s", 1)  # t=2.5: the stopped one's grace is over: closed
        assert pausing.evicted == []
        assert stopped.evicted == [CloseReason.SLOW_CONSUMER]
        received += await pausing.drain()
        assert received == [f"frame-{n}".encode() for n in range(7)]
        assert len(await stopped.drain()) == 3  # a gap-free prefix, then the close
        assert await broker.subscribers("s") == []


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
        assert await connection.drain() == [("ack", 2), b"frame-2", b"frame-3", b"frame-4",
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


async def test_a_topic_used_again_before_its_idle_check_is_kept_until_idle_from_then(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The directory's check at 60 s finds the publish of 50 s: the topic stays and is
    looked at again at 110 s, when it has been idle 60 s."""
    async with open_broker(Settings(topic_idle_seconds=60)) as broker:
        started = trio.current_time()
        await broker.publish("busy", broker.payload(b"x", None))
        await trio.sleep(50)
        await broker.publish("busy", broker.payload(b"x", None))
        await trio.sleep(11)
        assert {t.name for t in await broker.topics()} == {"busy"}
        await trio.sleep_until(started + 109)
        assert {t.name for t in await broker.topics()} == {"busy"}
        await trio.sleep_until(started + 111)
        assert await broker.topics() == []
        assert broker.counters.topics_reaped == 1


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
        assert await connection.drain() == [b"frame-0", b"frame-1"]
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
        assert await connection.drain() == [b"frame-1", b"frame-0"]
        assert await broker.unsubscribe(1, "orders.*") is True
        await broker.publish("orders.us", broker.payload(b"x", None))
        await broker.flush()
        assert await connection.drain() == []


async def test_a_full_topic_mailbox_makes_publish_wait_then_fail_with_topic_busy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_broker(ONE_SLOT_MAILBOX) as broker:
        resume = await paused_topic(broker)
        outcomes: list[str] = []
        async with trio.open_nursery() as nursery:

            async def queued_publisher() -> None:
                try:
                    await broker.publish("t", broker.payload(b"queued", None))
                    outcomes.append("accepted")
                except TopicBusy:
                    outcomes.append("busy")

            nursery.start_soon(queued_publisher)
            await trio.testing.wait_all_tasks_blocked()  # it sits in the one mailbox slot
            started = trio.current_time()
            with pytest.raises(TopicBusy):  # no room: waits publish_timeout, refused
                await broker.publish("t", broker.payload(b"refused", None))
            assert trio.current_time() - started == pytest.approx(0.5)
        # The queued one was not processed by its deadline either: refused and withdrawn.
        assert outcomes == ["busy"]
        resume.set()
        await broker.flush()
        # 503 means not accepted: neither refused message was published afterwards.
        page = await broker.history("t", 0, 10)
        assert [m.data for m in page.messages] == [b"x"]
        assert broker.counters.publish_rejections == {"topic_busy": 2}


async def test_drop_oldest_topic_keeps_a_stalled_subscriber_and_reports_the_gap() -> None:
    settings = Settings(topic_idle_seconds=0, topic_defaults=TopicSettings(
        slow_consumer_policy=SlowConsumerPolicy.DROP_OLDEST))
    render, _ = counting_render()
    async with open_broker(settings) as broker:
        slow = FakeConnection(1, 3, render, broker.counters)
        fast = FakeConnection(2, 100, render, broker.counters)
        await broker.subscribe(slow.subscriber, "t")
        await broker.subscribe(fast.subscriber, "t")
        for _ in range(10):
            await broker.publish("t", broker.payload(b"x", None))
        await broker.flush()
        assert slow.evicted == []
        batch = await slow.outbox.take(100)
        assert batch[0] == Gap("t", 7, 0, 6)
        assert [m.offset for m in batch[1:]] == [7, 8, 9]  # type: ignore[attr-defined]
        assert await fast.drain() == [f"frame-{n}".encode() for n in range(10)]
        assert broker.counters.dropped == 7


async def test_a_bulk_batch_the_topic_cannot_finish_in_time_is_refused_per_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """publish_many: what the topic answered by the deadline has offsets; the rest is
    refused (topic_busy) and withdrawn, so it is never published later."""
    settings = Settings(topic_idle_seconds=0, publish_timeout=0.5,
                        topic_defaults=TopicSettings(mailbox_size=3))
    async with open_broker(settings) as broker:
        await broker.publish("t", broker.payload(b"seed", None))
        resume = trio.Event()
        await broker.pause_topic("t", resume)  # the topic takes nothing until resumed
        batch = [("t", broker.payload(b"%d" % n, None)) for n in range(5)]
        batch.insert(2, ("u", broker.payload(b"other", None)))
        started = trio.current_time()
        results = await broker.publish_many(batch)
        assert trio.current_time() - started == pytest.approx(0.5)
        # t's five travel as one PublishBatch, which the paused topic never answered.
        assert [type(r).__name__ for r in results] == (
            ["TopicBusy"] * 2 + ["int"] + ["TopicBusy"] * 3
        )
        assert results[2] == 0  # the other topic was not held up
        resume.set()
        await broker.flush()
        # None of the refused was published later.
        assert [m.data for m in (await broker.history("t", 0, 10)).messages] == [b"seed"]


async def test_a_bulk_publish_gets_consecutive_offsets_across_its_batch_requests() -> None:
    """150 messages for one topic travel as three PublishBatch requests (64 + 64 + 22);
    offsets follow request order, other topics are unaffected, subscribers get all."""
    render, _ = counting_render()
    async with open_broker(PAYLOAD_SETTINGS) as broker:
        connection = FakeConnection(1, 1000, render)
        await broker.subscribe(connection.subscriber, "t")
        await broker.publish("t", broker.payload(b"seed", None))
        batch = [("t", broker.payload(b"%d" % n, None)) for n in range(150)]
        batch.insert(70, ("u", broker.payload(b"other", None)))
        results = await broker.publish_many(batch)
        assert results[:70] == list(range(1, 71)) and results[70] == 0
        assert results[71:] == list(range(71, 151))
        await broker.flush()
        assert await connection.drain() == [f"frame-{n}".encode() for n in range(151)]
        page = await broker.history("t", 1, 200)
        assert [m.data for m in page.messages] == [b"%d" % n for n in range(150)]


async def test_a_bulk_batch_on_a_block_topic_waits_for_the_slow_outbox_and_loses_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The batch is accepted at once (offsets answered before forwarding); forwarding stops
    at the message a full outbox cannot take and resumes, in order, as it drains."""
    render, _ = counting_render()
    async with open_broker(BLOCKING) as broker:
        slow, fast = FakeConnection(1, 2, render), FakeConnection(2, 100, render)
        await broker.subscribe(slow.subscriber, "t")
        await broker.subscribe(fast.subscriber, "t")
        results = await broker.publish_many([("t", broker.payload(b"x", None))] * 6)
        assert results == [0, 1, 2, 3, 4, 5]
        await trio.testing.wait_all_tasks_blocked()
        assert broker.counters.slow_consumer_waits >= 1
        delivered = await drain_slowly(broker, slow)
        expected = [f"frame-{n}".encode() for n in range(6)]
        assert delivered == expected and await fast.drain() == expected
        assert slow.evicted == []


async def test_block_topic_loses_nothing_and_pushes_back_on_publishers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = BLOCKING
    render, _ = counting_render()
    async with open_broker(settings) as broker:
        slow, fast = FakeConnection(1, 2, render), FakeConnection(2, 100, render)
        await broker.subscribe(slow.subscriber, "t")
        await broker.subscribe(fast.subscriber, "t")
        accepted: list[int] = []
        refused = 0
        for _ in range(6):
            try:
                accepted.append(await broker.publish("t", broker.payload(b"x", None)))
            except TopicBusy:
                refused += 1
        # The topic waits on the slow outbox: once its one-slot mailbox is full too,
        # publishers wait publish_timeout and are refused (and a refused message is never
        # published later). Nothing accepted is lost.
        assert accepted == [0, 1, 2] and refused == 3
        assert slow.evicted == [] and broker.counters.slow_consumer_waits == 1
        delivered = await drain_slowly(broker, slow)
        expected = [f"frame-{n}".encode() for n in accepted]
        assert delivered == expected
        assert await fast.drain() == expected
        assert (await broker.topic("t")).next_offset == 3


async def test_a_topic_stalled_under_block_does_not_freeze_wildcard_subscribes_elsewhere(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = BLOCKING
    render, _ = counting_render()
    async with open_broker(settings) as broker:
        stalled = FakeConnection(1, 1, render, broker.counters)
        await broker.subscribe(stalled.subscriber, "s.stuck")
        for _ in range(4):  # the topic blocks on the stalled outbox; its mailbox fills
            try:
                await broker.publish("s.stuck", broker.payload(b"x", None))
            except TopicBusy:
                pass
        other = FakeConnection(2, 100, render, broker.counters)
        await broker.publish("s.fine", broker.payload(b"x", None))
        # The wildcard matches the stuck topic: the subscription is refused, not hung...
        started = trio.current_time()
        with pytest.raises(Unavailable):
            await broker.subscribe(other.subscriber, "s.*")
        assert trio.current_time() - started == pytest.approx(0.5)
        # ...and the rest of the broker keeps answering at once.
        started = trio.current_time()
        assert await broker.publish("s.fine", broker.payload(b"y", None)) == 1
        assert {t.name for t in await broker.topics("s.")} == {"s.stuck", "s.fine"}
        assert trio.current_time() == started
        assert await broker.subscribers("s.fine") == []  # the refused wildcard was undone


async def test_a_closed_connection_is_forgotten_even_when_its_unsubscribe_cannot_be_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Teardown never waits on a topic: if its unsubscribe does not fit the full mailbox,
    listings hide the closed subscriber at once and the topic forgets it on its idle tick."""
    settings = Settings(topic_idle_seconds=60, topic_defaults=TopicSettings(mailbox_size=1))
    render, _ = counting_render()
    async with open_broker(settings) as broker:
        gone, live = FakeConnection(1, 10, render), FakeConnection(2, 10, render)
        await broker.subscribe(gone.subscriber, "t")
        await broker.subscribe(live.subscriber, "t")
        await broker.subscribe(gone.subscriber, "w.*")
        resume = trio.Event()
        await broker.pause_topic("t", resume)
        await broker.publish("w.x", broker.payload(b"x", None))  # w.x gets the wildcard
        await broker.pause_topic("t", resume)  # fills t's one-slot mailbox
        gone.outbox.close()
        started = trio.current_time()
        await broker.disconnect(1, ["t", "w.*"])
        assert trio.current_time() == started  # no wait for the paused topic
        assert [s.connection_id for s in await broker.subscribers("t")] == [2]
        resume.set()
        await broker.flush()
        gauges = await broker.gauges()
        # The wildcard's topic took its unsubscribe; t (full at the time) still holds it.
        assert (gauges.subscriptions, gauges.closed_subscriptions) == (1, 1)
        assert await broker.subscribers("w.x") == []
        await trio.sleep(61)  # t's idle tick
        gauges = await broker.gauges()
        assert (gauges.subscriptions, gauges.closed_subscriptions) == (1, 0)
        assert {t.name for t in await broker.topics()} == {"t"}  # w.x retired, t kept


class RecordingSocket:
    """A subscriber's non-blocking socket that takes everything: the time and bytes of
    each write, i.e. of each syscall the outbox would make."""

    def __init__(self, connection_id: int, render: Callable[[Message], bytes]) -> None:
        self.writes: list[tuple[float, bytes]] = []
        self.outbox = Outbox(100, render, BrokerCounters(), self._write)
        self.subscriber = Subscriber(connection_id, "rec", self.outbox, lambda _: None)

    def _write(self, data: bytes) -> int:
        self.writes.append((trio.current_time(), bytes(data)))
        return len(data)


async def recording_subscribers(
    broker: Broker, render: Callable[[Message], bytes], count: int
) -> list[RecordingSocket]:
    """`count` recording subscribers of topic "t" (connection ids 1..count)."""
    sockets = [RecordingSocket(i, render) for i in range(1, count + 1)]
    for sock in sockets:
        await broker.subscribe(sock.subscriber, "t")
    return sockets


def batching(delay: float) -> Settings:
    return Settings(topic_idle_seconds=0, topic_defaults=TopicSettings(flush_delay=delay))


async def test_sustained_publishing_is_written_in_batches_and_a_quiet_topic_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`flush_delay`: a message to a quiet topic is written at once; messages that keep
    coming within the delay share one write per subscriber, held at most the delay;
    publishers get their offsets without waiting for the write."""
    render, _ = counting_render()
    async with open_broker(batching(0.001)) as broker:
        sockets = await recording_subscribers(broker, render, 2)
        payload = broker.payload(b"x", None)
        start = trio.current_time()
        assert await broker.publish("t", payload) == 0
        await trio.testing.wait_all_tasks_blocked()
        assert sockets[0].writes == [(start, b"frame-0")]  # quiet: written at once
        for expected in (1, 2, 3):  # a publisher that publishes flat out
            assert await broker.publish("t", payload) == expected
            await trio.sleep(0.0002)
        assert len(sockets[0].writes) == 1  # the three are held, their offsets known
        await trio.sleep(0.002)
        for sock in sockets:
            assert [data for _, data in sock.writes] == [b"frame-0", b"frame-1frame-2frame-3"]
            assert sock.writes[1][0] - start == pytest.approx(0.001)  # held for the delay
        await trio.sleep(1)  # quiet again
        quiet = trio.current_time()
        await broker.publish("t", payload)
        await trio.testing.wait_all_tasks_blocked()
        assert sockets[0].writes[-1] == (quiet, b"frame-4")


async def test_with_no_flush_delay_every_message_is_written_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    render, _ = counting_render()
    async with open_broker(batching(0)) as broker:
        [sock] = await recording_subscribers(broker, render, 1)
        for _ in range(4):
            await broker.publish("t", broker.payload(b"x", None))
            await trio.sleep(0.0002)
        assert [data for _, data in sock.writes] == [b"frame-%d" % n for n in range(4)]


async def test_a_flush_request_writes_a_held_burst_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`broker.flush()` (drain uses it) must not return while a burst is held."""
    render, _ = counting_render()
    async with open_broker(batching(0.5)) as broker:
        [sock] = await recording_subscribers(broker, render, 1)
        for _ in range(3):
            await broker.publish("t", broker.payload(b"x", None))
        before = trio.current_time()
        await broker.flush()
        assert trio.current_time() - before < 0.5
        assert b"".join(data for _, data in sock.writes) == b"frame-0frame-1frame-2"


async def test_a_bulk_batch_is_written_to_each_subscriber_in_one_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Even with no flush delay and a quiet topic, a batch's messages are one burst."""
    render, _ = counting_render()
    async with open_broker(batching(0)) as broker:
        sockets = await recording_subscribers(broker, render, 2)
        assert await broker.publish_many([("t", broker.payload(b"x", None))] * 3) == [0, 1, 2]
        await trio.testing.wait_all_tasks_blocked()
        for sock in sockets:
            assert [data for _, data in sock.writes] == [b"frame-0frame-1frame-2"]


# -- publish_now: an idle topic's step on the publisher's task --------------------------


async def running_topic(
    nursery: trio.Nursery, settings: TopicSettings | None = None
) -> TopicActor:
    """A topic actor of its own (no directory), started and parked waiting for requests."""
    actor = TopicActor("t", settings or TopicSettings(), BrokerCounters(), 60.0, lambda _: None)
    await nursery.start(actor.run)
    await trio.testing.wait_all_tasks_blocked()
    return actor


def publish(data: bytes = b"x") -> tuple[Publish, Reply[int]]:
    reply: Reply[int] = Reply()
    return Publish(Payload(data, "application/octet-stream", "binary"), reply), reply


async def test_an_idle_topic_publishes_at_once_and_one_handed_over_first_keeps_its_place() -> None:
    async with trio.open_nursery() as nursery:
        actor = await running_topic(nursery)
        request, reply = publish()
        assert actor.publish_now(request)
        assert reply.result() == 0  # answered on this task, no checkpoint between
        first, first_reply = publish()
        actor.address.tell_nowait(first)  # handed to the parked task, which has not run yet
        second, second_reply = publish()
        assert not actor.publish_now(second)  # it would overtake `first`
        actor.address.tell_nowait(second)
        await trio.testing.wait_all_tasks_blocked()
        assert (first_reply.result(), second_reply.result()) == (1, 2)
        nursery.cancel_scope.cancel()


async def test_publish_now_leaves_a_paused_topic_to_its_task() -> None:
    async with trio.open_nursery() as nursery:
        actor = await running_topic(nursery)
        resume = trio.Event()
        actor.address.tell_nowait(Pause(resume))
        await trio.testing.wait_all_tasks_blocked()
        request, reply = publish()
        assert not actor.publish_now(request)
        assert not reply.answered
        nursery.cancel_scope.cancel()


async def test_publish_now_writes_a_lone_frame_to_a_few_subscribers(
    autojump_clock: trio.testing.MockClock,
) -> None:
    render, _ = counting_render()
    async with trio.open_nursery() as nursery:
        actor = await running_topic(nursery)
        sock = RecordingSocket(1, render)
        actor.attach(sock.subscriber, "t")
        request, reply = publish()
        assert actor.publish_now(request)
        assert reply.result() == 0
        assert [data for _, data in sock.writes] == [b"frame-0"]  # written, no task switch
        # Within the flush delay of that write, the topic would hold a burst open for
        # more: that is its task's to do.
        request, reply = publish()
        assert not actor.publish_now(request)
        await trio.sleep(TopicSettings().flush_delay)
        assert actor.publish_now(request) and reply.result() == 1
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("subscribers", "policy"),
    [(ANSWER_FIRST_SUBSCRIBERS, SlowConsumerPolicy.DISCONNECT), (1, SlowConsumerPolicy.BLOCK)],
)
async def test_publish_now_leaves_wide_and_block_topics_to_their_task(
    subscribers: int, policy: SlowConsumerPolicy
) -> None:
    """Many subscribers: the topic answers, lets the publisher run, then writes; `block`:
    the topic may have to wait for a full outbox. Neither fits one step on another task."""
    render, _ = counting_render()
    async with trio.open_nursery() as nursery:
        actor = await running_topic(nursery, TopicSettings(slow_consumer_policy=policy))
        for n in range(subscribers):
            actor.attach(RecordingSocket(n, render).subscriber, "t")
        request, reply = publish()
        assert not actor.publish_now(request)
        actor.address.tell_nowait(request)
        await trio.testing.wait_all_tasks_blocked()
        assert reply.result() == 0
        nursery.cancel_scope.cancel()


class FailingOnce(RecordingSocket):
    """A subscriber socket whose first write raises something unforeseen (a bug)."""

    def __init__(self, connection_id: int, render: Callable[[Message], bytes]) -> None:
        super().__init__(connection_id, render)
        self.failed = False

    def _write(self, data: bytes) -> int:
        if not self.failed:
            self.failed = True
            raise RuntimeError("unforeseen")
        return super()._write(data)


async def test_a_publish_step_that_fails_on_the_publishers_task_crashes_the_topic_actor() -> None:
    """The failure reaches the topic's supervisor as a crash on the topic's own task: it
    restarts the topic with its state, as after any crash."""
    render, _ = counting_render()
    async with open_broker(PAYLOAD_SETTINGS) as broker:
        await broker.publish("t", broker.payload(b"first", None))  # the topic runs, idle
        sock = FailingOnce(1, render)
        await broker.subscribe(sock.subscriber, "t")
        assert await broker.publish("t", broker.payload(b"x", None)) == 1  # accepted first
        await trio.testing.wait_all_tasks_blocked()
        assert broker.counters.topic_crashes == 1 and broker.counters.topic_restarts == 1
        assert await broker.publish("t", broker.payload(b"y", None)) == 2
        await broker.flush()
        assert b"".join(data for _, data in sock.writes) == b"frame-1frame-2"


async def test_a_publish_now_joins_a_burst_held_open_and_is_written_with_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A topic holding a burst open for more (waiting on its mailbox) takes a publish at
    once too: answered now, written with the burst when the hold ends."""
    render, _ = counting_render()
    delay = 0.001
    async with trio.open_nursery() as nursery:
        actor = await running_topic(nursery, TopicSettings(flush_delay=delay))
        sock = RecordingSocket(1, render)
        actor.attach(sock.subscriber, "t")
        first, _ = publish()
        assert actor.publish_now(first)  # written at once
        start = trio.current_time()
        await trio.sleep(delay * 0.3)
        held, held_reply = publish()
        assert not actor.publish_now(held)  # it would open a held burst: the task's to do
        actor.address.tell_nowait(held)
        await trio.testing.wait_all_tasks_blocked()
        assert held_reply.result() == 1 and len(sock.writes) == 1  # held open until +delay
        await trio.sleep(delay * 0.3)  # still within the delay of the last write
        joining, joining_reply = publish()
        assert actor.publish_now(joining)
        assert joining_reply.result() == 2 and len(sock.writes) == 1  # answered, held
        await trio.sleep(delay)
        assert [data for _, data in sock.writes] == [b"frame-0", b"frame-1frame-2"]
        assert sock.writes[1][0] - start == pytest.approx(delay * 1.3)  # when the hold ended
        nursery.cancel_scope.cancel()
