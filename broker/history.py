"""A topic's retained messages: a ring bounded by message count and by bytes held.

The bytes of a message are all it holds (`Message.retained_bytes`): its payload, the
rendering made at publish, and the frames cached on it for each wire format.
"""

from __future__ import annotations

from collections import deque

from .messages import Message
from .metrics import BrokerCounters


class History:
    """Retained messages, oldest first, with contiguous offsets.

    Appending past either bound evicts the oldest messages. A limit of 0 keeps nothing.
    A frame cached on a retained message after its append (by a subscriber's connection,
    `Message.rendered`) is counted when it is made (`count_frame`) and evicted for by the
    next append: between two appends the count may pass `max_bytes` by the frames made
    since, at most two per message (one per wire format).

    `counters.retained_bytes` (the memory budget's figure for all topics) moves with every
    change of the count, here and nowhere else, so it cannot drift from the histories.
    """

    __slots__ = ("_bytes", "_counters", "_messages", "max_bytes", "max_messages", "next_offset")

    def __init__(self, max_messages: int, max_bytes: int, next_offset: int = 0,
                 counters: BrokerCounters | None = None) -> None:
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._messages: deque[Message] = deque()
        self._bytes = 0
        self.next_offset = next_offset
        self._counters = counters if counters is not None else BrokerCounters()

    def __len__(self) -> int:
        return len(self._messages)

    @property
    def retained_bytes(self) -> int:
        return self._bytes

    @property
    def first_offset(self) -> int:
        """The oldest offset still retained (== next_offset when nothing is retained)."""
        return self._messages[0].offset if self._messages else self.next_offset

    def append(self, message: Message) -> None:
        self.next_offset = message.offset + 1
        size = message.retained_bytes
        if self.max_messages <= 0 or self.max_bytes <= 0 or size > self.max_bytes:
            self._evict(len(self._messages))
            return
        self._messages.append(message)
        message._retained_by = self
        self._bytes += size
        self._counters.retained_bytes += size
        while len(self._messages) > self.max_messages or self._bytes > self.max_bytes:
            self._evict(1)

    def count_frame(self, size: int) -> None:
        """A retained message cached a frame of `size` bytes (`Message.rendered`)."""
        self._bytes += size
        self._counters.retained_bytes += size

    def clear(self) -> None:
        """Let every retained message go (a retired topic releases its history at once)."""
        self._evict(len(self._messages))

    def _evict(self, count: int) -> None:
        for _ in range(count):
            message = self._messages.popleft()
            message._retained_by = None
            size = message.retained_bytes
            self._bytes -= size
            self._counters.retained_bytes -= size

    def read(self, start: int, limit: int | None = None) -> list[Message]:
        """Messages from offset `start` (clamped to the retained window), at most `limit`."""
        first = self.first_offset
        index = max(start, first) - first
        if index >= len(self._messages):
            return []
        stop = len(self._messages) if limit is None else min(len(self._messages), index + limit)
        return [self._messages[i] for i in range(index, stop)]
