"""`PublishRoute`: the two publish requests as bare ASGI in front of the Quart app.

`POST /v1/topics/{topic}` and `POST /v1/publish` are the broker's hottest HTTP paths, and
Quart's per-request machinery (request and response objects, contexts, routing, hooks)
cost more server CPU than the publishing itself. This route speaks ASGI directly and
answers exactly as the Quart routes did (same statuses, JSON bodies, `Retry-After`);
every other request, and any path that is not a plain topic name, goes to the Quart app.
(Guarded by `python -m benchmarks single bulk`.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from broker import (
    Broker,
    BrokerError,
    InvalidPayload,
    PayloadTooLarge,
    UnsupportedContentType,
    codec,
    validate_topic,
)

from .errors import RETRY_AFTER, error_body, http_status

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/v1/topics/"
BULK = "/v1/publish"
JSON_HEADERS = [(b"content-type", b"application/json")]


class PublishRoute:
    """ASGI app: the publish route itself, or the wrapped `app` for everything else."""

    def __init__(self, broker: Broker, app: ASGIApp) -> None:
        self._broker = broker
        self._app = app
        self._limit = broker.settings.max_payload_bytes
        # Bodies up to this size are read to the end even when refused, so the keep-alive
        # connection stays usable (as Quart did, whose limit was the larger body limit).
        self._read_limit = max(broker.settings.max_body_bytes, self._limit)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith(PREFIX):
                topic = path[len(PREFIX):]
                if topic and "/" not in topic:
                    await self._publish(topic, scope, receive, send)
                    return
            elif path == BULK:
                await self._publish_many(scope, receive, send)
                return
        await self._app(scope, receive, send)

    async def _publish_many(self, scope: Scope, receive: Receive, send: Send) -> None:
        """`POST /v1/publish`: validate the whole batch, publish it, answer per message."""
        content_type, length = _content_headers(scope)
        try:
            kind = codec.payload_kind(content_type)
            if kind not in (codec.PayloadKind.JSON, codec.PayloadKind.CBOR):
                raise UnsupportedContentType(
                    "bulk publish takes application/json or application/cbor bodies"
                )
            if length is not None and length > self._read_limit:
                raise PayloadTooLarge(
                    f"body is {length} bytes; the limit is {self._read_limit}"
                )
            body = await self._body(receive)
            if body is None:
                return
            try:
                document = (
                    orjson.loads(body) if kind is codec.PayloadKind.JSON
                    else codec.load_cbor_item(body)
                )
            except Exception as exc:
                raise InvalidPayload(f"body is not valid {kind.name}: {exc}") from exc
            batch = codec.decode_batch(document, kind, self._limit)
            outcomes = await self._broker.publish_many(batch)
        except BrokerError as error:
            await _respond(send, http_status(error), error_body(error.code, error.message),
                           RETRY_AFTER.get(error.code))
            return
        results: list[dict[str, Any]] = []
        first_error: BrokerError | None = None
        for (topic, _), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BrokerError):
                first_error = first_error or outcome
                results.append({"topic": topic, **error_body(outcome.code, outcome.message)})
            else:
                results.append({"topic": topic, "offset": outcome})
        if first_error is None:
            await _respond(send, 202, {"results": results})
            return
        # Some messages were refused (backpressure): say which, so only those are retried.
        await _respond(
            send, http_status(first_error),
            {**error_body(first_error.code, first_error.message), "results": results},
            RETRY_AFTER.get(first_error.code),
        )

    async def _publish(self, topic: str, scope: Scope, receive: Receive, send: Send) -> None:
        content_type, length = _content_headers(scope)
        try:
            if length is not None and length > self._read_limit:
                raise PayloadTooLarge(f"payload is {length} bytes; the limit is {self._limit}")
            data = await self._body(receive)
            if data is None:
                return  # the client went away before its body was complete
            validate_topic(topic)
            payload = self._broker.payload(data, content_type)
            offset = await self._broker.publish(topic, payload)
        except BrokerError as error:
            await _respond(send, http_status(error), error_body(error.code, error.message),
                           RETRY_AFTER.get(error.code))
            return
        await _respond(send, 202, {"topic": topic, "offset": offset})

    async def _body(self, receive: Receive) -> bytes | None:
        """The request body; None if the client disconnected. A body past the read limit
        is refused as it arrives, not buffered whole first."""
        message = await receive()
        if message["type"] != "http.request":
            return None
        body: bytes = message.get("body", b"")
        if not message.get("more_body", False):
            return body
        chunks = [body]
        size = len(body)
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self._read_limit:
                raise PayloadTooLarge(f"payload is over the limit of {self._limit} bytes")
            chunks.append(chunk)
        return b"".join(chunks)


def _content_headers(scope: Scope) -> tuple[str | None, int | None]:
    """The request's content type and declared length (None where absent)."""
    content_type: str | None = None
    length: int | None = None
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"content-length" and value.isdigit():
            length = int(value)
    return content_type, length


async def _respond(send: Send, status: int, body: Any, retry_after: int | None = None) -> None:
    content = orjson.dumps(body)
    headers = [*JSON_HEADERS, (b"content-length", str(len(content)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
