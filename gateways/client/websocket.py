"""The client's WebSocket side: subscriptions on trio-websocket, `Message` and `Gap` items.

A `Subscription` is one WebSocket (`broker.v1.json` or `broker.v1.cbor`). It has no task
of its own: whoever needs a frame (the iterating task, or a task awaiting the answer to
`subscribe`/`unsubscribe`/`ping`/`publish`) reads the next one, and the others wait for
that read to finish and look again. Messages and gaps read by a request go to a queue the
iteration empties first, so nothing is lost or reordered, and no frame costs an extra task
hop. Frame parsing is pure (`parse_frame`, `close_error`) and tested without sockets.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import cbor2
import orjson
import trio
from trio_websocket import (
    ConnectionClosed,
    ConnectionRejected,
    ConnectionTimeout,
    DisconnectionTimeout,
    HandshakeError,
    WebSocketConnection,
    open_websocket_url,
)

from .http import ClientError, error_from_body

WireFormatName = Literal["json", "cbor"]
SUBPROTOCOLS: dict[str, str] = {"json": "broker.v1.json", "cbor": "broker.v1.cbor"}
# Close codes that end a subscription quietly: the normal closure (ours or the broker's).
NORMAL_CLOSE = 1000
# Frames trio-websocket may hold for us before it stops reading the socket (then the
# kernel buffers fill and the broker's slow-consumer policy applies, as it should).
MESSAGE_QUEUE_SIZE = 64
# Largest frame accepted: the broker's 1 MiB payloads grow by a third as base64 in JSON.
MAX_FRAME_BYTES = 4 * 1024 * 1024
# Bytes per socket read (trio-websocket's 4 KiB default costs a read per small frame).
RECEIVE_SIZE = 64 * 1024
# Seconds the closing handshake may take when a subscription ends.
CLOSE_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class Message:
    """One published message: its topic, offset and payload (see API.md for `data`).

    `received` is `time.monotonic()` when its frame was taken off the connection (the same
    clock a publisher on this machine can embed in the payload, for end-to-end latency).
    """

    topic: str
    offset: int
    data: Any
    received: float = 0.0


@dataclass(frozen=True, slots=True)
class Gap:
    """`skipped` messages of `topic`, offsets `first`..`last`, were dropped for this
    subscriber (drop-oldest policy); they come before the topic's next `Message`."""

    topic: str
    skipped: int
    first: int
    last: int


# -- pure: frames and closes ---------------------------------------------------------------


def decode_frame(raw: str | bytes) -> Any:
    """A frame's object: text frames are JSON, binary frames CBOR."""
    try:
        if isinstance(raw, str):
            return orjson.loads(raw)
        return cbor2.loads(raw)
    except (orjson.JSONDecodeError, cbor2.CBORDecodeError, ValueError) as exc:
        raise ClientError("protocol_error", f"undecodable frame {raw[:80]!r}: {exc}") from exc


def parse_frame(raw: str | bytes, received: float = 0.0) -> Message | Gap | dict[str, Any]:
    """A `Message` or `Gap`, or the frame object itself for any other frame (`ok`, `error`).

    `protocol_error` for a frame that is not an object or lacks a message's fields.
    """
    frame = decode_frame(raw)
    if not isinstance(frame, dict):
        raise ClientError("protocol_error", f"frame is not an object: {frame!r:.80}")
    op = frame.get("op")
    try:
        if op == "message":
            return Message(frame["topic"], frame["offset"], frame.get("data"), received)
        if op == "gap":
            return Gap(frame["topic"], frame["skipped"], frame["from"], frame["to"])
    except KeyError as exc:
        raise ClientError("protocol_error", f"{op} frame without {exc}: {frame!r:.200}") from exc
    return frame


def error_from_frame(frame: dict[str, Any]) -> ClientError:
    """The `ClientError` an `{"op": "error", "code", "message"}` frame stands for."""
    code, message = frame.get("code"), frame.get("message")
    return ClientError(
        code if isinstance(code, str) else "error",
        message if isinstance(message, str) else repr(frame),
    )


def close_error(code: int | None, reason: str | None) -> ClientError | None:
    """None for a normal closure; otherwise `ClientError("closed")` with the close code."""
    if code == NORMAL_CLOSE:
        return None
    shown = code if code is not None else "no close code"
    return ClientError(
        "closed",
        f"the broker closed the subscription: {shown} {reason or ''}".rstrip(),
        close_code=code,
    )


def encode_request(request: dict[str, Any], wire_format: WireFormatName) -> str | bytes:
    """A request frame: text JSON, or binary CBOR on `broker.v1.cbor` connections."""
    if wire_format == "cbor":
        return cbor2.dumps(request)
    return orjson.dumps(request).decode()


def subscription_url(ws_url: str, name: str | None) -> str:
    """`ws_url` with `client=NAME` added to its query (names the connection for presence)."""
    if name is None:
        return ws_url
    return ws_url + ("&" if "?" in ws_url else "?") + urlencode({"client": name})


# -- I/O: one WebSocket ------------------------------------------------------------------


class Subscription:
    """One WebSocket's subscriptions; iterate it for `Message` and `Gap` items.

    Iteration waits as long as it takes for the next item (no timeout). It ends quietly
    when the connection closes normally and raises `ClientError("closed")` (with
    `close_code`) for any other close, after every item received before the close. An
    `error` frame that answers no request of ours is raised from iteration too, which may
    then go on. Requests (`subscribe`, `unsubscribe`, `ping`, `publish`) wait for their
    answer at most `timeout` seconds (`ClientError("timeout")`); an `error` answer raises
    its `ClientError`. Any task may make requests while another iterates.
    """

    def __init__(
        self, ws: WebSocketConnection, wire_format: WireFormatName, timeout: float
    ) -> None:
        self.wire_format = wire_format
        self.timeout = timeout
        # The `ok` answers to our `subscribe` requests, by topic or pattern: they carry
        # `first_offset` and `next_offset` (where replay started, where live begins).
        self.subscribed: dict[str, dict[str, Any]] = {}
        self._ws = ws
        self._items: deque[Message | Gap | ClientError] = deque()
        self._replies: dict[int, dict[str, Any]] = {}
        self._awaited: set[int] = set()
        self._next_id = 1
        self._reading = False
        self._read_done: trio.Event | None = None
        self._ended = False
        self._end_error: ClientError | None = None

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Message | Gap:
        while True:
            if self._items:
                item = self._items.popleft()
                if isinstance(item, ClientError):
                    raise item
                return item
            if self._ended:
                if self._end_error is not None:
                    raise self._end_error
                raise StopAsyncIteration
            await self._read_or_wait()

    async def subscribe(self, topic: str, from_: str | int | None = None) -> dict[str, Any]:
        """Subscribe to a topic or pattern; `from_` is "latest", "earliest", an offset or
        None (the broker's default, latest). Returns the `ok` frame."""
        request: dict[str, Any] = {"op": "subscribe", "topic": topic}
        if from_ is not None:
            request["from"] = from_
        reply = await self._request(request)
        self.subscribed[topic] = reply
        return reply

    async def unsubscribe(self, topic: str) -> dict[str, Any]:
        """Stop receiving `topic` (as subscribed). Items already received stay queued."""
        reply = await self._request({"op": "unsubscribe", "topic": topic})
        self.subscribed.pop(topic, None)
        return reply

    async def ping(self) -> dict[str, Any]:
        """A round trip to the broker: once it returns, every subscription before it is in
        effect and every item the broker queued before its answer has been received."""
        return await self._request({"op": "ping"})

    async def publish(self, topic: str, data: Any) -> int:
        """Publish over this WebSocket (the data as a JSON or CBOR value); its offset."""
        reply = await self._request({"op": "publish", "topic": topic, "data": data})
        offset = reply.get("offset")
        if not isinstance(offset, int):
            raise ClientError("protocol_error", f"publish answer without an offset: {reply!r}")
        return offset

    async def _request(self, request: dict[str, Any]) -> dict[str, Any]:
        request_id = self._next_id
        self._next_id += 1
        request["id"] = request_id
        self._awaited.add(request_id)
        try:
            with trio.fail_after(self.timeout):
                await self._send(encode_request(request, self.wire_format))
                while request_id not in self._replies:
                    if self._ended:
                        raise self._end_error or ClientError(
                            "closed", f"connection closed before the answer to {request['op']}",
                            close_code=NORMAL_CLOSE,
                        )
                    await self._read_or_wait()
        except trio.TooSlowError:
            raise ClientError(
                "timeout", f"no answer to {request['op']} within {self.timeout:g} s"
            ) from None
        finally:
            self._awaited.discard(request_id)
        reply = self._replies.pop(request_id)
        if reply.get("op") == "error":
            raise error_from_frame(reply)
        return reply

    async def _send(self, frame: str | bytes) -> None:
        try:
            await self._ws.send_message(frame)
        except ConnectionClosed as exc:
            self._end(exc)
            raise self._end_error or ClientError(
                "closed", "the connection is closed", close_code=NORMAL_CLOSE
            ) from None

    async def _read_or_wait(self) -> None:
        """Read and route one frame; if another task is reading, wait for its read instead."""
        if self._reading:
            if self._read_done is None:
                self._read_done = trio.Event()
            await self._read_done.wait()
            return
        self._reading = True
        try:
            await self._read_frame()
        finally:
            self._reading = False
            if self._read_done is not None:  # the waiters look again: it was routed
                self._read_done.set()
                self._read_done = None

    async def _read_frame(self) -> None:
        """Take one frame off the connection: an item for iteration or a request's answer."""
        try:
            raw = await self._ws.get_message()
        except ConnectionClosed as exc:
            self._end(exc)
            return
        received = time.monotonic()
        try:
            item = parse_frame(raw, received)
        except ClientError as exc:
            self._items.append(exc)
            return
        if isinstance(item, Message | Gap):
            self._items.append(item)
            return
        request_id = item.get("id")
        if isinstance(request_id, int) and request_id in self._awaited:
            self._replies[request_id] = item
        elif item.get("op") == "error":
            self._items.append(error_from_frame(item))  # answers nobody: say it in iteration
        # anything else (an `ok` whose requester gave up, a future frame type): ignored

    def _end(self, exc: ConnectionClosed) -> None:
        if not self._ended:
            self._ended = True
            reason = exc.reason
            self._end_error = close_error(
                reason.code if reason is not None else None,
                reason.reason if reason is not None else None,
            )


@asynccontextmanager
async def open_subscription(
    ws_url: str,
    topics: Sequence[str],
    *,
    from_: str | int | None = None,
    wire_format: WireFormatName = "json",
    name: str | None = None,
    timeout: float = 10.0,
) -> AsyncIterator[Subscription]:
    """Connect, subscribe to each of `topics` (waiting for each `ok`), yield the
    `Subscription`; close the WebSocket (code 1000) on exit.

    Raises `ClientError`: `connection_failed` (unreachable, or the handshake refused),
    `timeout`, or the `error` answer to a subscribe (e.g. `invalid_topic`).
    """
    if wire_format not in SUBPROTOCOLS:
        raise ValueError(f"format must be 'json' or 'cbor', not {wire_format!r}")
    url = subscription_url(ws_url, name)
    connected = False
    try:
        async with open_websocket_url(
            url,
            subprotocols=[SUBPROTOCOLS[wire_format]],
            message_queue_size=MESSAGE_QUEUE_SIZE,
            max_message_size=MAX_FRAME_BYTES,
            receive_buffer_size=RECEIVE_SIZE,
            connect_timeout=timeout,
            disconnect_timeout=CLOSE_SECONDS,
        ) as ws:
            connected = True
            subscription = Subscription(ws, wire_format, timeout)
            for topic in topics:
                await subscription.subscribe(topic, from_)
            yield subscription
    except DisconnectionTimeout:
        pass  # the broker did not answer our close in time: the socket is closed anyway
    except ConnectionRejected as exc:
        body: Any = exc.body
        try:
            body = orjson.loads(exc.body or b"")
        except orjson.JSONDecodeError:
            pass  # not the broker's JSON error: described by status below
        error = error_from_body(body, exc.status_code, None)
        raise ClientError(
            error.code if isinstance(body, dict) else "connection_failed",
            f"WebSocket handshake refused ({exc.status_code}): {error.message}",
            status=exc.status_code,
        ) from exc
    except ConnectionTimeout as exc:
        raise ClientError("timeout", f"no WebSocket handshake with {url} within "
                          f"{timeout:g} s") from exc
    except HandshakeError as exc:
        if connected:
            raise
        cause = exc.__cause__ or exc
        raise ClientError("connection_failed", f"cannot connect to {url}: {cause}") from exc
    except ValueError as exc:
        if connected:
            raise
        raise ClientError("invalid_url", f"bad WebSocket URL {url!r}: {exc}") from exc
