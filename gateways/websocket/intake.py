"""`FrameIntake`: a WebSocket connection's reading side, client frames in.

A part of `WebSocketConnection` (a mixin over `ConnectionSlots`: these are the
connection's own methods, run by its one task; see `connection`).

- Plain data frames (final, masked text or binary) are taken apart here
  (`reader.client_data_frame`, the fast path); at the first frame that is anything else,
  wsproto takes over this connection's input for good (and it does every close).
- Each complete client message goes to `_serve_frame` (`dispatch`); the answers of
  publishes read in one go are queued and written together after the last of them
  (`_more_input`; `python -m benchmarks ws-publish-window`).
- Input that stops inside a client frame (or fragmented message) sets the deadline by
  which it must be complete (`receive_deadline(first byte, bytes so far, header_timeout,
  min_receive_rate)`); the connection's task closes with 1008 `frame not completed in
  time` past it.
"""

from __future__ import annotations

import trio
from wsproto import ConnectionType
from wsproto.connection import Connection, ConnectionState
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage

from broker import CloseReason, ControlFrame

from ..tcp import receive_deadline
from .connection_slots import ConnectionSlots
from .reader import DATA, INCOMPLETE, TOO_BIG, FrameBoundaries, client_data_frame, unmask


class FrameIntake(ConnectionSlots):
    """The connection's reading: `_receive` serves every complete client message in the
    bytes just read (see the module docstring)."""

    __slots__ = ()

    async def _receive(self, data: bytes) -> CloseReason | None:
        """Serve every complete client frame in `data`; the reason to close, if one of
        them calls for it (later frames are then ignored).

        Plain data frames are taken apart here (`client_data_frame`); at the first frame
        that is anything else, this connection hands all its input to wsproto for good.
        """
        if self._ws is not None:
            return await self._receive_wsproto(data)
        pending = self._pending
        if pending:
            pending += data  # (a bytearray: appended, not joined)
            if len(pending) < self._need:  # its end is not there yet: nothing to parse
                self._incomplete(len(pending), len(data))
                return None
            buffer: bytes | bytearray = pending
        else:
            buffer = data
        at = 0
        limit = self._max_frame
        while True:
            kind, start, end = client_data_frame(buffer, at, limit)
            if kind == DATA:
                payload = unmask(buffer, start, end)
                is_text = buffer[at] == 0x81
                frame: str | bytes = payload
                if is_text and not payload.isascii():  # ASCII is UTF-8: orjson reads bytes
                    try:
                        frame = payload.decode("utf-8")
                    except UnicodeDecodeError:
                        break  # wsproto closes with 1007
                at = end
                self._more_input = end < len(buffer)
                reason = await self._serve_frame(frame, is_text)
                self._more_input = False
                if reason is not None:
                    return reason
                continue
            if kind == INCOMPLETE:
                if at == len(buffer):  # the usual end: every frame was complete
                    if pending:
                        self._pending = b""  # (a big frame's buffer is not kept)
                        self._frame_deadline = self._frame_started = None
                else:
                    if at or buffer is not pending:  # what is left of one receive at most
                        self._pending = bytearray(buffer[at:])
                    self._need = end - at if end else 0  # 0: its header is not all there
                    self._incomplete(len(buffer) - at, len(data))
                self.outbox.flush()  # the answers queued while more frames followed
                return None
            if kind == TOO_BIG:
                return CloseReason.MESSAGE_TOO_BIG
            break  # OTHER
        self._pending = b""
        self._frame_deadline = self._frame_started = None
        self._ws = Connection(ConnectionType.SERVER)
        self._boundaries = FrameBoundaries()
        return await self._receive_wsproto(bytes(buffer[at:]))  # (once per connection)

    def _incomplete(self, received: int, arrived: int) -> None:
        """Input stopped inside a client frame (or message) of which `received` bytes came,
        the last `arrived` of them just now: it must be complete by `receive_deadline`."""
        started = self._frame_started
        if started is None or received <= arrived:  # it began in this receive
            started = self._frame_started = trio.current_time()
        settings = self._settings
        self._frame_deadline = receive_deadline(
            started, received, settings.header_timeout, settings.min_receive_rate
        )

    async def _receive_wsproto(self, data: bytes) -> CloseReason | None:
        """`_receive` through wsproto: any frame, fragments, control frames, errors."""
        ws = self._ws
        boundaries = self._boundaries
        assert ws is not None and boundaries is not None
        boundaries.feed(data)
        ws.receive_data(data)
        try:
            return await self._serve_wsproto_events(ws)
        finally:
            if boundaries.incomplete:
                self._incomplete(boundaries.received, len(data))
            else:
                self._frame_deadline = self._frame_started = None

    async def _serve_wsproto_events(self, ws: Connection) -> CloseReason | None:
        """Serve the events wsproto made of the input so far; the reason to close, if any."""
        for event in ws.events():
            # `type(event) is X` in place, not kept in a local: the type checker narrows
            # `event` on it, and CPython specializes `type(x)` (no dearer than a local).
            if type(event) is TextMessage or type(event) is BytesMessage:
                self._size += len(event.data)
                if self._size > self._max_frame:
                    return CloseReason.MESSAGE_TOO_BIG
                parts = self._parts
                if not event.message_finished:
                    if parts is None:
                        parts = self._parts = []
                    parts.append(event.data)
                    continue
                if parts is None:
                    frame = event.data
                else:
                    parts.append(event.data)
                    frame = type(parts[0])().join(parts)
                    self._parts = None
                self._size = 0
                # wsproto may give a binary message as a bytearray: read as bytes are (the
                # CBOR decoder takes any bytes-like), not copied per message.
                reason = await self._serve_frame(
                    frame, type(event) is TextMessage  # type: ignore[arg-type]
                )
                if reason is not None:
                    return reason
            elif type(event) is Ping:
                await self._queue(ControlFrame(ws.send(event.response())))
            elif type(event) is CloseConnection:
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    # The client closes: answer after pending frames.
                    return CloseReason.CLIENT_CLOSED
                # Still OPEN: wsproto failed to parse (bad opcode, bad UTF-8, ...).
                return _protocol_reason_for(event.code)
        return None


def _protocol_reason_for(code: int | None) -> CloseReason:
    if code == CloseReason.MESSAGE_TOO_BIG.code:
        return CloseReason.MESSAGE_TOO_BIG
    if code == 1007:
        return CloseReason.INVALID_PAYLOAD
    return CloseReason.PROTOCOL_ERROR


__all__ = ["FrameIntake"]
