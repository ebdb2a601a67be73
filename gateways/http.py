"""The HTTP gateway: a quart-trio app served by hypercorn's trio worker.

Every error is JSON `{"error": {"code", "message"}}`, with the status from
`gateways/errors.py`. Bodies are read with the size limit applied by Quart
(`MAX_CONTENT_LENGTH`), so an oversized body is refused without being buffered whole.
"""

from __future__ import annotations

from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from broker import (
    Broker,
    BrokerError,
    InvalidPayload,
    PayloadTooLarge,
    UnsupportedContentType,
    codec,
    validate_topic,
)
from broker.topic import TopicStatistics

from .errors import HTTP_CODES, RETRY_AFTER, error_body, http_status

JSON = "application/json"


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, content_type=JSON, headers=headers)


def _error(error: BrokerError) -> Response:
    headers = None
    if error.code in RETRY_AFTER:
        headers = {"Retry-After": str(RETRY_AFTER[error.code])}
    return _json(error_body(error.code, error.message), http_status(error), headers)


def _topic_view(stats: TopicStatistics) -> dict[str, Any]:
    return {
        "name": stats.name,
        "subscribers": stats.subscribers,
        "next_offset": stats.next_offset,
        "first_offset": stats.first_retained,
        "retained": stats.retained_messages,
        "retained_bytes": stats.retained_bytes,
    }


def _int_arg(name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidPayload(f"query parameter {name!r} must be an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f" and {maximum}" if maximum is not None else ""
        raise InvalidPayload(f"query parameter {name!r} must be between {minimum}{bound}")
    return value


def create_app(broker: Broker, ready: Any) -> QuartTrio:
    """Build the app for `broker`. `ready()` says whether /readyz answers 200."""
    settings = broker.settings
    app = QuartTrio("broker")
    app.config["MAX_CONTENT_LENGTH"] = max(settings.max_body_bytes, settings.max_payload_bytes)
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    # No redirects with HTML bodies (e.g. for "//a.b"): every answer is JSON.
    app.url_map.merge_slashes = False

    @app.errorhandler(BrokerError)
    async def broker_error(error: BrokerError) -> Response:
        return _error(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        status = error.code or 500
        code = HTTP_CODES.get(status, "http_error")
        return _json(error_body(code, error.description or error.name), status)

    @app.post("/v1/topics/<topic>")
    async def publish(topic: str) -> Response:
        validate_topic(topic)
        length = request.content_length
        if length is not None and length > settings.max_payload_bytes:
            raise PayloadTooLarge(
                f"payload is {length} bytes; the limit is {settings.max_payload_bytes}"
            )
        data = await request.get_data(cache=False)
        payload = broker.payload(data, request.headers.get("Content-Type"))
        offset = await broker.publish(topic, payload)
        return _json({"topic": topic, "offset": offset}, 202)

    @app.post("/v1/publish")
    async def publish_many() -> Response:
        kind = codec.payload_kind(request.headers.get("Content-Type"))
        if kind not in (codec.PayloadKind.JSON, codec.PayloadKind.CBOR):
            raise UnsupportedContentType(
                "bulk publish takes application/json or application/cbor bodies"
            )
        body = await request.get_data(cache=False)
        try:
            document = (
                orjson.loads(body) if kind is codec.PayloadKind.JSON
                else codec.load_cbor_item(body)
            )
        except Exception as exc:
            raise InvalidPayload(f"body is not valid {kind.name}: {exc}") from exc
        batch = codec.decode_batch(document, kind, settings.max_payload_bytes)
        outcomes = await broker.publish_many(batch)
        results: list[dict[str, Any]] = []
        first_error: BrokerError | None = None
        for (topic, _), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BrokerError):
                first_error = first_error or outcome
                results.append({"topic": topic, **error_body(outcome.code, outcome.message)})
            else:
                results.append({"topic": topic, "offset": outcome})
        if first_error is None:
            return _json({"results": results}, 202)
        # Some messages were refused (backpressure): say which, so only those are retried.
        body = {**error_body(first_error.code, first_error.message), "results": results}
        return _json(body, http_status(first_error))

    @app.get("/v1/topics")
    async def list_topics() -> Response:
        prefix = request.args.get("prefix", "")
        return _json({"topics": [_topic_view(s) for s in await broker.topics(prefix)]})

    @app.get("/v1/topics/<topic>")
    async def describe_topic(topic: str) -> Response:
        return _json(_topic_view(await broker.topic(topic)))

    @app.get("/v1/topics/<topic>/subscribers")
    async def topic_subscribers(topic: str) -> Response:
        subscribers = await broker.subscribers(topic)
        return _json(
            {
                "topic": topic,
                "subscribers": [
                    {"connection_id": s.connection_id, "client": s.client, "since": s.since}
                    for s in subscribers
                ],
            }
        )

    @app.get("/v1/topics/<topic>/messages")
    async def topic_messages(topic: str) -> Response:
        start = _int_arg("from", 0, 0)
        limit = _int_arg("limit", 100, 1, 10_000)
        page = await broker.history(topic, start, limit)
        return _json(
            {
                "topic": topic,
                "first_offset": page.first_retained,
                "next_offset": page.next_offset,
                "messages": [
                    {
                        "offset": m.offset,
                        "content_type": m.content_type,
                        "timestamp": m.timestamp,
                        "data": codec.payload_value(m),
                    }
                    for m in page.messages
                ],
            }
        )

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if ready():
            return _json({"status": "ready"})
        return _json({"status": "draining" if broker.draining else "starting"}, 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        broker.metrics.collector.gauges = await broker.gauges()
        return Response(
            generate_latest(broker.metrics.registry), content_type=CONTENT_TYPE_LATEST
        )

    return app
