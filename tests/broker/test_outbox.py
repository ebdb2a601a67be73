"""The connection outbox: fast path, batching, order, bounds, closing (no sockets)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from broker import ControlFrame, Gap, Message, Offer, Outbox
from broker.formats import PayloadKind
from broker.metrics import BrokerCounters
from broker.outbox import WRITE_MAX_FRAMES
from broker.outbox_items import Burst


def message(offset: int, topic: str = "t", data: bytes | None = None) -> Message:
    data = b"%d" % offset if data is None else data
    return Message(topic, offset, data, "text/plain", PayloadKind.TEXT, 0.0)


def render(m: Message) -> bytes:
    return b"<" + m.data + b">"


def gap_frame(gap: Gap) -> bytes:
    return b"[gap %s %d %d-%d]" % (gap.topic.encode(), gap.skipped, gap.first, gap.last)


class FakeSocket:
    """`write_now` / `write_many_now` stand-in: takes up to `room` bytes per call, then
    would block. `buffers` records how many buffers each call was given."""

    def __init__(self, room: int = 1 << 20, error: OSError | None = None) -> None:
        self.room = room
        self.error = error
        self.written = b""
        self.calls = 0
        self.buffers: list[int] = []

    def write(self, data: bytes | memoryview) -> int:
        return self.write_many([data])

    def write_many(self, buffers: Sequence[bytes | memoryview]) -> int:
        self.calls += 1
        self.buffers.append(len(buffers))
        if self.error is not None:
            raise self.error
        if self.room == 0:
            raise BlockingIOError
        data = b"".join(buffers)
        taken = data[: self.room]
        self.room -= len(taken)
        self.written += taken
        return len(taken)


def make(
    capacity: int = 8,
    sock: FakeSocket | None = None,
    counters: BrokerCounters | None = None,
    max_bytes: int = 1 << 20,
    render_frame: object = render,
) -> tuple[Outbox, FakeSocket]:
    sock = FakeSocket() if sock is None else sock
    outbox = Outbox(capacity, render_frame, counters or BrokerCounters(),  # type: ignore[arg-type]
                    sock.write, None, max_bytes, sock.write_many, gap_frame)
    return outbox, sock


def drain(outbox: Outbox, sock: FakeSocket) -> bytes:
    """What the connection's writer sends once the kernel has room for everything."""
    before = len(sock.written)
    sock.room = 1 << 20
    while len(outbox):
        assert outbox.write_queued()
    assert not outbox.writing
    return sock.written[before:]


async def test_a_lone_message_to_an_idle_outbox_is_written_at_once() -> None:
    counters = BrokerCounters()
    outbox, sock = make(4, counters=counters)
    assert outbox.offer(message(0)) is Offer.ACCEPTED
    assert sock.written == b"<0>"
    assert len(outbox) == 0 and counters.delivered == 1 and outbox.queued_bytes == 0


async def test_a_burst_is_queued_then_flushed_as_one_gathered_write() -> None:
    counters = BrokerCounters()
    outbox, sock = make(counters=counters)
    for n in range(3):
        assert outbox.offer(message(n), lone=False) is Offer.ACCEPTED
    assert sock.calls == 0
    outbox.flush()
    assert (sock.written, sock.buffers) == (b"<0><1><2>", [3])  # one sendmsg, no join
    assert len(outbox) == 0 and counters.delivered == 3


async def test_what_a_flush_could_not_write_stays_queued_as_views_of_the_shared_frames(
) -> None:
    counters = BrokerCounters()
    outbox, sock = make(counters=counters, sock=FakeSocket(room=5))
    messages = [message(n) for n in range(3)]
    for m in messages:
        outbox.offer(m, lone=False)
    outbox.flush()  # "<0><1" fits: one whole frame, one begun
    assert sock.written == b"<0><1" and counters.delivered == 1
    assert outbox.writing and outbox.queued_bytes == 1 + 3
    begun, queued = outbox._items  # type: ignore[attr-defined]
    # A stalled subscriber holds the frame every subscriber shares, not a copy of it.
    assert isinstance(begun, memoryview) and begun.obj is messages[1].rendered(render)
    assert queued is messages[2]
    assert drain(outbox, sock) == b"><2>"
    assert counters.delivered == 3 and outbox.queued_bytes == 0


async def test_outboxes_holding_exactly_a_burst_write_its_frames_joined_once() -> None:
    joins: list[int] = []

    def counting_render(m: Message) -> bytes:
        joins.append(m.offset)
        return render(m)

    counters = BrokerCounters()
    pairs = [make(counters=counters, render_frame=counting_render,
                  sock=FakeSocket(room=room)) for room in (1 << 20, 1 << 20, 5)]
    burst = [message(n) for n in range(3)]
    for outbox, _ in pairs:
        for m in burst:
            outbox.offer(m, lone=False)
    shared = Burst(burst)
    for outbox, _ in pairs:
        outbox.flush(shared)
    assert [s.written for _, s in pairs] == [b"<0><1><2>", b"<0><1><2>", b"<0><1"]
    assert all(s.buffers == [1] for _, s in pairs)
    assert joins == [0, 1, 2]  # each frame rendered once, for all three outboxes
    assert counters.delivered == 3 + 3 + 1
    # The third kernel took 5 bytes: the rest of frame 1, then frame 2, for the writer.
    outbox, sock = pairs[2]
    assert outbox.writing and drain(outbox, sock) == b"><2>"


async def test_an_outbox_holding_more_than_the_burst_writes_its_own_queue_in_order() -> None:
    outbox, sock = make()
    outbox.offer(message(9, "other"), lone=False)  # queued earlier by another topic
    burst = [message(n) for n in range(2)]
    for m in burst:
        outbox.offer(m, lone=False)
    outbox.flush(Burst(burst))
    assert sock.written == b"<9><0><1>"


async def test_a_write_gathers_a_bounded_number_of_frames() -> None:
    outbox, sock = make(capacity=3000, sock=FakeSocket(room=0))
    for n in range(WRITE_MAX_FRAMES + 10):
        outbox.offer(message(n), lone=False)
    drain(outbox, sock)
    assert sock.buffers[-2:] == [WRITE_MAX_FRAMES, 10]


async def test_a_reply_put_on_an_idle_outbox_is_written_at_once_and_not_counted() -> None:
    counters = BrokerCounters()
    outbox, sock = make(counters=counters)
    await outbox.put(ControlFrame(b"ok"))
    outbox.offer(message(0), lone=False)
    await outbox.put(ControlFrame(b"ok2"))  # behind the queued message, in order
    assert sock.written == b"ok<0>ok2"
    assert counters.delivered == 1 and len(outbox) == 0


async def test_an_answer_from_another_task_is_written_at_once_when_nothing_is_queued() -> None:
    counters = BrokerCounters()
    outbox, sock = make(counters=counters)
    outbox.answer(b"ok")
    assert sock.written == b"ok" and sock.calls == 1
    assert len(outbox) == 0 and counters.delivered == 0


async def test_an_answer_goes_behind_what_is_queued_and_past_capacity() -> None:
    outbox, sock = make(1, sock=FakeSocket(room=0))
    assert outbox.offer(message(0)) is Offer.ACCEPTED  # the kernel took nothing
    outbox.answer(b"ok1")
    outbox.answer(b"ok2")  # never refused for room (one per publish the client made)
    assert len(outbox) == 3
    assert drain(outbox, sock) == b"<0>ok1ok2"


async def test_while_the_kernel_is_full_only_the_writer_writes_and_a_begun_frame_goes_first(
) -> None:
    outbox, sock = make(sock=FakeSocket(room=1))
    outbox.offer(message(0))  # "<" taken: the writer owns the rest
    assert outbox.writing
    sock.room = 1 << 20
    outbox.answer(b"ok")
    outbox.offer(message(1))
    assert sock.written == b"<"  # neither overtakes nor splits the begun frame
    assert drain(outbox, sock) == b"0>ok<1>"
    outbox.offer(message(2))  # the queue was emptied: written at once again
    assert sock.written.endswith(b"<2>") and len(outbox) == 0


async def test_answers_with_more_to_follow_are_queued_then_written_in_one_write() -> None:
    counters = BrokerCounters()
    outbox, sock = make(counters=counters)
    outbox.answer(b"ok1", more=True)
    outbox.answer(b"ok2", more=True)
    assert sock.written == b"" and len(outbox) == 2
    outbox.answer(b"ok3")  # the last of them: everything queued goes out at once
    assert sock.written == b"ok1ok2ok3" and sock.calls == 1
    outbox.answer(b"ok4", more=True)
    outbox.flush()  # or the caller flushes once done
    assert sock.written == b"ok1ok2ok3ok4" and sock.calls == 2
    assert len(outbox) == 0 and counters.delivered == 0


async def test_an_answer_to_a_closed_outbox_is_dropped() -> None:
    outbox, sock = make()
    outbox.close()
    outbox.answer(b"ok")
    assert sock.written == b"" and len(outbox) == 0


async def test_a_begun_reply_stays_a_reply_for_the_writer() -> None:
    counters = BrokerCounters()
    outbox, sock = make(counters=counters, sock=FakeSocket(room=3))
    await outbox.put(ControlFrame(b"hello"))
    assert sock.written == b"hel" and counters.delivered == 0
    assert drain(outbox, sock) == b"lo" and counters.delivered == 0


async def test_a_full_kernel_buffer_queues_the_whole_frame() -> None:
    outbox, sock = make(sock=FakeSocket(room=0))
    m = message(0)
    assert outbox.offer(m) is Offer.ACCEPTED
    assert list(outbox._items) == [m]  # type: ignore[attr-defined]
    assert drain(outbox, sock) == b"<0>"


async def test_a_broken_socket_closes_the_outbox() -> None:
    outbox, _ = make(sock=FakeSocket(error=BrokenPipeError()))
    assert outbox.offer(message(0)) is Offer.CLOSED
    assert outbox.closed
    assert outbox.offer(message(1)) is Offer.CLOSED


async def test_a_broken_socket_reaches_the_writer_as_oserror() -> None:
    outbox, sock = make(sock=FakeSocket(room=0))
    outbox.offer(message(0))
    sock.error = ConnectionResetError()
    with pytest.raises(ConnectionResetError):
        outbox.write_queued()
    assert outbox.closed


async def test_capacity_is_counted_in_items_and_full_is_reported() -> None:
    outbox, sock = make(2, sock=FakeSocket(room=0))
    assert [outbox.offer(message(n)) for n in range(3)] == [
        Offer.ACCEPTED, Offer.ACCEPTED, Offer.FULL,
    ]
    assert outbox.offer_control(ControlFrame(b"ok")) is Offer.FULL
    assert drain(outbox, sock) == b"<0><1>"


async def test_put_waits_for_room_and_close_wakes_everyone() -> None:
    outbox, sock = make(1, sock=FakeSocket(room=0))
    outbox.offer(message(0))
    done: list[str] = []

    async def reply() -> None:
        await outbox.put(ControlFrame(b"reply"))
        done.append("put")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reply)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # no room yet
        assert drain(outbox, sock) == b"<0>"
    assert done == ["put"]
    assert sock.written == b"<0>reply"  # the reply went out at once: nothing queued
    outbox.close()
    with pytest.raises(trio.ClosedResourceError):
        await outbox.put(ControlFrame(b"late"))


async def test_drop_oldest_drops_only_that_topics_oldest_and_reports_a_gap_before_its_next(
) -> None:
    counters = BrokerCounters()
    outbox, sock = make(3, counters=counters, sock=FakeSocket(room=0))
    outbox.offer(message(0, "b"))
    outbox.offer(message(0, "a"))
    outbox.offer(message(1, "a"))
    assert outbox.offer(message(2, "a")) is Offer.FULL
    outbox.drop_oldest(message(2, "a"))
    assert drain(outbox, sock) == b"<0>[gap a 1 0-0]<1><2>"
    assert counters.dropped == 1 and counters.delivered == 3


async def test_drop_oldest_skips_the_new_message_when_none_of_its_topic_is_queued() -> None:
    outbox, sock = make(2, sock=FakeSocket(room=0))
    outbox.offer(message(0, "b"))
    outbox.offer(message(1, "b"))
    outbox.drop_oldest(message(5, "a"))  # nothing of "a" queued: 5 itself is skipped
    outbox.drop_oldest(message(6, "a"))
    assert drain(outbox, sock) == b"<0><1>"
    assert outbox.offer(message(7, "a")) is Offer.ACCEPTED  # queued, not fast-pathed
    assert sock.written.endswith(b"<1>")
    assert drain(outbox, sock) == b"[gap a 2 5-6]<7>"


async def test_wait_room_returns_once_the_writer_has_written(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox, sock = make(1, sock=FakeSocket(room=0))
    outbox.offer(message(0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.wait_room)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(5)
        assert len(outbox) == 1  # still waiting: nothing was written
        drain(outbox, sock)


async def test_wait_room_waits_for_room_for_the_frame_refused_in_bytes() -> None:
    outbox, sock = make(100, sock=FakeSocket(room=0), max_bytes=10)
    for n in range(3):
        outbox.offer(message(n))
    big = message(9, data=b"x" * 6)  # 8 bytes: needs 8 of the 10 free
    assert outbox.offer(big) is Offer.FULL
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.wait_room)
        await trio.testing.wait_all_tasks_blocked()
        sock.room = 3
        outbox.write_queued()  # 3 bytes free: not enough
        await trio.testing.wait_all_tasks_blocked()
        assert nursery.child_tasks
        sock.room = 3
        outbox.write_queued()  # 6 bytes free: still not
        await trio.testing.wait_all_tasks_blocked()
        assert nursery.child_tasks
        sock.room = 3
        outbox.write_queued()  # empty: room for anything
    assert outbox.offer(big) is Offer.ACCEPTED


async def test_queued_bytes_counts_frames_queued_and_the_rest_of_a_begun_frame() -> None:
    outbox, sock = make(sock=FakeSocket(room=2))
    assert outbox.queued_bytes == 0
    outbox.offer(message(10))  # "<1" written, "0>" left
    assert outbox.queued_bytes == 2
    outbox.offer(message(2), lone=False)
    outbox.answer(b"ok")
    assert outbox.queued_bytes == 2 + 3 + 2
    assert drain(outbox, sock) == b"0><2>ok"
    assert outbox.queued_bytes == 0


async def test_queued_bytes_follows_drops_and_writes() -> None:
    outbox, sock = make(2, sock=FakeSocket(room=0))
    outbox.offer(message(0, "a"))
    outbox.offer(message(1, "a"))
    assert outbox.queued_bytes == 6
    outbox.drop_oldest(message(22, "a"))
    assert outbox.queued_bytes == 3 + 4
    assert outbox.offer_control(ControlFrame(b"x")) is Offer.FULL
    sock.room = 4
    outbox.write_queued()  # the gap report goes in first, then 4 bytes go
    assert outbox.queued_bytes == len(b"[gap a 1 0-0]") + 7 - 4
    drain(outbox, sock)
    assert outbox.queued_bytes == 0


async def test_an_offer_past_outbox_bytes_is_full_but_an_empty_outbox_takes_any_frame(
) -> None:
    outbox, sock = make(100, sock=FakeSocket(room=0), max_bytes=8)
    big = message(0, data=b"x" * 20)
    assert outbox.offer(big) is Offer.ACCEPTED  # alone: never undeliverable
    assert outbox.offer(message(1)) is Offer.FULL
    drain(outbox, sock)
    sock.room = 0
    assert outbox.offer(message(1)) is Offer.ACCEPTED
    assert outbox.offer(message(2)) is Offer.ACCEPTED
    assert outbox.offer(message(3)) is Offer.FULL  # 3 + 3 + 3 > 8
    assert outbox.offer_in_grace(message(3), 0.0, 1.0) is Offer.ACCEPTED  # up to 2 x 8
    assert outbox.offer_in_grace(message(4), 0.5, 1.0) is Offer.ACCEPTED
    assert outbox.offer_in_grace(message(5), 0.6, 1.0) is Offer.ACCEPTED
    assert outbox.queued_bytes == 15
    assert outbox.offer_in_grace(message(6), 0.7, 1.0) is Offer.FULL


async def test_a_grace_period_ends_when_the_writer_completes_a_frame() -> None:
    outbox, sock = make(1, sock=FakeSocket(room=0))
    outbox.offer(message(0))
    assert outbox.offer_in_grace(message(1), 0.0, 1.0) is Offer.ACCEPTED
    assert outbox.offer_in_grace(message(2), 5.0, 1.0) is Offer.FULL  # grace is over
    sock.room = 3
    outbox.write_queued()  # the subscriber read a frame: a fresh grace period
    assert outbox.offer_in_grace(message(2), 5.0, 1.0) is Offer.ACCEPTED


async def test_drop_oldest_drops_as_many_of_the_topic_as_a_big_frame_needs() -> None:
    counters = BrokerCounters()
    outbox, sock = make(100, counters=counters, sock=FakeSocket(room=0), max_bytes=11)
    for n in range(3):
        outbox.offer(message(n, "a"))
    big = message(3, "a", b"x" * 6)
    assert outbox.offer(big) is Offer.FULL
    outbox.drop_oldest(big)  # 9 + 8 bytes: two of "a" must go (3 + 8 fits 11)
    assert counters.dropped == 2 and outbox.queued_bytes == 3 + 8
    assert drain(outbox, sock) == b"[gap a 2 0-1]<2><xxxxxx>"


async def test_discard_releases_everything_but_a_begun_frame() -> None:
    outbox, sock = make(sock=FakeSocket(room=2))
    outbox.offer(message(10))  # "<1" written
    for n in range(3):
        outbox.offer(message(n))
    outbox.close()
    outbox.discard()
    assert outbox.queued_bytes == 2
    assert drain(outbox, sock) == b"0>"  # the stream stays whole for the close frame
    outbox.offer(message(5))  # closed: nothing more
    outbox.discard()
    assert len(outbox) == 0 and outbox.queued_bytes == 0


async def test_a_write_gathers_about_what_the_kernel_took_last_time() -> None:
    """A slow reader's frames are not gathered again and again for a kernel that takes a
    few of them: after a partial write the next gathers about that much (16 KiB at least),
    doubling while the kernel takes everything."""
    outbox, sock = make(capacity=1000, sock=FakeSocket(room=0), max_bytes=1 << 30)
    for n in range(400):
        outbox.offer(message(n, data=b"x" * 998), lone=False)  # 1,000-byte frames
    sock.room = 5000
    assert outbox.write_queued() == 5000
    sock.room = 1 << 20
    outbox.write_queued()
    outbox.write_queued()
    assert sock.buffers == [263, 17, 33]  # 256 KiB, then 16 KiB, then 32 KiB


async def test_a_burst_is_counted_when_flushed_and_the_next_offer_past_the_bytes_is_full(
) -> None:
    """Burst offers only queue (the fan-out hot path); the burst's bytes are counted when
    it is flushed, or read: the outbox may pass `outbox_bytes` by one burst, no more."""
    outbox, sock = make(100, sock=FakeSocket(room=0), max_bytes=8)
    for n in range(4):
        assert outbox.offer(message(n), lone=False) is Offer.ACCEPTED  # 12 bytes queued
    assert outbox.queued_bytes == 12  # counted when read
    assert outbox.offer(message(4), lone=False) is Offer.FULL  # 12 >= 8: full now
    assert outbox.offer(message(4)) is Offer.FULL
    outbox.flush()  # the kernel takes nothing: all of it stays
    assert outbox.queued_bytes == 12
    assert drain(outbox, sock) == b"<0><1><2><3>" and outbox.queued_bytes == 0
    assert outbox.offer(message(5), lone=False) is Offer.ACCEPTED


async def test_a_burst_written_whole_leaves_nothing_counted() -> None:
    outbox, sock = make(max_bytes=100)
    outbox.answer(b"ok", more=True)  # counted at once
    burst = [message(n) for n in range(3)]
    for m in burst:
        outbox.offer(m, lone=False)
    outbox.flush(Burst(burst))  # not exactly the burst (the answer is first): gathered
    assert sock.written == b"ok<0><1><2>" and outbox.queued_bytes == 0
    for m in burst:
        outbox.offer(m, lone=False)
    assert outbox.queued_bytes == 9  # a read counts the burst so far...
    outbox.flush(Burst(burst))  # ...and the burst written whole uncounts it
    assert outbox.queued_bytes == 0 and len(outbox) == 0


async def test_a_burst_to_an_outbox_whose_writer_waits_is_counted_at_the_flush() -> None:
    outbox, _ = make(100, sock=FakeSocket(room=0), max_bytes=8)
    outbox.offer(message(0))  # the kernel takes nothing: the writer's turn
    assert outbox.writing
    burst = [message(n) for n in range(1, 4)]
    for m in burst:
        assert outbox.offer(m, lone=False) is Offer.ACCEPTED
    outbox.flush(Burst(burst))  # only wakes the writer, but counts the burst
    assert outbox._free == 8 - 12  # type: ignore[attr-defined]  (no read settled it)
    assert outbox.offer(message(4), lone=False) is Offer.FULL
