"""Attacks on the WebSocket edge, against a real broker process (issue #14, items 4, 5, 8
and 9): stalled subscribers, a frame trickled slowly, a frame in tiny pieces, a refused
version, an oversized client name. Each checks the broker's answer, that a bystander's
publish-to-delivery stays under 100 ms meanwhile (`latency_probe`), and that memory and
file descriptors come back once the attackers are gone."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import orjson
import pytest
import trio

from gateways.websocket.frames import client_frame

from .attack import BrokerProcess, broker_process, latency_probe, raw_connect, wait_for
from .rawws import RawWebSocket

MiB = 1024 * 1024
# What may stay behind once the attackers are gone (allocator arenas, history).
RSS_TOLERANCE = 32 * MiB


@asynccontextmanager
async def measured(proc: BrokerProcess) -> AsyncIterator[None]:
    """On exit (attackers closed by then): RSS back within RSS_TOLERANCE of what it was on
    entry, and exactly the file descriptors there were."""
    rss, fds = proc.rss_bytes(), proc.open_fds()
    yield
    await wait_for(lambda: proc.open_fds() <= fds, timeout=15,
                   what=f"the broker's fds back to {fds} (now {proc.open_fds()})")
    await wait_for(lambda: proc.rss_bytes() <= rss + RSS_TOLERANCE, timeout=15,
                   what=f"RSS back within {RSS_TOLERANCE // MiB} MiB of {rss // MiB} MiB")


def policy_config(tmp_path: Path, policy: str) -> str:
    """A config file giving every topic `policy` (a grace short enough to end in a test)."""
    path = tmp_path / "broker.toml"
    path.write_text(f'[topics.default]\nslow_consumer_policy = "{policy}"\n'
                    "slow_consumer_grace = 0.1\n")
    return str(path)


async def subscribers_of(proc: BrokerProcess, topic: str) -> int:
    async with httpx.AsyncClient() as client:
        answer = await client.get(f"{proc.http_url}/v1/topics/{topic}")
    return int(answer.json()["subscribers"]) if answer.status_code == 200 else 0


async def publish_until_full(proc: BrokerProcess, topic: str, count: int, size: int) -> int:
    """Publish `count` distinct payloads of `size` bytes; stop at the first refusal (a
    `block` topic waiting for its stalled subscribers). How many were accepted."""
    accepted = 0
    async with httpx.AsyncClient(timeout=10) as client:
        for n in range(count):
            body = b"%08d" % n + os.urandom(size // 2).hex().encode()[: size - 8]
            answer = await client.post(f"{proc.http_url}/v1/topics/{topic}", content=body,
                                       headers={"content-type": "text/plain"})
            if answer.status_code != 202:
                assert answer.status_code == 503, answer.text
                break
            accepted += 1
    return accepted


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["disconnect", "drop-oldest", "block"])
async def test_a_thousand_stalled_subscribers_add_under_100_mib(
    tmp_path: Path, policy: str
) -> None:
    """1,000 subscribers replay 1.5 MiB of history and never read, then live messages
    overflow their outboxes (2 MiB) and the topic's policy acts. Each stalled subscriber
    holds pointers to the shared frames and at most one begun frame, not a private copy of
    its batch (that was ~1.1 MiB each)."""
    async with broker_process("--config", policy_config(tmp_path, policy),
                              "--outbox-bytes", str(2 * MiB)) as proc:
        assert await publish_until_full(proc, "flood", 96, 16 * 1024) == 96  # history
        async with measured(proc):
            baseline = proc.rss_bytes()
            async with latency_probe(proc):
                stalled = []
                for _ in range(1000):
                    sock = await RawWebSocket.connect(proc.ws_port, receive_buffer=4096)
                    assert sock.status == 101
                    await sock.send_text(orjson.dumps(
                        {"op": "subscribe", "topic": "flood", "from": "earliest"}))
                    stalled.append(sock)
                await wait_for(lambda: _count_is(proc, "flood", 1000), what="1000 subscribed")
                replayed = proc.rss_bytes() - baseline
                # Live messages past every outbox: the policy applies (`block`: the topic
                # waits, and the next publish is refused after publish_timeout).
                accepted = await publish_until_full(proc, "flood", 48, 16 * 1024)
                grown = max(replayed, proc.rss_bytes() - baseline)
                if policy == "block":  # the topic waits for the first full outbox
                    assert accepted < 48 and await metric(proc, POLICY_METRICS[policy]) >= 1
                else:  # every stalled subscriber is dropped from or, after its grace, closed

                    async def acted_on_all() -> bool:
                        if policy == "disconnect":  # the grace ends at the next message
                            await publish_until_full(proc, "flood", 1, 1024)
                        return await metric(proc, POLICY_METRICS[policy]) >= 1000

                    await wait_for(acted_on_all, what=f"{policy} acting on all 1,000")
            for sock in stalled:
                await sock.aclose()
        print(f"{policy}: RSS grew {replayed / MiB:.1f} MiB with 1,000 stalled subscribers "
              f"replaying 1.5 MiB each, {grown / MiB:.1f} MiB after {accepted} x 16 KiB more")
        assert grown < 100 * MiB


# What each policy counts when it acts on a full outbox.
POLICY_METRICS = {
    "disconnect": "broker_slow_consumer_disconnects_total",
    "drop-oldest": "broker_messages_dropped_total",
    "block": "broker_slow_consumer_waits_total",  # (one wait: for the first full outbox)
}


async def metric(proc: BrokerProcess, name: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{proc.http_url}/metrics")).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


async def _count_is(proc: BrokerProcess, topic: str, count: int) -> bool:
    return await subscribers_of(proc, topic) == count


@pytest.mark.slow
async def test_a_stalled_subscriber_is_dropped_within_write_timeout(tmp_path: Path) -> None:
    """Under drop-oldest nothing ever evicts a subscriber that stopped reading: the write
    deadline does, and what it held is released."""
    async with broker_process("--config", policy_config(tmp_path, "drop-oldest"),
                              "--write-timeout", "1") as proc:
        async with measured(proc), latency_probe(proc):
            stalled = await RawWebSocket.connect(proc.ws_port, "/v1/ws?topic=flood",
                                                 receive_buffer=4096)
            await wait_for(lambda: _count_is(proc, "flood", 1), what="subscribed")
            await publish_until_full(proc, "flood", 32, 64 * 1024)
            filled = trio.current_time()
            # Its connection ends (and unsubscribes) once a write has waited write_timeout.
            await wait_for(lambda: _count_is(proc, "flood", 0), timeout=5,
                           what="the stalled subscriber dropped")
            took = trio.current_time() - filled
            # The broker closed the socket: after what its kernel still held, end of stream.
            with trio.fail_after(5):
                while await stalled.stream.receive_some(65536):
                    pass
            await stalled.aclose()
        print(f"a stalled subscriber was dropped {took:.2f} s after its writes stalled")
        assert took < 1 + 1.5  # write_timeout, and the publishes' own time


async def trickle(sock: RawWebSocket, data: bytes, rate: float, piece: int = 10) -> bool:
    """Send `data` at about `rate` bytes/s in `piece`-byte pieces (the pacing is the
    attack itself); False once the broker has closed the connection."""
    for at in range(0, len(data), piece):
        try:
            await sock.send(data[at:at + piece])
        except trio.BrokenResourceError:
            return False
        await trio.sleep(piece / rate)
    return True


@pytest.mark.slow
@pytest.mark.parametrize("path", ["fast", "wsproto"])
async def test_an_incomplete_frame_trickled_slowly_is_closed_within_its_bound(
    path: str,
) -> None:
    """header_timeout 1 s, min_receive_rate 100 B/s: a frame trickled at 50 B/s runs out of
    time at 1 + received/100 s, about 2 s after its first byte; 1008 says why."""
    async with broker_process("--header-timeout", "1", "--min-receive-rate", "100") as proc:
        async with measured(proc), latency_probe(proc):
            sock = await RawWebSocket.connect(proc.ws_port)
            if path == "wsproto":  # a ping first: wsproto reads this connection's input
                await sock.send(client_frame(0x9, b"hi"))
                assert (await sock.read_frame()) is not None  # the pong
            frame = client_frame(0x1, b"x" * 10_000)
            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(trickle, sock, frame, 50.0)
                close = await sock.read_frame()
                closed_after = trio.current_time() - started
                nursery.cancel_scope.cancel()
            assert close is not None and close.opcode == 0x8
            assert close.close_code == 1008 and b"not completed in time" in close.payload
            await sock.aclose()
        print(f"{path}: a frame trickled at 50 B/s was closed after {closed_after:.2f} s")
        assert 1.8 < closed_after < 3.5


@pytest.mark.slow
async def test_a_frame_sent_slowly_but_above_the_minimum_rate_is_served() -> None:
    async with broker_process("--header-timeout", "1", "--min-receive-rate", "100") as proc:
        sock = await RawWebSocket.connect(proc.ws_port)
        request = orjson.dumps({"op": "ping", "id": "x" * 300})
        assert await trickle(sock, client_frame(0x1, request), 250.0)  # ~1.3 s, 250 B/s
        frame = await sock.read_frame()
        assert frame is not None and orjson.loads(frame.payload)["op"] == "ok"
        await sock.aclose()


@pytest.mark.slow
async def test_a_megabyte_frame_in_128_byte_pieces_costs_the_broker_little_cpu() -> None:
    """The fast path appends each piece; it used to join everything so far again (~1 s of
    CPU for this frame, every other client waiting)."""
    async with broker_process() as proc, measured(proc), latency_probe(proc):
        sock = await RawWebSocket.connect(proc.ws_port)
        request = orjson.dumps({"op": "publish", "topic": "big", "id": 1,
                                "data": "x" * (1000 * 1000)})
        frame = client_frame(0x1, request)
        cpu = proc.cpu_seconds()
        for at in range(0, len(frame), 128):
            await sock.send(frame[at:at + 128])
            if at % 1024 == 0:
                await trio.sleep(0.001)  # pacing, so the broker reads small pieces
        answer = await sock.read_frame()
        used = proc.cpu_seconds() - cpu
        assert answer is not None and orjson.loads(answer.payload)["offset"] == 0
        await sock.aclose()
    print(f"a {len(frame)}-byte frame in 128-byte pieces: {used * 1000:.0f} ms of broker CPU")
    assert used < 1.0


async def refused(port: int, request: bytes) -> tuple[bytes, dict[bytes, bytes], dict]:
    stream = await raw_connect(port)
    await stream.send_all(request)
    response = b""
    with trio.fail_after(10):
        while data := await stream.receive_some(65536):
            response += data
    await stream.aclose()
    head, _, body = response.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(b":") for line in lines[1:])}
    return lines[0], headers, orjson.loads(body)


UPGRADE = (b"GET %s HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: %s\r\n\r\n")


async def test_a_refused_version_and_an_oversized_client_name_get_400_with_reasons() -> None:
    async with broker_process() as proc, measured(proc), latency_probe(proc):
        status, headers, body = await refused(proc.ws_port, UPGRADE % (b"/v1/ws", b"8"))
        assert status.startswith(b"HTTP/1.1 400")
        assert headers[b"sec-websocket-version"] == b"13"  # RFC 6455 section 4.2.2
        assert body["error"]["code"] == "bad_request"
        name = b"n" * 129
        status, headers, body = await refused(
            proc.ws_port, UPGRADE % (b"/v1/ws?client=" + name, b"13"))
        assert status.startswith(b"HTTP/1.1 400") and b"sec-websocket-version" not in headers
        assert body["error"]["code"] == "bad_request" and "128" in body["error"]["message"]
        ok = await RawWebSocket.connect(proc.ws_port, "/v1/ws?client=" + "n" * 128)
        assert ok.status == 101
        await ok.aclose()
