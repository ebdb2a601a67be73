"""`Address`: the cloneable send side of a mailbox, and the only way to reach an actor."""

from __future__ import annotations

import math
from typing import Generic, TypeVar

import trio

from .errors import ActorStopped, MailboxFull

T = TypeVar("T")


class Address(Generic[T]):
    """Where to send an actor messages.

    Three ways to put, and the choice is the put site's policy:
    `tell` waits for room (backpressure), `tell_within` waits at most a deadline and then
    raises `MailboxFull`, `tell_nowait` never waits and raises `MailboxFull` at once.
    All raise `ActorStopped` once the actor's mailbox is closed.
    """

    __slots__ = ("_send",)

    def __init__(self, send: trio.MemorySendChannel[T]) -> None:
        self._send = send

    async def tell(self, message: T) -> None:
        """Wait until the mailbox has room, then put `message`."""
        try:
            await self._send.send(message)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ActorStopped("the actor has stopped") from exc

    async def tell_within(self, message: T, seconds: float) -> None:
        """Put `message`, waiting at most `seconds` for room; `MailboxFull` if none came."""
        try:
            self._send.send_nowait(message)
            return
        except trio.WouldBlock:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ActorStopped("the actor has stopped") from exc
        if seconds <= 0:
            raise MailboxFull("the mailbox is full")
        with trio.move_on_after(seconds if seconds != math.inf else 1e9):
            await self.tell(message)
            return
        raise MailboxFull(f"the mailbox stayed full for {seconds:g}s")

    def tell_nowait(self, message: T) -> None:
        """Put `message` now or raise `MailboxFull`; never waits."""
        try:
            self._send.send_nowait(message)
        except trio.WouldBlock as exc:
            raise MailboxFull("the mailbox is full") from exc
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ActorStopped("the actor has stopped") from exc

    def clone(self) -> Address[T]:
        """A second handle that can be closed on its own."""
        return Address(self._send.clone())

    def close(self) -> None:
        """Close this handle (not the mailbox)."""
        self._send.close()
