"""`Outbox`: a connection's bounded queue of frames, filled by topics, emptied by its writer.

Topics call `offer` synchronously and never wait; it answers `ACCEPTED`, `FULL` (the
topic's slow-consumer policy decides what that means) or `CLOSED`. The connection's writer
calls `take` to get everything queued as one batch and writes it with one `send_all`. The
writer is either a task parked in `take`, or (`wake_writer`) a connection's only task,
which waits on its socket and is called back whenever the writer has work.

Write now, without a task switch: `flush` writes everything queued straight to the
non-blocking socket through `write_now` (as asyncio transports do) when no write is in
progress, and leaves only what the kernel did not take for the connection's writer task.
A lone message (the topic has nothing more right behind it) is flushed by `offer` itself;
a burst is only queued (`lone=False`) and the topic flushes each outbox once at the end of
its turn, so a burst goes out as one write per subscriber and the writer tasks are woken
only for what the kernel could not take at once. An outbox that holds exactly the burst
writes the `Burst`'s frames, joined once per wire format for all subscribers. Order is
kept: a flush writes the queue from its front, and never while the writer holds a batch.
(Guarded by `python -m benchmarks.quick`, scenarios fanout and fanout-bulk.)

Message frames are queued as `Message` objects, not bytes, so a policy knows each item's
topic and offset (drop-oldest reports gaps per topic); the frame is rendered once per
message per wire format and cached on the message.

Grace (`disconnect` policy): past `capacity`, `offer_in_grace` still queues, up to
`GRACE_FACTOR` x capacity, for as long as the outbox has been over capacity for less than
the topic's grace period; a writer taking a batch ends that period. So a subscriber that
pauses briefly is kept, one that has stopped is closed, and memory stays bounded.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

import trio
from trio.lowlevel import ParkingLot

from .messages import Message
from .metrics import BrokerCounters

# How far past its capacity an outbox may grow during a slow consumer's grace period.
GRACE_FACTOR = 2
# `queued_bytes` bound of an outbox made without one (tests); connections pass
# `Settings.outbox_bytes`.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024
# Most bytes one flush joins and writes; past that, the writer task sends the rest in
# bounded batches (a large replay must not build one huge buffer here).
FLUSH_MAX_BYTES = 256 * 1024


class Offer(enum.Enum):
    """What happened to a frame offered to an outbox."""

    ACCEPTED = "accepted"
    FULL = "full"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ControlFrame:
    """An outbox item that is not a message (a reply such as `ok`): written, not counted."""

    data: bytes


@dataclass(slots=True)
class Gap:
    """Messages of `topic` dropped for this subscriber (drop-oldest policy), reported
    in-band just before the topic's next message."""

    topic: str
    skipped: int
    first: int
    last: int


class Burst:
    """Messages a topic forwarded in one turn, and their frames joined once per wire
    format (every subscriber whose outbox holds just these writes the same bytes)."""

    __slots__ = ("_joined", "first", "last", "messages")

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.first = messages[0]
        self.last = messages[-1]
        self._joined: dict[object, bytes] = {}

    def joined(self, render: Callable[[Message], bytes]) -> bytes:
        data = self._joined.get(render)
        if data is None:
            data = self._joined[render] = b"".join(m.rendered(render) for m in self.messages)
        return data


def _size(item: object, render: Callable[[Message], bytes]) -> int:
    """Bytes an outbox item holds for its connection (see `Outbox.queued_bytes`); for
    the slow paths (the message paths count inline)."""
    kind = type(item)
    if kind is Message:
        return len(item.rendered(render))  # type: ignore[attr-defined]
    if kind is ControlFrame:
        return len(item.data)  # type: ignore[attr-defined]
    if kind is bytes or kind is memoryview:
        return len(item)  # type: ignore[arg-type]
    return 0


class Outbox:
    """See the module docstring. Owned by one connection; topics hold a reference."""

    __slots__ = (
        "_bytes",
        "_capacity",
        "_closed",
        "_counters",
        "_gaps",
        "_items",
        "_max_bytes",
        "_over_since",
        "_render",
        "_room",
        "_taken_bytes",
        "_wake_writer",
        "_write_now",
        "_writer",
        "_writing",
    )

    def __init__(
        self,
        capacity: int,
        render: Callable[[Message], bytes],
        counters: BrokerCounters,
        write_now: Callable[[bytes], int] | None = None,
        wake_writer: Callable[[], None] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        """`capacity` (items) and `max_bytes` (`queued_bytes`) bound the queue: an offer
        past either is FULL (an empty outbox takes any one frame, so no message is
        undeliverable)."""
        if capacity < 1 or max_bytes < 1:
            raise ValueError("an outbox needs a capacity of at least 1 item and 1 byte")
        self._capacity = capacity
        self._max_bytes = max_bytes
        # `queued_bytes`: kept up to date by every change to `_items` (O(1) each).
        self._bytes = 0
        self._taken_bytes = 0  # of the batch the writer took and has not written yet
        self._render = render
        self._counters = counters
        self._write_now = write_now
        # For a connection whose writer does not park in `take` (it waits on its socket):
        # called whenever the writer has something to do.
        self._wake_writer = wake_writer
        # Message (a frame to render), bytes (the unwritten rest of a fast-path frame),
        # or any other object the connection queues (replies, its close marker).
        self._items: deque[object] = deque()
        self._closed = False
        self._writing = False
        self._gaps: dict[str, Gap] = {}
        # When the outbox went over capacity with no batch taken since (grace period).
        self._over_since: float | None = None
        # Made on first use: most connections never wait on either, and with thousands of
        # connections every object counts (CPython's full collections walk them all).
        self._writer: ParkingLot | None = None
        self._room: ParkingLot | None = None

    # -- the topics' side: synchronous, never waits ----------------------------------------

    def offer(self, message: Message, lone: bool = True) -> Offer:
        """Queue the frame of `message` and, if `lone`, `flush`; never waits.

        `lone=False` says more messages follow at once (a burst): the caller must `flush`
        when the burst is over, so it goes out as one write instead of one per frame.
        """
        if self._closed:
            return Offer.CLOSED
        items = self._items
        # Rendered now, not at the write: its size is counted exactly, and the frame is
        # made once per message per wire format either way (cached on the message).
        size = len(message.rendered(self._render))
        if len(items) >= self._capacity or (self._bytes + size > self._max_bytes and items):
            return Offer.FULL
        items.append(message)
        self._bytes += size
        if lone:
            self.flush()
            if self._closed:
                return Offer.CLOSED  # the write found the peer gone
        return Offer.ACCEPTED

    def flush(self, burst: Burst | None = None) -> None:
        """Send what is queued: written now if no write is in progress (no task switch),
        the rest (or everything, when a write is in progress) by waking the writer.

        `burst`: what the calling topic just forwarded; if the queue holds exactly that
        (same length, same first and last message: the topic's turn appended them in
        order and nothing else ran meanwhile), its shared joined frames are written.
        """
        items = self._items
        if not items:
            return
        write_now = self._write_now
        if self._writing or write_now is None or self._gaps:
            self._wake()
            return
        if (
            burst is not None and len(items) == len(burst.messages)
            and items[0] is burst.first and items[-1] is burst.last
        ):
            data = burst.joined(self._render)
            sent = self._write(write_now, data)
            if sent is None:
                return
            if sent == len(data):
                items.clear()
                self._bytes -= sent
                self._counters.delivered += len(burst.messages)
                if self._room:
                    self._room.unpark_all()
                return
            # Partial: put back what the kernel did not take, frame by frame.
            self._keep_unsent([m.rendered(self._render) for m in burst.messages], sent)
            return
        frames: list[bytes] = []
        replies: set[int] | None = None  # indexes of frames that are replies (not counted)
        size = 0
        for item in items:
            kind = type(item)
            if kind is Message:
                frame = item.rendered(self._render)  # type: ignore[attr-defined]
            elif kind is bytes:  # the rest of a frame an earlier flush began
                frame = item  # type: ignore[assignment]
            elif kind is ControlFrame:  # a reply: written in line, no writer wake
                if replies is None:
                    replies = set()
                replies.add(len(frames))
                frame = item.data  # type: ignore[attr-defined]
            else:
                break  # a close marker: the writer's to send
            frames.append(frame)
            size += len(frame)
            if size >= FLUSH_MAX_BYTES:
                break
        if frames:
            sent = self._write(write_now, frames[0] if len(frames) == 1 else b"".join(frames))
            if sent is not None:
                self._keep_unsent(frames, sent, replies or frozenset())
            return
        self._wake()

    def _wake(self) -> None:
        """The writer has work: wake the task parked in `take`, or call `wake_writer`."""
        if self._writer:
            self._writer.unpark()
        if self._wake_writer is not None:
            self._wake_writer()

    def _room_lot(self) -> ParkingLot:
        if self._room is None:
            self._room = ParkingLot()
        return self._room

    def _write(self, write_now: Callable[[bytes], int], data: bytes) -> int | None:
        """Bytes the kernel took now (0 if its buffer is full); None if the peer is gone,
        and then the outbox is closed (the connection's reader will see it too)."""
        try:
            return write_now(data)
        except BlockingIOError:
            return 0
        except OSError:
            self.close()
            return None

    def _keep_unsent(
        self, frames: list[bytes], sent: int, replies: AbstractSet[int] = frozenset()
    ) -> None:
        """After writing `frames` (the queue's first items) of which `sent` bytes went:
        drop the written items, keep the rest of a begun frame as bytes, wake the writer.
        Written message frames count as delivered; `replies` (indexes) do not."""
        items = self._items
        self._bytes -= sent
        done = written = 0
        for frame in frames:
            if written + len(frame) > sent:
                break
            written += len(frame)
            done += 1
        for _ in range(done):
            items.popleft()
        if sent > written:
            # The rest of a begun reply stays a reply (the writer does not count it).
            rest = frames[done][sent - written:]
            items[0] = ControlFrame(rest) if done in replies else rest
        self._counters.delivered += done - sum(1 for i in replies if i < done)
        if self._room:
            self._room.unpark_all()
        if items:
            self._wake()

    def offer_in_grace(self, message: Message, now: float, grace: float) -> Offer:
        """After `offer` answered FULL, under `disconnect`: queue past capacity while the
        grace period lasts (see the module docstring). FULL means evict now."""
        if self._closed:
            return Offer.CLOSED
        if self._over_since is None:
            self._over_since = now
        elif now - self._over_since > grace:
            return Offer.FULL
        size = len(message.rendered(self._render))
        if (
            len(self._items) >= self._capacity * GRACE_FACTOR
            or self._bytes + size > self._max_bytes * GRACE_FACTOR
        ):
            return Offer.FULL
        self._items.append(message)
        self._bytes += size
        self._wake()
        return Offer.ACCEPTED

    def drop_oldest(self, message: Message) -> None:
        """Make room for `message` by dropping the oldest queued messages of its topic
        (as many as it takes to fit `outbox_size` and `outbox_bytes`), or skip `message`
        itself if that is not enough; either way a `Gap` is reported before the topic's
        next message. Only this topic's frames are touched: other topics' promises hold.
        Called by a topic whose `offer` answered FULL (so this is the slow path)."""
        items = self._items
        render = self._render
        size = len(message.rendered(render))
        topic = message.topic
        index = 0
        while len(items) >= self._capacity or (self._bytes + size > self._max_bytes and items):
            for index in range(index, len(items)):  # noqa: B020 (resumes where it stopped)
                item = items[index]
                if type(item) is Message and item.topic == topic:  # type: ignore[attr-defined]
                    break
            else:
                self._dropped(message)  # nothing more of this topic to drop: skip it
                self._wake()
                return
            del items[index]
            self._bytes -= len(item.rendered(render))  # type: ignore[attr-defined]
            self._dropped(item)  # type: ignore[arg-type]
        items.append(message)
        self._bytes += size
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
        Room in bytes means below `outbox_bytes` (a bigger frame may still be FULL: the
        caller waits again, and an empty outbox takes any frame)."""
        while (
            len(self._items) >= self._capacity or self._bytes >= self._max_bytes
        ) and not self._closed:
            await self._room_lot().park()

    def offer_control(self, item: object) -> Offer:
        """Queue a non-message item (e.g. a subscribe `ok`) under the same capacity."""
        if self._closed:
            return Offer.CLOSED
        if len(self._items) >= self._capacity:
            return Offer.FULL
        self._items.append(item)
        self._bytes += _size(item, self._render)
        self._wake()
        return Offer.ACCEPTED

    def answer(self, frame: bytes, more: bool = False) -> None:
        """Queue a reply frame and write it now if nothing is queued or being written,
        without a task switch: the connection's own replies, and those given on another
        task (a publish's answer, from its topic).

        `more=True` says more answers follow at once (the rest of a client's pipelined
        requests): only queued; the caller must `flush` when done, so they go out as one
        write instead of one per answer (`python -m benchmarks ws-publish`, window).

        Never refused for room: a connection gets at most one answer per publish it
        made, and each of those was admitted by a topic's bounded mailbox. Dropped once
        the outbox is closed (the connection is going; nothing more is written).
        """
        if self._closed:
            return
        items = self._items
        if more:
            items.append(ControlFrame(frame))
            self._bytes += len(frame)
            return
        write_now = self._write_now
        if items or self._writing or write_now is None or self._gaps:
            items.append(ControlFrame(frame))
            self._bytes += len(frame)
            self.flush()
            return
        sent = self._write(write_now, frame)
        if sent is not None and sent < len(frame):
            items.append(ControlFrame(frame[sent:]))  # the rest goes before anything else
            self._bytes += len(frame) - sent
            self._wake()

    # -- the connection's side ---------------------------------------------------------------

    async def put(self, item: object) -> None:
        """Queue `item`, waiting for room if full. Raises `trio.ClosedResourceError` once
        closed. For the connection's own replies: a client that does not read its replies
        slows only itself."""
        while len(self._items) >= self._capacity and not self._closed:
            await self._room_lot().park()
        if self._closed:
            raise trio.ClosedResourceError("the outbox is closed")
        self._items.append(item)
        self._bytes += _size(item, self._render)
        self.flush()  # a reply goes out now if nothing is in flight: no writer wake

    async def take(self, max_items: int) -> list[object]:
        """Wait for queued items and take up to `max_items` of them, oldest first.

        Marks a write in progress (no fast-path writes) until `written()` is called.
        Raises `trio.EndOfChannel` once closed and empty.
        """
        items = self._items
        while not items:
            if self._closed:
                raise trio.EndOfChannel
            if self._writer is None:
                self._writer = ParkingLot()
            await self._writer.park()
        self._writing = True
        self._over_since = None  # the writer is moving: a new grace period if full again
        if len(items) <= max_items:
            batch = list(items)
            items.clear()
        else:
            batch = [items.popleft() for _ in range(max_items)]
        # Still this connection's until written: counted until `written`.
        self._taken_bytes = taken = sum(_size(item, self._render) for item in batch)
        self._bytes -= taken
        if self._room:
            self._room.unpark_all()
        if self._gaps:
            batch = self._insert_gaps(batch)
        return batch

    def _insert_gaps(self, batch: list[object]) -> list[object]:
        """Put each pending `Gap` just before the next message of its topic."""
        gaps = self._gaps
        result: list[object] = []
        for item in batch:
            if type(item) is Message and item.topic in gaps:  # type: ignore[attr-defined]
                result.append(gaps.pop(item.topic))  # type: ignore[attr-defined]
            result.append(item)
        return result

    def written(self) -> None:
        """The batch from `take` is on the socket: fast-path writes may resume."""
        self._writing = False
        self._taken_bytes = 0

    @property
    def queued_bytes(self) -> int:
        """Bytes this outbox holds for its connection: every queued frame (a message's
        frame in this outbox's wire format, rendered when offered), the rest of a begun
        frame, and a batch the writer took and has not written yet. Gap reports (a few
        dozen bytes per topic) are not counted. Kept up to date per change, O(1)."""
        return self._bytes + self._taken_bytes

    def render(self, message: Message) -> bytes:
        return message.rendered(self._render)

    def close(self) -> None:
        """No more offers (they answer `CLOSED`); wakes the writer and any waiting put."""
        self._closed = True
        if self._writer:
            self._writer.unpark_all()
        if self._room:
            self._room.unpark_all()
        if self._wake_writer is not None:
            self._wake_writer()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)
