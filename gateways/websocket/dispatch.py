"""`RequestDispatch`: a WebSocket connection's requests, served: publish, subscribe,
unsubscribe, ping.

A part of `WebSocketConnection` (a mixin over `ConnectionSlots`: these are the
connection's own methods, run by its one task, except `_answer_publish`; see
`connection`).

- A publish to a running topic is handed over without waiting (`Broker.publish_soon`):
  an idle topic takes it at once on this task (`TopicActor.publish_now`), a busy one
  answers later on its own task; either way through `_answer_publish`, which writes the
  `ok` via `Outbox.answer`, and this task reads on (no task switch, and no wait, per
  publish; `python -m benchmarks ws-publish`). A new topic, or a full mailbox, is asked
  and waited for. While more client frames follow in what was read (`_more_input`), a
  publish's answer is only queued (`_corked`), and written with the others after the
  last of them, or before any request that may wait (`ws-publish-window`).
- An invalid request is answered with an error frame; MAX_CONSECUTIVE_INVALID of them in
  a row close the connection with 1008.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from broker import (
    AlreadySubscribed,
    BrokerError,
    CloseReason,
    ControlFrame,
    InvalidFrame,
    NotSubscribed,
    Payload,
    SubscribeResult,
    TooManySubscriptions,
    WireFormat,
    codec,
)
from broker.codec import (
    PingRequest,
    PublishRequest,
    RequestRejected,
    SubscribeRequest,
    UnsubscribeRequest,
)

from ..errors import http_status
from .connection_slots import ConnectionSlots

# Consecutive invalid frames tolerated before the connection is closed with 1008.
MAX_CONSECUTIVE_INVALID = 10


class RequestDispatch(ConnectionSlots):
    """The connection's requests: `_serve_frame` serves one complete client message (see
    the module docstring)."""

    __slots__ = ()

    async def _serve_frame(self, frame: str | bytes, is_text: bool) -> CloseReason | None:
        """Serve one complete client message; POLICY_VIOLATION after too many invalid."""
        valid = await self._handle_frame(frame, is_text)
        if valid:
            self._invalid = 0
        elif valid is False:
            self._invalid += 1
            if self._invalid >= MAX_CONSECUTIVE_INVALID:
                return CloseReason.POLICY_VIOLATION
        return None

    async def _handle_frame(self, frame: str | bytes, is_text: bool) -> bool | None:
        """Serve one client request; False if it was invalid (an error frame was sent),
        None if it was refused for the broker's own state (`topic_busy`, `draining`,
        `unavailable`: 5xx), which is no fault of the client's and counts neither way."""
        fmt = self._format
        if (fmt is WireFormat.JSON) != is_text:
            expected = "text" if fmt is WireFormat.JSON else "binary"
            error = InvalidFrame(f"{fmt.subprotocol} takes {expected} frames")
            await self._reply(codec.encode_error(fmt, None, error))
            return False
        try:
            request = codec.decode_request(fmt, frame, self._settings.max_payload_bytes)
            await self._dispatch(request)
        except RequestRejected as exc:
            await self._reply(codec.encode_error(fmt, exc.request_id, exc.error))
            return None if http_status(exc.error) >= 500 else False
        return True

    async def _dispatch(self, request: Any) -> None:
        fmt = self._format
        if type(request) is not PublishRequest:
            self.outbox.flush()  # answers queued for earlier frames: not behind a wait
        match request:
            case PublishRequest(topic, data, content_type, kind, request_id, rendering):
                payload = Payload(data, content_type, kind, rendering)
                # Usually answered at once (an idle topic) or later on the topic's task,
                # while this one reads on. Counted first: the answer may come before
                # `publish_soon` returns.
                self._unanswered += 1
                self._corked = self._more_input
                try:
                    handed = self._broker.publish_soon(
                        topic, payload, partial(self._answer_publish, request_id, topic)
                    )
                except BrokerError as exc:
                    self._unanswered -= 1
                    raise RequestRejected(exc, request_id) from exc
                finally:
                    self._corked = False
                if handed:
                    return
                self._unanswered -= 1
                self.outbox.flush()  # answers queued for earlier frames: not behind a wait
                try:
                    offset = await self._broker.publish(topic, payload)
                except BrokerError as exc:
                    raise RequestRejected(exc, request_id) from exc
                await self._reply(codec.encode_published(fmt, request_id, topic, offset))
            case SubscribeRequest():
                await self._subscribe(request, ack=True)
            case UnsubscribeRequest(pattern, request_id):
                if pattern not in self._patterns:
                    raise RequestRejected(
                        NotSubscribed(f"not subscribed to {pattern!r}"), request_id
                    )
                self._patterns.discard(pattern)
                try:
                    await self._broker.unsubscribe(self.id, pattern)
                except BrokerError as exc:
                    raise RequestRejected(exc, request_id) from exc
                await self._reply(codec.encode_ok(fmt, request_id, topic=pattern))
            case PingRequest(request_id):
                await self._reply(codec.encode_ok(fmt, request_id))

    async def _subscribe(self, request: SubscribeRequest, *, ack: bool) -> None:
        pattern, request_id = request.topic, request.id
        if pattern in self._patterns:
            raise RequestRejected(
                AlreadySubscribed(f"already subscribed to {pattern!r}"), request_id
            )
        if len(self._patterns) >= self._settings.max_subscriptions:
            raise RequestRejected(
                TooManySubscriptions(
                    f"a connection holds at most {self._settings.max_subscriptions} "
                    "subscriptions"
                ),
                request_id,
            )
        fmt = self._format
        wrap = self._frame_wrap

        def render_ack(result: SubscribeResult) -> ControlFrame:
            return ControlFrame(
                wrap(
                    codec.encode_ok(
                        fmt,
                        request_id,
                        topic=pattern,
                        first_offset=result.first_offset,
                        next_offset=result.next_offset,
                    )
                )
            )

        self._patterns.add(pattern)
        try:
            await self._broker.subscribe(
                self.subscriber, pattern, request.start, render_ack if ack else None
            )
        except BrokerError as exc:
            self._patterns.discard(pattern)
            raise RequestRejected(exc, request_id) from exc

    def _answer_publish(self, request_id: Any, topic: str, outcome: int | BrokerError) -> None:
        """A publish handed to its topic is answered (on this task when the topic was idle,
        else on the topic's task or the publish deadlines actor's): the `ok` with its
        offset, or the error, written at once if nothing is queued before it."""
        fmt = self._format
        if type(outcome) is int:
            data = codec.encode_published(fmt, request_id, topic, outcome)
        else:  # not narrowed (int is not final); an isinstance per publish answer would cost
            data = codec.encode_error(fmt, request_id, outcome)  # type: ignore[arg-type]
        self.outbox.answer(self._frame_wrap(data), self._corked)
        self._unanswered -= 1
        if not self._unanswered and self._answered is not None:
            self._answered.set()


__all__ = ["MAX_CONSECUTIVE_INVALID", "RequestDispatch"]
