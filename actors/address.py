"""`Address`: the cloneable send side of a mailbox, and the only way to reach an actor.

`MailboxState` is what a mailbox and its addresses share: a bounded queue with at most one
receiving task parked on it, and the senders parked for room, in order. It is trio's
memory channel cut down to what actors use (one receiver, puts that report full or
stopped): an idle topic's mailbox costs a few hundred bytes instead of ~3 KiB (trio's
channel state, two channel objects, their task sets, and a 64-slot deque made up front),
and the deque is made only when a message has to wait (a parked receiver is handed it).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import Any, Generic, TypeVar

import trio
from trio.lowlevel import (
    Abort,
    Task,
    cancel_shielded_checkpoint,
    checkpoint_if_cancelled,
    current_task,
    reschedule,
    wait_task_rescheduled,
)

from .errors import ActorStopped, MailboxFull

T = TypeVar("T")


# `MailboxState.handed` when the parked receiver was woken without a message.
NOTHING: Any = object()


class MailboxState(Generic[T]):
    """The queue a mailbox and its addresses share (see the module docstring).

    Tasks are woken with `reschedule(task)` and find what concerns them here (`handed`
    for the receiver, their cell in `senders` for a sender), so no outcome objects are
    needed."""

    __slots__ = (
        "capacity", "closed", "handed", "items", "open_addresses", "receiver", "senders",
    )

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: deque[T] | None = None  # made when a message first has to wait
        self.receiver: Task | None = None  # the task parked in `Mailbox.receive`
        self.handed: T = NOTHING  # the message handed to it as it was woken
        # Parked for room, oldest first: each with its cell [message, taken].
        self.senders: OrderedDict[Task, list[Any]] | None = None
        self.closed = False  # the receiving side is closed: puts raise `ActorStopped`
        self.open_addresses = 1

    def put_nowait(self, message: T) -> None:
        """Hand `message` to the parked receiver, or queue it; `MailboxFull` past
        capacity, `ActorStopped` once the receiving side is closed."""
        if self.closed:
            raise ActorStopped("the actor has stopped")
        receiver = self.receiver
        if receiver is not None:  # parked, so nothing is queued: hand it over
            self.receiver = None
            self.handed = message
            reschedule(receiver)
            return
        items = self.items
        if items is None:
            items = self.items = deque()
        elif len(items) >= self.capacity:
            raise MailboxFull("the mailbox is full")
        items.append(message)

    def abort_receive(self, _: Any) -> Abort:
        """The parked receiver was cancelled: it is parked no more (nothing was handed)."""
        self.receiver = None
        return Abort.SUCCEEDED

    def take_sender(self) -> None:
        """Room was made: the oldest parked sender's message joins the queue."""
        senders = self.senders
        if senders:
            task, cell = senders.popitem(last=False)
            assert self.items is not None
            self.items.append(cell[0])
            cell[1] = True
            reschedule(task)

    def close_receiving(self) -> None:
        """Refuse every later put; drop what is queued; parked senders get `ActorStopped`,
        a parked receiver `trio.ClosedResourceError` (as trio's channels do)."""
        self.closed = True
        self.items = None
        senders, self.senders = self.senders, None
        for task in senders or ():
            reschedule(task)  # not taken: `tell` raises ActorStopped
        receiver, self.receiver = self.receiver, None
        if receiver is not None:
            reschedule(receiver)  # nothing handed: `receive` raises ClosedResourceError

    def address_closed(self) -> None:
        self.open_addresses -= 1
        receiver = self.receiver
        if not self.open_addresses and receiver is not None:  # parked: nothing is queued
            self.receiver = None
            reschedule(receiver)  # nothing handed: `receive` raises EndOfChannel


class Address(Generic[T]):
    """Where to send an actor messages.

    Three ways to put, and the choice is the put site's policy:
    `tell` waits for room (backpressure), `tell_within` waits at most a deadline and then
    raises `MailboxFull`, `tell_nowait` never waits and raises `MailboxFull` at once.
    All raise `ActorStopped` once the actor's mailbox is closed (or this handle is).
    """

    __slots__ = ("_closed", "_state")

    def __init__(self, state: MailboxState[T]) -> None:
        self._state = state
        self._closed = False

    async def tell(self, message: T) -> None:
        """Wait until the mailbox has room, then put `message` (parked senders are served
        in order). A checkpoint either way, as trio's `send` is."""
        await checkpoint_if_cancelled()
        try:
            self.tell_nowait(message)
        except MailboxFull:
            pass
        else:
            await cancel_shielded_checkpoint()
            return
        state = self._state
        task = current_task()
        if state.senders is None:
            state.senders = OrderedDict()
        cell = [message, False]
        state.senders[task] = cell

        def abort(_: Any) -> Abort:
            senders = state.senders
            if senders is not None:
                senders.pop(task, None)
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)
        if not cell[1]:
            raise ActorStopped("the actor has stopped")

    async def tell_within(self, message: T, seconds: float) -> None:
        """Put `message`, waiting at most `seconds` for room; `MailboxFull` if none came."""
        try:
            self.tell_nowait(message)
            return
        except MailboxFull:
            pass
        if seconds <= 0:
            raise MailboxFull("the mailbox is full")
        with trio.move_on_after(seconds if seconds != math.inf else 1e9):
            await self.tell(message)
            return
        raise MailboxFull(f"the mailbox stayed full for {seconds:g}s")

    def tell_nowait(self, message: T) -> None:
        """Put `message` now or raise `MailboxFull`; never waits."""
        if self._closed:
            raise ActorStopped("this address is closed")
        self._state.put_nowait(message)

    def clone(self) -> Address[T]:
        """A second handle that can be closed on its own."""
        if self._closed:
            raise ActorStopped("this address is closed")
        self._state.open_addresses += 1
        return Address(self._state)

    def close(self) -> None:
        """Close this handle (not the mailbox). Once every handle is closed, the mailbox's
        receiver gets `trio.EndOfChannel` after what is queued."""
        if not self._closed:
            self._closed = True
            self._state.address_closed()
