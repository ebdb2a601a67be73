"""`Broker.publish_soon`: publishes answered later by their topic, and the deadlines actor
that answers `TopicBusy` (and withdraws the message) when the topic does not answer in
time. Real actors, the autojump clock."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from broker import Broker, BrokerError, Settings, TopicBusy, open_broker
from broker.pending_publish import PendingPublish, PublishDeadlines

from ..conftest import ONE_SLOT_MAILBOX, paused_topic

SETTINGS = Settings(topic_idle_seconds=0, publish_timeout=0.5)


class Answers:
    """What `on_answer` was called with, and when (trio time)."""

    def __init__(self) -> None:
        self.outcomes: list[int | BrokerError] = []
        self.times: list[float] = []
        self.event = trio.Event()

    def __call__(self, outcome: int | BrokerError) -> None:
        self.outcomes.append(outcome)
        self.times.append(trio.current_time())
        self.event.set()


async def handed_to_paused_topic(broker: Broker, data: bytes) -> tuple[trio.Event, Answers]:
    """A publish of `data` handed to topic "t" (offset 0 taken), paused until the event is
    set; its answers, when they come, in the `Answers`."""
    resume = await paused_topic(broker)
    answers = Answers()
    assert broker.publish_soon("t", broker.payload(data, None), answers)
    return resume, answers


async def test_an_idle_topic_answers_with_the_offset_at_once() -> None:
    async with open_broker(SETTINGS) as broker:
        await broker.publish("t", broker.payload(b"first", None))  # the topic runs now
        answers = Answers()
        assert broker.publish_soon("t", broker.payload(b"second", None), answers)
        assert answers.outcomes == [1]  # on this task, before any checkpoint
        broker.begin_drain()
        with trio.fail_after(0.01):
            await broker.wait_settled()  # answered: nothing left in flight
        page = await broker.history("t", 0, 10)
        assert [m.data for m in page.messages] == [b"first", b"second"]


async def test_a_busy_topic_answers_with_the_offset_on_its_own_task() -> None:
    async with open_broker(SETTINGS) as broker:
        resume, answers = await handed_to_paused_topic(broker, b"second")
        assert answers.outcomes == []  # handed over: nothing answered before the topic runs
        resume.set()
        await answers.event.wait()
        assert answers.outcomes == [1]
        page = await broker.history("t", 0, 10)
        assert [m.data for m in page.messages] == [b"x", b"second"]


async def test_publish_soon_declines_when_the_topic_is_not_running() -> None:
    async with open_broker(SETTINGS) as broker:
        answers = Answers()
        assert not broker.publish_soon("new", broker.payload(b"x", None), answers)
        # Nothing was done: `publish` (which creates the topic) takes over.
        assert await broker.publish("new", broker.payload(b"x", None)) == 0
        assert answers.outcomes == []


async def test_publish_soon_declines_when_the_topic_mailbox_is_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_broker(ONE_SLOT_MAILBOX) as broker:
        resume = await paused_topic(broker)
        first, second = Answers(), Answers()
        assert broker.publish_soon("t", broker.payload(b"queued", None), first)
        assert not broker.publish_soon("t", broker.payload(b"no room", None), second)
        resume.set()
        await first.event.wait()
        assert first.outcomes == [1]
        assert second.outcomes == []
        # The declined one was never handed over, and the drain does not wait for it.
        broker.begin_drain()
        with trio.fail_after(0.01):
            await broker.wait_settled()
        page = await broker.history("t", 0, 10)
        assert [m.data for m in page.messages] == [b"x", b"queued"]


async def test_an_unanswered_publish_is_refused_busy_after_the_timeout_and_withdrawn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_broker(SETTINGS) as broker:
        resume, answers = await handed_to_paused_topic(broker, b"late")
        started = trio.current_time()  # handed over in this same step: no time between
        await answers.event.wait()
        [outcome] = answers.outcomes
        assert isinstance(outcome, TopicBusy)
        waited = answers.times[0] - started
        tick = min(0.05, SETTINGS.publish_timeout / 10)
        assert SETTINGS.publish_timeout <= waited <= SETTINGS.publish_timeout + tick + 1e-9
        assert broker.counters.publish_rejections == {"topic_busy": 1}
        resume.set()
        await broker.flush()
        # Busy means not accepted: the topic skipped it when it got there, and answered
        # nothing more.
        page = await broker.history("t", 0, 10)
        assert [m.data for m in page.messages] == [b"x"]
        assert len(answers.outcomes) == 1


async def test_drain_waits_for_handed_over_publishes_to_be_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_broker(SETTINGS) as broker:
        resume, answers = await handed_to_paused_topic(broker, b"y")
        broker.begin_drain()
        settled = trio.Event()

        async def wait_settled() -> None:
            await broker.wait_settled()
            settled.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_settled)
            await trio.sleep(0.1)
            assert not settled.is_set()  # the handed-over publish is still on its way
            resume.set()
        assert answers.outcomes == [1]
        assert settled.is_set()


def test_a_pending_publish_is_answered_once() -> None:
    told: list[object] = []
    settled: list[bool] = []
    pending = PendingPublish("t", 1.0, told.append, lambda _, accepted: settled.append(accepted))
    pending.expire(TopicBusy("late"))
    pending.send(7)  # the topic got there after all: too late, it skips withdrawn ones
    assert pending.cancelled
    assert [type(o) for o in told] == [TopicBusy]
    assert settled == [False]


def test_a_failing_answer_callback_does_not_reach_the_topic() -> None:
    def broken(outcome: object) -> None:
        raise RuntimeError("the connection's writer broke")

    pending = PendingPublish("t", 1.0, broken, lambda *_: None)
    pending.send(3)  # logged, not raised into the answering topic
    assert pending.answered


async def test_deadlines_look_at_each_tick_and_stop_at_the_first_not_due(
    autojump_clock: trio.testing.MockClock,
) -> None:
    def busy(topic: str) -> BrokerError:
        return TopicBusy(f"{topic} busy")

    deadlines = PublishDeadlines(1.0, busy)
    assert deadlines.tick == pytest.approx(0.05)
    told: list[tuple[str, object]] = []
    now = trio.current_time()
    due = [PendingPublish(f"t{i}", now + 0.5 + i, lambda o, i=i: told.append((f"t{i}", o)),
                          lambda *_: None) for i in range(3)]
    async with trio.open_nursery() as nursery:
        address = await nursery.start(deadlines.run)
        for pending in due:
            address.tell_nowait(pending)
        due[1].send(11)  # answered in time by its topic: never expired
        await trio.sleep(0.6)
        # t0 is due: busy; t1 was answered already; t2 (due at 2.5) is left alone.
        assert [(t, type(o)) for t, o in told] == [("t1", int), ("t0", TopicBusy)]
        await trio.sleep(2.0)
        assert [(t, type(o)) for t, o in told][2:] == [("t2", TopicBusy)]
        assert deadlines.watched == 0
        nursery.cancel_scope.cancel()


async def test_a_waiting_publish_taken_at_once_by_an_idle_topic_is_still_a_checkpoint() -> None:
    """`Broker.publish` is async: it lets other tasks run even when the topic took the
    message on this task (a loop of publishes must not starve the rest of the broker)."""
    async with open_broker(SETTINGS) as broker:
        await broker.publish("t", broker.payload(b"first", None))  # the topic runs, idle
        with trio.testing.assert_checkpoints():
            assert await broker.publish("t", broker.payload(b"second", None)) == 1
