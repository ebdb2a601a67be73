"""`TopicAccess`: the part of the `Broker` handle that does not publish.

Presence (connections open, what the broker holds for the memory budget), subscriptions
(exact and wildcard), listings and statistics, history reads, fault injection for tests,
and finding a topic: without a message through `TopicDirectory.find` when it runs, else
by asking the directory. `Broker` (`node.py`) adds draining and the publish paths.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

from actors import ActorStopped, Address, AskTimeout, MailboxFull, Reply, ask

from .connection import OpenConnections, Subscriber, SubscriberInfo
from .directory import (
    DirectoryRequest,
    ForgetPatterns,
    ListTopics,
    Lookup,
    SubscribePattern,
    UnsubscribePattern,
)
from .errors import InvalidFrame, TopicNotFound, Unavailable
from .memory_budget import MemoryBudget, MemoryFigures
from .messages import (
    Crash,
    Flush,
    HistoryPage,
    Pause,
    ReadHistory,
    Subscribe,
    SubscribeResult,
    TopicRequest,
    Unsubscribe,
)
from .metrics import BrokerCounters, BrokerMetrics, Gauges, task_count
from .outbox_items import ControlFrame
from .pending_publish import PendingPublish
from .settings import Settings
from .subjects import is_wildcard, validate_pattern, validate_topic
from .topic import TopicActor, TopicStatistics

R = TypeVar("R")  # what the directory answers a request

# Bound on waiting for an actor that has accepted a request to answer it. Actors answer
# in microseconds; this only fires if one is wedged, and turns a hang into `Unavailable`.
ANSWER_TIMEOUT = 10.0
# A topic that retires between our lookup and our put is looked up again this often.
LOOKUP_ATTEMPTS = 3


class TopicAccess:
    """The non-publishing half of `Broker` (its base class). See the module docstring."""

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


    # -- presence ------------------------------------------------------------------------

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
    async def flush(self) -> None:
        """Wait until every topic has processed what was queued before this call."""
        for topic in await self._topics(""):
            try:
                await ask(topic.address, Flush, timeout=ANSWER_TIMEOUT)
            except (ActorStopped, AskTimeout):
                pass

    # -- subscriptions -------------------------------------------------------------------

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


__all__ = ["ANSWER_TIMEOUT", "LOOKUP_ATTEMPTS", "TopicAccess"]
