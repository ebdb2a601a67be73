"""The composition root: run the broker and both gateways; drain on request.

    serve
    ├── open_broker (actors)
    ├── connections nursery (one task group per WebSocket)
    └── listeners nursery
        ├── WebSocket listener (its own cancel scope: stops accepting first)
        └── hypercorn serving the quart-trio app

Drain (on `stop`): readiness turns 503 and publishes are refused; both listeners stop
accepting (hypercorn finishes in-flight requests, concurrently with the rest); publishes
already in flight get their offsets; topics process what is already in their mailboxes;
every WebSocket gets its queued frames and then a 1001 close. Each step is bounded by
`drain_seconds`; past it the rest is cancelled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from broker import Broker, Settings, open_broker

from .http import create_app
from .publish_route import PublishRoute
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


# hypercorn's default. It also bounds how long a connection that never sends a complete
# request holds its socket and tasks (75 s here let dropped connections pile up), and how
# long an idle keep-alive connection that the client closed keeps its two tasks: hypercorn
# ends those on its idle timer, not on the client's FIN.
KEEP_ALIVE_SECONDS = 5.0


def _hypercorn_config(settings: Settings) -> HypercornConfig:
    config = HypercornConfig()
    config.bind = [f"{_host_for_url(settings.host)}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our logging setup
    config.graceful_timeout = settings.drain_seconds
    config.keep_alive_timeout = KEEP_ALIVE_SECONDS
    return config


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
        app = PublishRoute(broker, create_app(broker, lambda: ready and not broker.draining))
        ws_listener = trio.CancelScope()

        async def run_ws_listener(*, task_status: trio.TaskStatus[int]) -> None:
            with ws_listener:
                await serve_websocket(broker, closing, connections, task_status=task_status)

        async with trio.open_nursery() as connections, trio.open_nursery() as listeners:
            ws_port = await listeners.start(run_ws_listener)
            binds = await listeners.start(
                partial(
                    hypercorn_serve, app, _hypercorn_config(settings),
                    shutdown_trigger=stop.wait,
                )
            )
            port = int(binds[0].rsplit(":", 1)[1])
            ready = True
            task_status.started(Addresses(settings.host, port, ws_port, broker))
            await stop.wait()
            log.info("draining: no new connections or publishes")
            broker.begin_drain()
            ws_listener.cancel()
            deadline = trio.current_time() + settings.drain_seconds
            # hypercorn drains on its own (it also waits for idle keep-alive clients,
            # which must not hold back the WebSockets), bounded by the same deadline.
            listeners.cancel_scope.deadline = deadline
            with trio.move_on_at(deadline):
                await broker.wait_settled()  # publishes in flight got their offsets
                await broker.flush()  # ... and topics queued them to every outbox
            closing.set()  # now each WebSocket writes what it has, then 1001
            connections.cancel_scope.deadline = (
                trio.current_time() + settings.drain_seconds
            )
        log.info("drained")
