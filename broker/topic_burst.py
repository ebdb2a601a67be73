"""`TopicBurst`: a topic's burst, the messages it forwards in one turn and writes at once.

Messages a topic finds waiting together are only queued in each subscriber's outbox
(`Outbox.offer(lone=False)`) and kept in `_burst`; at the end of the turn `_flush` has every
outbox write them at once (one write per subscriber, the frames joined once per wire format:
`Burst`). Adaptive batching (`TopicSettings.flush_delay`): when the topic's last write was
less than `flush_delay` ago, `TopicActor._forward` (which decides per message, inline, with
no call here) opens a held burst until `_hold_until`, and `_held_request` waits until then
for more requests to join it. `_next_in_burst` lets publishers answered this turn run first
when the burst goes to many subscribers.

The base class of `TopicActor` (`topic.py`), whose mailbox and subscriptions it uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

import trio
from trio.lowlevel import checkpoint

from .messages import Message, TopicRequest
from .outbox_items import Burst

if TYPE_CHECKING:
    from actors import Mailbox

    from .connection import Subscriber


class _Subscribed(Protocol):
    """What a burst needs of a topic's subscription (`topic._Subscription`)."""

    @property
    def subscriber(self) -> Subscriber: ...


class TopicBurst:
    """See the module docstring."""

    # `TopicActor`'s, used here.
    _mailbox: Mailbox[TopicRequest]
    _subscriptions: Mapping[int, _Subscribed]
    _holding: bool

    def __init__(self) -> None:
        # Messages forwarded this turn as a burst (lone=False): outboxes hold them until
        # the end of the turn, when `_flush` has each write them at once.
        self._burst: list[Message] = []
        # Adaptive batching (`TopicSettings.flush_delay`): when the last write was recent,
        # a burst is held open until `_hold_until` for more messages to join it.
        self._last_write = -float("inf")
        self._hold_until: float | None = None
        # A publisher was answered this turn and its message is in the burst (`_next_in_burst`).
        self._answered = False

    def _flush(self) -> None:
        """End of a burst: every subscriber's outbox writes what it holds (one write each,
        the burst's frames joined once per wire format)."""
        self._hold_until = None
        self._answered = False
        if self._burst:
            burst = Burst(self._burst)
            self._burst = []
            for subscription in self._subscriptions.values():
                subscription.subscriber.outbox.flush(burst)
            self._last_write = trio.current_time()

    async def _next_in_burst(self) -> TopicRequest | None:
        """With a burst to write and nothing queued: a request that joins it, or None
        (time to write). Publishers answered this turn with a message for at least
        `ANSWER_FIRST_SUBSCRIBERS` run first (one scheduler round), so their answers
        usually go out before the burst's writes, and their next publish overlaps with
        those writes instead of waiting for them (`python -m benchmarks fanout
        sustained`)."""
        request = await self._held_request()
        if request is None and self._answered:
            self._answered = False
            await checkpoint()
            try:
                request = self._mailbox.receive_nowait()
            except trio.WouldBlock:
                request = None
        return request

    async def _held_request(self) -> TopicRequest | None:
        """A held burst (see `_forward`) waits for the next request until its deadline;
        None when the deadline passes first (time to write)."""
        if self._hold_until is None:
            return None
        with trio.move_on_at(self._hold_until):
            self._holding = True
            try:
                return await self._mailbox.receive()
            finally:
                self._holding = False
        return None


__all__ = ["TopicBurst"]
