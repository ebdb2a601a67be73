"""`Outbox`: a connection's bounded queue of frames, filled by topics, emptied as written.

Topics call `offer` synchronously and never wait; it answers `ACCEPTED`, `FULL` (the
topic's slow-consumer policy decides what that means) or `CLOSED`. An item leaves the
queue only once the kernel has taken all of it: a stalled subscriber holds pointers to
frames shared by every subscriber (rendered once per message per wire format, cached on
the message) and at most one begun frame, never a private copy of a batch.

Write now, without a task switch: `flush` writes from the front of the queue straight to
the non-blocking socket (`write_now` for one frame, `write_many_now`, i.e. `sendmsg`, for
several: scatter-gather over the shared frames, no join) when the connection's writer is
not waiting for room, and leaves what the kernel did not take queued. A lone message (the
topic has nothing more right behind it) is written by `offer` itself; a burst is only
queued (`lone=False`) and the topic flushes each outbox once at the end of its turn, so a
burst goes out as one write per subscriber. An outbox that holds exactly the burst writes
the `Burst`'s frames, joined once per wire format for all subscribers. Once the kernel
refuses bytes, writing is the connection's task's (`wake_writer`; it waits for room and
calls `write_queued`) until the queue is empty. Order is kept: every write takes the
queue from its front and drops what was written before anything else can run.
(Guarded by `python -m benchmarks.quick`, scenarios fanout and fanout-bulk.)

Message frames are queued as `Message` objects, not bytes, so a policy knows each item's
topic and offset (drop-oldest reports gaps per topic).

Bounds: `capacity` items and `max_bytes` of `queued_bytes`; past either an offer is FULL
(an empty outbox takes any one frame, so no message is undeliverable). A burst's messages
are counted in bytes when it is flushed (the fan-out hot path does nothing more per
message and subscriber), so an outbox may pass `max_bytes` by one burst, which its topic
holds anyway; the next offer is then FULL. Grace
(`disconnect` policy): past them, `offer_in_grace` still queues, up to `GRACE_FACTOR` x
both, for as long as the outbox has been full for less than the topic's grace period; a
write that completes a queued item ends that period. So a subscriber that pauses briefly
is kept, one that has stopped is closed, and memory stays bounded. The paths a topic
takes after a FULL offer (grace, drop-oldest and its gap reports, block's `wait_room`) are
the base class `OutboxPolicies` (`outbox_policies.py`), which also declares the state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from itertools import islice

import trio
from trio.lowlevel import ParkingLot

from .messages import Message
from .metrics import BrokerCounters
from .outbox_items import Burst, ControlFrame, Gap, Item, Offer, item_size
from .outbox_policies import OutboxPolicies

# How far past its bounds an outbox may grow during a slow consumer's grace period.
GRACE_FACTOR = 2
# Most bytes gathered for one write; past that, the next write takes the rest.
WRITE_MAX_BYTES = 256 * 1024
# Fewest bytes gathered for one write (after the kernel took little or nothing): about
# what a socket whose unsent bytes fell below its low mark (NOTSENT_LOWAT) takes.
WRITE_MIN_BYTES = 16 * 1024
# Most frames gathered for one `sendmsg` (IOV_MAX is 1024 on Linux).
WRITE_MAX_FRAMES = 1024
# `queued_bytes` bound of an outbox made without one (tests); connections pass
# `Settings.outbox_bytes`.
DEFAULT_MAX_BYTES = 8 * 1024 * 1024


def _no_gap_frame(gap: Gap) -> bytes:
    raise RuntimeError("this outbox was made without render_gap, so it cannot drop")


class Outbox(OutboxPolicies):
    """See the module docstring. Owned by one connection; topics hold a reference."""

    __slots__ = ()  # the state's slots are declared in `OutboxPolicies`

    def __init__(
        self,
        capacity: int,
        render: Callable[[Message], bytes],
        counters: BrokerCounters,
        write_now: Callable[[bytes | memoryview], int] | None = None,
        wake_writer: Callable[[], None] | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        write_many_now: Callable[[Sequence[bytes | memoryview]], int] | None = None,
        render_gap: Callable[[Gap], bytes] = _no_gap_frame,
    ) -> None:
        """`write_now(frame)` / `write_many_now(frames)`: write to the non-blocking socket,
        answer the bytes taken, raise BlockingIOError when none fit and OSError when the
        peer is gone (`socket.send` / `socket.sendmsg`); without `write_now` nothing is
        written (a queue for tests). `wake_writer`: called whenever the connection's task
        has writing to do. `render_gap`: the in-band frame reporting a `Gap`."""
        if capacity < 1 or max_bytes < 1:
            raise ValueError("an outbox needs a capacity of at least 1 item and 1 byte")
        self._capacity = capacity
        self._max_bytes = max_bytes
        # `max_bytes - queued_bytes`, kept up to date by every change to `_items` (O(1)
        # each; the room left rather than the bytes used: one operation less per offer).
        self._free = max_bytes
        # Items at the front whose bytes `_free` counts; those after it were queued by a
        # burst (`offer(lone=False)`) and are counted later (`_settle`).
        self._counted = 0
        self._wanted = 0  # size of the last frame refused as FULL (see `wait_room`)
        self._render = render
        self._render_gap = render_gap
        self._counters = counters
        self._write_now = write_now
        self._write_many_now = write_many_now
        self._wake_writer = wake_writer
        self._items: deque[Item] = deque()
        self._begun = False  # the front item is the rest of a frame partly written
        self._closed = False
        # The kernel refused bytes: the connection's task writes (it waits for room)
        # until the queue is empty, and `flush` only wakes it.
        self._writing = False
        self._gaps: dict[str, Gap] = {}
        self._gather = WRITE_MAX_BYTES  # bytes `write_queued` gathers (see there)
        # When the outbox became full with no item written since (grace period).
        self._over_since: float | None = None
        # Made on first use: most connections never wait on either, and with thousands of
        # connections every object counts (CPython's full collections walk them all).
        self._room: ParkingLot | None = None
        self._writer: ParkingLot | None = None  # a task parked in `take`

    # -- the topics' side: synchronous, never waits ----------------------------------------

    def offer(self, message: Message, lone: bool = True) -> Offer:
        """Queue the frame of `message` and, if `lone`, write it now; never waits.

        `lone=False` says more messages follow at once (a burst): the caller must `flush`
        when the burst is over, so it goes out as one write instead of one per frame.
        """
        if self._closed:
            return Offer.CLOSED
        items = self._items
        if not lone:
            # A burst: only queued, its bytes counted when it is flushed (or by anything
            # else that needs them: `_settle`); FULL at `outbox_size`, or once the bytes
            # counted so far reach `outbox_bytes`. The hot path of fan-out: nothing more
            # per message and subscriber (`python -m benchmarks.forward_cpu`).
            if len(items) >= self._capacity or self._free <= 0:
                self._wanted = 1
                return Offer.FULL
            items.append(message)
            return Offer.ACCEPTED
        # Rendered now, not at the write: its size is counted exactly, and the frame is
        # made once per message per wire format either way (cached on the message; read
        # here without the method call: hot path, `python -m benchmarks.quick` fanout).
        try:
            frame = message._rendered[self._render]
        except KeyError:
            frame = message.rendered(self._render)
        size = len(frame)
        if items:
            if self._counted != len(items):
                self._settle()
            if len(items) >= self._capacity or size > self._free:
                self._wanted = size
                return Offer.FULL
        elif not self._writing and self._write_now is not None and not self._gaps:
            # The usual case: nothing queued, the frame goes straight to the socket.
            try:
                sent = self._write_now(frame)
            except BlockingIOError:
                sent = 0
            except OSError:
                self.close()
                return Offer.CLOSED  # the peer is gone
            except BaseException:
                items.append(message)  # not written: it stays queued
                self._counted = 1
                self._free -= size
                raise
            if sent == size:
                self._counters.delivered += 1
                return Offer.ACCEPTED
            items.append(memoryview(frame)[sent:] if sent else message)
            self._counted = 1
            self._begun = sent > 0
            self._free = self._max_bytes - (size - sent)
            self._writing = True
            self._wake()
            return Offer.ACCEPTED
        items.append(message)
        self._counted += 1
        self._free -= size
        self.flush()
        if self._closed:
            return Offer.CLOSED  # the write found the peer gone
        return Offer.ACCEPTED

    def flush(self, burst: Burst | None = None) -> None:
        """Send what is queued: written now unless the connection's task is writing (then
        it is only woken); what the kernel does not take stays queued, for that task.

        `burst`: what the calling topic just forwarded; if the queue holds exactly that
        (same length, same first and last message: the topic's turn appended them in
        order and nothing else ran meanwhile), its shared joined frames are written.
        """
        items = self._items
        if not items:
            return
        write_now = self._write_now
        if self._writing or write_now is None or self._gaps:
            if self._counted != len(items):
                self._settle()  # the burst's bytes: the next offer sees them
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
                if self._counted:  # (what was counted of the burst: all that was counted)
                    self._free = self._max_bytes
                    self._counted = 0
                self._counters.delivered += len(burst.messages)
                if self._room:
                    self._room.unpark_all()
                return
            self._settle()
            self._consume([m.rendered(self._render) for m in burst.messages], sent)
            self._counted = len(items)
        else:
            try:
                self.write_queued()
            except OSError:
                return  # closed by write_queued; the connection's task sees it too
        if items:
            self._writing = True
            self._wake()

    def write_queued(self) -> int:
        """Write from the front of the queue what the kernel takes now, in one call; the
        bytes written (0 when the kernel's buffer is full). Raises OSError (and the outbox
        is closed) when the peer is gone. The connection's task calls it when the socket
        has room, until the queue is empty; that ends its turn as writer (`flush` writes
        again).

        Gathers up to WRITE_MAX_FRAMES frames and `_gather` bytes: about what the kernel
        took last time (doubling while it takes everything, up to WRITE_MAX_BYTES), so a
        subscriber that reads slowly does not have the same frames gathered again and
        again for a kernel that takes a few of them (`python -m benchmarks.quick`,
        sustained)."""
        items = self._items
        if self._counted != len(items):
            self._settle()
        if self._gaps:
            self._report_gaps()
        frames: list[bytes | memoryview] = []
        size = replies = 0
        limit = self._gather
        render = self._render
        frame: bytes | memoryview
        for item in items:
            # `type(item) is X` written out in each test (not kept in a local) lets the
            # type checker narrow `item`; it costs no more (CPython specializes `type(x)`).
            if type(item) is Message:
                try:  # queued messages were rendered when offered: no method call
                    frame = item._rendered[render]
                except KeyError:
                    frame = item.rendered(render)
            elif type(item) is ControlFrame:
                frame = item.data
                replies += 1
            else:  # the rest of a begun message frame
                frame = item
            frames.append(frame)
            size += len(frame)
            if size >= limit or len(frames) >= WRITE_MAX_FRAMES:
                break
        if not frames:
            self._writing = False
            return 0
        self._counted = len(items)  # (gap reports placed: counted)
        write_now = self._write_now
        assert write_now is not None, "an outbox made without write_now cannot write"
        try:
            if len(frames) == 1:
                sent = write_now(frames[0])
            elif self._write_many_now is not None:
                sent = self._write_many_now(frames)
            else:  # no scatter-gather: one joined copy, for this write only
                sent = write_now(b"".join(frames))
        except BlockingIOError:
            self._gather = WRITE_MIN_BYTES
            return 0
        except OSError:
            self.close()
            raise
        if sent < size:
            self._gather = max(sent, WRITE_MIN_BYTES)
            self._consume(frames, sent)
        else:  # all of it: no frame to look at again (the usual case)
            if limit < WRITE_MAX_BYTES:
                self._gather = min(limit * 2, WRITE_MAX_BYTES)
            count = len(frames)
            if count == len(items):
                items.clear()
            else:
                for _ in range(count):
                    items.popleft()
            self._free += sent
            self._begun = False
            self._over_since = None  # the subscriber reads: a new grace period if full
            self._counters.delivered += count - replies
            if self._room:
                self._room.unpark_all()
        self._counted = len(items)
        if not items:
            self._writing = False
        return sent

    def _consume(self, frames: list[bytes] | list[bytes | memoryview], sent: int) -> None:
        """After writing `frames` (the queue's first items) of which `sent` bytes went:
        drop the written items, keep the rest of a begun frame (a view, not a copy).
        Written message frames count as delivered; replies do not."""
        if not sent:
            return
        items = self._items
        self._free += sent
        done = delivered = 0
        begun = False
        for frame in frames:
            length = len(frame)
            if length > sent:
                if sent:
                    begun = True
                    if type(items[0]) is ControlFrame:
                        items[0] = ControlFrame(bytes(frame[sent:]))  # a reply: small
                    else:
                        items[0] = memoryview(frame)[sent:]
                break
            sent -= length
            done += 1
            if type(items.popleft()) is not ControlFrame:
                delivered += 1
        self._begun = begun
        if done:
            self._over_since = None  # the subscriber reads: a new grace period if full
        self._counters.delivered += delivered
        if self._room:
            self._room.unpark_all()

    def _settle(self) -> None:
        """Count the bytes of the messages a burst queued (`offer(lone=False)` leaves them
        to this): each once, so O(1) per message in all."""
        items = self._items
        tail = len(items) - self._counted
        if tail > 0:
            render = self._render
            free = self._free
            for item in reversed(list(islice(reversed(items), tail))):  # (in order)
                # Only messages: the uncounted tail is what `offer(lone=False)` queued.
                # Not narrowed: a check per message on fan-out's hot path for nothing.
                free -= len(item.rendered(render))  # type: ignore[union-attr]
            self._free = free
        self._counted = len(items)

    def _wake(self) -> None:
        """The connection's task has writing to do."""
        if self._writer:
            self._writer.unpark()
        if self._wake_writer is not None:
            self._wake_writer()

    def _room_lot(self) -> ParkingLot:
        if self._room is None:
            self._room = ParkingLot()
        return self._room

    def _write(self, write_now: Callable[[bytes | memoryview], int], data: bytes) -> int | None:
        """Bytes the kernel took now (0 if its buffer is full); None if the peer is gone,
        and then the outbox is closed (the connection's reader will see it too)."""
        try:
            return write_now(data)
        except BlockingIOError:
            return 0
        except OSError:
            self.close()
            return None

    def offer_control(self, item: ControlFrame) -> Offer:
        """Queue a non-message item (e.g. a subscribe `ok`) under the same capacity."""
        if self._closed:
            return Offer.CLOSED
        if len(self._items) >= self._capacity:
            return Offer.FULL
        self._settle()
        self._items.append(item)
        self._counted += 1
        self._free -= item_size(item, self._render)
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
        if more or items or self._writing or self._write_now is None or self._gaps:
            self._settle()
            items.append(ControlFrame(frame))
            self._counted += 1
            self._free -= len(frame)
            if not more:
                self.flush()
            return
        sent = self._write(self._write_now, frame)
        if sent is not None and sent < len(frame):
            items.append(ControlFrame(frame[sent:]))  # the rest goes before anything else
            self._counted = 1
            self._begun = sent > 0
            self._free -= len(frame) - sent
            self._writing = True
            self._wake()

    # -- the connection's side ---------------------------------------------------------------

    async def put(self, item: ControlFrame) -> None:
        """Queue `item`, waiting for room if full. Raises `trio.ClosedResourceError` once
        closed. For the connection's own replies: a client that does not read its replies
        slows only itself."""
        while len(self._items) >= self._capacity and not self._closed:
            await self._room_lot().park()
        if self._closed:
            raise trio.ClosedResourceError("the outbox is closed")
        self._settle()
        self._items.append(item)
        self._counted += 1
        self._free -= item_size(item, self._render)
        self.flush()  # a reply goes out now if nothing is in flight: no writer wake

    async def take(self, max_items: int) -> list[object]:
        """Wait for queued items and take up to `max_items` of them off, oldest first,
        each pending `Gap` (as itself) just before its topic's next message: for a writer
        that is not a socket (the tests' fake connections). No write by `flush` until
        `written()`. Raises `trio.EndOfChannel` once closed and empty."""
        items = self._items
        while not items:
            if self._closed:
                raise trio.EndOfChannel
            if self._writer is None:
                self._writer = ParkingLot()
            await self._writer.park()
        self._writing = True
        self._over_since = None  # the writer is moving: a new grace period if full again
        self._settle()
        batch: list[object] = [items.popleft() for _ in range(min(len(items), max_items))]
        self._counted = len(items)
        self._free += sum(item_size(item, self._render) for item in batch)
        self._begun = False
        if self._room:
            self._room.unpark_all()
        if self._gaps:
            gaps = self._gaps
            placed: list[object] = []
            for item in batch:
                if type(item) is Message and item.topic in gaps:
                    placed.append(gaps.pop(item.topic))
                placed.append(item)
            batch = placed
        return batch

    def written(self) -> None:
        """The batch from `take` is written: `flush` may write again."""
        self._writing = False

    @property
    def queued_bytes(self) -> int:
        """Bytes this outbox holds for its connection: every queued frame (a message's
        frame in this outbox's wire format, rendered when offered; a reply) and the rest
        of a begun frame. Pending gap reports (a few dozen bytes per topic) are not
        counted until placed in the queue. Kept up to date per change (a burst's messages
        when it is flushed, or when this is read before), O(1) per message in all."""
        self._settle()
        return self._max_bytes - self._free

    @property
    def writing(self) -> bool:
        """The kernel refused bytes and the connection's task has not emptied the queue
        since: it, not `flush`, writes."""
        return self._writing

    def render(self, message: Message) -> bytes:
        return message.rendered(self._render)

    def close(self) -> None:
        """No more offers (they answer `CLOSED`); what is queued stays, for the connection
        to write or `discard`. Wakes the writer and any waiting put or wait_room."""
        self._closed = True
        if self._writer:
            self._writer.unpark_all()
        if self._room:
            self._room.unpark_all()
        if self._wake_writer is not None:
            self._wake_writer()

    def discard(self) -> None:
        """Drop what is queued but the rest of a begun frame (the stream would be corrupt
        without it): an evicted connection releases its memory at once."""
        items = self._items
        keep = items[0] if items and self._begun else None
        items.clear()
        self._gaps.clear()
        self._free = self._max_bytes
        if keep is None:
            self._writing = False
        else:
            items.append(keep)
            self._free -= item_size(keep, self._render)
        self._counted = len(items)
        if self._room:
            self._room.unpark_all()

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return len(self._items)
