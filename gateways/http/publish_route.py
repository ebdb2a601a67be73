"""`PublishRoute`: the two publish requests, answered before the Quart app sees them.

`POST /v1/topics/{topic}` and `POST /v1/publish` are the broker's hottest HTTP paths, and
Quart's per-request machinery (request and response objects, contexts, routing, hooks)
cost more server CPU than the publishing itself. This route takes `HttpServer`'s complete
request and answers exactly as the Quart routes did (same statuses, JSON bodies,
`Retry-After`); every other request, and any path that is not a plain topic name, is left
to the app (it returns None). (Guarded by `python -m benchmarks single bulk`.)
"""

from __future__ import annotations

from typing import Any

from broker import (
    Broker,
    BrokerError,
    UnsupportedContentType,
    codec,
    validate_topic,
)

from ..errors import RETRY_AFTER, error_body, http_status
from .server import HttpRequest, HttpResponse, json_response

PREFIX = "/v1/topics/"
BULK = "/v1/publish"


class PublishRoute:
    """The publish requests' handler: `await route(request)` is the answer, or None."""

    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self._limit = broker.settings.max_payload_bytes

    async def __call__(self, request: HttpRequest) -> HttpResponse | None:
        head = request.head
        if head.method != "POST":
            return None
        path = head.path
        if path.startswith(PREFIX):
            topic = path[len(PREFIX):]
            if topic and "/" not in topic:
                return await self._publish(topic, request)
        elif path == BULK:
            return await self._publish_many(request)
        return None

    async def _publish_many(self, request: HttpRequest) -> HttpResponse:
        """`POST /v1/publish`: validate the whole batch, publish it, answer per message."""
        try:
            kind = codec.payload_kind(_content_type(request))
            if kind not in (codec.PayloadKind.JSON, codec.PayloadKind.CBOR):
                raise UnsupportedContentType(
                    "bulk publish takes application/json or application/cbor bodies"
                )
            document = codec.load_bulk_body(request.body, kind)
            batch = codec.decode_batch(document, kind, self._limit)
            outcomes = await self._broker.publish_many(batch)
        except BrokerError as error:
            return _error(error)
        results: list[dict[str, Any]] = []
        first_error: BrokerError | None = None
        for (topic, _), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BrokerError):
                first_error = first_error or outcome
                results.append({"topic": topic, **error_body(outcome.code, outcome.message)})
            else:
                results.append({"topic": topic, "offset": outcome})
        if first_error is None:
            return json_response(202, {"results": results})
        # Some messages were refused (backpressure): say which, so only those are retried.
        return _error(first_error, {"results": results})

    async def _publish(self, topic: str, request: HttpRequest) -> HttpResponse:
        try:
            validate_topic(topic)
            payload = self._broker.payload(request.body, _content_type(request))
            offset = await self._broker.publish(topic, payload)
        except BrokerError as error:
            return _error(error)
        return json_response(202, {"topic": topic, "offset": offset})


def _content_type(request: HttpRequest) -> str | None:
    value = request.head.header(b"content-type")
    return None if value is None else value.decode("latin-1")


def _error(error: BrokerError, extra: dict[str, Any] | None = None) -> HttpResponse:
    retry_after = RETRY_AFTER.get(error.code)
    headers = () if retry_after is None else ((b"retry-after", b"%d" % retry_after),)
    body = error_body(error.code, error.message)
    return json_response(http_status(error), {**body, **extra} if extra else body, headers)
