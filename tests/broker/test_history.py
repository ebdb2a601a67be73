"""A topic's retained history: contiguous offsets, bounded by count and by bytes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.formats import PayloadKind
from broker.history import History
from broker.messages import Message


def msg(offset: int, data: bytes = b"x") -> Message:
    return Message("t", offset, data, "application/octet-stream", PayloadKind.BINARY, 0.0)


def fill(history: History, sizes: list[int]) -> None:
    """Append one message per size, at the history's next offsets."""
    for size in sizes:
        history.append(msg(history.next_offset, b"x" * size))


def offsets(messages: list[Message]) -> list[int]:
    return [m.offset for m in messages]


def test_an_empty_history_starts_at_its_next_offset() -> None:
    history = History(max_messages=10, max_bytes=100, next_offset=40)
    assert len(history) == 0
    assert history.retained_bytes == 0
    assert (history.first_offset, history.next_offset) == (40, 40)
    assert history.read(0) == []


def test_offsets_continue_from_the_initial_next_offset() -> None:
    history = History(max_messages=10, max_bytes=100, next_offset=40)
    fill(history, [1, 1, 1])
    assert offsets(history.read(0)) == [40, 41, 42]
    assert (history.first_offset, history.next_offset) == (40, 43)


def test_count_bound_evicts_the_oldest_and_moves_first_offset() -> None:
    history = History(max_messages=3, max_bytes=1000)
    fill(history, [1, 1, 1])
    assert history.first_offset == 0
    fill(history, [1, 1])
    assert len(history) == 3
    assert (history.first_offset, history.next_offset) == (2, 5)
    assert offsets(history.read(0)) == [2, 3, 4]


def test_byte_bound_evicts_the_oldest_until_the_payloads_fit() -> None:
    history = History(max_messages=100, max_bytes=10)
    fill(history, [4, 4])
    assert history.retained_bytes == 8
    fill(history, [4])  # 12 bytes: the oldest goes
    assert offsets(history.read(0)) == [1, 2]
    assert history.retained_bytes == 8
    fill(history, [10])  # exactly the limit: everything older goes
    assert offsets(history.read(0)) == [3]
    assert history.retained_bytes == 10
    assert history.first_offset == 3


def test_a_message_larger_than_the_byte_bound_empties_the_history() -> None:
    history = History(max_messages=100, max_bytes=10)
    fill(history, [3, 3])
    fill(history, [11])
    assert len(history) == 0
    assert history.retained_bytes == 0
    assert (history.first_offset, history.next_offset) == (3, 3)
    assert history.read(0) == []
    fill(history, [2])
    assert offsets(history.read(0)) == [3]


def test_read_clamps_a_start_older_than_the_retained_window() -> None:
    history = History(max_messages=3, max_bytes=1000)
    fill(history, [1] * 6)
    assert offsets(history.read(0)) == [3, 4, 5]
    assert offsets(history.read(2)) == [3, 4, 5]
    assert offsets(history.read(-10)) == [3, 4, 5]


def test_read_starts_at_the_requested_offset_inside_the_window() -> None:
    history = History(max_messages=10, max_bytes=1000)
    fill(history, [1] * 6)
    assert offsets(history.read(4)) == [4, 5]
    assert offsets(history.read(5)) == [5]


def test_read_honours_its_limit() -> None:
    history = History(max_messages=10, max_bytes=1000)
    fill(history, [1] * 6)
    assert offsets(history.read(1, limit=2)) == [1, 2]
    assert offsets(history.read(4, limit=10)) == [4, 5]
    assert offsets(history.read(0, limit=1)) == [0]
    assert history.read(0, limit=0) == []


def test_read_past_the_end_returns_nothing() -> None:
    history = History(max_messages=10, max_bytes=1000)
    fill(history, [1] * 3)
    assert history.read(3) == []
    assert history.read(100) == []
    assert history.read(100, limit=5) == []


def test_read_returns_the_stored_message_objects() -> None:
    history = History(max_messages=10, max_bytes=1000)
    first, second = msg(0, b"ab"), msg(1, b"cd")
    history.append(first)
    history.append(second)
    read = history.read(0)
    assert read[0] is first
    assert read[1] is second


def test_a_zero_message_limit_keeps_nothing_but_offsets_advance() -> None:
    history = History(max_messages=0, max_bytes=1000, next_offset=7)
    fill(history, [1, 0, 5])
    assert len(history) == 0
    assert history.retained_bytes == 0
    assert (history.first_offset, history.next_offset) == (10, 10)
    assert history.read(0) == []


@pytest.mark.parametrize("size", [1, 5, 0])
def test_a_zero_byte_limit_keeps_nothing_but_offsets_advance(size: int) -> None:
    history = History(max_messages=1000, max_bytes=0, next_offset=7)
    fill(history, [size] * 3)
    assert len(history) == 0
    assert (history.first_offset, history.next_offset) == (10, 10)
    assert history.read(0) == []


@settings(deadline=None)
@given(
    max_messages=st.integers(min_value=0, max_value=6),
    max_bytes=st.integers(min_value=1, max_value=20),
    sizes=st.lists(st.integers(min_value=0, max_value=12), max_size=30),
)
def test_history_keeps_the_longest_suffix_within_both_bounds(
    max_messages: int, max_bytes: int, sizes: list[int]
) -> None:
    history = History(max_messages=max_messages, max_bytes=max_bytes)
    fill(history, sizes)
    kept = 0
    while (
        kept < len(sizes)
        and kept + 1 <= max_messages
        and sum(sizes[len(sizes) - kept - 1:]) <= max_bytes
    ):
        kept += 1
    expected = list(range(len(sizes) - kept, len(sizes)))
    assert offsets(history.read(0)) == expected
    assert len(history) == kept
    assert history.retained_bytes == sum(sizes[len(sizes) - kept:])
    assert history.next_offset == len(sizes)
    assert history.first_offset == (expected[0] if expected else len(sizes))
