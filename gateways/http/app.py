"""The HTTP gateway's app: quart-trio, behind our HTTP server (`server`, `asgi_bridge`).

The two publish requests are answered in front of it by `publish_route.PublishRoute`;
this app serves the rest (listings, history, health, metrics) and the error handlers.

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
    codec,
)
from broker.topic import TopicStatistics

from ..errors import HTTP_CODES, RETRY_AFTER, error_body, http_status

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
                        "data": codec.payload_json_fragment(m),
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
        """200 when accepting work; 503 while starting, draining, or overloaded (memory at
        `max_memory`: the body carries the figures, so an operator sees why)."""
        if not ready():
            return _json({"status": "draining" if broker.draining else "starting"}, 503)
        if broker.memory.overloaded:
            figures = broker.memory.statistics().view()
            return _json({"status": "overloaded", "memory": figures}, 503)
        return _json({"status": "ready"})

    @app.get("/metrics")
    async def metrics() -> Response:
        broker.metrics.collector.gauges = await broker.gauges()
        return Response(
            generate_latest(broker.metrics.registry), content_type=CONTENT_TYPE_LATEST
        )

    return app
