"""`ConnectionSlots`: what one WebSocket connection holds, declared once for its parts.

`WebSocketConnection` is one object (one set of `__slots__`, no `__dict__`) written as
three classes, one concept each: `FrameIntake` (`intake`: client frames in, the fast path
or wsproto, the receive deadline), `RequestDispatch` (`dispatch`: publish, subscribe,
unsubscribe, ping) and the connection's own lifecycle, task and writing (`connection`).
They are mixins over this class: it declares the slots and their types, each part reads
and writes them as its own, and the connection's `__init__` sets them. (A mixin with
empty `__slots__` of its own could not assign a slot in mypy's eyes; a common base that
declares them can.)
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio
from wsproto.connection import Connection

from broker import Broker, CloseReason, ControlFrame, Outbox, Settings, Subscriber, WireFormat

from .reader import FrameBoundaries


class ConnectionSlots:
    """The slots of a `WebSocketConnection` and their types, grouped by the part that
    writes them (the connection's `__init__` sets every one). No behaviour of its own."""

    __slots__ = (
        "_answered",
        "_boundaries",
        "_broker",
        "_capacity",
        "_close_requested",
        "_corked",
        "_deadline",
        "_evicted",
        "_format",
        "_frame_deadline",
        "_frame_started",
        "_frame_wrap",
        "_invalid",
        "_max_frame",
        "_more_input",
        "_need",
        "_opening",
        "_parts",
        "_patterns",
        "_pending",
        "_reading",
        "_settings",
        "_size",
        "_sock",
        "_unanswered",
        "_wait",
        "_wake",
        "_ws",
        "close_reason",
        "id",
        "outbox",
        "subscriber",
    )

    # What it serves with (set once).
    id: int
    subscriber: Subscriber
    outbox: Outbox
    _sock: socket.socket
    _broker: Broker
    _settings: Settings
    _format: WireFormat
    _frame_wrap: Callable[[bytes], bytes]  # a reply's frame: text or binary, by `_format`
    _capacity: int  # the outbox's size in items
    _max_frame: int  # the largest client message read (payload limit plus envelope)

    # The lifecycle and the task (`connection`).
    _opening: tuple[list[str], bytes] | None
    _patterns: set[str]
    _evicted: CloseReason | None
    _close_requested: CloseReason | None
    close_reason: CloseReason | None
    _deadline: float
    _wake: trio.CancelScope
    _reading: bool
    _wait: trio.CancelScope | None

    # The reading side (`intake`).
    _ws: Connection | None
    _pending: bytes | bytearray
    _need: int
    _boundaries: FrameBoundaries | None
    _frame_started: float | None
    _frame_deadline: float | None
    _parts: list[Any] | None
    _size: int
    _more_input: bool

    # The requests (`dispatch`).
    _invalid: int
    _unanswered: int
    _corked: bool
    _answered: trio.Event | None

    if TYPE_CHECKING:
        # What one part calls on another: defined in `dispatch` and `connection`.
        async def _serve_frame(self, frame: str | bytes, is_text: bool) -> CloseReason | None:
            ...

        async def _queue(self, item: ControlFrame) -> None: ...

        async def _reply(self, data: bytes) -> None: ...


__all__ = ["ConnectionSlots"]
