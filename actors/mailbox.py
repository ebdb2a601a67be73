"""A bounded mailbox: the trio memory channel pair an actor receives from.

The actor keeps the `Mailbox` (the receiving side); everyone else holds only its
`Address` (the sending side). Capacity is always finite: what happens when it is full
is decided by whoever puts (see `Address.tell` / `Address.tell_nowait`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from .address import Address

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    """A snapshot of a mailbox: how full it is and who is waiting on it."""

    capacity: int
    depth: int
    senders_waiting: int
    receivers_waiting: int


class Mailbox(Generic[T]):
    """The receiving side of a bounded channel, owned by exactly one actor task."""

    __slots__ = ("_receive", "_send", "address", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a mailbox needs a capacity of at least 1 (no unbounded mailboxes)")
        self.capacity = capacity
        self._send, self._receive = trio.open_memory_channel[T](capacity)
        self.address: Address[T] = Address(self._send)

    async def receive(self) -> T:
        """Wait for the next message. Raises `trio.EndOfChannel` once closed and empty."""
        return await self._receive.receive()

    def receive_nowait(self) -> T:
        """Take the next message if one is waiting; raises `trio.WouldBlock` otherwise."""
        return self._receive.receive_nowait()

    def __aiter__(self) -> AsyncIterator[T]:
        return self._receive.__aiter__()

    def close(self) -> None:
        """Stop receiving: later puts raise `ActorStopped`. Queued messages are discarded."""
        self._receive.close()

    def close_senders(self) -> None:
        """Close the mailbox's own send handle, so iteration ends once every clone is closed."""
        self._send.close()

    @property
    def depth(self) -> int:
        """Messages waiting now (cheaper than `statistics()` on hot paths)."""
        return self._receive.statistics().current_buffer_used

    @property
    def receiver_waiting(self) -> bool:
        """True while the owner is parked in `receive` with nothing handed to it yet: a put
        now would be the next thing it takes."""
        return self._receive.statistics().tasks_waiting_receive > 0

    def statistics(self) -> MailboxStatistics:
        stats = self._receive.statistics()
        return MailboxStatistics(
            capacity=self.capacity,
            depth=stats.current_buffer_used,
            senders_waiting=stats.tasks_waiting_send,
            receivers_waiting=stats.tasks_waiting_receive,
        )
