"""`TopicActor`: one per topic. Assigns offsets, retains history, forwards to subscribers.

The actor's state (offsets, history, subscribers, mailbox) lives on the object, not in the
task, so a supervisor restarting `run` after a crash keeps all of it: subscribers stay
subscribed, history and offsets continue. Only the request that crashed is lost, and its
asker is answered with `Unavailable`.

Forwarding never waits: a frame goes into each subscriber's outbox with `Outbox.offer`, and
a full outbox is handed to the topic's `SlowConsumerPolicy`. Messages forwarded in one turn
are written as one burst; the burst's state, its end-of-turn write and the held burst of
adaptive batching (`flush_delay`) are the base class `TopicBurst` (`topic_burst.py`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import trio

from actors import Address, Mailbox

from .connection import Subscriber, SubscriberInfo
from .errors import Unavailable
from .history import History
from .messages import (
    Crash,
    Flush,
    HistoryPage,
    IdleTick,
    Message,
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
from .metrics import BrokerCounters
from .outbox_items import ControlFrame, Offer
from .policies import CloseReason, SlowConsumerPolicy
from .settings import TopicSettings
from .topic_burst import TopicBurst

log = logging.getLogger("broker.topic")

ACCEPTED, FULL = Offer.ACCEPTED, Offer.FULL

# Requests handled per scheduling turn before the topic yields to other tasks: large
# enough to batch a burst, small enough (~1 ms of work) to keep other topics responsive.
TURN_REQUESTS = 256
# From this many subscribers, a publisher's answer goes out before the topic writes the
# message to them (`TopicBurst._next_in_burst`): the writes cost more than the scheduler round that
# lets the publisher go first. Below it, the frames are written at once: a lone message
# to a few subscribers keeps its latency (`python -m benchmarks e2e`: 20 subscribers).
ANSWER_FIRST_SUBSCRIBERS = 64


def _payload_bytes(request: Publish | PublishBatch) -> int:
    """Payload bytes a publish request holds while it waits in a mailbox."""
    if type(request) is Publish:
        return len(request.payload.data)
    return sum(len(payload.data) for payload in request.payloads)


class TopicRetired(Exception):
    """Raised to askers of a topic that has just retired; they look the topic up again."""


@dataclass(frozen=True, slots=True)
class TopicStatistics:
    """One topic's figures, as listings and metrics show them."""

    name: str
    subscribers: int  # live ones
    closed_subscribers: int  # of closed connections, not yet forgotten
    next_offset: int
    first_retained: int
    retained_messages: int
    retained_bytes: int
    mailbox_depth: int
    mailbox_capacity: int
    deepest_outbox: int  # most items queued for one of its live subscribers


class _Subscription:
    """A subscriber on this topic and the patterns (exact or wildcard) that brought it."""

    __slots__ = ("patterns", "subscriber")

    def __init__(self, subscriber: Subscriber, pattern: str) -> None:
        self.subscriber = subscriber
        self.patterns = {pattern}


class TopicActor(TopicBurst):
    """See the module docstring. Start `run` under a supervisor; reach it via `address`."""

    def __init__(
        self,
        name: str,
        settings: TopicSettings,
        counters: BrokerCounters,
        idle_seconds: float,
        on_retired: Callable[[TopicActor], None],
    ) -> None:
        self.name = name
        self.settings = settings
        self._counters = counters
        self._idle_seconds = idle_seconds
        self._on_retired = on_retired
        self._mailbox: Mailbox[TopicRequest] = Mailbox(settings.mailbox_size)
        self.address: Address[TopicRequest] = self._mailbox.address
        self._history = History(settings.history_messages, settings.history_bytes,
                                counters=counters)
        self._subscriptions: dict[int, _Subscription] = {}
        # `block` policy: a message and the subscribers whose full outbox it waits for.
        self._blocked: tuple[Message, list[Subscriber]] | None = None
        # A batch's messages still to forward while `_blocked` waits (block policy): made
        # per batch and dropped once forwarded (a deque costs 624 bytes; most topics idle).
        self._backlog: deque[Message] | None = None
        super().__init__()  # the burst's state (`TopicBurst`)
        self.retired = False
        # Parked at the top of `run`, waiting for a request, nothing held; or parked waiting
        # for more to join a held burst (`publish_now`).
        self._idle = False
        self._holding = False
        # When the last turn with work other than an `IdleTick` ended (trio time). Written
        # only by this actor; the directory reads it to know when to send the next tick, so
        # waiting for a request costs no per-wait timeout here.
        self.last_active = trio.current_time()

    # -- the actor loop ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[Address[TopicRequest]]) -> None:
        """Serve requests until retired. Restartable: state is kept across calls.

        Everything already queued is handled before yielding (up to `TURN_REQUESTS`), so
        messages that arrive together are forwarded together as a burst, and at the end of
        the turn each subscriber's outbox writes the burst at once, one write each, not one
        per frame (guarded by `python -m benchmarks fanout` and `benchmarks.forward_cpu`).
        """
        task_status.started(self.address)
        receive_nowait = self._mailbox.receive_nowait
        try:
            while not self.retired:
                self._idle = True
                request: TopicRequest | None = await self._mailbox.receive()
                self._idle = False
                handled = 0
                active = type(request) is not IdleTick
                while request is not None:
                    # `type(request) is X` written out in each test (not kept in a local)
                    # lets the type checker narrow; measured no slower for a `Publish`
                    # (CPython specializes `type(x)`; `benchmarks.forward_cpu` guards it).
                    if type(request) is Publish or type(request) is PublishBatch:
                        self._counters.mailbox_bytes -= _payload_bytes(request)
                    if type(request) is Pause:
                        self._flush()
                        await request.resume.wait()
                    else:
                        self._handle_or_fail(request)
                        while self._blocked is not None:
                            self._flush()
                            await self._deliver_blocked()
                    handled += 1
                    if handled >= TURN_REQUESTS or self.retired:
                        break
                    try:
                        request = receive_nowait()
                    except trio.WouldBlock:
                        request = await self._next_in_burst() if self._burst else None
                    else:
                        active = True
                self._flush()  # the turn is over: each outbox writes its burst at once
                if active:
                    self.last_active = trio.current_time()
        finally:
            self._idle = self._holding = False
            self._flush()  # even after a crash, nothing forwarded is left unsent

    def publish_now(self, request: Publish) -> bool:
        """Handle `request` at once on the caller's task if this topic is idle: parked
        waiting for a request with nothing queued or handed to it, either between turns
        or holding a burst open for more (the message joins it, and the task writes it
        when the hold ends), and a publish it would answer and forward in one step (fewer
        than `ANSWER_FIRST_SUBSCRIBERS` subscribers, not the `block` policy, and between
        turns not one that would open a held burst). Returns False, with nothing done,
        otherwise: then tell it.

        The step is the one this actor's task would run next, with the same state, and it
        never awaits, so it cannot interleave with the task (trio runs one task at a time);
        offsets and order are as if told. It saves a task switch per publish: the
        publisher's answer goes out before its task waits again (`python -m benchmarks
        ws-publish single e2e`), as a lone frame is written by the topic (`Outbox.offer`).
        A step that raises answers `Unavailable` and is reported to the supervisor on the
        actor's own task (a `Crash`), as a crash there would be."""
        idle, holding = self._idle, self._holding
        if not (idle or holding) or self.retired or not self._mailbox.receiver_waiting:
            return False
        subscribers = len(self._subscriptions)
        if subscribers:
            settings = self.settings
            if (subscribers >= ANSWER_FIRST_SUBSCRIBERS
                    or settings.slow_consumer_policy is SlowConsumerPolicy.BLOCK):
                return False
            delay = settings.flush_delay
            if idle and delay and trio.current_time() - self._last_write < delay:
                return False  # `_forward` would open a held burst: the task writes it
        self._idle = self._holding = False
        try:
            self._handle_or_fail(request)
        except Exception as exc:
            log.exception("topic %s: publish failed", self.name)
            self.address.tell_nowait(Crash(f"publish failed: {exc!r}"))
        finally:
            self._idle, self._holding = idle, holding
        self.last_active = trio.current_time()
        return True


    def _handle_or_fail(self, request: TopicRequest) -> None:
        try:
            self._handle(request)
        except Exception as exc:
            reply = getattr(request, "reply", None)
            if reply is not None:
                reply.fail(Unavailable(f"topic {self.name!r} failed: {exc}"))
            raise

    def _idle_tick(self) -> None:
        """The directory thinks we are idle; check (a request may have come since), then
        forget closed subscribers and retire if nobody is left."""
        if trio.current_time() - self.last_active < self._idle_seconds:
            return
        self._forget_closed()
        self._retire_if_idle()

    def _forget_closed(self) -> None:
        """Drop subscribers whose connection has closed but whose unsubscribe never came
        (their teardown found our mailbox full): no traffic means no forward to notice."""
        for subscriber_id in [
            i for i, s in self._subscriptions.items() if s.subscriber.outbox.closed
        ]:
            del self._subscriptions[subscriber_id]

    def _retire_if_idle(self) -> None:
        if self._subscriptions or self._mailbox.statistics().depth:
            return
        # Close first, then tell the directory: from here on any put to our address raises
        # ActorStopped and the sender looks the topic up again, finding a fresh one.
        self.retired = True
        self._mailbox.close()
        self._counters.topics_reaped += 1
        self._release_history()
        self._on_retired(self)

    def _release_history(self) -> None:
        """Retired: let the history go now. The directory's idle-check heap may hold this
        object for up to `topic_idle_seconds` more (`History.clear` uncounts it)."""
        self._history.clear()

    def _handle(self, request: TopicRequest) -> None:
        match request:
            case Publish(payload, reply):
                if reply.cancelled:
                    return  # the publisher timed out and was told 503: not accepted
                message = self._accept(payload, time.time())
                reply.send(message.offset)  # before forwarding: accepted even if that fails
                if len(self._subscriptions) >= ANSWER_FIRST_SUBSCRIBERS:
                    self._answered = True
                    self._forward(message, more=True)  # written after the answer
                elif self._subscriptions:
                    self._forward(message)  # a few writes: at once (light-load latency)
            case PublishBatch(payloads, reply):
                if reply.cancelled:
                    return
                now = time.time()
                messages = [self._accept(payload, now) for payload in payloads]
                reply.send(messages[0].offset)
                if self._subscriptions:
                    self._answered = len(self._subscriptions) >= ANSWER_FIRST_SUBSCRIBERS
                    self._backlog = deque(messages)  # the last batch's is done: see run
                    self._forward_backlog()
            case Subscribe(subscriber, pattern, start, ack, reply):
                result = self._subscribe(subscriber, pattern, start, ack)
                if reply is not None:
                    reply.send(result)
            case Unsubscribe(subscriber_id, pattern, reply):
                removed = self._unsubscribe(subscriber_id, pattern)
                if reply is not None:
                    reply.send(removed)
            case ReadHistory(start, limit, reply):
                reply.send(
                    HistoryPage(
                        tuple(self._history.read(start, limit)),
                        self._history.first_offset,
                        self._history.next_offset,
                    )
                )
            case IdleTick():
                self._idle_tick()
            case Flush(reply):
                self._flush()  # the asker expects everything before it written, not held
                reply.send(None)
            case Crash(error):
                raise RuntimeError(error)

    # -- subscribers ----------------------------------------------------------------------

    def _accept(self, payload: Payload, timestamp: float) -> Message:
        """Give `payload` the next offset and retain it (the history counts its bytes in
        `retained_bytes`, for the memory budget)."""
        history = self._history
        message = Message(
            self.name, history.next_offset, payload.data, payload.content_type,
            payload.kind, timestamp, payload.rendering,
        )
        history.append(message)
        self._counters.published += 1
        return message

    def _forward_backlog(self) -> None:
        """Forward a batch's messages in order, as one burst; stop at one that leaves
        subscribers `_blocked` (the run loop waits for them, then forwards the rest)."""
        backlog = self._backlog
        if backlog is None:
            return
        while backlog and self._blocked is None:
            self._forward(backlog.popleft(), more=True)
        if not backlog:
            self._backlog = None

    def _forward(self, message: Message, *, more: bool = False) -> None:
        """Offer the message to every subscriber's outbox, never waiting here.

        A full outbox gets the topic's policy: disconnect evicts, drop-oldest drops, block
        leaves the subscriber in `_blocked` for the run loop to wait on.
        """
        forwarded = 0
        gone: list[int] = []
        blocked: list[Subscriber] = []
        # More right behind (or a burst already open): queue, and flush at the turn's end.
        # Under sustained traffic, hold the burst open for `flush_delay` (adaptive
        # batching: one write per subscriber for several messages, not one each).
        if self._burst:
            lone = False
        else:
            delay = self.settings.flush_delay
            now = trio.current_time() if delay else 0.0
            if delay and now - self._last_write < delay:
                self._hold_until = now + delay
                lone = False
            else:
                lone = not more and not self._mailbox.depth
        if not lone:
            self._burst.append(message)
        for subscriber_id, subscription in self._subscriptions.items():
            subscriber = subscription.subscriber
            outcome = subscriber.outbox.offer(message, lone)
            if outcome is ACCEPTED:
                forwarded += 1
            elif outcome is FULL:
                policy = self.settings.slow_consumer_policy
                if policy is SlowConsumerPolicy.DROP_OLDEST:
                    subscriber.outbox.drop_oldest(message)
                    forwarded += 1
                elif policy is SlowConsumerPolicy.BLOCK:
                    blocked.append(subscriber)
                elif subscriber.outbox.offer_in_grace(
                    message, trio.current_time(), self.settings.slow_consumer_grace
                ) is ACCEPTED:
                    forwarded += 1
                else:
                    self._evict(subscriber)
                    gone.append(subscriber_id)
            else:
                gone.append(subscriber_id)  # the connection has gone; forget it
        if lone and self.settings.flush_delay:
            self._last_write = trio.current_time()  # when the writes ended, as in _flush
        self._counters.forwarded += forwarded
        for subscriber_id in gone:
            del self._subscriptions[subscriber_id]
        if blocked:
            self._blocked = (message, blocked)

    async def _deliver_blocked(self) -> None:
        """`block` policy: wait for room in each full outbox, in turn, then deliver."""
        assert self._blocked is not None
        message, waiting = self._blocked
        self._blocked = None
        for subscriber in waiting:
            self._counters.slow_consumer_waits += 1
            outcome = FULL
            while outcome is FULL:
                await subscriber.outbox.wait_room()
                outcome = subscriber.outbox.offer(message)
            if outcome is ACCEPTED:
                self._counters.forwarded += 1
            else:
                self._subscriptions.pop(subscriber.id, None)
        self._forward_backlog()  # the rest of a batch, if it was blocked midway

    def _evict(self, subscriber: Subscriber) -> None:
        self._counters.slow_consumer_disconnects += 1
        log.info(
            "topic %s: closing slow consumer %d (%s)", self.name, subscriber.id, subscriber.client
        )
        subscriber.evict(CloseReason.SLOW_CONSUMER)

    def _subscribe(
        self,
        subscriber: Subscriber,
        pattern: str,
        start: int | str,
        ack: Callable[[SubscribeResult], ControlFrame] | None,
    ) -> SubscribeResult:
        """Add the subscriber; queue `ack`, then any replayed history, then live messages.

        All in this one step of the actor, so there is no gap and no duplicate at the seam
        between history and live messages.
        """
        history = self._history
        existing = self._subscriptions.get(subscriber.id)
        if existing is not None:
            existing.patterns.add(pattern)
            result = SubscribeResult(history.next_offset, history.next_offset, replayed=0)
            self._queue_ack(subscriber, ack, result)
            return result
        if start == "latest":
            replay: list[Message] = []
        elif start == "earliest":
            replay = history.read(history.first_offset)
        else:
            assert isinstance(start, int)
            replay = history.read(start)
        first = replay[0].offset if replay else history.next_offset
        result = SubscribeResult(first, history.next_offset, replayed=len(replay))
        if not self._queue_ack(subscriber, ack, result):
            return result
        # A replay must fit the outbox: past it, drop-oldest drops as usual and the other
        # policies close the subscriber (a replay cannot wait: the topic would stall while
        # the client has not even been told where its stream starts).
        drop = self.settings.slow_consumer_policy is SlowConsumerPolicy.DROP_OLDEST
        for message in replay:
            outcome = subscriber.outbox.offer(message, lone=False)
            if outcome is FULL and drop:
                subscriber.outbox.drop_oldest(message)
            elif outcome is not ACCEPTED:
                if outcome is FULL:
                    self._evict(subscriber)
                return SubscribeResult(first, history.next_offset, replayed=0)
        subscriber.outbox.flush()
        self._counters.forwarded += len(replay)
        self._subscriptions[subscriber.id] = _Subscription(subscriber, pattern)
        return result

    def _queue_ack(
        self,
        subscriber: Subscriber,
        ack: Callable[[SubscribeResult], ControlFrame] | None,
        result: SubscribeResult,
    ) -> bool:
        if ack is None:
            return True
        outcome = subscriber.outbox.offer_control(ack(result))
        if outcome is FULL:
            self._evict(subscriber)
        return outcome is ACCEPTED

    def _unsubscribe(self, subscriber_id: int, pattern: str) -> bool:
        subscription = self._subscriptions.get(subscriber_id)
        if subscription is None or pattern not in subscription.patterns:
            return False
        subscription.patterns.discard(pattern)
        if not subscription.patterns:
            del self._subscriptions[subscriber_id]
        return True

    def attach(self, subscriber: Subscriber, pattern: str) -> None:
        """Add a subscriber before the actor starts (wildcard subscribers of a new topic)."""
        subscription = self._subscriptions.get(subscriber.id)
        if subscription is None:
            self._subscriptions[subscriber.id] = _Subscription(subscriber, pattern)
        else:
            subscription.patterns.add(pattern)

    def fail(self, reason: CloseReason) -> None:
        """Give up after the supervisor stopped this topic: close subscribers, retire.

        Called when the actor's task is no longer running, so nothing else touches state.
        """
        for subscription in self._subscriptions.values():
            subscription.subscriber.evict(reason)
        self._subscriptions.clear()
        self.retired = True
        counters = self._counters
        while True:  # publishes still queued are dropped with the mailbox: uncount them
            try:
                request = self._mailbox.receive_nowait()
            except trio.WouldBlock:
                break
            if type(request) is Publish or type(request) is PublishBatch:
                counters.mailbox_bytes -= _payload_bytes(request)
        self._mailbox.close()
        self._release_history()
        self._on_retired(self)

    # -- inspection (read-only, safe from any task) ----------------------------------------

    def subscribers(self) -> list[SubscriberInfo]:
        """Live subscribers: a closed connection not yet forgotten is not listed."""
        return [
            s.subscriber.info() for s in self._subscriptions.values()
            if not s.subscriber.outbox.closed
        ]

    def statistics(self) -> TopicStatistics:
        mailbox = self._mailbox.statistics()
        closed, deepest = 0, 0
        for subscription in self._subscriptions.values():
            outbox = subscription.subscriber.outbox
            if outbox.closed:
                closed += 1
            elif len(outbox) > deepest:
                deepest = len(outbox)
        return TopicStatistics(
            name=self.name,
            subscribers=len(self._subscriptions) - closed,
            closed_subscribers=closed,
            next_offset=self._history.next_offset,
            first_retained=self._history.first_offset,
            retained_messages=len(self._history),
            retained_bytes=self._history.retained_bytes,
            mailbox_depth=mailbox.depth,
            mailbox_capacity=mailbox.capacity,
            deepest_outbox=deepest,
        )
