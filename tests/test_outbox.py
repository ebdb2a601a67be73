"""The connection outbox: fast path, batching, order, capacity, closing (no sockets)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from broker import ControlFrame, Gap, Message, Offer, Outbox
from broker.codec import PayloadKind
from broker.metrics import BrokerCounters
from broker.outbox import Burst


def message(offset: int, topic: str = "t") -> Message:
    return Message(topic, offset, b"%d" % offset, "text/plain", PayloadKind.TEXT, 0.0)


def render(m: Message) -> bytes:
    return b"<" + m.data + b">"


class FakeSocket:
    """`write_now` stand-in: takes up to `room` bytes per call, then would block."""

    def __init__(self, room: int = 1 << 20, error: OSError | None = None) -> None:
        self.room = room
        self.error = error
        self.written = b""
        self.calls = 0

    def write(self, data: bytes) -> int:
        self.calls += 1
        if self.error is not None:
            raise self.error
        if self.room == 0:
            raise BlockingIOError
        taken = data[: self.room]
        self.room -= len(taken)
        self.written += taken
        return len(taken)


async def drain(outbox: Outbox) -> bytes:
    """What the writer would send for everything queued now."""
    batch = await outbox.take(100)
    outbox.written()
    return b"".join(
        outbox.render(i) if isinstance(i, Message)
        else i.data if isinstance(i, ControlFrame) else i  # type: ignore[misc]
        for i in batch
    )


async def test_a_lone_message_to_an_idle_outbox_is_written_at_once() -> None:
    sock, counters = FakeSocket(), BrokerCounters()
    outbox = Outbox(4, render, counters, sock.write)
    assert outbox.offer(message(0)) is Offer.ACCEPTED
    assert sock.written == b"<0>"
    assert len(outbox) == 0 and counters.delivered == 1


async def test_a_burst_is_queued_for_one_write() -> None:
    sock = FakeSocket()
    outbox = Outbox(8, render, BrokerCounters(), sock.write)
    for n in range(3):
        assert outbox.offer(message(n), lone=False) is Offer.ACCEPTED
    assert sock.calls == 0
    assert await drain(outbox) == b"<0><1><2>"


async def test_a_flushed_burst_is_one_write_and_no_writer_wake() -> None:
    sock, counters = FakeSocket(), BrokerCounters()
    outbox = Outbox(8, render, counters, sock.write)
    for n in range(3):
        outbox.offer(message(n), lone=False)
    outbox.flush()
    assert (sock.written, sock.calls) == (b"<0><1><2>", 1)
    assert len(outbox) == 0 and counters.delivered == 3


async def test_what_a_flush_could_not_write_is_left_frame_by_frame_in_order() -> None:
    sock, counters = FakeSocket(room=5), BrokerCounters()
    outbox = Outbox(8, render, counters, sock.write)
    for n in range(3):
        outbox.offer(message(n), lone=False)
    outbox.flush()  # "<0><1" fits: one whole frame, one begun
    assert sock.written == b"<0><1" and counters.delivered == 1
    batch = await outbox.take(10)
    assert batch[0] == b">" and batch[1].offset == 2  # type: ignore[attr-defined]


async def test_outboxes_holding_exactly_a_burst_write_its_frames_joined_once() -> None:
    joins: list[int] = []

    def counting_render(m: Message) -> bytes:
        joins.append(m.offset)
        return render(m)

    sockets = [FakeSocket(), FakeSocket(), FakeSocket(room=5)]
    counters = BrokerCounters()
    outboxes = [Outbox(8, counting_render, counters, sock.write) for sock in sockets]
    burst = [message(n) for n in range(3)]
    for outbox in outboxes:
        for m in burst:
            outbox.offer(m, lone=False)
    shared = Burst(burst)
    for outbox in outboxes:
        outbox.flush(shared)
    assert [s.written for s in sockets] == [b"<0><1><2>", b"<0><1><2>", b"<0><1"]
    assert joins == [0, 1, 2]  # each frame rendered once, for all three outboxes
    assert counters.delivered == 3 + 3 + 1
    # The third kernel took 5 bytes: the rest of frame 1, then frame 2, for the writer.
    batch = await outboxes[2].take(10)
    assert batch[0] == b">" and batch[1] is burst[2]


async def test_an_outbox_holding_more_than_the_burst_writes_its_own_queue_in_order() -> None:
    sock = FakeSocket()
    outbox = Outbox(8, render, BrokerCounters(), sock.write)
    outbox.offer(message(9, "other"), lone=False)  # queued earlier by another topic
    burst = [message(n) for n in range(2)]
    for m in burst:
        outbox.offer(m, lone=False)
    outbox.flush(Burst(burst))
    assert sock.written == b"<9><0><1>"


async def test_a_reply_put_on_an_idle_outbox_is_written_at_once_and_not_counted() -> None:
    sock, counters = FakeSocket(), BrokerCounters()
    outbox = Outbox(8, render, counters, sock.write)
    await outbox.put(ControlFrame(b"ok"))
    outbox.offer(message(0), lone=False)
    await outbox.put(ControlFrame(b"ok2"))  # behind the queued message, in order
    assert sock.written == b"ok<0>ok2"
    assert counters.delivered == 1 and len(outbox) == 0


async def test_an_answer_from_another_task_is_written_at_once_when_nothing_is_queued() -> None:
    sock, counters = FakeSocket(), BrokerCounters()
    outbox = Outbox(8, render, counters, sock.write)
    outbox.answer(b"ok")
    assert sock.written == b"ok" and sock.calls == 1
    assert len(outbox) == 0 and counters.delivered == 0


async def test_an_answer_goes_behind_what_is_queued_and_past_capacity() -> None:
    sock, counters = FakeSocket(room=0), BrokerCounters()
    outbox = Outbox(1, render, counters, sock.write)
    assert outbox.offer(message(0)) is Offer.ACCEPTED  # the kernel took nothing
    outbox.answer(b"ok1")
    outbox.answer(b"ok2")  # never refused for room (one per publish the client made)
    assert len(outbox) == 3
    assert await drain(outbox) == b"<0>ok1ok2"


async def test_an_answer_waits_for_the_write_in_progress_and_keeps_a_begun_frame_first(
) -> None:
    sock = FakeSocket(room=0)
    outbox = Outbox(8, render, BrokerCounters(), sock.write)
    outbox.offer(message(0))
    batch = await outbox.take(100)  # the writer is writing <0>
    sock.room = 1 << 20
    outbox.answer(b"ok")
    assert sock.written == b""  # not in the middle of the writer's frame
    outbox.written()
    assert [outbox.render(m) for m in batch] == [b"<0>"]  # type: ignore[arg-type]
    assert await drain(outbox) == b"ok"
    sock.room = 1
    outbox.answer(b"ok2")  # the kernel takes one byte; the rest is written first
    outbox.offer(message(1), lone=False)
    assert sock.written == b"o"
    rest, queued = await outbox.take(10)
    assert rest == ControlFrame(b"k2") and queued.offset == 1  # type: ignore[attr-defined]


async def test_answers_with_more_to_follow_are_queued_then_written_in_one_write() -> None:
    sock, counters = FakeSocket(), BrokerCounters()
    outbox = Outbox(8, render, counters, sock.write)
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
    sock = FakeSocket()
    outbox = Outbox(8, render, BrokerCounters(), sock.write)
    outbox.close()
    outbox.answer(b"ok")
    assert sock.written == b"" and len(outbox) == 0


async def test_a_begun_reply_stays_a_reply_for_the_writer() -> None:
    sock, counters = FakeSocket(room=3), BrokerCounters()
    outbox = Outbox(8, render, counters, sock.write)
    await outbox.put(ControlFrame(b"hello"))
    assert sock.written == b"hel" and counters.delivered == 0
    assert await outbox.take(10) == [ControlFrame(b"lo")]


async def test_a_flush_stops_at_a_close_marker_and_leaves_it_to_the_writer() -> None:
    sock = FakeSocket()
    outbox = Outbox(8, render, BrokerCounters(), sock.write)
    reply = object()  # e.g. the connection's close marker
    outbox.offer(message(0), lone=False)
    outbox.offer_control(reply)
    outbox.offer(message(1), lone=False)
    outbox.flush()
    assert sock.written == b"<0>"
    batch = await outbox.take(10)
    assert batch[0] is reply and batch[1].offset == 1  # type: ignore[attr-defined]


async def test_what_the_kernel_did_not_take_is_written_first_by_the_writer() -> None:
    sock = FakeSocket(room=2)
    outbox = Outbox(8, render, BrokerCounters(), sock.write)
    outbox.offer(message(0))  # "<0" written at once, ">" left over
    outbox.offer(message(1))  # queue not empty: must not overtake the remainder
    assert sock.written == b"<0"  # (the kernel is still full)
    assert await drain(outbox) == b"><1>"


async def test_a_full_kernel_buffer_queues_the_whole_frame() -> None:
    sock = FakeSocket(room=0)
    outbox = Outbox(8, render, BrokerCounters(), sock.write)
    assert outbox.offer(message(0)) is Offer.ACCEPTED
    assert await drain(outbox) == b"<0>"


async def test_no_fast_path_while_the_writer_holds_a_batch() -> None:
    sock = FakeSocket(room=0)
    outbox = Outbox(8, render, BrokerCounters(), sock.write)
    outbox.offer(message(0))
    batch = await outbox.take(100)  # the writer is now writing
    sock.room = 1 << 20
    outbox.offer(message(1))
    assert sock.written == b""  # queued behind the batch in progress
    outbox.written()
    assert [outbox.render(m) for m in batch] == [b"<0>"]  # type: ignore[arg-type]
    assert await drain(outbox) == b"<1>"


async def test_a_broken_socket_closes_the_outbox() -> None:
    sock = FakeSocket(error=BrokenPipeError())
    outbox = Outbox(8, render, BrokerCounters(), sock.write)
    assert outbox.offer(message(0)) is Offer.CLOSED
    assert outbox.closed
    assert outbox.offer(message(1)) is Offer.CLOSED


async def test_capacity_is_counted_in_items_and_full_is_reported() -> None:
    outbox = Outbox(2, render, BrokerCounters())
    assert [outbox.offer(message(n)) for n in range(3)] == [
        Offer.ACCEPTED, Offer.ACCEPTED, Offer.FULL,
    ]
    assert outbox.offer_control("ok") is Offer.FULL
    assert await drain(outbox) == b"<0><1>"


async def test_put_waits_for_room_and_close_wakes_everyone() -> None:
    outbox = Outbox(1, render, BrokerCounters())
    outbox.offer(message(0))
    done: list[str] = []

    async def reply() -> None:
        await outbox.put(b"reply")
        done.append("put")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reply)
        await trio.testing.wait_all_tasks_blocked()
        assert done == []  # no room yet
        assert await drain(outbox) == b"<0>"
    assert done == ["put"]
    assert await drain(outbox) == b"reply"
    outbox.close()
    with pytest.raises(trio.EndOfChannel):
        await outbox.take(10)
    with pytest.raises(trio.ClosedResourceError):
        await outbox.put(b"late")


async def test_take_waits_for_an_offer() -> None:
    outbox = Outbox(4, render, BrokerCounters())
    async with trio.open_nursery() as nursery:
        taken: list[object] = []

        async def writer() -> None:
            taken.extend(await outbox.take(10))

        nursery.start_soon(writer)
        await trio.testing.wait_all_tasks_blocked()
        outbox.offer(message(7))
    assert [m.offset for m in taken] == [7]  # type: ignore[attr-defined]


async def test_drop_oldest_drops_only_that_topics_oldest_and_reports_a_gap_before_its_next(
) -> None:
    counters = BrokerCounters()
    outbox = Outbox(3, render, counters)
    outbox.offer(message(0, "b"))
    outbox.offer(message(0, "a"))
    outbox.offer(message(1, "a"))
    assert outbox.offer(message(2, "a")) is Offer.FULL
    outbox.drop_oldest(message(2, "a"))
    batch = await outbox.take(10)
    outbox.written()
    assert batch == [
        batch[0], Gap("a", 1, 0, 0), batch[2], batch[3],
    ]
    assert [(m.topic, m.offset) for m in (batch[0], batch[2], batch[3])] == [  # type: ignore[attr-defined]
        ("b", 0), ("a", 1), ("a", 2),
    ]
    assert counters.dropped == 1


async def test_drop_oldest_skips_the_new_message_when_none_of_its_topic_is_queued() -> None:
    outbox = Outbox(2, render, BrokerCounters())
    outbox.offer(message(0, "b"))
    outbox.offer(message(1, "b"))
    outbox.drop_oldest(message(5, "a"))  # nothing of "a" queued: 5 itself is skipped
    outbox.drop_oldest(message(6, "a"))
    assert await drain(outbox) == b"<0><1>"
    assert outbox.offer(message(7, "a")) is Offer.ACCEPTED  # queued, not fast-pathed
    batch = await outbox.take(10)
    assert batch[0] == Gap("a", 2, 5, 6)
    assert batch[1].offset == 7  # type: ignore[attr-defined]


async def test_wait_room_returns_once_the_writer_takes_a_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    outbox = Outbox(1, render, BrokerCounters())
    outbox.offer(message(0))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(outbox.wait_room)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(5)
        assert len(outbox) == 1  # still waiting: nothing was taken
        await drain(outbox)


async def test_queued_bytes_counts_frames_queued_and_the_rest_of_a_begun_frame() -> None:
    sock = FakeSocket(room=2)
    outbox = Outbox(8, render, BrokerCounters(), sock.write)
    assert outbox.queued_bytes == 0
    outbox.offer(message(10))  # "<1" written, "0>" left
    assert outbox.queued_bytes == 2
    outbox.offer(message(2), lone=False)
    outbox.answer(b"ok")
    assert outbox.queued_bytes == 2 + 3 + 2
    sock.room = 1 << 20
    outbox.flush()
    assert outbox.queued_bytes == 0 and sock.written == b"<10><2>ok"


async def test_queued_bytes_follows_drops_and_the_writers_batches() -> None:
    outbox = Outbox(2, render, BrokerCounters())
    outbox.offer(message(0, "a"))
    outbox.offer(message(1, "a"))
    assert outbox.queued_bytes == 6
    outbox.drop_oldest(message(22, "a"))
    assert outbox.queued_bytes == 3 + 4
    assert outbox.offer_control(ControlFrame(b"x")) is Offer.FULL
    batch = await outbox.take(10)
    assert outbox.queued_bytes == 7  # taken, not yet written: still held
    outbox.written()
    assert len(batch) == 3 and outbox.queued_bytes == 0


async def test_an_offer_past_outbox_bytes_is_full_but_an_empty_outbox_takes_any_frame(
) -> None:
    outbox = Outbox(100, render, BrokerCounters(), max_bytes=8)
    big = Message("t", 0, b"x" * 20, "text/plain", PayloadKind.TEXT, 0.0)
    assert outbox.offer(big) is Offer.ACCEPTED  # alone: never undeliverable
    assert outbox.offer(message(1)) is Offer.FULL
    await drain(outbox)
    assert outbox.offer(message(1)) is Offer.ACCEPTED
    assert outbox.offer(message(2)) is Offer.ACCEPTED
    assert outbox.offer(message(3)) is Offer.FULL  # 3 + 3 + 3 > 8
    assert outbox.offer_in_grace(message(3), 0.0, 1.0) is Offer.ACCEPTED  # up to 2 x 8
    assert outbox.offer_in_grace(message(4), 0.5, 1.0) is Offer.ACCEPTED
    assert outbox.offer_in_grace(message(5), 0.6, 1.0) is Offer.ACCEPTED
    assert outbox.queued_bytes == 15
    assert outbox.offer_in_grace(message(6), 0.7, 1.0) is Offer.FULL


async def test_drop_oldest_drops_as_many_of_the_topic_as_a_big_frame_needs() -> None:
    counters = BrokerCounters()
    outbox = Outbox(100, render, counters, max_bytes=11)
    for n in range(3):
        outbox.offer(message(n, "a"))
    big = Message("a", 3, b"x" * 6, "text/plain", PayloadKind.TEXT, 0.0)
    assert outbox.offer(big) is Offer.FULL
    outbox.drop_oldest(big)  # 9 + 8 bytes: two of "a" must go (3 + 8 fits 11)
    assert counters.dropped == 2 and outbox.queued_bytes == 3 + 8
    batch = await outbox.take(10)
    assert batch[0] == Gap("a", 2, 0, 1)
