"""`MemoryBudget` against a fake usage source (autojump clock), and the broker's accounting
and refusals in-process: `max_memory` reached means publishes and new topics are refused
`overloaded`, the largest slow consumers are shed, and it all lifts once usage falls.
(The same over HTTP and WebSocket: tests/end_to_end/test_memory_budget_server.py.)"""

from __future__ import annotations

import gc
import tracemalloc
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from broker import (
    CloseReason,
    Outbox,
    Overloaded,
    Settings,
    Subscriber,
    TopicSettings,
    load_settings,
    open_broker,
)
from broker.memory_budget import (
    LOW_WATER,
    NEAR_SAMPLE_SECONDS,
    QUEUED_FACTOR,
    SAMPLE_SECONDS,
    SHED_AT,
    SHED_FLOOR_BYTES,
    TOPIC_BYTES,
    MemoryBudget,
    MemoryFigures,
    default_max_memory,
    machine_memory,
)
from broker.settings import SettingsError

from ..conftest import paused_topic

BUDGET = 1_000_000


@dataclass
class FakeSubscriber:
    """What shedding sees of a subscriber: bytes queued, and whether it was evicted."""

    queued_bytes: int
    evicted: bool = False
    reason: CloseReason | None = None

    def evict(self, reason: CloseReason) -> None:
        self.evicted = True
        self.reason = reason


class FakeUsage:
    """A usage source the test sets: `retained` bytes, plus its subscribers' queues."""

    def __init__(self) -> None:
        self.retained = 0
        self.subscribers: list[FakeSubscriber] = []
        self.looks = 0

    def measure(self) -> MemoryFigures:
        """A shed subscriber's queue counts until it is gone from `subscribers`."""
        self.looks += 1
        queued = sum(s.queued_bytes for s in self.subscribers)
        return MemoryFigures(retained=self.retained, queued=queued)

    def budget(self, limit: int = BUDGET) -> MemoryBudget:
        return MemoryBudget(limit, self.measure, lambda: self.subscribers)


def test_overloaded_from_the_budget_until_usage_falls_under_the_low_water_mark() -> None:
    usage = FakeUsage()
    budget = usage.budget()
    usage.retained = BUDGET - 1
    budget.sample()
    assert not budget.overloaded
    usage.retained = BUDGET
    budget.sample()
    assert budget.overloaded
    usage.retained = int(BUDGET * LOW_WATER)  # under the budget, not under the low water
    budget.sample()
    assert budget.overloaded
    usage.retained = int(BUDGET * LOW_WATER) - 1
    budget.sample()
    assert not budget.overloaded
    assert budget.statistics().used == usage.retained


def test_the_largest_queues_are_shed_first_down_to_the_shedding_target() -> None:
    usage = FakeUsage()
    budget = usage.budget()
    small, large, larger = (FakeSubscriber(n) for n in (100_000, 150_000, 200_000))
    keeping_up = FakeSubscriber(SHED_FLOOR_BYTES - 1)
    usage.subscribers = [small, keeping_up, large, larger]
    usage.retained = 20_000  # used: 20,000 + 2 x 513,999 (a queued frame pins its payload)
    budget.sample()
    # Past SHED_AT (750,000): `larger` (2 x 200,000) then `large` (2 x 150,000) go, which
    # leaves 347,998, under SHED_TO (650,000): `small` stays.
    assert (larger.evicted, large.evicted, small.evicted, keeping_up.evicted) == (
        True, True, False, False,
    )
    assert larger.reason is CloseReason.SLOW_CONSUMER
    assert budget.shed == 2
    assert budget.statistics().releasing == QUEUED_FACTOR * 350_000
    # Until their closes are done their queues are still held: the budget counts them.
    assert budget.overloaded
    usage.subscribers = [small, keeping_up]
    budget.sample()
    assert not budget.overloaded


def test_shedding_starts_below_the_budget_and_refusing_only_at_it() -> None:
    usage = FakeUsage()
    budget = usage.budget()
    slow = FakeSubscriber(200_000)
    usage.subscribers = [slow]
    usage.retained = int(BUDGET * SHED_AT) - 2 * 200_000 - 1
    budget.sample()
    assert not slow.evicted
    usage.retained += 1  # at SHED_AT: shed, and nothing refused
    budget.sample()
    assert slow.evicted and not budget.overloaded


def test_a_subscriber_already_shed_is_not_shed_twice_nor_others_for_its_bytes() -> None:
    usage = FakeUsage()
    budget = usage.budget()
    first, second = FakeSubscriber(300_000), FakeSubscriber(150_000)
    usage.subscribers = [first, second]
    usage.retained = 200_000  # used: 1,100,000
    budget.sample()
    assert first.evicted and not second.evicted  # 500,000 left: under SHED_TO
    budget.sample()  # still closing: its queue is still held and counted in `used`
    assert not second.evicted
    assert budget.shed == 1
    usage.subscribers.remove(first)  # gone: released
    budget.sample()
    assert budget.statistics().releasing == 0 and budget.statistics().used == 500_000
    assert not budget.overloaded


def test_when_shedding_is_not_enough_publishes_are_refused() -> None:
    usage = FakeUsage()
    budget = usage.budget()
    slow = FakeSubscriber(100_000)
    usage.subscribers = [slow]
    usage.retained = BUDGET  # history: nothing to shed there
    budget.sample()
    assert slow.evicted and budget.overloaded
    usage.subscribers = []
    budget.sample()
    assert budget.overloaded  # history alone holds the budget


def test_subscribers_that_keep_up_are_never_shed_even_over_the_budget() -> None:
    usage = FakeUsage()
    budget = usage.budget()
    readers = [FakeSubscriber(SHED_FLOOR_BYTES - 1) for _ in range(3)]
    usage.subscribers = list(readers)
    usage.retained = 2 * BUDGET
    budget.sample()
    assert budget.overloaded
    assert not any(r.evicted for r in readers)


def test_a_budget_of_zero_never_refuses_but_still_shows_the_tally() -> None:
    usage = FakeUsage()
    budget = usage.budget(0)
    usage.retained = 10**12
    budget.sample()
    assert not budget.overloaded
    usage.retained = 123
    assert (budget.statistics().budget, budget.statistics().used) == (0, 123)


async def test_the_budget_looks_on_its_own_and_more_often_near_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    usage = FakeUsage()
    budget = usage.budget()
    async with trio.open_nursery() as nursery:
        await nursery.start(budget.run)
        looks = usage.looks
        await trio.sleep(SAMPLE_SECONDS * 10)  # the autojump clock: no real wait
        assert 9 <= usage.looks - looks <= 11
        usage.retained = BUDGET
        await trio.sleep(SAMPLE_SECONDS * 1.5)
        assert budget.overloaded
        looks = usage.looks
        await trio.sleep(NEAR_SAMPLE_SECONDS * 10)
        assert 9 <= usage.looks - looks <= 11
        usage.retained = 0
        await trio.sleep(NEAR_SAMPLE_SECONDS * 1.5)
        assert not budget.overloaded
        nursery.cancel_scope.cancel()


def test_max_memory_defaults_to_half_the_machines_memory_and_is_a_setting() -> None:
    assert machine_memory() > 0  # Linux: /proc/meminfo
    assert default_max_memory() == machine_memory() // 2
    assert Settings().max_memory == default_max_memory()
    assert load_settings(environ={"BROKER_MAX_MEMORY": "0"}).max_memory == 0
    assert load_settings({"max_memory": "123456"}, environ={}).max_memory == 123456
    with pytest.raises(SettingsError):
        load_settings({"max_memory": "-1"}, environ={})


def test_the_machines_memory_is_memtotal_or_the_cgroup_limit_if_lower(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemFree:  100 kB\n")
    limit = tmp_path / "memory.max"
    assert machine_memory(meminfo, ()) == 16_000_000 * 1024
    limit.write_text("max\n")  # cgroup v2 without a limit
    assert machine_memory(meminfo, (limit,)) == 16_000_000 * 1024
    limit.write_text("4294967296\n")
    assert machine_memory(meminfo, (limit,)) == 4294967296
    limit.write_text("9223372036854771712\n")  # cgroup v1 without a limit
    assert machine_memory(meminfo, (limit,)) == 16_000_000 * 1024
    assert machine_memory(tmp_path / "none", (limit,)) == 9223372036854771712
    assert machine_memory(tmp_path / "none", ()) == 0


# -- the broker's own accounting and refusals (in-process, no sockets) -----------------------

SMALL = Settings(topic_idle_seconds=0, max_memory=BUDGET)


async def test_retained_history_bytes_are_counted_as_topics_keep_and_evict_them() -> None:
    settings = Settings(
        topic_idle_seconds=0, max_memory=BUDGET, topic_defaults=TopicSettings(history_messages=2)
    )
    async with open_broker(settings) as broker:
        for size in (100, 200, 300):
            await broker.publish("a", broker.payload(b"x" * size, None))
        await broker.publish("b", broker.payload(b"y" * 50, None))
        figures = broker.memory_figures()
        assert figures.retained == 200 + 300 + 50  # "a" keeps its last two
        assert figures.topics == 2
        assert figures.used == 550 + 2 * TOPIC_BYTES


async def test_payloads_waiting_in_a_mailbox_are_counted_until_the_topic_takes_them() -> None:
    async with open_broker(SMALL) as broker:
        resume = await paused_topic(broker)
        assert broker.publish_soon("t", broker.payload(b"z" * 1000, None), lambda _: None)
        assert broker.memory_figures().mailboxes == 1000
        resume.set()
        await broker.flush()
        assert broker.memory_figures().mailboxes == 0


async def test_at_the_budget_publishes_and_new_topics_are_refused_overloaded() -> None:
    async with open_broker(SMALL) as broker:
        await broker.publish("big", broker.payload(b"x" * BUDGET, None))
        broker.memory.sample()
        assert broker.memory.overloaded
        with pytest.raises(Overloaded):
            await broker.publish("big", broker.payload(b"y", None))
        with pytest.raises(Overloaded):
            broker.publish_soon("big", broker.payload(b"y", None), lambda _: None)
        with pytest.raises(Overloaded):
            await broker.publish_many([("other", broker.payload(b"y", None))])
        outbox = Outbox(10, lambda m: m.data, broker.counters)
        subscriber = Subscriber(1, "c", outbox, lambda reason: None)
        with pytest.raises(Overloaded):
            await broker.subscribe(subscriber, "new.topic")  # a new topic costs memory
        await broker.subscribe(subscriber, "big")  # an existing one is fine
        assert broker.counters.publish_rejections["overloaded"] == 3
        assert broker.memory.statistics().refused == 4
        assert (await broker.history("big", 0, 10)).next_offset == 1  # nothing more taken


async def test_once_usage_falls_publishes_are_accepted_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    settings = Settings(topic_idle_seconds=5, max_memory=BUDGET)
    async with open_broker(settings) as broker:
        await broker.publish("big", broker.payload(b"x" * BUDGET, None))
        await trio.sleep(SAMPLE_SECONDS * 1.5)  # the budget's own look (autojump clock)
        assert broker.memory.overloaded
        await trio.sleep(15)  # the idle topic is reaped with its history: memory released
        assert broker.memory_figures().retained == 0
        assert not broker.memory.overloaded
        assert await broker.publish("big", broker.payload(b"y", None)) == 0


async def test_an_idle_topic_costs_no_more_than_the_budget_counts_for_it() -> None:
    """TOPIC_BYTES is what the budget counts per topic: what a topic holding one small
    message really allocates (its task, mailbox, history, directory entry) fits in it."""
    topics = 1000
    async with open_broker(Settings(topic_idle_seconds=0, max_memory=0)) as broker:
        await broker.publish("warm.up", broker.payload(b"x", None))
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for n in range(topics):
                await broker.publish(f"t.{n}", broker.payload(b"x", None))
            await trio.testing.wait_all_tasks_blocked()
            gc.collect()
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
    allocated = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert allocated / topics <= TOPIC_BYTES
