"""Graceful shutdown: pending messages are delivered, then WebSockets close with 1001."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import orjson
import pytest
import trio
from trio_websocket import ConnectionClosed, open_websocket_url

from ..conftest import TIMEOUT, StartBroker, receive, request, websocket
from .rawws import RawWebSocket

ROOT = Path(__file__).resolve().parents[2]  # tests/end_to_end/ -> the repository


async def test_stop_delivers_queued_messages_then_closes_with_1001(
    start_broker: StartBroker,
) -> None:
    running = await start_broker()
    async with websocket(running, "topic=s") as ws:
        await request(ws, op="ping", id=0)
        async with httpx.AsyncClient(base_url=running.http_url) as http:
            batch = [{"topic": "s", "data": n} for n in range(100)]
            assert (await http.post("/v1/publish", json={"messages": batch})).status_code == 202
        running.stop.set()
        got = [(await receive(ws))["data"] for _ in range(100)]
        assert got == list(range(100))
        with pytest.raises(ConnectionClosed) as closed:
            await receive(ws)
        assert closed.value.reason.code == 1001


async def test_after_stop_new_publishes_and_connections_are_refused(
    start_broker: StartBroker,
) -> None:
    running = await start_broker()
    async with websocket(running, "topic=s") as ws:
        await request(ws, op="ping", id=0)
        running.stop.set()
        with pytest.raises(ConnectionClosed):
            await receive(ws)
    with trio.fail_after(TIMEOUT):
        while True:  # the listener closes once the drain began; until then it may accept
            try:
                async with open_websocket_url(running.ws_url()) as late:
                    await late.get_message()
            except (OSError, ConnectionClosed, Exception):
                break
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.TransportError):
            await http.post(f"{running.http_url}/v1/topics/s", json=1)


def _start_process(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "gateways", "serve", "--port", "0", "--ws-port", "0", *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


async def _listening_line(process: subprocess.Popen[str]) -> tuple[str, str]:
    assert process.stdout is not None
    line = await trio.to_thread.run_sync(process.stdout.readline)
    assert line.startswith("broker listening on http://127.0.0.1:"), line
    _, _, _, http_url, ws_url = line.split()
    return http_url, ws_url


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_broker_serve_prints_its_addresses_and_exits_0_on_a_signal(
    signum: signal.Signals,
) -> None:
    process = _start_process()
    try:
        http_url, ws_url = await _listening_line(process)
        assert ws_url.endswith("/v1/ws")
        async with open_websocket_url(ws_url + "?topic=sig") as ws:
            await ws.send_message(orjson.dumps({"op": "ping", "id": 1}).decode())
            assert orjson.loads(await ws.get_message())["op"] == "ok"
            async with httpx.AsyncClient() as http:
                response = await http.post(f"{http_url}/v1/topics/sig", json="last")
                assert response.status_code == 202
            process.send_signal(signum)
            assert orjson.loads(await ws.get_message())["data"] == "last"
            with pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1001
        code = await trio.to_thread.run_sync(lambda: process.wait(timeout=TIMEOUT))
        assert code == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_broker_serve_rejects_a_bad_config_with_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('port = "not a port"\n')
    process = _start_process("--config", str(config))
    code = await trio.to_thread.run_sync(lambda: process.wait(timeout=TIMEOUT))
    assert code == 2
    assert process.stderr is not None and "port" in process.stderr.read()


async def test_a_second_signal_exits_at_once_with_code_1() -> None:
    env_overrides = {"BROKER_DRAIN_SECONDS": "60", "BROKER_CLOSE_TIMEOUT": "60"}
    process = _start_process(env=env_overrides)
    try:
        http_url, ws_url = await _listening_line(process)
        port = int(ws_url.rsplit(":", 1)[1].split("/", 1)[0])
        # A client that never answers the close handshake keeps the drain waiting.
        silent = await RawWebSocket.connect(port, "/v1/ws?topic=x")
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"{http_url}/readyz")).status_code == 200
            process.send_signal(signal.SIGTERM)
            frame = await silent.read_frame()
            assert frame is not None and frame.close_code == 1001
            assert process.poll() is None  # still draining, waiting for our close reply
        process.send_signal(signal.SIGTERM)
        code = await trio.to_thread.run_sync(lambda: process.wait(timeout=TIMEOUT))
        assert code == 1
        await silent.aclose()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_readiness_turns_503_while_draining(start_broker: StartBroker) -> None:
    running = await start_broker(close_timeout=30.0, drain_seconds=30.0)
    silent = await RawWebSocket.connect(running.addresses.ws_port, "/v1/ws?topic=x")
    async with httpx.AsyncClient(base_url=running.http_url) as http:
        assert (await http.get("/readyz")).status_code == 200
    running.stop.set()
    frame = await silent.read_frame()
    assert frame is not None and frame.close_code == 1001
    # The HTTP listener has stopped, but the broker itself reports not-ready.
    assert running.broker.draining
    await silent.aclose()


async def test_an_idle_keep_alive_http_client_does_not_hold_back_websocket_closes(
    start_broker: StartBroker,
) -> None:
    running = await start_broker(drain_seconds=30.0)
    async with httpx.AsyncClient(base_url=running.http_url) as idle_http:
        await idle_http.get("/healthz")  # leaves an idle keep-alive connection open
        async with websocket(running, "topic=k") as ws:
            await request(ws, op="ping", id=0)
            running.stop.set()
            with trio.fail_after(3), pytest.raises(ConnectionClosed) as closed:
                await ws.get_message()
            assert closed.value.reason.code == 1001
