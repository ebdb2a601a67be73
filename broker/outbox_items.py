"""What an `Outbox` holds and answers: offer outcomes, replies, gap reports, a topic's
burst, and the size an item holds for its connection (`Outbox.queued_bytes`)."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import final

from .messages import Message


class Offer(enum.Enum):
    """What happened to a frame offered to an outbox."""

    ACCEPTED = "accepted"
    FULL = "full"
    CLOSED = "closed"


@final  # outboxes tell their items apart by `type(item) is ControlFrame`
@dataclass(frozen=True, slots=True)
class ControlFrame:
    """An outbox item that is not a message (a reply such as `ok`): written, not counted."""

    data: bytes


@dataclass(slots=True)
class Gap:
    """Messages of `topic` dropped for this subscriber (drop-oldest policy), reported
    in-band just before the topic's next message."""

    topic: str
    skipped: int
    first: int
    last: int


class Burst:
    """Messages a topic forwarded in one turn, and their frames joined once per wire
    format (every subscriber whose outbox holds just these writes the same bytes)."""

    __slots__ = ("_joined", "first", "last", "messages")

    def __init__(self, messages: list[Message]) -> None:
        self.messages = messages
        self.first = messages[0]
        self.last = messages[-1]
        self._joined: dict[object, bytes] = {}

    def joined(self, render: Callable[[Message], bytes]) -> bytes:
        data = self._joined.get(render)
        if data is None:
            data = self._joined[render] = b"".join(m.rendered(render) for m in self.messages)
        return data


# What the queue holds: a Message (its frame not begun), a ControlFrame (a reply, or the
# rest of a begun one), or a memoryview (the rest of a begun message frame: a view of the
# shared frame, not a copy).
Item = Message | ControlFrame | memoryview


def item_size(item: object, render: Callable[[Message], bytes]) -> int:
    """Bytes an outbox item holds for its connection (see `Outbox.queued_bytes`); for
    the slow paths (the message paths count inline)."""
    if type(item) is Message:
        return len(item.rendered(render))
    if type(item) is ControlFrame:
        return len(item.data)
    if type(item) is memoryview or type(item) is bytes:
        return len(item)
    return 0  # an object a test queues


__all__ = ["Burst", "ControlFrame", "Gap", "Item", "Offer", "item_size"]
