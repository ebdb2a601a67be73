"""Connection scale: how many idle WebSocket subscribers a server holds, how fast it takes
them, and what each one costs it.

    python -m benchmarks.idle --connections 10000 [--target broker|fastapi]
        [--url URL --ws-url WSURL [--server-pid PID]] [--topics 100] [--wave 250]
        [--rate R] [--hold 0] [--json PATH]

N subscribers connect through a sliding window (at most `--wave` connects in progress, the
next one starting as one ends; at most `--rate` connections/s if given). Subscriber i
subscribes on connect (`?topic=idle.<tag>.<i mod topics>`; `--topics 0` gives each its
own topic) and then sends one ping; its `ok` is the barrier that says it is subscribed.
Reported:

- connect+subscribe rate: connections done / (first connect -> last `ok`), and the latency
  p50/p95/p99 of one connection's handshake + ping `ok`;
- the server's RSS (VmRSS of /proc/PID/status) before and after, and (after - before) / N;
- the server's and our own CPU seconds while connecting; failures (every wait is bounded);
- liveness: after `--hold` idle seconds, one message is published to every topic
  (bulk POSTs of 50) and each connection must receive exactly it.

The subscribers are lean: a raw non-blocking socket each, the handshake done by hand, and no
buffer kept between frames; once subscribed, ONE task reads all of them through one epoll set
(answering server pings, counting messages, noting closes), so the generator stays small and
cheap at 10,000 connections.

Each connection is a file descriptor on BOTH sides. This script raises its own soft
RLIMIT_NOFILE to the hard limit before starting a server (which inherits it), and refuses to
start, saying which `ulimit -n` to use, if that is below N plus a margin.
"""

from __future__ import annotations

import argparse
import base64
import functools
import hashlib
import json
import os
import re
import select
import socket
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import trio

from gateways.wsframe import client_frame

from .baselines import TARGETS
from .lean import (
    Endpoint,
    HttpClient,
    ProtocolError,
    close_socket,
    open_socket,
    send_all,
    server_frames,
)
from .process import BrokerProcess, CpuMeter, pick_cores, raise_open_files_limit
from .stats import percentile

# Files a run needs besides the connections: the publisher's socket, the epoll fd, pipes,
# stdio, the server's listeners and log files.
FILE_MARGIN = 100
BULK_SIZE = 50
RECEIVE_SIZE = 65536
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_PING_ID = 1
NET_ERRORS = (OSError, ProtocolError, ValueError, KeyError)


class FileLimitTooLow(RuntimeError):
    """The open-files limit cannot hold the connections asked for; says what to run."""


# -- limits and process figures ----------------------------------------------------------


def process_file_limit(pid: int) -> int | None:
    """The soft "Max open files" of process `pid`, or None if unreadable."""
    try:
        text = Path(f"/proc/{pid}/limits").read_text()
    except OSError:
        return None
    match = re.search(r"^Max open files\s+(\S+)", text, re.MULTILINE)
    if match is None or match.group(1) == "unlimited":
        return None
    return int(match.group(1))


def check_file_limit(connections: int, server_pid: int | None = None) -> int:
    """Raise our limit; `FileLimitTooLow` if we or the server cannot hold the connections."""
    need = connections + FILE_MARGIN
    soft, hard = raise_open_files_limit()
    advice = (
        f"run `ulimit -n {need}` (or more) in the shell that starts the benchmark and the "
        f"server; if the hard limit ({hard}) is lower, raise `nofile` in "
        "/etc/security/limits.conf or LimitNOFILE= in the systemd unit, or use fewer "
        "--connections"
    )
    if soft < need:
        raise FileLimitTooLow(
            f"{connections} connections need about {need} open files; this process may open "
            f"{soft} (hard limit {hard}): {advice}"
        )
    server_limit = None if server_pid is None else process_file_limit(server_pid)
    if server_limit is not None and server_limit < need:
        raise FileLimitTooLow(
            f"{connections} connections need about {need} open files in the server "
            f"(pid {server_pid}), which may open {server_limit}: {advice}"
        )
    return soft


def rss_kib(pid: int | None) -> int | None:
    """Resident memory of process `pid` in KiB (VmRSS), or None if unknown."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# -- lean idle subscribers ---------------------------------------------------------------


class IdleConnection:
    """One subscriber: its socket, unparsed bytes (usually none) and what it saw."""

    __slots__ = ("close_code", "eof", "messages", "others", "pending", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""
        self.messages = 0
        self.others = 0
        self.close_code: int | None = None
        self.eof = False

    @property
    def alive(self) -> bool:
        return not self.eof and self.close_code is None

    def take(self, data: bytes) -> bool:
        """Account for received bytes; True if the ping's `ok` was among them."""
        frames, self.pending = server_frames(self.pending + data)
        acked = False
        for opcode, payload in frames:
            if opcode == 0x1:
                try:
                    frame = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    frame = None
                if not isinstance(frame, dict):
                    self.others += 1
                elif frame.get("op") == "message":
                    self.messages += 1
                elif frame.get("op") == "ok" and frame.get("id") == _PING_ID:
                    acked = True
                else:
                    self.others += 1
            elif opcode == 0x9:  # uvicorn pings every 20 s: answer, or it hangs up
                try:
                    self.sock.send(client_frame(0xA, payload))
                except BlockingIOError:
                    pass  # a full send buffer on an idle socket: its ping goes unanswered
            elif opcode == 0x8:
                self.close_code = int.from_bytes(payload[:2], "big") if payload else 1005
            elif opcode != 0xA:
                self.others += 1
        return acked

    def receive_now(self) -> bool:
        """One non-blocking receive; False if nothing was waiting."""
        try:
            data = self.sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self.eof = True
        else:
            self.take(data)
        return True


async def open_idle_connection(host: str, port: int, path: str) -> IdleConnection:
    """Connect, do the handshake, ping and wait for the `ok`: subscribed (the caller bounds
    the time taken). The socket is closed if anything fails."""
    sock = await open_socket(host, port)
    try:
        key = base64.b64encode(os.urandom(16))
        await send_all(sock, (
            b"GET %s HTTP/1.1\r\nhost: %s:%d\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            b"sec-websocket-key: %s\r\nsec-websocket-version: 13\r\n\r\n"
            % (path.encode(), host.encode(), port, key)
        ))
        buffer = b""
        while (end := buffer.find(b"\r\n\r\n")) < 0:
            buffer += await _receive(sock)
        head = buffer[:end].lower()
        if not head.startswith(b"http/1.1 101"):
            raise ProtocolError(f"handshake answered {buffer[:200]!r}")
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest()).lower()
        if b"sec-websocket-accept: " + accept not in head:
            raise ProtocolError("bad Sec-WebSocket-Accept")
        connection = IdleConnection(sock)
        acked = connection.take(buffer[end + 4 :])
        await send_all(sock, client_frame(0x1, b'{"op":"ping","id":%d}' % _PING_ID))
        while not acked:
            acked = connection.take(await _receive(sock))
            if connection.close_code is not None:
                raise ProtocolError(f"closed ({connection.close_code}) before the ping's ok")
        return connection
    except BaseException:
        close_socket(sock)
        raise


async def _receive(sock: socket.socket) -> bytes:
    while True:
        await trio.lowlevel.wait_readable(sock)
        try:
            data = sock.recv(RECEIVE_SIZE)
        except BlockingIOError:
            continue
        if not data:
            raise ProtocolError("the server closed the connection")
        return data


class IdleFleet:
    """Every subscribed connection, read by ONE task through one epoll set.

    `serve` runs until cancelled; `wait_messages(n)` returns when n connections have at
    least one message each (the caller bounds it).
    """

    def __init__(self) -> None:
        self.connections: dict[int, IdleConnection] = {}
        self.with_messages = 0  # connections that received at least one message
        self._epoll = select.epoll()
        self._target = 0
        self._reached = trio.Event()

    def add(self, connection: IdleConnection) -> None:
        fd = connection.sock.fileno()
        self.connections[fd] = connection
        self._epoll.register(fd, select.EPOLLIN)
        self._receive(connection)  # anything that arrived before it was registered

    async def serve(self) -> None:
        epoll, connections = self._epoll, self.connections
        while True:
            await trio.lowlevel.wait_readable(epoll)
            for fd, _ in epoll.poll(0):
                connection = connections[fd]
                self._receive(connection)
                if not connection.alive:
                    epoll.unregister(fd)
            if self._target and self.with_messages >= self._target:
                self._reached.set()

    def _receive(self, connection: IdleConnection) -> None:
        had_messages = connection.messages
        connection.receive_now()
        if connection.messages and not had_messages:
            self.with_messages += 1

    async def wait_messages(self, count: int) -> None:
        self._target = count
        if self.with_messages >= count:
            return
        await self._reached.wait()

    def close(self) -> None:
        """Close every socket (no closing handshake: the server sees them go at once)."""
        for connection in self.connections.values():
            close_socket(connection.sock)
        self.connections.clear()
        trio.lowlevel.notify_closing(self._epoll)
        self._epoll.close()


# -- the scenario ------------------------------------------------------------------------


async def publish_to_topics(http: Endpoint, topics: list[str], errors: list[str]) -> int:
    """One message to each topic in bulk POSTs; how many were accepted."""
    client = HttpClient(http.host, http.port)
    accepted = 0
    try:
        for first in range(0, len(topics), BULK_SIZE):
            batch = [{"topic": t, "data": {"idle": "check"}}
                     for t in topics[first : first + BULK_SIZE]]
            try:
                status, body = await client.request(
                    b"POST", b"/v1/publish", orjson.dumps({"messages": batch})
                )
            except NET_ERRORS as exc:
                errors.append(f"publish: {exc!r}")
                continue
            if status == 202:
                accepted += len(batch)
            elif len(errors) < 10:
                errors.append(f"publish {status}: {body[:200]!r}")
    finally:
        client.close()
    return accepted


async def run_idle(
    http_url: str,
    ws_url: str,
    connections: int,
    server_pid: int | None,
    *,
    topics: int = 100,
    wave: int = 250,
    rate: float | None = None,
    hold: float = 0.0,
    connect_timeout: float = 30.0,
    delivery_timeout: float = 30.0,
) -> dict[str, Any]:
    """Open `connections` idle subscribers, measure, check they all still receive.

    `topics` shared topics (0: one per connection); at most `wave` connects in progress at
    once (a sliding window), at most `rate` connections/s if given. Raises `FileLimitTooLow`
    before connecting if this process or the server (when `server_pid` is known) cannot
    hold that many sockets.
    """
    check_file_limit(connections, server_pid)
    http, ws = Endpoint.parse(http_url), Endpoint.parse(ws_url)
    tag = uuid.uuid4().hex[:6]
    names = [f"idle.{tag}.{i}" for i in range(topics if topics > 0 else connections)]
    sep = "&" if "?" in ws.path else "?"
    errors: list[str] = []
    latencies: list[float] = []
    fleet = IdleFleet()
    topic_of: dict[int, str] = {}
    failures = 0
    first_start = last_ack = 0.0

    async def connect(index: int) -> None:
        nonlocal failures, last_ack
        topic = names[index % len(names)]
        started = time.perf_counter()
        try:
            with trio.fail_after(connect_timeout):
                connection = await open_idle_connection(ws.host, ws.port,
                                                        f"{ws.path}{sep}topic={topic}")
        except (*NET_ERRORS, trio.TooSlowError) as exc:
            failures += 1
            if len(errors) < 10:
                errors.append(f"connection {index}: {exc!r}")
            return
        last_ack = time.perf_counter()
        latencies.append(last_ack - started)
        topic_of[connection.sock.fileno()] = topic
        fleet.add(connection)

    rss_before = rss_kib(server_pid)
    own_rss_before = rss_kib(os.getpid())
    meter = CpuMeter(server_pid)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fleet.serve)
            meter.start()
            first_start = time.perf_counter()
            # A sliding window: the next connect starts as soon as one of the `wave` in
            # progress ends (waves left the server idle while each waited for its slowest).
            window = trio.Semaphore(wave)

            async def connect_in_window(index: int) -> None:
                try:
                    await connect(index)
                finally:
                    window.release()

            async with trio.open_nursery() as connecting:
                for index in range(connections):
                    await window.acquire()
                    connecting.start_soon(connect_in_window, index)
                    if rate:
                        await trio.sleep(
                            max(0.0, first_start + (index + 1) / rate - time.perf_counter())
                        )
            cpu = meter.stop()
            connected = len(fleet.connections)
            connect_s = last_ack - first_start if connected else None
            await trio.sleep(hold)  # the idle period being measured, not a synchronisation
            rss_after = rss_kib(server_pid)
            own_rss_after = rss_kib(os.getpid())
            alive = sum(1 for c in fleet.connections.values() if c.alive)
            # Liveness: one message to each topic somebody holds; everyone must get it.
            used = sorted(set(topic_of.values()))
            verify_started = time.perf_counter()
            accepted = await publish_to_topics(http, used, errors)
            with trio.move_on_after(delivery_timeout):
                await fleet.wait_messages(alive)
            verify_s = time.perf_counter() - verify_started
            nursery.cancel_scope.cancel()
        delivered = fleet.with_messages
        extra = sum(c.messages - 1 for c in fleet.connections.values() if c.messages > 1)
        closed = sum(1 for c in fleet.connections.values() if not c.alive)
        others = sum(c.others for c in fleet.connections.values())
    finally:
        fleet.close()
    latencies.sort()

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000.0, 2)

    growth = None if rss_before is None or rss_after is None else rss_after - rss_before
    return {
        "connections": connections,
        "connected": connected,
        "failures": failures,
        "topics": len(names),
        "wave": wave,
        "rate_limit": rate,
        "connect_s": connect_s,
        "connect_per_s": connected / connect_s if connect_s else None,
        "latency_p50_ms": ms(percentile(latencies, 50)),
        "latency_p95_ms": ms(percentile(latencies, 95)),
        "latency_p99_ms": ms(percentile(latencies, 99)),
        "latency_max_ms": ms(latencies[-1] if latencies else None),
        "server_rss_before_kib": rss_before,
        "server_rss_after_kib": rss_after,
        "server_rss_per_connection_kib": None if growth is None or not connected
        else growth / connected,
        "own_rss_before_kib": own_rss_before,
        "own_rss_after_kib": own_rss_after,
        "server_cpu_s": cpu["broker_cpu_s"],
        "own_cpu_s": cpu["gen_cpu_s"],
        "connect_window_s": cpu["window_s"],
        "hold_s": hold,
        "alive_after_hold": alive,
        "published": accepted,
        "publish_topics": len(used),
        "delivered": delivered,
        "duplicate_or_extra_messages": extra,
        "closed_by_server": closed,
        "other_frames": others,
        "verify_s": verify_s,
        "errors": errors[:10],
    }


# -- command line ------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--connections", type=int, default=10_000)
    parser.add_argument("--target", choices=sorted(TARGETS), default="broker",
                        help="server to start when no --url is given (default broker)")
    parser.add_argument("--url", help="use a running server's HTTP address (http://HOST:PORT)")
    parser.add_argument("--ws-url", help="...and its WebSocket endpoint (ws://HOST:PORT/v1/ws)")
    parser.add_argument("--server-pid", type=int,
                        help="with --url: the server's pid, for its RSS, CPU and file limit")
    parser.add_argument("--topics", type=int, default=100,
                        help="shared topics (default 100); 0 = one topic per connection")
    parser.add_argument("--wave", type=int, default=250,
                        help="most connects in progress at once (default 250)")
    parser.add_argument("--rate", type=float, help="at most this many connections/s")
    parser.add_argument("--hold", type=float, default=0.0,
                        help="idle seconds between the last connection and the check")
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--delivery-timeout", type=float, default=30.0)
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    if bool(args.url) != bool(args.ws_url):
        parser.error("--url and --ws-url go together")
    if args.connections < 1 or args.wave < 1 or args.topics < 0:
        parser.error("--connections and --wave must be positive, --topics not negative")
    return args


def print_report(name: str, r: dict[str, Any]) -> None:
    def fmt(value: Any, spec: str = ".0f") -> str:
        return "-" if value is None else format(value, spec)

    print(f"{name}: {r['connected']}/{r['connections']} connected and subscribed, "
          f"{r['failures']} failures, {r['topics']} topics, window of {r['wave']}")
    print(f"  connect+subscribe: {fmt(r['connect_per_s'])} connections/s over "
          f"{fmt(r['connect_s'], '.2f')} s; latency p50 {fmt(r['latency_p50_ms'], '.1f')} ms, "
          f"p95 {fmt(r['latency_p95_ms'], '.1f')} ms, p99 {fmt(r['latency_p99_ms'], '.1f')} ms")
    before, after = r["server_rss_before_kib"], r["server_rss_after_kib"]
    print(f"  server RSS: {fmt(before and before / 1024, '.1f')} MiB -> "
          f"{fmt(after and after / 1024, '.1f')} MiB, "
          f"{fmt(r['server_rss_per_connection_kib'], '.1f')} KiB per connection")
    print(f"  CPU while connecting: server {fmt(r['server_cpu_s'], '.2f')} s, "
          f"generator {fmt(r['own_cpu_s'], '.2f')} s; generator RSS "
          f"{fmt(r['own_rss_after_kib'] and r['own_rss_after_kib'] / 1024, '.1f')} MiB")
    print(f"  after {r['hold_s']:g} s idle: {r['alive_after_hold']} alive; one message to each "
          f"of {r['publish_topics']} topics ({r['published']} accepted) reached "
          f"{r['delivered']}/{r['connected']} connections in {fmt(r['verify_s'], '.2f')} s")
    if r["errors"]:
        print(f"  errors: {r['errors']}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        check_file_limit(args.connections, args.server_pid if args.url else None)
    except FileLimitTooLow as exc:
        print(f"benchmarks.idle: {exc}", file=sys.stderr)
        return 2
    _, server_core, gen_core = pick_cores(not args.no_pin)
    server: BrokerProcess | None = None
    if args.url:
        name, http_url, ws_url, pid = "external", args.url, args.ws_url, args.server_pid
    else:
        server = BrokerProcess(server_core, startup_timeout=30.0, argv=TARGETS[args.target])
        name, http_url, ws_url, pid = args.target, server.http_url, server.ws_url, server.pid
        print(f"{name} started (pid {pid}, cores {server.affinity()}): {http_url} {ws_url}",
              file=sys.stderr)
    if gen_core is not None:
        os.sched_setaffinity(0, {gen_core})
    stop_report: dict[str, Any] = {}
    try:
        result = trio.run(functools.partial(
            run_idle, http_url, ws_url, args.connections, pid, topics=args.topics,
            wave=args.wave, rate=args.rate, hold=args.hold,
            connect_timeout=args.connect_timeout, delivery_timeout=args.delivery_timeout,
        ))
    except FileLimitTooLow as exc:
        print(f"benchmarks.idle: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            stop_report = server.stop()
    result["target"] = name
    result["server_cores"] = None if server is None else [server_core]
    result["generator_cores"] = sorted(os.sched_getaffinity(0))
    result["server_stop"] = stop_report
    print_report(name, result)
    if server is not None:
        print(f"  stop: SIGTERM -> exit {stop_report.get('exit_code')} in "
              f"{stop_report.get('stop_seconds')} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    ok = (
        result["connected"] == args.connections
        and result["delivered"] == result["connected"]
        and stop_report.get("exit_code", 0) == 0
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
