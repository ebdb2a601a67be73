"""`broker pub`, `broker sub` and `broker bench`: real subprocesses against an in-process broker."""

from __future__ import annotations

import importlib
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import orjson
import pytest
import trio

from gateways import Gap, Message, open_client
from gateways.cli import item_line, main, parse_data

from ..conftest import TIMEOUT, RunningBroker

ROOT = Path(__file__).resolve().parents[2]  # the repository (its pyproject.toml)


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "BROKER_WS_URL")}
    env.update(extra)
    return env


async def _run(*args: str, **env: str) -> subprocess.CompletedProcess[bytes]:
    with trio.fail_after(TIMEOUT):
        return await trio.run_process(
            [sys.executable, "-m", "gateways", *args],
            capture_stdout=True, capture_stderr=True, check=False, env=_environment(**env),
        )


class LineReader:
    """Lines from a subprocess pipe, each read within TIMEOUT."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.buffer = b""

    async def line(self) -> bytes:
        with trio.fail_after(TIMEOUT):
            while b"\n" not in self.buffer:
                chunk = await self.stream.receive_some()
                if not chunk:
                    raise EOFError(self.buffer)
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line


async def _start_sub(*args: str) -> tuple[trio.Process, LineReader, LineReader]:
    """A `broker sub` process, returned once it reported its subscriptions on stderr."""
    process = await trio.lowlevel.open_process(
        [sys.executable, "-m", "gateways", "sub", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_environment(),
    )
    assert process.stdout is not None and process.stderr is not None
    out, err = LineReader(process.stdout), LineReader(process.stderr)
    assert b"subscribed to" in await err.line()
    return process, out, err


async def _wait(process: trio.Process) -> int:
    with trio.fail_after(TIMEOUT):
        return await process.wait()


# -- pure ------------------------------------------------------------------------------


def test_data_is_json_when_it_parses_and_a_string_otherwise() -> None:
    assert parse_data('{"a": [1, 2]}') == {"a": [1, 2]}
    assert parse_data("42") == 42
    assert parse_data('"quoted"') == "quoted"
    assert parse_data("hello world") == "hello world"


def test_output_lines_for_messages_and_gaps() -> None:
    assert orjson.loads(item_line(Message("a.b", 3, {"x": b"\x01"}))) == {
        "topic": "a.b", "offset": 3, "data": {"x": {"base64": "AQ=="}},
    }
    line = item_line(Gap("a.b", 2, 4, 5))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert orjson.loads(line) == {"gap": {"topic": "a.b", "skipped": 2, "from": 4, "to": 5}}


# -- pub -------------------------------------------------------------------------------


async def test_pub_prints_each_offset_and_sends_json_or_cbor(running: RunningBroker) -> None:
    done = await _run("pub", "cli.pub", '{"n": 1}', "--url", running.http_url, "--count", "2")
    assert (done.returncode, done.stdout) == (0, b"0\n1\n")
    done = await _run("pub", "cli.pub", "not json", "--cbor", BROKER_URL=running.http_url)
    assert (done.returncode, done.stdout) == (0, b"2\n")
    async with open_client(running.http_url, timeout=TIMEOUT) as client:
        page = await client.history("cli.pub")
    assert [m["data"] for m in page["messages"]] == [{"n": 1}, {"n": 1}, "not json"]
    assert page["messages"][2]["content_type"] == "application/cbor"


async def test_pub_refused_or_unreachable_exits_1_with_a_clear_message(
    running: RunningBroker,
) -> None:
    refused = await _run("pub", "a..b", "1", "--url", running.http_url)
    assert refused.returncode == 1
    assert refused.stderr.startswith(b"broker pub: invalid_topic (400): ")
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        unreachable = await _run("pub", "a.b", "1", "--url", f"http://127.0.0.1:{port}")
        unreachable_ws = await _run("sub", "a.b", "--ws-url", f"ws://127.0.0.1:{port}/v1/ws")
    assert unreachable.returncode == 1
    assert unreachable.stderr.startswith(b"broker pub: connection_failed: cannot connect")
    assert unreachable_ws.returncode == 1
    assert unreachable_ws.stderr.startswith(b"broker sub: connection_failed: cannot connect")
    assert unreachable_ws.stdout == b""


# -- sub -------------------------------------------------------------------------------


@pytest.mark.parametrize("wire_format", [[], ["--cbor"]])
async def test_sub_replays_and_exits_after_count(
    running: RunningBroker, wire_format: list[str]
) -> None:
    async with open_client(running.http_url, timeout=TIMEOUT) as client:
        for data in ({"n": 0}, b"\x01", "two", "three"):
            await client.publish("cli.sub", data)
    done = await _run("sub", "cli.sub", "--from", "earliest", "--count", "3",
                      *wire_format, BROKER_WS_URL=running.ws_url())
    assert done.returncode == 0, done.stderr
    assert [orjson.loads(line) for line in done.stdout.splitlines()] == [
        {"topic": "cli.sub", "offset": 0, "data": {"n": 0}},
        {"topic": "cli.sub", "offset": 1, "data": {"base64": "AQ=="}},
        {"topic": "cli.sub", "offset": 2, "data": "two"},
    ]


async def test_sub_prints_live_messages_as_they_arrive(running: RunningBroker) -> None:
    process, out, _ = await _start_sub("live.*", "--count", "2", "--name", "cli-tester",
                                       "--ws-url", running.ws_url())
    async with open_client(running.http_url, timeout=TIMEOUT) as client:
        await client.publish("live.a", [1])
        # each line is flushed as it arrives, before the next message exists
        assert orjson.loads(await out.line()) == {"topic": "live.a", "offset": 0, "data": [1]}
        assert [s["client"] for s in await client.subscribers("live.a")] == ["cli-tester"]
        await client.publish("live.b", [2])
        assert orjson.loads(await out.line()) == {"topic": "live.b", "offset": 0, "data": [2]}
    assert await _wait(process) == 0


async def test_sub_exits_0_on_ctrl_c(running: RunningBroker) -> None:
    process, _, _ = await _start_sub("quiet.topic", "--ws-url", running.ws_url())
    process.send_signal(signal.SIGINT)
    assert await _wait(process) == 0


async def test_sub_exits_1_when_the_broker_closes_it(running: RunningBroker) -> None:
    process, _, err = await _start_sub("closing.topic", "--ws-url", running.ws_url())
    running.stop.set()
    assert await _wait(process) == 1
    message = await err.line()
    assert message.startswith(b"broker sub: closed:")
    assert b"1001" in message


# -- bench -----------------------------------------------------------------------------


class Exec(Exception):
    """Raised by the stand-in for `os.execv`: the process image is not replaced."""


def test_bench_becomes_python_m_benchmarks_with_its_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[tuple[str, list[str]]] = []

    def execv(path: str, argv: list[str]) -> None:
        calls.append((path, argv))
        raise Exec

    monkeypatch.setattr(os, "execv", execv)
    with pytest.raises(Exec):
        main(["bench", "--quick", "-x"])
    assert calls == [(sys.executable, [sys.executable, "-m", "benchmarks", "--quick", "-x"])]


def test_bench_without_the_suite_exits_2_with_a_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "benchmarks", None)  # not to be found
    monkeypatch.setattr(os, "execv", lambda *args: pytest.fail("exec without the suite"))
    assert main(["bench"]) == 2
    assert "broker bench: the benchmark suite is not available" in capsys.readouterr().err


async def test_bench_runs_the_suite_in_a_new_process_image() -> None:
    done = await _run("bench", "--help")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(b"usage: python -m benchmarks")


def test_every_console_script_names_a_function_that_exists() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {
        "broker": "gateways.cli:main", "broker-bench": "benchmarks.__main__:main",
    }
    for target in scripts.values():
        module, _, name = target.partition(":")
        assert callable(getattr(importlib.import_module(module), name)), target


async def test_serve_on_a_port_in_use_exits_1_with_one_line() -> None:
    """A taken port is the commonest start-up failure: one clear line, no traceback."""
    taken = trio.socket.socket()
    await taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        done = await _run("serve", "--host", "127.0.0.1", "--port", str(port),
                          "--ws-port", "0")
    finally:
        taken.close()
    stderr = done.stderr.decode()
    assert done.returncode == 1
    assert "broker: cannot listen:" in stderr and "in use" in stderr
    assert "Traceback" not in stderr
