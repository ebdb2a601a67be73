"""`TopicDirectory`: the actor that owns the name -> topic map and wildcard subscriptions.

It creates each topic under the topics supervisor on first use, attaches the wildcard
subscribers whose patterns match a new topic, tells a topic when it has been idle for
`topic_idle_seconds` (`IdleTick`: the one timer for all topics, so a topic waits for its
next request with no timeout of its own), and forgets topics that retired.
Publishes do not pass through it: callers `find` a known topic without a message (the map
has one writer, this actor; readers only read it, and a retired topic is skipped), and ask
the directory only to create one.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass

import trio

from actors import (
    ActorStopped,
    Address,
    Decision,
    Mailbox,
    MailboxFull,
    Reply,
    RestartPolicy,
    Supervisor,
)

from .connection import Subscriber
from .errors import AlreadySubscribed, NotSubscribed, Overloaded, TooManyTopics
from .memory_budget import MemoryBudget
from .messages import IdleTick, SubscribeResult, Unsubscribe
from .metrics import BrokerCounters
from .outbox_items import ControlFrame
from .policies import CloseReason
from .settings import Settings
from .subjects import SubjectTrie, pattern_matches
from .topic import TopicActor

log = logging.getLogger("broker.directory")

# Room for lookups from many concurrent publishers before they wait (backpressure).
DIRECTORY_MAILBOX_SIZE = 4096
# A topic that keeps crashing is restarted this often per minute, then stopped and its
# subscribers closed, so one poisoned topic cannot spin forever.
TOPIC_RESTART_POLICY = RestartPolicy(max_restarts=10, window_seconds=60.0, exhausted=Decision.STOP)


@dataclass(frozen=True, slots=True)
class Lookup:
    name: str
    create: bool
    reply: Reply[TopicActor | None]


@dataclass(frozen=True, slots=True)
class ListTopics:
    prefix: str
    reply: Reply[list[TopicActor]]


@dataclass(frozen=True, slots=True)
class SubscribePattern:
    """Record a wildcard subscription; answered with the existing topics it matches."""

    subscriber: Subscriber
    pattern: str
    ack: Callable[[SubscribeResult], ControlFrame] | None
    reply: Reply[list[TopicActor]]


@dataclass(frozen=True, slots=True)
class UnsubscribePattern:
    """Forget a wildcard subscription; answered with the topics it matched (or None)."""

    subscriber_id: int
    pattern: str
    reply: Reply[list[TopicActor] | None]


@dataclass(frozen=True, slots=True)
class ForgetPatterns:
    """A connection has closed: forget its wildcard subscriptions, with no reply.

    The directory tells the matching topics without waiting; a topic whose mailbox is full
    forgets the closed subscriber by itself (its outbox answers CLOSED).
    """

    subscriber_id: int
    patterns: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Retired:
    topic: TopicActor


DirectoryRequest = (
    Lookup | ListTopics | SubscribePattern | UnsubscribePattern | ForgetPatterns | Retired
)


class TopicDirectory:
    """See the module docstring. State lives on the object, so a restart keeps the map."""

    def __init__(
        self,
        settings: Settings,
        counters: BrokerCounters,
        topics: Supervisor,
        memory: MemoryBudget,
    ) -> None:
        self._settings = settings
        self._counters = counters
        self._supervisor = topics
        self._memory = memory
        self._mailbox: Mailbox[DirectoryRequest] = Mailbox(DIRECTORY_MAILBOX_SIZE)
        self.address: Address[DirectoryRequest] = self._mailbox.address
        self._topics: dict[str, TopicActor] = {}
        self._patterns: SubjectTrie[dict[int, Subscriber]] = SubjectTrie()
        # When to look at each topic's `last_active` next: (trio time, tie-break, topic).
        self._idle_checks: list[tuple[float, int, TopicActor]] = []
        self._idle_order = itertools.count()

    def find(self, name: str) -> TopicActor | None:
        """The running topic `name`, if known; read-only, safe from any task, no message.

        The publish path's lookup: it must not queue behind subscription work in this
        actor's mailbox (a connect storm would otherwise delay publishes to idle topics).
        """
        topic = self._topics.get(name)
        if topic is None or topic.retired:
            return None
        return topic

    @property
    def topic_count(self) -> int:
        """Topics in the map (read-only, safe from any task)."""
        return len(self._topics)

    async def run(self, *, task_status: trio.TaskStatus[Address[DirectoryRequest]]) -> None:
        task_status.started(self.address)
        while True:
            request = await self._next_request()
            if request is None:
                self._check_idle()
                continue
            try:
                await self._handle(request)
            except Exception as exc:
                reply = getattr(request, "reply", None)
                if reply is not None:
                    reply.fail(exc)
                if not isinstance(
                    exc, TooManyTopics | Overloaded | AlreadySubscribed | NotSubscribed
                ):
                    raise

    async def _next_request(self) -> DirectoryRequest | None:
        """The next request, or None when the first idle check is due."""
        if not self._idle_checks:
            return await self._mailbox.receive()
        with trio.move_on_at(self._idle_checks[0][0]):
            return await self._mailbox.receive()
        return None

    def _schedule_idle_check(self, at: float, topic: TopicActor) -> None:
        heapq.heappush(self._idle_checks, (at, next(self._idle_order), topic))

    def _check_idle(self) -> None:
        """Tick each due topic whose `last_active` is `topic_idle_seconds` old; look again
        at the others when theirs will be. A topic with a full mailbox is not idle."""
        now = trio.current_time()
        idle = self._settings.topic_idle_seconds
        checks = self._idle_checks
        while checks and checks[0][0] <= now:
            _, _, topic = heapq.heappop(checks)
            if topic.retired or self._topics.get(topic.name) is not topic:
                continue  # forgotten: nothing more to check
            due = topic.last_active + idle
            if due <= now:
                try:
                    topic.address.tell_nowait(IdleTick())
                except (MailboxFull, ActorStopped):
                    pass
                due = now + idle
            self._schedule_idle_check(due, topic)

    async def _handle(self, request: DirectoryRequest) -> None:
        match request:
            case Lookup(name, create, reply):
                reply.send(await self._lookup(name, create))
            case ListTopics(prefix, reply):
                reply.send(
                    [t for n, t in sorted(self._topics.items())
                     if n.startswith(prefix) and not t.retired]
                )
            case SubscribePattern(subscriber, pattern, ack, reply):
                reply.send(self._subscribe_pattern(subscriber, pattern, ack))
            case UnsubscribePattern(subscriber_id, pattern, reply):
                reply.send(self._unsubscribe_pattern(subscriber_id, pattern))
            case ForgetPatterns(subscriber_id, patterns):
                for pattern in patterns:
                    for topic in self._unsubscribe_pattern(subscriber_id, pattern) or []:
                        try:
                            topic.address.tell_nowait(Unsubscribe(subscriber_id, pattern, None))
                        except (MailboxFull, ActorStopped):
                            pass  # the topic forgets a closed subscriber by itself
            case Retired(topic):
                if self._topics.get(topic.name) is topic:
                    del self._topics[topic.name]

    async def _lookup(self, name: str, create: bool) -> TopicActor | None:
        topic = self._topics.get(name)
        if topic is not None and not topic.retired:
            return topic
        if topic is not None:
            del self._topics[name]
        if not create:
            return None
        if len(self._topics) >= self._settings.max_topics:
            raise TooManyTopics(f"the broker holds {len(self._topics)} topics, its limit")
        if self._memory.overloaded:  # a topic costs memory too (`TOPIC_BYTES`)
            self._memory.refusing()
            raise Overloaded(
                f"the broker holds its memory budget ({self._memory.budget} bytes, "
                "max_memory): no new topic now; retry later"
            )
        topic = TopicActor(
            name,
            self._settings.for_topic(name),
            self._counters,
            self._settings.topic_idle_seconds,
            self._on_retired,
        )
        for pattern, subscribers in self._patterns.match(name):
            for subscriber in subscribers.values():
                if not subscriber.outbox.closed:  # closed: its ForgetPatterns is on its way
                    topic.attach(subscriber, pattern)
        # Not waited for: its address takes requests before it runs (a publish that comes
        # first is queued, not taken at once; ~0.6 KB less per topic than `start`).
        self._supervisor.start_soon(name, topic.run, policy=TOPIC_RESTART_POLICY)
        self._topics[name] = topic
        if self._settings.topic_idle_seconds > 0:
            self._schedule_idle_check(topic.last_active + self._settings.topic_idle_seconds, topic)
        self._counters.topics_created += 1
        return topic

    def _on_retired(self, topic: TopicActor) -> None:
        # Best effort: a lookup also notices `topic.retired`, so a full mailbox loses nothing.
        try:
            self.address.tell_nowait(Retired(topic))
        except (MailboxFull, ActorStopped):
            pass

    def on_topic_crash(self, name: str, error: BaseException, decision: Decision) -> None:
        """Supervisor callback: count the crash; a topic that is stopped fails its subscribers."""
        self._counters.topic_crashes += 1
        if decision is Decision.RESTART:
            self._counters.topic_restarts += 1
            return
        topic = self._topics.get(name)
        if topic is not None:
            topic.fail(CloseReason.TOPIC_FAILED)

    def _subscribe_pattern(
        self,
        subscriber: Subscriber,
        pattern: str,
        ack: Callable[[SubscribeResult], ControlFrame] | None,
    ) -> list[TopicActor]:
        """Record a wildcard subscription; return the existing topics it matches.

        Topics created from now on attach the subscriber themselves (from the trie). The
        caller tells the returned topics: the directory never waits on a topic, so one
        stalled topic (full mailbox) cannot freeze every lookup.
        """
        holders = self._patterns.get(pattern)
        if holders is None:
            holders = {}
            self._patterns.insert(pattern, holders)
        if subscriber.id in holders:
            raise AlreadySubscribed(f"already subscribed to {pattern!r}")
        holders[subscriber.id] = subscriber
        if ack is not None:
            # Queued before any topic can forward to it. If it does not fit, the first
            # forwarded message finds the same full outbox and the topic's policy applies.
            subscriber.outbox.offer_control(ack(SubscribeResult(0, 0, replayed=0)))
        return self._matching(pattern)

    def _unsubscribe_pattern(self, subscriber_id: int, pattern: str) -> list[TopicActor] | None:
        """Forget a wildcard subscription; the topics it matches (None if there was none)."""
        holders = self._patterns.get(pattern)
        if holders is None or subscriber_id not in holders:
            return None
        del holders[subscriber_id]
        if not holders:
            self._patterns.remove(pattern)
        return self._matching(pattern)

    def _matching(self, pattern: str) -> list[TopicActor]:
        return [
            topic for name, topic in self._topics.items()
            if not topic.retired and pattern_matches(pattern, name)
        ]
