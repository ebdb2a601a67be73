"""The FastAPI baseline speaks the benchmarks' slice of the v1 contract and stops cleanly."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from benchmarks.baselines import TARGETS

from ..conftest import TIMEOUT, receive, request

# Each test starts the FastAPI app under uvicorn in a process of its own (~2 s in all).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]  # tests/end_to_end/ -> the repository
READY_LINE = re.compile(rb"broker listening on (http://\S+) (ws://\S+)")


@dataclass
class Baseline:
    process: trio.Process
    http_url: str
    ws_url: str


async def read_ready_line(stream: trio.abc.ReceiveStream) -> bytes:
    buffer = b""
    while b"\n" not in buffer:
        chunk = await stream.receive_some()
        assert chunk, f"the baseline exited before listening; said {buffer!r}"
        buffer += chunk
    return buffer.partition(b"\n")[0]


@pytest.fixture
async def baseline() -> AsyncIterator[Baseline]:
    process = await trio.lowlevel.open_process(
        [sys.executable, *TARGETS["fastapi"]], cwd=REPO, stdout=subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(TIMEOUT):
            line = await read_ready_line(process.stdout)
        match = READY_LINE.fullmatch(line)
        assert match is not None, line
        http_url, ws_url = (group.decode() for group in match.groups())
        yield Baseline(process, http_url, ws_url)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_ready_line_names_one_port_for_http_and_websocket(baseline: Baseline) -> None:
    port = baseline.http_url.rsplit(":", 1)[1]
    assert baseline.ws_url == f"ws://127.0.0.1:{port}/v1/ws"
    async with httpx.AsyncClient(base_url=baseline.http_url, timeout=TIMEOUT) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_subscriber_gets_single_and_bulk_publishes_in_offset_order(
    baseline: Baseline,
) -> None:
    async with (
        open_websocket_url(f"{baseline.ws_url}?topic=orders.eu&topic=other",
                           subprotocols=["broker.v1.json"]) as ws,
        httpx.AsyncClient(base_url=baseline.http_url, timeout=TIMEOUT) as http,
    ):
        assert ws.subprotocol == "broker.v1.json"
        assert await request(ws, op="ping", id=7) == {"op": "ok", "id": 7}
        single = await http.post("/v1/topics/orders.eu", json={"n": 0})
        assert single.status_code == 202
        assert single.json() == {"topic": "orders.eu", "offset": 0}
        bulk = await http.post("/v1/publish", json={"messages": [
            {"topic": "orders.eu", "data": {"n": 1}},
            {"topic": "unrelated", "data": "not for us"},
            {"topic": "orders.eu", "data": [2]},
        ]})
        assert bulk.status_code == 202
        assert bulk.json() == {"results": [
            {"topic": "orders.eu", "offset": 1},
            {"topic": "unrelated", "offset": 0},
            {"topic": "orders.eu", "offset": 2},
        ]}
        frames = [await receive(ws) for _ in range(3)]
        assert frames == [
            {"op": "message", "topic": "orders.eu", "offset": 0, "data": {"n": 0}},
            {"op": "message", "topic": "orders.eu", "offset": 1, "data": {"n": 1}},
            {"op": "message", "topic": "orders.eu", "offset": 2, "data": [2]},
        ]


async def test_websocket_subscribe_and_publish_ops(baseline: Baseline) -> None:
    async with open_websocket_url(baseline.ws_url) as ws:
        assert await request(ws, op="subscribe", topic="chat", id="s") == {
            "op": "ok", "id": "s", "topic": "chat",
        }
        await ws.send_message(orjson.dumps({"op": "publish", "topic": "chat", "data": 5,
                                            "id": "p"}).decode())
        # Our own publish reaches us before its `ok` (the sends come first).
        assert await receive(ws) == {"op": "message", "topic": "chat", "offset": 0, "data": 5}
        assert await receive(ws) == {"op": "ok", "id": "p", "topic": "chat", "offset": 0}
        wildcard = await request(ws, op="subscribe", topic="chat.*", id=1)
        assert (wildcard["op"], wildcard["code"]) == ("error", "invalid_topic")
        garbage = await request(ws, op="dance", id=2)
        assert (garbage["op"], garbage["code"]) == ("error", "unknown_op")


async def test_bad_requests_get_the_brokers_error_shape(baseline: Baseline) -> None:
    async with httpx.AsyncClient(base_url=baseline.http_url, timeout=TIMEOUT) as http:
        answer = await http.post("/v1/topics/a.*", json=1)
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "invalid_topic"
        answer = await http.post("/v1/publish", json={"messages": [{"topic": "a"}]})
        assert answer.status_code == 400
        assert answer.json()["error"]["code"] == "invalid_payload"


async def test_sigterm_closes_websockets_and_exits_zero(baseline: Baseline) -> None:
    async with open_websocket_url(f"{baseline.ws_url}?topic=t") as ws:
        assert await request(ws, op="ping", id=1) == {"op": "ok", "id": 1}
        baseline.process.send_signal(signal.SIGTERM)
        with trio.fail_after(TIMEOUT):
            assert await baseline.process.wait() == 0
        with pytest.raises(ConnectionClosed) as closed, trio.fail_after(TIMEOUT):
            await ws.get_message()
        assert closed.value.reason.code == 1012  # uvicorn's "service restart"
