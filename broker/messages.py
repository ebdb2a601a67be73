"""What flows between actors: the published `Message` and the topic's request types.

Requests are small frozen dataclasses, a closed set per actor, dispatched with `match`.
`Message` is immutable in everything but its cache of rendered wire frames, which lets
each wire format be encoded once per message, never once per subscriber. What a message
holds (payload, rendering, cached frames) is counted in its topic's `history_bytes` while
the topic retains it (`History`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import trio

from actors import Answer, Reply

from .formats import PayloadKind

if TYPE_CHECKING:
    from .connection import Subscriber
    from .history import History
    from .outbox_items import ControlFrame


@final  # outboxes tell their items apart by `type(item) is Message`
class Message:
    """One published message with its offset. Shared by every subscriber, never copied.

    `rendering` is the payload in the other format when it was made at publish (a CBOR
    payload's JSON; see `rendering`), else None.
    """

    __slots__ = (
        "_rendered", "_retained_by", "content_type", "data", "kind", "offset", "rendering",
        "timestamp", "topic",
    )

    def __init__(
        self,
        topic: str,
        offset: int,
        data: bytes,
        content_type: str,
        kind: PayloadKind,
        timestamp: float,
        rendering: bytes | None = None,
    ) -> None:
        self.topic = topic
        self.offset = offset
        self.data = data
        self.content_type = content_type
        self.kind = kind
        self.timestamp = timestamp
        self.rendering = rendering
        self._rendered: dict[object, bytes] = {}
        self._retained_by: History | None = None

    def rendered(self, render: Callable[[Message], bytes]) -> bytes:
        """The bytes `render` makes of this message, computed on first use and cached.

        `render` is the cache key, so pass one long-lived function per wire format. A frame
        cached while a history retains the message is added to its retained bytes.
        """
        frame = self._rendered.get(render)
        if frame is None:
            frame = self._rendered[render] = render(self)
            if self._retained_by is not None:
                self._retained_by.count_frame(len(frame))
        return frame

    @property
    def retained_bytes(self) -> int:
        """What this message holds: payload, rendering and cached frames."""
        size = len(self.data)
        if self.rendering is not None:
            size += len(self.rendering)
        for frame in self._rendered.values():
            size += len(frame)
        return size

    def __repr__(self) -> str:
        return f"Message({self.topic!r}, offset={self.offset}, {len(self.data)} bytes)"


# On the publish path, per message: `slots` without `frozen` (a frozen dataclass's
# `__init__` sets each field through `object.__setattr__`, ~0.1 us a field; measured in
# `python -m benchmarks ws-publish`). Never mutated after creation all the same.
@dataclass(slots=True)
class Payload:
    """A validated payload waiting for an offset."""

    data: bytes
    content_type: str
    kind: PayloadKind
    # The payload in the other format when made at publish (a CBOR payload's JSON,
    # `codec.checked_payload`); None: made when a frame first needs it.
    rendering: bytes | None = None


# Requests a TopicActor accepts.


@final  # told apart from a `PublishBatch` by `type(request) is Publish`
@dataclass(slots=True)  # per message: not frozen, see `Payload`
class Publish:
    """One payload to accept; answered with its offset on a `Reply` (a waiting publisher)
    or a `PendingPublish` (one that is told later: WebSocket publishes)."""

    payload: Payload
    reply: Answer[int]


@dataclass(frozen=True, slots=True)
class PublishBatch:
    """Payloads for one topic from one bulk publish: consecutive offsets, one reply (the
    first offset); accepted or withdrawn together. One message instead of one per
    payload (`python -m benchmarks bulk`)."""

    payloads: tuple[Payload, ...]
    reply: Reply[int]


@dataclass(frozen=True, slots=True)
class Subscribe:
    subscriber: Subscriber
    pattern: str
    start: int | str
    # Renders the `ok` frame; the topic queues it before any replayed message.
    ack: Callable[[SubscribeResult], ControlFrame] | None
    reply: Reply[SubscribeResult] | None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    subscriber_id: int
    pattern: str
    reply: Reply[bool] | None


@dataclass(frozen=True, slots=True)
class ReadHistory:
    start: int
    limit: int
    reply: Reply[HistoryPage]


@dataclass(frozen=True, slots=True)
class Flush:
    """Answered once everything queued before it has been processed."""

    reply: Reply[None]


@dataclass(frozen=True, slots=True)
class Crash:
    """A poison message: the topic raises while handling it, so its supervisor sees a
    crash on the topic's own task. Fault injection in tests, and how a publish step that
    failed on a publisher's task (`TopicActor.publish_now`) is reported."""

    error: str


@dataclass(frozen=True, slots=True)
class Pause:
    """Test-only: the topic waits for `resume` before taking its next request (fault
    injection to make a mailbox fill up deterministically)."""

    resume: trio.Event


@dataclass(frozen=True, slots=True)
class IdleTick:
    """From the directory, when the topic's `last_active` is `topic_idle_seconds` old: forget
    closed subscribers, and retire if nobody is left (see `TopicDirectory`)."""


TopicRequest = (
    Publish | PublishBatch | Subscribe | Unsubscribe | ReadHistory | Flush | Crash | Pause
    | IdleTick
)


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """Where a subscription starts: the first offset it will get, and the topic's next."""

    first_offset: int
    next_offset: int
    replayed: int


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A slice of retained history, and where retained history starts and ends."""

    messages: tuple[Message, ...]
    first_retained: int
    next_offset: int
