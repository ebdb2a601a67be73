"""`open_broker` -> `Broker`: the handle gateways use, and the supervision tree behind it.

    open_broker
    └── supervisor "broker"
        ├── TopicDirectory (restarted on crash; escalates after 10 crashes a minute)
        ├── PublishDeadlines (answers `TopicBusy` to publishes told later, past their timeout)
        └── MemoryBudget (sums what the broker holds against `max_memory`; sheds)
    └── supervisor "topics"
        └── TopicActor per topic (restarted on crash with state kept; then stopped)

`Broker` methods are safe to call from any task: they only send requests to actors and
wait for replies, never touching actor state themselves.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import trio
from trio.lowlevel import cancel_shielded_checkpoint, checkpoint_if_cancelled

from actors import (
    ActorStopped,
    Address,
    AskTimeout,
    Decision,
    MailboxFull,
    Reply,
    RestartPolicy,
    ask,
    open_supervisor,
)

from .codec import checked_payload
from .connection import OpenConnections, Subscriber, SubscriberInfo
from .directory import (
    DirectoryRequest,
    ForgetPatterns,
    ListTopics,
    Lookup,
    SubscribePattern,
    TopicDirectory,
    UnsubscribePattern,
)
from .errors import (
    BrokerError,
    Draining,
    InvalidFrame,
    Overloaded,
    TopicBusy,
    TopicNotFound,
    Unavailable,
)
from .memory_budget import MemoryBudget, MemoryFigures
from .messages import (
    Crash,
    Flush,
    HistoryPage,
    Pause,
    Payload,
    Publish,
    PublishBatch,
    ReadHistory,
    Subscribe,
    SubscribeResult,
    TopicRequest,
    Unsubscribe,
)
from .metrics import BrokerCounters, BrokerMetrics, Gauges, task_count
from .outbox_items import ControlFrame
from .pending_publish import PendingPublish, PublishDeadlines
from .settings import Settings
from .subjects import is_wildcard, validate_pattern, validate_topic
from .topic import TopicActor, TopicStatistics

log = logging.getLogger("broker")

R = TypeVar("R")  # what the directory answers a request

# Bound on waiting for an actor that has accepted a request to answer it. Actors answer
# in microseconds; this only fires if one is wedged, and turns a hang into `Unavailable`.
ANSWER_TIMEOUT = 10.0
# Messages of one bulk publish sent to a topic as one request (`PublishBatch`): one
# mailbox slot and one reply for up to this many, so a topic's mailbox holds at most
# `mailbox_size` x this many bulk messages.
BATCH_MESSAGES = 64
# A topic that retires between our lookup and our put is looked up again this often.
LOOKUP_ATTEMPTS = 3
DIRECTORY_RESTART_POLICY = RestartPolicy(max_restarts=10, window_seconds=60.0)


class Broker:
    """What the gateways call. See the module docstring."""

    def __init__(
        self,
        settings: Settings,
        directory: Address[DirectoryRequest],
        counters: BrokerCounters,
        metrics: BrokerMetrics,
        find: Callable[[str], TopicActor | None],
        deadlines: Address[PendingPublish],
        memory: MemoryBudget,
        topic_count: Callable[[], int],
    ) -> None:
        self.settings = settings
        self.memory = memory
        self._topic_count = topic_count
        self.counters = counters
        self.metrics = metrics
        self._directory = directory
        self._find = find  # TopicDirectory.find: a known topic without a message
        self._deadlines = deadlines
        self._draining = False
        # Publishes past the draining check and not yet answered; drain waits for them.
        self._in_flight = 0
        self._settled = trio.Event()
        self._publish_timer = metrics.publish_seconds.observe
        # Told by the WebSocket gateway (`connection_opened`, `connection_closed`).
        self.open_connections = OpenConnections()

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Connections open now."""
        return len(self.open_connections)

    def connection_opened(self, subscriber: Subscriber) -> None:
        """A connection is open: counted, and its outbox weighed by the memory budget."""
        self.open_connections.opened(subscriber)

    def connection_closed(self, subscriber: Subscriber) -> None:
        self.open_connections.closed(subscriber)

    def memory_figures(self) -> MemoryFigures:
        """What the broker holds now (the memory budget's source): one walk over the
        connections; the rest is kept up to date by the topics."""
        counters, connections = self.counters, self.open_connections
        return MemoryFigures(
            counters.retained_bytes, counters.mailbox_bytes, connections.queued_bytes(),
            self._topic_count(), len(connections),
        )

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

    async def flush(self) -> None:
        """Wait until every topic has processed what was queued before this call."""
        for topic in await self._topics(""):
            try:
                await ask(topic.address, Flush, timeout=ANSWER_TIMEOUT)
            except (ActorStopped, AskTimeout):
                pass

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

    async def subscribe(
        self,
        subscriber: Subscriber,
        pattern: str,
        start: int | str = "latest",
        ack: Callable[[SubscribeResult], ControlFrame] | None = None,
    ) -> SubscribeResult:
        """Subscribe to a topic or wildcard pattern; `ack` is queued before any replay."""
        validate_pattern(pattern)
        if is_wildcard(pattern):
            if isinstance(start, int):
                raise InvalidFrame('a wildcard subscription takes "from": "latest" or "earliest"')
            await self._subscribe_wildcard(subscriber, pattern, start, ack)
            return SubscribeResult(0, 0, replayed=0)
        for _ in range(LOOKUP_ATTEMPTS):
            actor = await self._lookup(pattern, create=True)
            assert actor is not None
            try:
                return await ask(
                    actor.address,
                    lambda reply: Subscribe(subscriber, pattern, start, ack, reply),
                    timeout=ANSWER_TIMEOUT,
                )
            except ActorStopped:
                continue
            except AskTimeout as exc:
                raise Unavailable(f"topic {pattern!r} did not answer in time") from exc
        raise Unavailable(f"topic {pattern!r} kept retiring; retry")

    async def unsubscribe(self, subscriber_id: int, pattern: str) -> bool:
        """Remove one subscription; False if it did not exist."""
        if is_wildcard(pattern):
            topics: list[TopicActor] | None = await self._ask_directory(
                lambda reply: UnsubscribePattern(subscriber_id, pattern, reply)
            )
            if topics is None:
                return False
            await self._tell_each(topics, lambda: Unsubscribe(subscriber_id, pattern, None))
            return True
        actor = await self._lookup(pattern, create=False)
        if actor is None:
            return False
        try:
            return await ask(
                actor.address,
                lambda reply: Unsubscribe(subscriber_id, pattern, reply),
                timeout=ANSWER_TIMEOUT,
            )
        except (ActorStopped, AskTimeout):
            return False

    async def disconnect(self, subscriber_id: int, patterns: list[str]) -> None:
        """A connection has closed: drop all its subscriptions, waiting on no topic.

        Exact subscriptions are dropped with one `tell_nowait` to each topic; wildcards go
        to the directory in one message (waiting at most `publish_timeout` for room). What
        does not fit is not lost: a topic forgets a subscriber whose outbox is closed on its
        next forward or idle tick, and listings never show one.
        """
        wildcards = []
        for pattern in patterns:
            if is_wildcard(pattern):
                wildcards.append(pattern)
                continue
            actor = self._find(pattern)
            if actor is not None:
                try:
                    actor.address.tell_nowait(Unsubscribe(subscriber_id, pattern, None))
                except (MailboxFull, ActorStopped):
                    pass  # see the docstring
        if wildcards:
            try:
                await self._directory.tell_within(
                    ForgetPatterns(subscriber_id, tuple(wildcards)), self.settings.publish_timeout
                )
            except (MailboxFull, ActorStopped):
                pass

    async def _subscribe_wildcard(
        self,
        subscriber: Subscriber,
        pattern: str,
        start: str,
        ack: Callable[[SubscribeResult], ControlFrame] | None,
    ) -> None:
        """The directory records the pattern (new topics attach it themselves); this task,
        not the directory, tells the existing matching topics, so a stalled topic delays
        only this subscriber. If one will not take it, the subscription is undone."""
        topics: list[TopicActor] = await self._ask_directory(
            lambda reply: SubscribePattern(subscriber, pattern, ack, reply)
        )
        refused = await self._tell_each(
            topics, lambda: Subscribe(subscriber, pattern, start, None, None)
        )
        if refused:
            # Undo: forget the pattern, and leave the topics that took it (not the stuck
            # ones, which never got it and would only make us wait again).
            matching: list[TopicActor] | None = await self._ask_directory(
                lambda reply: UnsubscribePattern(subscriber.id, pattern, reply)
            )
            took_it = [t for t in matching or [] if t.name not in refused]
            await self._tell_each(took_it, lambda: Unsubscribe(subscriber.id, pattern, None))
            raise Unavailable(
                f"topic {refused[0]!r} is not taking requests (its mailbox stayed full); "
                "retry the subscription"
            )

    async def _tell_each(
        self, topics: list[TopicActor], build: Callable[[], TopicRequest]
    ) -> list[str]:
        """Put `build()` in each topic's mailbox, each within `publish_timeout`; returns the
        names of topics that stayed full (retired ones are skipped: a recreated topic
        attaches wildcard subscribers from the directory's trie)."""
        refused = []
        for topic in topics:
            try:
                await topic.address.tell_within(build(), self.settings.publish_timeout)
            except MailboxFull:
                refused.append(topic.name)
            except ActorStopped:
                pass
        return refused

    # -- reading -------------------------------------------------------------------------

    async def topics(self, prefix: str = "") -> list[TopicStatistics]:
        return [t.statistics() for t in await self._topics(prefix)]

    async def topic(self, name: str) -> TopicStatistics:
        return (await self._existing(name)).statistics()

    async def subscribers(self, name: str) -> list[SubscriberInfo]:
        return (await self._existing(name)).subscribers()

    async def history(self, name: str, start: int, limit: int) -> HistoryPage:
        actor = await self._existing(name)
        try:
            return await ask(
                actor.address,
                lambda reply: ReadHistory(start, limit, reply),
                timeout=ANSWER_TIMEOUT,
            )
        except (ActorStopped, AskTimeout) as exc:
            raise Unavailable(f"topic {name!r} did not answer in time") from exc

    async def gauges(self) -> Gauges:
        """Point-in-time figures for /metrics, read from every topic's statistics()."""
        stats = await self.topics("")
        memory = self.memory.statistics()
        return Gauges(
            connections=self.connections,
            topics=len(stats),
            subscriptions=sum(s.subscribers for s in stats),
            closed_subscriptions=sum(s.closed_subscribers for s in stats),
            topic_mailbox_depth=sum(s.mailbox_depth for s in stats),
            topic_mailbox_depth_max=max((s.mailbox_depth for s in stats), default=0),
            retained_messages=sum(s.retained_messages for s in stats),
            retained_bytes=sum(s.retained_bytes for s in stats),
            outbox_depth_max=max((s.deepest_outbox for s in stats), default=0),
            tasks=task_count(),
            memory_budget=memory.budget,
            memory_used=memory.used,
            memory_overloaded=memory.overloaded,
            memory_shed=memory.shed,
            memory_refused=memory.refused,
        )

    async def inject_crash(self, name: str, error: str = "injected fault") -> None:
        """Fault injection for tests: make topic `name` raise while handling a request."""
        actor = await self._existing(name)
        await actor.address.tell(Crash(error))

    async def pause_topic(self, name: str, resume: trio.Event) -> None:
        """Fault injection for tests: topic `name` takes no request until `resume` is set."""
        actor = await self._existing(name)
        await actor.address.tell(Pause(resume))

    # -- internals -----------------------------------------------------------------------

    async def _existing(self, name: str) -> TopicActor:
        validate_topic(name)
        actor = await self._lookup(name, create=False)
        if actor is None:
            raise TopicNotFound(f"no topic {name!r}")
        return actor

    async def _lookup(
        self, name: str, create: bool, timeout: float = ANSWER_TIMEOUT
    ) -> TopicActor | None:
        """The topic `name`: found without a message if it runs; else asked of (and, with
        `create`, made by) the directory."""
        actor = self._find(name)
        if actor is not None:
            return actor
        return await self._ask_directory(lambda reply: Lookup(name, create, reply), timeout)

    async def _topics(self, prefix: str) -> list[TopicActor]:
        return await self._ask_directory(lambda reply: ListTopics(prefix, reply))

    async def _ask_directory(
        self, build: Callable[[Reply[R]], DirectoryRequest], timeout: float = ANSWER_TIMEOUT
    ) -> R:
        try:
            return await ask(self._directory, build, timeout=max(timeout, 0.0))
        except (ActorStopped, AskTimeout) as exc:
            raise Unavailable("the topic directory did not answer in time") from exc


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
