"""`open_broker` -> `Broker`: the handle gateways use, and the supervision tree behind it.

    open_broker
    └── supervisor "broker"
        ├── TopicDirectory (restarted on crash; escalates after 10 crashes a minute)
        ├── PublishDeadlines (answers `TopicBusy` to publishes told later, past their timeout)
        └── MemoryBudget (sums what the broker holds against `max_memory`; sheds)
    └── supervisor "topics"
        └── TopicActor per topic (restarted on crash with state kept; then stopped)

`Broker` here is draining and the publish paths; the rest of the handle (presence,
subscriptions, listings, statistics, history) is its base class `TopicAccess`
(`topic_access.py`).

`Broker` does not only send requests and wait for replies. A running topic is found
without a message (`TopicDirectory.find` reads the directory's map), and an idle topic
takes a publish on the caller's task (`TopicActor.publish_now`: offset, history, answer and
the writes to every subscriber's outbox); listings read `TopicActor.statistics()` and
`subscribers()` directly. A topic that is busy, or a publish that must wait, goes through
the topic's mailbox (`tell_within`, `tell_nowait`) and is answered by the topic's task,
or by `PublishDeadlines` with `TopicBusy` past `publish_timeout`. This is sound because
trio runs one task at a time and none of these direct steps awaits: one `await` inside
them would let two tasks interleave on a topic's state.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from actors import (
    ActorStopped,
    Decision,
    MailboxFull,
    Reply,
    RestartPolicy,
    open_supervisor,
)

from .codec import checked_payload
from .directory import TopicDirectory
from .errors import BrokerError, Draining, Overloaded, TopicBusy, Unavailable
from .memory_budget import MemoryBudget
from .messages import Payload, Publish, PublishBatch
from .metrics import BrokerCounters, BrokerMetrics
from .pending_publish import PendingPublish, PublishDeadlines
from .settings import Settings
from .subjects import validate_topic
from .topic_access import LOOKUP_ATTEMPTS, TopicAccess

# Messages of one bulk publish sent to a topic as one request (`PublishBatch`): one
# mailbox slot and one reply for up to this many, so a topic's mailbox holds at most
# `mailbox_size` x this many bulk messages.
BATCH_MESSAGES = 64
DIRECTORY_RESTART_POLICY = RestartPolicy(max_restarts=10, window_seconds=60.0)


class Broker(TopicAccess):
    """What the gateways call. See the module docstring."""

    # -- draining ------------------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    def begin_drain(self) -> None:
        """Refuse new publishes from now on (`Draining`, HTTP 503); readiness turns false."""
        self._draining = True
        if self._in_flight == 0:
            self._settled.set()

    async def wait_settled(self) -> None:
        """After `begin_drain`: wait until no accepted publish is still on its way."""
        await self._settled.wait()

    def _publish_started(self) -> None:
        if self._draining:
            self.counters.reject(Draining.code)
            raise Draining("the broker is shutting down")
        if self.memory.overloaded:  # the publish path's whole cost of the memory budget
            raise self._overloaded()
        self._in_flight += 1

    def _overloaded(self) -> Overloaded:
        self.counters.reject(Overloaded.code)
        self.memory.refusing()
        return Overloaded(
            f"the broker holds its memory budget ({self.memory.budget} bytes, max_memory): "
            "the message was not accepted; retry later"
        )

    def _publish_ended(self) -> None:
        self._in_flight -= 1
        if self._draining and self._in_flight == 0:
            self._settled.set()
    # -- publishing ----------------------------------------------------------------------

    def payload(self, data: bytes, content_type: str | None) -> Payload:
        """Validate `data` for its content type and the size limit (raises BrokerError)."""
        content_type = content_type or "application/octet-stream"
        kind, rendering = checked_payload(data, content_type, self.settings.max_payload_bytes)
        return Payload(data, content_type, kind, rendering)

    async def publish(self, topic: str, payload: Payload) -> int:
        """Give `payload` the next offset of `topic`; returns the offset.

        Waits up to `publish_timeout` for room in the topic's mailbox, then raises
        `TopicBusy` (the message was not accepted). Raises `Draining` during shutdown.
        An idle topic takes it at once on this task (`TopicActor.publish_now`).
        """
        validate_topic(topic)
        self._publish_started()
        try:
            return await self._publish(topic, payload)
        finally:
            self._publish_ended()

    async def _publish(self, topic: str, payload: Payload) -> int:
        started = time.perf_counter()
        deadline = trio.current_time() + self.settings.publish_timeout
        for _ in range(LOOKUP_ATTEMPTS):
            actor = await self._lookup(topic, create=True, timeout=deadline - trio.current_time())
            assert actor is not None
            reply: Reply[int] = Reply()
            request = Publish(payload, reply)
            # A checkpoint as trio's own `send` is one: cancelled only before accepting,
            # then one scheduler round before the caller answers. With many publishers,
            # their answers then go out together, and each wake of their clients finds
            # several (`python -m benchmarks concurrent`: 15.6k msg/s without the round,
            # 21.4k with it).
            await checkpoint_if_cancelled()
            if actor.publish_now(request):
                await cancel_shielded_checkpoint()
            else:
                size = len(payload.data)
                self.counters.mailbox_bytes += size  # until the topic takes it (`TopicActor.run`)
                try:
                    await actor.address.tell_within(request, deadline - trio.current_time())
                except MailboxFull:
                    self.counters.mailbox_bytes -= size
                    raise self._busy(topic) from None
                except ActorStopped:
                    self.counters.mailbox_bytes -= size
                    continue
                await reply.wait_answered_by(deadline)
            offset = self._outcome(reply, topic)
            self._publish_timer(time.perf_counter() - started)
            return offset
        raise Unavailable(f"topic {topic!r} kept retiring; retry")

    def publish_soon(
        self, topic: str, payload: Payload, on_answer: Callable[[int | BrokerError], object]
    ) -> bool:
        """Hand `payload` to its topic without waiting; True if done. The answer is a call
        to `on_answer`: the offset, or the `BrokerError` refusing it (`TopicBusy` past
        `publish_timeout`, as with `publish`). It comes before this returns when the
        topic is idle (`TopicActor.publish_now`: no task switch), else later on another
        task.

        False, with nothing done, when that cannot happen at once (the topic is not running
        or a mailbox on the way is full): then `publish` (which waits) is the way.
        Raises `Draining` during shutdown and `InvalidTopic` for a bad name.
        """
        validate_topic(topic)
        actor = self._find(topic)
        if actor is None:
            return False
        self._publish_started()
        pending = PendingPublish(
            topic,
            trio.current_time() + self.settings.publish_timeout,
            on_answer,
            self._pending_settled,
        )
        request = Publish(payload, pending)
        if actor.publish_now(request):
            return True  # answered already: the topic was idle (no deadline to watch)
        try:
            self._deadlines.tell_nowait(pending)  # watched before the topic can answer it
            actor.address.tell_nowait(request)
        except (MailboxFull, ActorStopped):
            pending.withdraw()
            self._publish_ended()
            return False
        self.counters.mailbox_bytes += len(payload.data)  # until the topic takes it
        return True

    def _pending_settled(self, pending: PendingPublish, accepted: bool) -> None:
        self._publish_ended()
        if accepted:
            self._publish_timer(time.perf_counter() - pending.started)

    def _busy(self, topic: str) -> TopicBusy:
        self.counters.reject(TopicBusy.code)
        return TopicBusy(
            f"topic {topic!r} is busy: it did not take the message within "
            f"{self.settings.publish_timeout:g}s; it was not accepted, retry later"
        )

    def _outcome(self, reply: Reply[int], topic: str) -> int:
        """The answer, or if none came in time the publish is withdrawn (the topic will
        skip it) and `TopicBusy` raised: a 503 always means not accepted."""
        if not reply.answered and reply.cancel():
            raise self._busy(topic)
        return reply.result()

    async def publish_many(
        self, batch: list[tuple[str, Payload]]
    ) -> list[int | BrokerError]:
        """Publish a validated batch: offsets (or the error of each refused message) in order.

        Messages are grouped by topic; each topic's group is sent in order by its own task,
        so topics proceed in parallel and a batch is never funnelled through one actor.
        """
        self._publish_started()
        try:
            return await self._publish_many(batch)
        finally:
            self._publish_ended()

    async def _publish_many(self, batch: list[tuple[str, Payload]]) -> list[int | BrokerError]:
        results: list[int | BrokerError] = [0] * len(batch)
        groups: dict[str, list[int]] = {}
        for index, (topic, _) in enumerate(batch):
            groups.setdefault(topic, []).append(index)

        deadline = trio.current_time() + self.settings.publish_timeout

        async def publish_group(topic: str, indexes: list[int]) -> None:
            chunks = [
                indexes[at:at + BATCH_MESSAGES] for at in range(0, len(indexes), BATCH_MESSAGES)
            ]
            told: list[tuple[list[int], Reply[int]]] = []
            try:
                actor = await self._lookup(topic, create=True)
                assert actor is not None
                for chunk in chunks:
                    reply: Reply[int] = Reply()
                    payloads = tuple(batch[index][1] for index in chunk)
                    size = sum(len(payload.data) for payload in payloads)
                    self.counters.mailbox_bytes += size  # until the topic takes it
                    try:
                        await actor.address.tell_within(
                            PublishBatch(payloads, reply), deadline - trio.current_time()
                        )
                    except MailboxFull:
                        self.counters.mailbox_bytes -= size
                        raise self._busy(topic) from None
                    except ActorStopped:
                        self.counters.mailbox_bytes -= size
                        raise Unavailable(f"topic {topic!r} retired; retry") from None
                    told.append((chunk, reply))
            except BrokerError as exc:
                for chunk in chunks[len(told):]:
                    for index in chunk:
                        results[index] = exc
            if not told:
                return
            # The topic answers in the order it was told: once the last is answered, all
            # are (one wait per group, not one scheduler round trip per message).
            await told[-1][1].wait_answered_by(deadline)
            for chunk, reply in told:
                try:
                    first = self._outcome(reply, topic)
                except BrokerError as exc:
                    for index in chunk:
                        results[index] = exc
                else:
                    for offset, index in enumerate(chunk, first):
                        results[index] = offset

        if len(groups) == 1:
            for topic, indexes in groups.items():
                await publish_group(topic, indexes)
        else:
            async with trio.open_nursery() as nursery:
                for topic, indexes in groups.items():
                    nursery.start_soon(publish_group, topic, indexes)
        return results


@asynccontextmanager
async def open_broker(settings: Settings) -> AsyncIterator[Broker]:
    """Run a broker's actors for the duration of the block; cancelled on exit."""
    counters = BrokerCounters()
    metrics = BrokerMetrics(counters)
    holder: list[TopicDirectory] = []

    def on_topic_crash(name: str, error: BaseException, decision: Decision) -> None:
        holder[0].on_topic_crash(name, error, decision)

    def busy(topic: str) -> BrokerError:
        return broker._busy(topic)

    memory = MemoryBudget(
        settings.max_memory,
        lambda: broker.memory_figures(),
        lambda: broker.open_connections.subscribers(),
    )
    memory.check_topic_room(settings.max_topics)
    async with open_supervisor("topics", on_crash=on_topic_crash) as topics:
        directory = TopicDirectory(settings, counters, topics, memory)
        holder.append(directory)
        deadlines = PublishDeadlines(settings.publish_timeout, busy)
        async with open_supervisor("broker") as root:
            address = await root.start(
                "directory", directory.run, policy=DIRECTORY_RESTART_POLICY
            )
            watch = await root.start(
                "publish-deadlines", deadlines.run, policy=DIRECTORY_RESTART_POLICY
            )
            broker = Broker(
                settings, address, counters, metrics, directory.find, watch, memory,
                lambda: directory.topic_count,
            )
            await root.start("memory-budget", memory.run, policy=DIRECTORY_RESTART_POLICY)
            try:
                yield broker
            finally:
                root.cancel()
                topics.cancel()


__all__ = ["Broker", "open_broker"]
