"""The FastAPI + uvicorn baseline: a pub/sub server written the way most Python users start.

It is the `ConnectionManager` of the FastAPI WebSocket docs, keyed by topic: a list of active
connections per topic guarded by one `asyncio.Lock`. A publish takes the topic's next offset
and a snapshot of its list under the lock, serializes the message ONCE with `json.dumps`
(what a typical user writes; no orjson), then awaits `websocket.send_text` for each
subscriber in turn and only then answers the publisher. The encoding is the one Starlette's
`websocket.send_json` uses (compact separators, `ensure_ascii=False`), done once per message
instead of once per subscriber.

It speaks the slice of the v1 contract (/work/shared/API.md) the benchmarks use, with the
same answer shapes as the broker, so a scenario runs unchanged against either:

- `POST /v1/topics/{topic}` (JSON body) -> 202 `{"topic": T, "offset": N}`
- `POST /v1/publish` `{"messages": [{"topic": T, "data": ...}, ...]}` (JSON) ->
  202 `{"results": [{"topic": T, "offset": N}, ...]}`
- WebSocket `/v1/ws?topic=a&topic=b` (subprotocol `broker.v1.json` accepted if asked): ops
  `ping`, `subscribe`, `unsubscribe`, `publish`; messages go out as text frames
  `{"op": "message", "topic": T, "offset": N, "data": ...}`.
- `GET /healthz`

Not here (the broker has them): wildcards (exact topic names only), history and replay,
`from`, CBOR, non-JSON payloads, backpressure or a slow-consumer policy (a slow subscriber
slows every publish to its topic), and order between CONCURRENT publishers of one topic
(offsets are taken under the lock, frames sent after it, as in the docs' pattern).

    python -m benchmarks.baselines.fastapi_app [--host 127.0.0.1] [--port 0] [--ws-port 0]

HTTP and WebSocket share ONE port (uvicorn serves both); `--ws-port` is accepted so launchers
can pass the broker's flags, and ignored. Once listening it prints
`broker listening on http://HOST:PORT ws://HOST:PORT/v1/ws`. SIGTERM/SIGINT: uvicorn's
graceful shutdown (WebSockets closed with 1012), bounded, then exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import socket
import sys
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.websockets import WebSocketDisconnect

SUBPROTOCOL = "broker.v1.json"
TOPIC_NAME = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*")
MAX_TOPIC_LENGTH = 255
# Bound on uvicorn's graceful shutdown, so SIGTERM exits within a few seconds even with
# thousands of open WebSockets (uvicorn's default waits for them forever).
SHUTDOWN_SECONDS = 3.0


class ClientError(Exception):
    """A request the client got wrong; `code` is the broker's machine code for it."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def encode(frame: Any) -> str:
    """JSON text as Starlette's `send_json` writes it."""
    return json.dumps(frame, separators=(",", ":"), ensure_ascii=False)


def checked_topic(name: object) -> str:
    """`name` if it is a valid exact topic name, else `ClientError("invalid_topic")`."""
    if (
        not isinstance(name, str)
        or len(name) > MAX_TOPIC_LENGTH
        or TOPIC_NAME.fullmatch(name) is None
    ):
        raise ClientError(
            "invalid_topic",
            f"bad topic {name!r}: 1-255 characters of [A-Za-z0-9_-] tokens joined by '.' "
            "(this baseline takes exact names only, no wildcards)",
        )
    return name


class TopicSubscribers:
    """The FastAPI docs' ConnectionManager, keyed by topic, plus a per-topic offset counter.

    Every change and every snapshot happens under `lock`; sends happen after it is released.
    """

    def __init__(self) -> None:
        self.active: dict[str, list[WebSocket]] = {}
        self.next_offset: dict[str, int] = {}
        self.lock = asyncio.Lock()

    async def subscribe(self, topic: str, websocket: WebSocket) -> None:
        async with self.lock:
            self.active.setdefault(topic, []).append(websocket)

    async def unsubscribe(self, topic: str, websocket: WebSocket) -> None:
        async with self.lock:
            connections = self.active.get(topic)
            if connections is not None and websocket in connections:
                connections.remove(websocket)
                if not connections:
                    del self.active[topic]

    async def publish(self, topic: str, data: Any) -> int:
        """Give the message the topic's next offset and send it to every subscriber."""
        async with self.lock:
            offset = self.next_offset.get(topic, 0)
            self.next_offset[topic] = offset + 1
            connections = list(self.active.get(topic, ()))
        text = encode({"op": "message", "topic": topic, "offset": offset, "data": data})
        for websocket in connections:
            try:
                await websocket.send_text(text)
            except Exception:
                # Gone or closing: drop it, as the docs' disconnect() would.
                await self.unsubscribe(topic, websocket)
        return offset


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def create_app() -> FastAPI:
    app = FastAPI(title="FastAPI pub/sub baseline", docs_url=None, redoc_url=None,
                  openapi_url=None)
    subscribers = TopicSubscribers()

    @app.post("/v1/topics/{topic}", status_code=202)
    async def publish(topic: str, request: Request) -> Any:
        try:
            checked_topic(topic)
            try:
                data = await request.json()
            except ValueError as exc:
                raise ClientError("invalid_payload", f"body is not valid JSON: {exc}") from exc
        except ClientError as exc:
            return error_response(400, exc.code, exc.message)
        offset = await subscribers.publish(topic, data)
        return {"topic": topic, "offset": offset}

    @app.post("/v1/publish", status_code=202)
    async def publish_many(request: Request) -> Any:
        try:
            try:
                document = await request.json()
            except ValueError as exc:
                raise ClientError("invalid_payload", f"body is not valid JSON: {exc}") from exc
            messages = document.get("messages") if isinstance(document, dict) else None
            if not isinstance(messages, list) or not all(
                isinstance(m, dict) and "data" in m for m in messages
            ):
                raise ClientError(
                    "invalid_payload", 'body must be {"messages": [{"topic", "data"}, ...]}'
                )
            batch = [(checked_topic(m.get("topic")), m["data"]) for m in messages]
        except ClientError as exc:
            return error_response(400, exc.code, exc.message)
        results = []
        for topic, data in batch:
            results.append({"topic": topic, "offset": await subscribers.publish(topic, data)})
        return {"results": results}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.websocket("/v1/ws")
    async def websocket_endpoint(websocket: WebSocket) -> None:
        asked = websocket.scope.get("subprotocols") or []
        topics = websocket.query_params.getlist("topic")
        try:
            for topic in topics:
                checked_topic(topic)
        except ClientError:
            await websocket.close(code=1008)  # before accept: the handshake gets 403
            return
        if asked and SUBPROTOCOL not in asked:
            await websocket.close(code=1002)
            return
        await websocket.accept(subprotocol=SUBPROTOCOL if asked else None)
        subscribed: set[str] = set()
        for topic in dict.fromkeys(topics):
            await subscribers.subscribe(topic, websocket)
            subscribed.add(topic)
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                reply = await answer(text, websocket, subscribed)
                await websocket.send_text(encode(reply))
        except WebSocketDisconnect:
            pass  # the client went away: unsubscribe below
        finally:
            for topic in subscribed:
                await subscribers.unsubscribe(topic, websocket)

    async def answer(text: str | None, websocket: WebSocket, subscribed: set[str]) -> Any:
        """Serve one client request; the reply object (`ok` or `error`)."""
        request_id = None
        try:
            if text is None:
                raise ClientError("invalid_frame", f"{SUBPROTOCOL} takes text frames")
            try:
                request = json.loads(text)
            except ValueError as exc:
                raise ClientError("invalid_frame", f"frame is not JSON: {exc}") from exc
            if not isinstance(request, dict):
                raise ClientError("invalid_frame", "a request is a JSON object")
            request_id = request.get("id")
            op = request.get("op")
            if op == "ping":
                return {"op": "ok", "id": request_id}
            if op == "subscribe":
                topic = checked_topic(request.get("topic"))
                if topic in subscribed:
                    raise ClientError("already_subscribed", f"already subscribed to {topic!r}")
                await subscribers.subscribe(topic, websocket)
                subscribed.add(topic)
                return {"op": "ok", "id": request_id, "topic": topic}
            if op == "unsubscribe":
                topic = checked_topic(request.get("topic"))
                if topic not in subscribed:
                    raise ClientError("not_subscribed", f"not subscribed to {topic!r}")
                subscribed.discard(topic)
                await subscribers.unsubscribe(topic, websocket)
                return {"op": "ok", "id": request_id, "topic": topic}
            if op == "publish":
                topic = checked_topic(request.get("topic"))
                if "data" not in request:
                    raise ClientError("invalid_frame", "publish needs a data field")
                offset = await subscribers.publish(topic, request["data"])
                return {"op": "ok", "id": request_id, "topic": topic, "offset": offset}
            raise ClientError("unknown_op", f"unknown op {op!r}")
        except ClientError as exc:
            return {"op": "error", "id": request_id, "code": exc.code, "message": exc.message}

    return app


# -- serving -----------------------------------------------------------------------------


class ListeningServer(uvicorn.Server):
    """uvicorn's server that prints the broker's ready line once it accepts connections."""

    def __init__(self, config: uvicorn.Config, ready_line: str) -> None:
        super().__init__(config)
        self.ready_line = ready_line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(self.ready_line, flush=True)


def open_listening_socket(host: str, port: int) -> socket.socket:
    """Bind here (not in uvicorn) so `--port 0` works and the chosen port can be printed."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)  # uvicorn's default backlog
    return sock


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.baselines.fastapi_app", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="HTTP and WebSocket port")
    parser.add_argument("--ws-port", type=int, default=None,
                        help="ignored: WebSocket shares --port (accepted for launchers)")
    parser.add_argument("--log-level", default="warning")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sock = open_listening_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    ready_line = f"broker listening on http://{shown}:{port} ws://{shown}:{port}/v1/ws"
    config = uvicorn.Config(
        create_app(),
        loop="uvloop",
        http="httptools",
        # What ws="auto" picks in uvicorn 0.54 when websockets is installed (the legacy
        # "websockets" protocol is deprecated and warns on stderr).
        ws="websockets-sansio",
        lifespan="off",
        access_log=False,
        log_level=args.log_level,
        timeout_graceful_shutdown=SHUTDOWN_SECONDS,
    )
    # uvicorn catches SIGTERM/SIGINT while serving, then restores the previous handlers and
    # raises the signal again: with these no-op handlers that second delivery ends in exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: None)
    ListeningServer(config, ready_line).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
