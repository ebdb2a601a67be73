"""`PublishRoute`: `POST /v1/topics/{topic}` as a bare ASGI route in front of the Quart app.

The single publish is the broker's hottest HTTP path, and Quart's per-request machinery
(request and response objects, contexts, routing, hooks) cost more server CPU than the
publish itself. This route speaks ASGI directly and answers exactly as the Quart route
did (same statuses, JSON bodies and `Retry-After`); every other request, and anything
that is not a plain topic name, goes to the Quart app unchanged.
(Guarded by `python -m benchmarks.quick --scenarios single`.)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from broker import Broker, BrokerError, PayloadTooLarge, validate_topic

from .errors import RETRY_AFTER, error_body, http_status

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PREFIX = "/v1/topics/"
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
        await self._app(scope, receive, send)

    async def _publish(self, topic: str, scope: Scope, receive: Receive, send: Send) -> None:
        content_type: str | None = None
        length: int | None = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-length" and value.isdigit():
                length = int(value)
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


async def _respond(send: Send, status: int, body: Any, retry_after: int | None = None) -> None:
    content = orjson.dumps(body)
    headers = [*JSON_HEADERS, (b"content-length", str(len(content)).encode())]
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
