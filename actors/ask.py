"""Request/reply between actors without shared state: a one-shot `Reply` and `ask`.

`Reply` is an event plus a slot rather than a memory channel pair: an answer is given at
most once, and building one costs a fraction of a channel (it sits on the publish path).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

import trio

from .address import Address
from .errors import AskTimeout

R = TypeVar("R")
M = TypeVar("M")

_UNSET = object()


class Reply(Generic[R]):
    """A one-shot answer: the actor calls `send` or `fail` once; the asker `wait`s."""

    __slots__ = ("_cancelled", "_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: object = _UNSET
        self._error: BaseException | None = None
        self._cancelled = False

    @property
    def answered(self) -> bool:
        return self._event.is_set()

    @property
    def cancelled(self) -> bool:
        """The asker gave up: an actor should not act on this request any more."""
        return self._cancelled

    def cancel(self) -> bool:
        """Withdraw the question. True if withdrawn; False if it was answered already (then
        `wait` returns the answer). Lets a caller promise "not done" after a timeout."""
        if self._event.is_set():
            return False
        self._cancelled = True
        return True

    def send(self, value: R) -> None:
        """Answer with `value`. A second answer is ignored (the first one won)."""
        if not self._event.is_set():
            self._value = value
            self._event.set()

    def fail(self, error: BaseException) -> None:
        """Answer with an exception, raised in the asker by `wait`."""
        if not self._event.is_set():
            self._error = error
            self._event.set()

    def result(self) -> R:
        """The answer given (raising the exception given to `fail`); only once `answered`."""
        assert self._event.is_set(), "no answer yet"
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    async def wait_answered(self) -> None:
        """Wait until answered (or the caller's deadline); raises nothing of the answer's."""
        await self._event.wait()

    async def wait(self) -> R:
        """Wait for the answer; re-raises the exception given to `fail`."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]


async def ask(
    address: Address[M], build: Callable[[Reply[R]], M], *, timeout: float
) -> R:
    """Send `build(reply)` to `address` and wait for the answer.

    The whole exchange (waiting for mailbox room and for the answer) is bounded by
    `timeout`; past it `AskTimeout` is raised. `ActorStopped` if the actor is gone.
    """
    reply: Reply[R] = Reply()
    with trio.move_on_after(timeout):
        await address.tell(build(reply))
        return await reply.wait()
    raise AskTimeout(f"no answer within {timeout:g}s")
