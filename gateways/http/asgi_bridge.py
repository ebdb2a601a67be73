"""`AsgiBridge`: serve an ASGI app (the Quart app) from `HttpServer`'s complete requests.

The HTTP gateway's server is our own (`server`); the requests that are not publishes
(listings, history, health, metrics, and every error page) are still answered by the
quart-trio app, through this bridge: one ASGI `http` scope per request, its body handed
over at once, its answer collected whole. The app's lifespan (startup and shutdown) runs
for as long as the `lifespan()` context is open.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import trio

from .server import HttpRequest, HttpResponse

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

# Response headers the server writes itself (framing belongs to the connection).
# Seconds the app's shutdown may take.
SHUTDOWN_SECONDS = 5.0
_FRAMING = frozenset({b"content-length", b"transfer-encoding", b"connection", b"content-type"})


class AsgiBridge:
    """Call `app` for one request at a time per caller; see the module docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, request: HttpRequest) -> HttpResponse:
        head = request.head
        scope: Scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1" if head.http_11 else "1.0",
            "method": head.method,
            "scheme": "http",
            "path": head.path,
            "raw_path": head.raw_path,
            "query_string": head.query,
            "root_path": "",
            "headers": list(head.headers),
            "client": request.client,
            "server": request.server,
            "extensions": {},
        }
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": request.body, "more_body": False}
            await trio.sleep_forever()  # the app is cancelled once it has answered
            raise AssertionError("unreachable")

        status = 500
        content_type: bytes | None = None
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def send(message: Message) -> None:
            nonlocal status, content_type
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    name = bytes(name).lower()
                    if name == b"content-type":
                        content_type = bytes(value)
                    elif name not in _FRAMING:
                        headers.append((name, bytes(value)))
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        await self._app(scope, receive, send)
        return HttpResponse(status, b"".join(chunks), content_type, tuple(headers))

    @asynccontextmanager
    async def lifespan(self) -> AsyncIterator[None]:
        """Run the app's startup before the body and its shutdown after it."""
        to_app, app_inbox = trio.open_memory_channel[Message](2)
        app_outbox, from_app = trio.open_memory_channel[Message](2)

        async def run() -> None:
            async with app_outbox:
                await self._app({"type": "lifespan", "asgi": {"version": "3.0"}},
                                app_inbox.receive, app_outbox.send)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run)
            await to_app.send({"type": "lifespan.startup"})
            answer = await from_app.receive()
            if answer["type"] != "lifespan.startup.complete":
                raise RuntimeError(f"the HTTP app failed to start: {answer.get('message')}")
            try:
                yield
            finally:
                # (Unless the app's task already ended, e.g. cancelled with everything.)
                with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_SECONDS):
                    try:
                        await to_app.send({"type": "lifespan.shutdown"})
                        await from_app.receive()
                    except (trio.BrokenResourceError, trio.EndOfChannel):
                        pass
                nursery.cancel_scope.cancel()


__all__ = ["AsgiBridge"]
