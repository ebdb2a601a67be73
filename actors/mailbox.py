"""A bounded mailbox: the queue an actor receives from (see `MailboxState` for why not
trio's memory channel, which it behaves like).

The actor keeps the `Mailbox` (the receiving side); everyone else holds only its
`Address` (the sending side). Capacity is always finite: what happens when it is full
is decided by whoever puts (see `Address.tell` / `Address.tell_nowait`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio
from trio.lowlevel import (
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    current_task,
    wait_task_rescheduled,
)

from .address import NOTHING, Address, MailboxState

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class MailboxStatistics:
    """A snapshot of a mailbox: how full it is and who is waiting on it."""

    capacity: int
    depth: int
    senders_waiting: int
    receivers_waiting: int


class Mailbox(Generic[T]):
    """The receiving side of a bounded queue, owned by exactly one actor task (one task
    receives at a time). The queue is `MailboxState`, shared with the addresses."""

    __slots__ = ("_state", "address", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a mailbox needs a capacity of at least 1 (no unbounded mailboxes)")
        self.capacity = capacity
        self._state: MailboxState[T] = MailboxState(capacity)
        self.address: Address[T] = Address(self._state)

    async def receive(self) -> T:
        """Wait for the next message. Raises `trio.EndOfChannel` once every address is
        closed and nothing is queued, `trio.ClosedResourceError` once closed. A checkpoint
        either way, as trio's `receive` is."""
        await checkpoint_if_cancelled()
        try:
            message = self.receive_nowait()
        except trio.WouldBlock:
            pass
        else:
            await cancel_shielded_checkpoint()
            return message
        state = self._state
        if state.receiver is not None:
            raise trio.BusyResourceError("another task is receiving from this mailbox")
        state.receiver = current_task()
        await wait_task_rescheduled(state.abort_receive)  # a bound method: no closure
        message, state.handed = state.handed, NOTHING
        if message is NOTHING:  # woken with nothing: closed, or every address closed
            if state.closed:
                raise trio.ClosedResourceError("the mailbox is closed")
            raise trio.EndOfChannel
        return message

    def receive_nowait(self) -> T:
        """Take the next message if one is waiting; raises `trio.WouldBlock` otherwise."""
        state = self._state
        items = state.items
        if items:
            message = items.popleft()
            if state.senders:
                state.take_sender()  # room: the oldest parked sender's message joins
            elif not items:
                state.items = None  # an idle actor keeps no deque (624 bytes)
            return message
        if state.closed:
            raise trio.ClosedResourceError("the mailbox is closed")
        if not state.open_addresses:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def __aiter__(self) -> AsyncIterator[T]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[T]:
        while True:
            try:
                yield await self.receive()
            except trio.EndOfChannel:
                return

    def close(self) -> None:
        """Stop receiving: later puts raise `ActorStopped`. Queued messages are discarded."""
        self._state.close_receiving()

    def close_senders(self) -> None:
        """Close the mailbox's own address, so iteration ends once every clone is closed."""
        self.address.close()

    @property
    def depth(self) -> int:
        """Messages waiting now (cheaper than `statistics()` on hot paths)."""
        items = self._state.items
        return len(items) if items else 0

    @property
    def receiver_waiting(self) -> bool:
        """True while the owner is parked in `receive` with nothing handed to it yet: a put
        now would be the next thing it takes."""
        return self._state.receiver is not None

    def statistics(self) -> MailboxStatistics:
        state = self._state
        return MailboxStatistics(
            capacity=self.capacity,
            depth=self.depth,
            senders_waiting=len(state.senders) if state.senders else 0,
            receivers_waiting=0 if state.receiver is None else 1,
        )
