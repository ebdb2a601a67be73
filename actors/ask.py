"""Request/reply between actors without shared state: a one-shot `Reply` and `ask`.

`Reply` is an event plus a slot rather than a memory channel pair: an answer is given at
most once, and building one costs a fraction of a channel (it sits on the publish path).

Waiting with a deadline (`wait_answered_by`) yields to the scheduler twice before it arms
one: an actor with nothing queued answers within those rounds, and a cancel scope with a
deadline costs more than the rest of the exchange (measured: ~15 us against a ~16 us round
trip; `python -m benchmarks ws-publish`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

import trio
from trio.lowlevel import checkpoint

from .address import Address
from .errors import AskTimeout, MailboxFull

R = TypeVar("R")
R_contra = TypeVar("R_contra", contravariant=True)
M = TypeVar("M")

# Scheduler rounds `wait_answered_by` gives the actor before arming a deadline. The asker
# and the actor it just woke are both runnable; trio may run them in either order within
# a round, so the answer of an idle actor is there after one round or, at most, two.
SPIN_ROUNDS = 2


class Answer(Protocol[R_contra]):
    """What an actor answers a request through: a `Reply` the asker waits on, or an
    object that acts on the answer itself, on the answering actor's task (an asker that
    does not wait, such as a connection that writes the answer to its client)."""

    @property
    def cancelled(self) -> bool:
        """The asker gave up: the actor should not act on the request any more."""
        ...

    def send(self, value: R_contra) -> None: ...

    def fail(self, error: BaseException) -> None: ...


class Reply(Generic[R]):
    """A one-shot answer: the actor calls `send` or `fail` once; the asker `wait`s."""

    __slots__ = ("_cancelled", "_error", "_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: R  # set by `send`; read only once answered, and not by `fail`
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
        return self._value

    async def wait_answered_by(self, deadline: float) -> bool:
        """Wait until answered or `deadline` (trio time) passes; True if answered.

        Cheap when the actor answers at once: see `SPIN_ROUNDS` and the module docstring.
        """
        event = self._event
        for _ in range(SPIN_ROUNDS):
            if event.is_set():
                return True
            await checkpoint()
        if not event.is_set():
            with trio.move_on_at(deadline):
                await event.wait()
        return event.is_set()

    async def wait(self) -> R:
        """Wait for the answer; re-raises the exception given to `fail`."""
        await self._event.wait()
        if self._error is not None:
            raise self._error
        return self._value


async def ask(
    address: Address[M], build: Callable[[Reply[R]], M], *, timeout: float
) -> R:
    """Send `build(reply)` to `address` and wait for the answer.

    The whole exchange (waiting for mailbox room and for the answer) is bounded by
    `timeout`; past it `AskTimeout` is raised. `ActorStopped` if the actor is gone.
    """
    reply: Reply[R] = Reply()
    deadline = trio.current_time() + timeout
    try:
        await address.tell_within(build(reply), timeout)
    except MailboxFull:
        raise AskTimeout(f"no room in the mailbox within {timeout:g}s") from None
    if await reply.wait_answered_by(deadline):
        return reply.result()
    raise AskTimeout(f"no answer within {timeout:g}s")
