"""The domain half of a connection: what topics see of a subscriber.

A `Subscriber` is an id, a client name and the connection's bounded `Outbox`. Topics offer
messages to the outbox (a topic never waits for one subscriber) and, when it is full, apply
their slow-consumer policy, which may `evict`. The socket side lives in
`gateways/websocket/listener.py`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass

from .outbox import Outbox
from .policies import CloseReason

_ids = itertools.count(1)


def next_connection_id() -> int:
    """Process-unique connection ids (1, 2, ...), shown in presence listings."""
    return next(_ids)


@dataclass(frozen=True, slots=True)
class SubscriberInfo:
    """A subscriber as presence listings show it."""

    connection_id: int
    client: str
    since: float


class Subscriber:
    """A connection as topics see it: topics use `outbox.offer` and `evict` only."""

    __slots__ = ("_on_evict", "client", "evicted", "id", "outbox", "since")

    def __init__(
        self,
        connection_id: int,
        client: str,
        outbox: Outbox,
        on_evict: Callable[[CloseReason], None],
    ) -> None:
        self.id = connection_id
        self.client = client
        self.since = time.time()
        self.outbox = outbox
        self._on_evict = on_evict
        self.evicted = False

    def evict(self, reason: CloseReason) -> None:
        """Tell the connection to close for `reason` (called by a topic's policy, or by
        the memory budget shedding); the connection closes its outbox and drops what it
        queued at once."""
        self.evicted = True
        self._on_evict(reason)

    @property
    def queued_bytes(self) -> int:
        """Bytes its outbox holds for the connection (what shedding it would release)."""
        return self.outbox.queued_bytes

    def info(self) -> SubscriberInfo:
        return SubscriberInfo(self.id, self.client, self.since)


class OpenConnections:
    """The connections open now, by id: told by the gateway as they open and close; read
    by metrics and by the memory budget (which weighs and sheds among them)."""

    __slots__ = ("_by_id",)

    def __init__(self) -> None:
        self._by_id: dict[int, Subscriber] = {}

    def opened(self, subscriber: Subscriber) -> None:
        self._by_id[subscriber.id] = subscriber

    def closed(self, subscriber: Subscriber) -> None:
        self._by_id.pop(subscriber.id, None)

    def __len__(self) -> int:
        return len(self._by_id)

    def subscribers(self) -> list[Subscriber]:
        return list(self._by_id.values())

    def queued_bytes(self) -> int:
        """Bytes all their outboxes hold (one walk: the memory budget's look)."""
        return sum(s.outbox.queued_bytes for s in self._by_id.values())
