"""`Client` and `open_client`: one broker client, publishing over HTTP, subscribing over
WebSocket (the package's docstring shows it in use).

HTTP requests share ONE keep-alive connection (see `http.HttpConnection`: concurrent
callers take turns on a lock); each subscription is its own WebSocket (see
`websocket.Subscription`). Every failure is a `ClientError` with a machine `code`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any
from urllib.parse import quote

from .http import (
    ClientError,
    HttpConnection,
    HttpStatistics,
    batch_results,
    encode_batch,
    encode_payload,
    expect_success,
    offset_from_response,
    topic_path,
)
from .websocket import Subscription, WireFormatName, open_subscription

__all__ = [
    "DEFAULT_HTTP_URL",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WS_URL",
    "Client",
    "open_client",
]

DEFAULT_HTTP_URL = "http://127.0.0.1:8080"
DEFAULT_WS_URL = "ws://127.0.0.1:8081/v1/ws"
# Seconds any one request may take (connect, lock wait and answer included).
DEFAULT_TIMEOUT = 10.0


class Client:
    """A broker client. Make it with `open_client`, which closes it.

    Publishing and the listing calls go over one keep-alive HTTP connection, opened on
    first use and reopened transparently if the broker closed it while idle. Every call is
    bounded by `timeout` and raises `ClientError` on any failure.
    """

    def __init__(
        self,
        http_url: str = DEFAULT_HTTP_URL,
        ws_url: str = DEFAULT_WS_URL,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.http_url = http_url
        self.ws_url = ws_url
        self.timeout = timeout
        self._http = HttpConnection(http_url, timeout)

    async def publish(
        self, topic: str, data: Any, *, cbor: bool = False, content_type: str | None = None
    ) -> int:
        """Publish one message; its offset.

        `data` goes as JSON (CBOR with `cbor=True`); bytes go as they are, typed
        `application/octet-stream` unless `content_type` names another type.
        """
        body, kind = encode_payload(data, cbor=cbor, content_type=content_type)
        response = await self._http.request("POST", topic_path(topic), body, kind)
        return offset_from_response(response)

    async def publish_many(
        self, messages: Iterable[tuple[str, Any]], *, cbor: bool = False
    ) -> list[int | ClientError]:
        """Publish `(topic, data)` pairs in one request (`POST /v1/publish`).

        Returns, in order, each message's offset or the `ClientError` that refused it (a
        topic that stayed busy: `topic_busy`, not accepted, safe to retry). An error that
        refuses the whole batch (a bad topic, too large) is raised: nothing was published.
        """
        batch = list(messages)
        body, kind = encode_batch(batch, cbor=cbor)
        response = await self._http.request("POST", "/v1/publish", body, kind)
        return batch_results(response, len(batch))

    async def topics(self, prefix: str | None = None) -> list[dict[str, Any]]:
        """Every topic (or those whose name starts with `prefix`) with its figures."""
        target = "/v1/topics" if not prefix else f"/v1/topics?prefix={quote(prefix, safe='')}"
        body = expect_success(await self._http.request("GET", target))
        return list(body["topics"])

    async def topic(self, name: str) -> dict[str, Any]:
        """One topic's figures; `ClientError("not_found")` if it does not exist."""
        return dict(expect_success(await self._http.request("GET", topic_path(name))))

    async def history(self, topic: str, from_: int = 0, limit: int = 100) -> dict[str, Any]:
        """Retained messages from offset `from_`: `{"topic", "first_offset",
        "next_offset", "messages": [{"offset", "content_type", "timestamp", "data"}]}`."""
        target = topic_path(topic, f"/messages?from={int(from_)}&limit={int(limit)}")
        return dict(expect_success(await self._http.request("GET", target)))

    async def subscribers(self, topic: str) -> list[dict[str, Any]]:
        """Presence: the connections subscribed to `topic` (id, client name, since)."""
        body = expect_success(await self._http.request("GET", topic_path(topic, "/subscribers")))
        return list(body["subscribers"])

    def subscribe(
        self,
        *topics: str,
        from_: str | int | None = None,
        format: WireFormatName = "json",  # shadows the builtin: the name the API promises
        name: str | None = None,
    ) -> AbstractAsyncContextManager[Subscription]:
        """A new WebSocket subscribed to `topics` (names or patterns), as a context manager.

        `from_`: "latest", "earliest", an offset, or None (the broker's default: latest).
        `format`: "json" or "cbor" (the subprotocol). `name` names the connection in
        presence listings. Entering waits for every subscription's `ok`.
        """
        return open_subscription(
            self.ws_url, topics, from_=from_, wire_format=format, name=name,
            timeout=self.timeout,
        )

    def statistics(self) -> HttpStatistics:
        """The HTTP connection's counts: connections opened, reconnects, requests."""
        return self._http.statistics()

    async def aclose(self) -> None:
        """Close the HTTP connection (subscriptions close with their own context)."""
        await self._http.aclose()


@asynccontextmanager
async def open_client(
    http_url: str = DEFAULT_HTTP_URL,
    ws_url: str = DEFAULT_WS_URL,
    timeout: float = DEFAULT_TIMEOUT,
) -> AsyncIterator[Client]:
    """A `Client` for the broker at these URLs, closed on exit. Connects on first use."""
    client = Client(http_url, ws_url, timeout)
    try:
        yield client
    finally:
        await client.aclose()
