"""`OutboxPolicies`: what an `Outbox` does for its topic's slow-consumer policy.

The base class of `Outbox` (`outbox.py`), for the paths a topic takes only after `offer`
answered FULL, never on fan-out's hot path:

- `disconnect`: `offer_in_grace` queues past the outbox's bounds, up to `GRACE_FACTOR` x
  both, for as long as the outbox has been full for less than the topic's grace period; a
  write that completes a queued item ends that period (`Outbox` resets `_over_since`).
- `drop-oldest`: `drop_oldest` drops the oldest queued messages of the offered message's
  topic (or skips the message) and records a pending `Gap` per topic; `_report_gaps`
  places each gap's frame just before its topic's next queued message, at the next
  gathered write.
- `block`: `wait_room` waits until an offer would not be FULL.

The outbox's state is declared (and slotted) here, for both halves; `Outbox.__init__`
sets it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .messages import Message
from .outbox_items import ControlFrame, Gap, Item, Offer

if TYPE_CHECKING:
    from trio.lowlevel import ParkingLot

    from .metrics import BrokerCounters

# How far past its bounds an outbox may grow during a slow consumer's grace period.
GRACE_FACTOR = 2


class OutboxPolicies:
    """See the module docstring."""

    __slots__ = (
        "_begun",
        "_capacity",
        "_closed",
        "_counted",
        "_counters",
        "_free",
        "_gaps",
        "_gather",
        "_items",
        "_max_bytes",
        "_over_since",
        "_render",
        "_render_gap",
        "_room",
        "_wake_writer",
        "_wanted",
        "_write_many_now",
        "_write_now",
        "_writer",
        "_writing",
    )

    # `Outbox`'s state, all of it (slotted here so that both halves may assign it; set in
    # `Outbox.__init__`, see there).
    _begun: bool
    _capacity: int
    _closed: bool
    _counted: int
    _counters: BrokerCounters
    _free: int
    _gaps: dict[str, Gap]
    _gather: int
    _items: deque[Item]
    _max_bytes: int
    _over_since: float | None
    _render: Callable[[Message], bytes]
    _render_gap: Callable[[Gap], bytes]
    _room: ParkingLot | None
    _wake_writer: Callable[[], None] | None
    _wanted: int
    _write_many_now: Callable[[Sequence[bytes | memoryview]], int] | None
    _write_now: Callable[[bytes | memoryview], int] | None
    _writer: ParkingLot | None
    _writing: bool

    if TYPE_CHECKING:  # the helpers these paths share with `Outbox`

        def _settle(self) -> None: ...
        def _wake(self) -> None: ...
        def _room_lot(self) -> ParkingLot: ...

    def offer_in_grace(self, message: Message, now: float, grace: float) -> Offer:
        """After `offer` answered FULL, under `disconnect`: queue past the bounds while the
        grace period lasts (see the module docstring). FULL means evict now."""
        if self._closed:
            return Offer.CLOSED
        if self._over_since is None:
            self._over_since = now
        elif now - self._over_since > grace:
            return Offer.FULL
        self._settle()
        size = len(message.rendered(self._render))
        if (
            len(self._items) >= self._capacity * GRACE_FACTOR
            or size > self._free + self._max_bytes * (GRACE_FACTOR - 1)
        ):
            return Offer.FULL
        self._items.append(message)
        self._counted += 1
        self._free -= size
        self._wake()
        return Offer.ACCEPTED

    def drop_oldest(self, message: Message) -> None:
        """Make room for `message` by dropping the oldest queued messages of its topic
        (as many as it takes to fit `outbox_size` and `outbox_bytes`), or skip `message`
        itself if that is not enough; either way a `Gap` is reported before the topic's
        next message. Only this topic's frames are touched: other topics' promises hold.
        Called by a topic whose `offer` answered FULL (so this is the slow path)."""
        self._settle()
        items = self._items
        render = self._render
        size = len(message.rendered(render))
        topic = message.topic
        index = 0
        while len(items) >= self._capacity or (size > self._free and items):
            while index < len(items):
                item = items[index]
                if type(item) is Message and item.topic == topic:
                    oldest = item
                    break
                index += 1
            else:
                self._dropped(message)  # nothing more of this topic to drop: skip it
                self._counted = len(items)
                self._wake()
                return
            del items[index]
            self._free += len(oldest.rendered(render))
            self._dropped(oldest)
        items.append(message)
        self._counted = len(items)
        self._free -= size
        self._wake()

    def _dropped(self, message: Message) -> None:
        """Count `message` as dropped, in its topic's pending `Gap`."""
        gap = self._gaps.get(message.topic)
        if gap is None:
            self._gaps[message.topic] = Gap(message.topic, 1, message.offset, message.offset)
        else:
            gap.skipped += 1
            gap.first = min(gap.first, message.offset)
            gap.last = max(gap.last, message.offset)
        self._counters.dropped += 1

    async def wait_room(self) -> None:
        """Wait until an offer would not be FULL (or the outbox is closed): `block` policy.
        Room in bytes means room for the frame last refused as FULL."""
        while True:
            self._settle()
            if self._closed or not self._items or (
                len(self._items) < self._capacity and self._wanted <= self._free
            ):
                return
            await self._room_lot().park()


    def _report_gaps(self) -> None:
        """Put each pending `Gap`'s frame just before the next queued message of its
        topic (a gap whose topic has none queued waits for the next one)."""
        gaps = self._gaps
        items = self._items
        index = 0
        while gaps and index < len(items):
            item = items[index]
            if type(item) is Message and item.topic in gaps:
                frame = self._render_gap(gaps.pop(item.topic))
                items.insert(index, ControlFrame(frame))
                self._free -= len(frame)
                index += 1
            index += 1



__all__ = ["GRACE_FACTOR", "OutboxPolicies"]
