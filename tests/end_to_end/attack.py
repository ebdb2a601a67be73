"""The attack suite's harness: a real broker process, and a probe of what others feel.

An attack test starts the broker as its own process (`broker_process`), so that its memory,
file descriptors and CPU can be read from outside, while a `latency_probe` in the test's
process publishes to and subscribes on a topic of its own, measuring how long the broker
takes to deliver to a bystander while it is being attacked. The issue's promise is that no
crafted request stalls another client: the probe fails the test past its bound (100 ms).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import trio
from trio_websocket import open_websocket_url

ROOT = Path(__file__).resolve().parents[2]  # tests/end_to_end/ -> the repository
HOST = "127.0.0.1"
# How long the broker may take to start and print its listening line.
START_SECONDS = 20.0
# How often `wait_for` looks at an outside process (its state is not a trio event).
POLL_SECONDS = 0.01
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class BrokerProcess:
    """A `broker serve` child process and what can be read of it through /proc."""

    process: subprocess.Popen[bytes]
    http_port: int
    ws_port: int
    host: str = HOST
    _stderr: Path = field(default=Path(os.devnull))

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.ws_port}/v1/ws"

    def rss_bytes(self) -> int:
        """Resident memory now (/proc/PID/statm)."""
        with open(f"/proc/{self.pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_SIZE

    def open_fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def cpu_seconds(self) -> float:
        """User plus system CPU time the broker has used so far."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS

    def stderr_text(self) -> str:
        return self._stderr.read_text(errors="replace")


@asynccontextmanager
async def broker_process(
    *flags: str, env: dict[str, str] | None = None
) -> AsyncIterator[BrokerProcess]:
    """Run `python -m gateways serve --port 0 --ws-port 0 --log-level warning *flags` until
    the block ends (SIGTERM, then SIGKILL after a few seconds). Its stderr goes to a file
    (`stderr_text()`), so a chatty broker never blocks on a full pipe."""
    name = f"broker-attack-{os.getpid()}-{time.monotonic_ns()}.log"
    stderr_path = Path(os.environ.get("TMPDIR", "/tmp")) / name
    stderr = stderr_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "gateways", "serve", "--port", "0", "--ws-port", "0",
         "--log-level", "warning", *flags],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    try:
        assert process.stdout is not None
        with trio.fail_after(START_SECONDS):
            line = await trio.to_thread.run_sync(process.stdout.readline, abandon_on_cancel=True)
        text = line.decode()
        if not text.startswith("broker listening on "):
            process.kill()
            raise AssertionError(f"the broker did not start: {text!r} {stderr_path.read_text()}")
        _, _, _, http_url, ws_url = text.split()
        http_port = int(http_url.rsplit(":", 1)[1])
        ws_port = int(ws_url.split(":")[2].split("/")[0])
        yield BrokerProcess(process, http_port, ws_port, _stderr=stderr_path)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await trio.to_thread.run_sync(process.wait, 5.0)
            except subprocess.TimeoutExpired:
                process.kill()
                await trio.to_thread.run_sync(process.wait)
        if process.stdout is not None:
            process.stdout.close()
        stderr.close()
        stderr_path.unlink(missing_ok=True)


async def raw_connect(port: int) -> trio.SocketStream:
    """A plain TCP connection to the broker, to say exactly the bytes an attacker would."""
    return await trio.open_tcp_stream(HOST, port)


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], timeout: float = 10.0, what: str = ""
) -> None:
    """Poll `condition` (the state of another process, which sends no event) until it
    holds; fail the test with `what` if it does not within `timeout` seconds."""
    with trio.move_on_after(timeout):
        while True:
            result = condition()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            await trio.sleep(POLL_SECONDS)
    raise AssertionError(f"not within {timeout} s: {what or condition}")


# The probe's topic, and how often it publishes.
PROBE_TOPIC = "probe.latency"
PROBE_INTERVAL = 0.01


@dataclass
class LatencyProbe:
    """What a bystander saw during an attack: its worst publish-to-delivery latency."""

    bound: float
    worst: float = 0.0
    deliveries: int = 0
    published: int = 0
    sent: dict[int, float] = field(default_factory=dict)


@asynccontextmanager
async def latency_probe(proc: BrokerProcess, bound: float = 0.1) -> AsyncIterator[LatencyProbe]:
    """A subscriber on `probe.latency` and a publisher posting to it every 10 ms (one
    keep-alive HTTP connection) for as long as the block runs; on exit, wait for every
    publish made meanwhile to arrive, then fail if nothing was delivered or if a delivery
    took longer than `bound` seconds. A publish not delivered within `5 * bound` (1 s at
    least) counts with its age, so a broker that stalls for good fails too."""
    probe = LatencyProbe(bound)
    async with trio.open_nursery() as nursery, open_websocket_url(
        f"{proc.ws_url}?topic={PROBE_TOPIC}&client=probe"
    ) as ws:

        async def subscribe() -> None:
            while True:
                frame = orjson.loads(await ws.get_message())
                if frame.get("op") != "message":
                    continue
                sent = probe.sent.pop(frame["data"]["n"], None)
                if sent is not None:
                    probe.worst = max(probe.worst, time.monotonic() - sent)
                    probe.deliveries += 1

        async def publish() -> None:
            stream = await raw_connect(proc.http_port)
            received = bytearray()
            n = 0
            while True:
                body = orjson.dumps({"n": n})
                probe.sent[n] = time.monotonic()
                probe.published = n + 1
                await stream.send_all(
                    b"POST /v1/topics/%s HTTP/1.1\r\nHost: probe\r\ncontent-type: "
                    b"application/json\r\ncontent-length: %d\r\n\r\n%s"
                    % (PROBE_TOPIC.encode(), len(body), body)
                )
                while b"\r\n\r\n" not in received:  # the 202's head...
                    data = await stream.receive_some(65536)
                    assert data, "the broker closed the probe's publishing connection"
                    received += data
                head, _, rest = bytes(received).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 202"), head
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(rest) < length:  # ...and its body
                    data = await stream.receive_some(65536)
                    assert data, "the broker closed the probe's publishing connection"
                    rest += data
                received = bytearray(rest[length:])
                n += 1
                await trio.sleep(PROBE_INTERVAL)

        # `?topic=` subscriptions are made before the connection reads its first frame:
        # once a ping is answered, the probe is subscribed.
        await ws.send_message(orjson.dumps({"op": "ping", "id": "probe"}).decode())
        while orjson.loads(await ws.get_message()).get("id") != "probe":
            pass
        nursery.start_soon(subscribe)
        nursery.start_soon(publish)
        try:
            yield probe
        except BaseException:
            nursery.cancel_scope.cancel()
            raise
        # Every publish made while the block ran is delivered and measured before the
        # verdict: a stall at the very end of an attack is not missed.
        cutoff = probe.published
        with trio.move_on_after(max(1.0, 5 * probe.bound)):
            while any(n < cutoff for n in probe.sent):
                await trio.sleep(PROBE_INTERVAL)
        nursery.cancel_scope.cancel()
    now = time.monotonic()
    for n, sent in probe.sent.items():  # made in the block, still undelivered: this late
        if n < cutoff:
            probe.worst = max(probe.worst, now - sent)
    assert probe.deliveries > 0, "the probe got no message through while under attack"
    assert probe.worst <= probe.bound, (
        f"a bystander waited {probe.worst * 1000:.0f} ms for a message (bound "
        f"{probe.bound * 1000:.0f} ms)"
    )


__all__ = [
    "BrokerProcess",
    "LatencyProbe",
    "broker_process",
    "latency_probe",
    "raw_connect",
    "wait_for",
]
