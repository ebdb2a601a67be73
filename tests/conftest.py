"""Shared fixtures: a real broker on free ports, real HTTP and WebSocket clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
import trio
from trio_websocket import WebSocketConnection, open_websocket_url

from broker import Broker, Settings, TopicSettings
from gateways.serve import Addresses, serve

# Every wait in a test is bounded, so a broken promise fails instead of hanging.
TIMEOUT = 10.0


@dataclass
class RunningBroker:
    addresses: Addresses
    stop: trio.Event

    @property
    def broker(self) -> Broker:
        assert self.addresses.broker is not None
        return self.addresses.broker

    @property
    def http_url(self) -> str:
        return self.addresses.http_url

    def ws_url(self, query: str = "") -> str:
        return self.addresses.ws_url + (f"?{query}" if query else "")


StartBroker = Callable[..., Awaitable[RunningBroker]]


@pytest.fixture
async def start_broker(nursery: trio.Nursery) -> StartBroker:
    """Start a broker (settings overridable) in the test's nursery; cancelled at the end."""

    async def start(**overrides: Any) -> RunningBroker:
        values: dict[str, Any] = {"port": 0, "ws_port": 0, "drain_seconds": 3.0}
        values.update(overrides)
        settings = Settings(**values)
        stop = trio.Event()
        addresses = await nursery.start(serve, settings, stop)
        return RunningBroker(addresses, stop)

    return start


@pytest.fixture
async def running(start_broker: StartBroker) -> RunningBroker:
    return await start_broker()


@pytest.fixture
async def http(running: RunningBroker) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=running.http_url, timeout=TIMEOUT) as client:
        yield client


@asynccontextmanager
async def websocket(
    running: RunningBroker, query: str = "", subprotocol: str | None = None
) -> AsyncIterator[WebSocketConnection]:
    subprotocols = [subprotocol] if subprotocol else None
    async with open_websocket_url(running.ws_url(query), subprotocols=subprotocols) as ws:
        yield ws


async def receive(ws: WebSocketConnection) -> dict[str, Any]:
    """The next frame as an object (JSON or CBOR by frame type), within TIMEOUT."""
    import cbor2

    with trio.fail_after(TIMEOUT):
        frame = await ws.get_message()
    if isinstance(frame, bytes):
        return cbor2.loads(frame)
    return orjson.loads(frame)


async def request(ws: WebSocketConnection, **fields: Any) -> dict[str, Any]:
    """Send one JSON request and return the next frame (its reply on a quiet connection)."""
    await ws.send_message(orjson.dumps(fields).decode())
    return await receive(ws)


async def wait_until(condition: Callable[[], Awaitable[bool]], timeout: float = TIMEOUT) -> None:
    """Poll an observable condition of another process or socket, bounded by `timeout`.

    Used only where no event can be awaited (state visible only through HTTP).
    """
    with trio.fail_after(timeout):
        while not await condition():
            await trio.sleep(0.01)


# Topics with a one-slot mailbox and a short publish timeout: backpressure at once.
ONE_SLOT_MAILBOX = Settings(topic_idle_seconds=0, publish_timeout=0.5,
                            topic_defaults=TopicSettings(mailbox_size=1))


async def paused_topic(broker: Broker) -> trio.Event:
    """Topic "t", running with one message (offset 0), paused until the event is set."""
    await broker.publish("t", broker.payload(b"x", None))
    resume = trio.Event()
    await broker.pause_topic("t", resume)
    return resume
