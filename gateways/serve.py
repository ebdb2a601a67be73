"""The composition root: run the broker and both gateways; drain on request.

    serve
    ├── open_broker (actors)
    ├── the Quart app's lifespan (through the ASGI bridge)
    ├── connections nursery (one task group per WebSocket)
    └── listeners nursery
        ├── WebSocket listener (its own cancel scope: stops accepting first)
        └── HttpServer: publishes answered by PublishRoute, the rest by the Quart app

Drain (on `stop`): readiness turns 503 and publishes are refused; both listeners stop
accepting (the HTTP server closes idle keep-alive connections and finishes requests in
flight, concurrently with the rest); publishes
already in flight get their offsets; topics process what is already in their mailboxes;
every WebSocket gets its queued frames and then a 1001 close. Each step is bounded by
`drain_seconds`; past it the rest is cancelled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from broker import Broker, Settings, open_broker

from .http import (
    AsgiBridge,
    Handler,
    HttpRequest,
    HttpResponse,
    HttpServer,
    PublishRoute,
    create_app,
)
from .websocket import PATH, serve_websocket

log = logging.getLogger("gateways.serve")


@dataclass(frozen=True, slots=True)
class Addresses:
    """Where a running broker listens (ports are the bound ones, even when 0 was asked).

    `broker` is the running broker's handle, for in-process embedding and tests.
    """

    host: str
    port: int
    ws_port: int
    broker: Broker | None = None

    @property
    def http_url(self) -> str:
        return f"http://{_host_for_url(self.host)}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{_host_for_url(self.host)}:{self.ws_port}{PATH}"

    def listening_line(self) -> str:
        return f"broker listening on {self.http_url} {self.ws_url}"


def _host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# Seconds an idle keep-alive HTTP connection is kept (and the most a client may pause in
# the middle of a request). hypercorn's default, which the HTTP client's reconnect-on-idle
# rule was written against.
KEEP_ALIVE_SECONDS = 5.0


def _http_handler(publish: PublishRoute, app: AsgiBridge) -> Handler:
    """Publishes first (the hot path), everything else by the Quart app."""

    async def handle(request: HttpRequest) -> HttpResponse:
        answer = await publish(request)
        return answer if answer is not None else await app(request)

    return handle


async def serve(
    settings: Settings,
    stop: trio.Event,
    *,
    task_status: trio.TaskStatus[Addresses] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `stop` is set, then drain (see the module docstring) and return."""
    async with open_broker(settings) as broker:
        ready = False
        closing = trio.Event()
        # Quart types the ASGI scope and events as hypercorn's TypedDicts; the bridge builds
        # plain dicts of those shapes (`http.asgi_bridge`), typed as mappings.
        app = AsgiBridge(
            create_app(broker, lambda: ready and not broker.draining)  # type: ignore[arg-type]
        )
        http_server = HttpServer(
            _http_handler(PublishRoute(broker), app),
            max_body=max(settings.max_body_bytes, settings.max_payload_bytes),
            keep_alive=KEEP_ALIVE_SECONDS,
            header_timeout=settings.header_timeout,
            min_receive_rate=settings.min_receive_rate,
            write_timeout=settings.write_timeout,
        )
        ws_listener = trio.CancelScope()

        async def run_ws_listener(*, task_status: trio.TaskStatus[int]) -> None:
            with ws_listener:
                await serve_websocket(broker, closing, connections, task_status=task_status)

        http_listeners = await trio.open_tcp_listeners(settings.port, host=settings.host)
        port = http_listeners[0].socket.getsockname()[1]
        async with app.lifespan(), trio.open_nursery() as connections, \
                trio.open_nursery() as listeners:
            ws_port = await listeners.start(run_ws_listener)
            await listeners.start(http_server.serve, http_listeners)
            ready = True
            task_status.started(Addresses(settings.host, port, ws_port, broker))
            await stop.wait()
            log.info("draining: no new connections or publishes")
            broker.begin_drain()
            ws_listener.cancel()
            http_server.drain()
            deadline = trio.current_time() + settings.drain_seconds
            # Requests in flight finish concurrently with the rest, by the same deadline.
            listeners.cancel_scope.deadline = deadline
            with trio.move_on_at(deadline):
                await broker.wait_settled()  # publishes in flight got their offsets
                await broker.flush()  # ... and topics queued them to every outbox
            closing.set()  # now each WebSocket writes what it has, then 1001
            connections.cancel_scope.deadline = (
                trio.current_time() + settings.drain_seconds
            )
        log.info("drained")
