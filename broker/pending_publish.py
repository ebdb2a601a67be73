"""Publishes answered later: `PendingPublish`, and the `PublishDeadlines` actor that
withdraws those a topic did not answer within `publish_timeout`.

A WebSocket publish is handed to its topic without waiting (`Broker.publish_soon`): the
connection goes back to reading, and the topic answers on its own task by calling
`PendingPublish.send`, which hands the offset to the connection's callback (it writes
the `ok`). That saves the connection a task switch and a wait per publish
(`python -m benchmarks ws-publish`). A topic that is idle takes the publish at once, on
the connection's task (`TopicActor.publish_now`): answered before `publish_soon`
returns, with no deadline to watch.

The promise of a waiting publish still holds: an answer within `publish_timeout`, and a
`TopicBusy` answer means the message was not accepted. Each pending publish is also told
to `PublishDeadlines`, which looks at them every `tick`; one still unanswered past its
deadline is withdrawn (the topic skips it when it gets there) and answered `TopicBusy`.
So a busy answer comes between `publish_timeout` and `publish_timeout + tick`.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import trio

from actors import Address, Mailbox

from .errors import BrokerError, Unavailable

log = logging.getLogger("broker")

# How often the deadlines actor looks for expired publishes, at most (and at least a tenth
# of the publish timeout, so a short timeout is still kept closely).
MAX_TICK = 0.05
# Pending publishes told to the deadlines actor between two looks; when full, publishers
# wait for their answers instead (`Broker.publish`).
DEADLINES_MAILBOX = 65536


class PendingPublish:
    """A publish handed to its topic, answered once: by the topic (`send`, `fail`) or, when
    its deadline passes first, by `PublishDeadlines` (`expire`)."""

    __slots__ = (
        "_on_answer", "_on_settled", "answered", "cancelled", "deadline", "started", "topic",
    )

    def __init__(
        self,
        topic: str,
        deadline: float,
        on_answer: Callable[[int | BrokerError], object],
        on_settled: Callable[[PendingPublish, bool], object],
    ) -> None:
        self.topic = topic
        self.deadline = deadline  # trio time
        self.started = time.perf_counter()
        self._on_answer = on_answer
        # The broker's bookkeeping (in-flight count; latency of accepted publishes), told
        # whether the message was accepted, in the same step as the answer.
        self._on_settled = on_settled
        self.answered = False
        self.cancelled = False

    def send(self, offset: int) -> None:
        """The topic accepted the message at `offset`."""
        if not self.answered:
            self.answered = True
            self._tell(offset)  # first: the publisher's answer is the critical path
            self._on_settled(self, True)

    def fail(self, error: BaseException) -> None:
        """The topic could not handle the request (it crashed)."""
        if not self.answered:
            self.answered = True
            self._on_settled(self, False)
            self._tell(error if isinstance(error, BrokerError) else Unavailable(str(error)))

    def expire(self, error: BrokerError) -> None:
        """Past the deadline, unanswered: withdraw it (the topic will skip it) and answer
        `error`. Does nothing once answered."""
        if not self.answered:
            self.answered = True
            self.cancelled = True
            self._on_settled(self, False)
            self._tell(error)

    def _tell(self, outcome: int | BrokerError) -> None:
        """Give the answer; a failing callback is the asker's problem, never the answering
        actor's (it runs on the topic's task)."""
        try:
            self._on_answer(outcome)
        except Exception:
            log.exception("answering a publish to %r failed", self.topic)

    def withdraw(self) -> None:
        """Never handed to the topic after all: forget it, with no answer."""
        self.answered = True
        self.cancelled = True


class PublishDeadlines:
    """The actor that answers pending publishes whose deadline passed (see the module
    docstring). Deadlines are told in the order they were set, so they are in order:
    the watch list is a queue, and a look stops at the first publish not yet due."""

    def __init__(
        self,
        publish_timeout: float,
        busy: Callable[[str], BrokerError],
        capacity: int = DEADLINES_MAILBOX,
    ) -> None:
        self.tick = min(MAX_TICK, publish_timeout / 10)
        self._busy = busy
        self._mailbox: Mailbox[PendingPublish] = Mailbox(capacity)
        self.address: Address[PendingPublish] = self._mailbox.address
        self._watched: deque[PendingPublish] = deque()

    async def run(self, *, task_status: trio.TaskStatus[Address[PendingPublish]]) -> None:
        """Wait for a pending publish; then look every `tick` until none is left unanswered.

        While publishes keep coming the actor is not woken by each of them: it takes
        what was told since its last look in one go.
        """
        task_status.started(self.address)
        watched = self._watched
        while True:
            if not watched:
                watched.append(await self._mailbox.receive())
            await trio.sleep(self.tick)
            self._take_told()
            self._expire(trio.current_time())

    def _take_told(self) -> None:
        receive_nowait = self._mailbox.receive_nowait
        watched = self._watched
        while True:
            try:
                watched.append(receive_nowait())
            except trio.WouldBlock:
                return

    def _expire(self, now: float) -> None:
        """Forget answered publishes from the front; answer those past their deadline."""
        watched = self._watched
        while watched:
            pending = watched[0]
            if not pending.answered:
                if pending.deadline > now:
                    return
                pending.expire(self._busy(pending.topic))
            watched.popleft()

    @property
    def watched(self) -> int:
        """Pending publishes this actor holds (answered ones until its next look)."""
        return len(self._watched) + self._mailbox.depth


__all__ = ["DEADLINES_MAILBOX", "MAX_TICK", "PendingPublish", "PublishDeadlines"]
