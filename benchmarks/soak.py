"""A soak benchmark (not a test): N seconds of mixed load, one topic family per slow-consumer
policy, reporting delivered/expected per policy, the broker's RSS and task count over time,
and whether memory stayed flat after warm-up.

    python -m benchmarks.soak [--seconds 60] [--url URL --ws-url WSURL [--broker-pid PID]]

For each policy, a family of topics `soak.<family>.<tag>.t0 .. tK` (`soak.disconnect.*`,
`soak.drop.*` for drop-oldest, `soak.block.*`) carries:

- a steady publisher per topic: bulk `POST /v1/publish` of `--batch` messages at a fixed
  pace (`--rate` messages/s per policy, spread over the family's topics), one keep-alive
  connection each. A 503 (`topic_busy`: not accepted, by the contract) is counted as
  refused, not as lost; a request cut by our own timeout is counted as unknown.
- long-lived healthy subscribers (`--healthy` per topic, one exact topic each, all read by
  one `SubscriberGroup` task) that check order and count: every offset the topic assigned
  must be received, in order, or (drop-oldest only) be inside a `gap` frame. Expected is the
  topic's `next_offset` at the end, cross-checked against the publisher's 202 answers.
- churn subscribers (`--churners` per family): connect, subscribe, read a little, leave,
  about once a second each, round-robin over the family's topics (and, with
  `--wildcard-churn`, every other cycle on the pattern `soak.<family>.<tag>.*`).
- ONE stalled subscriber on t0: a raw socket with a tiny SO_RCVBUF that completes the
  handshake and then never reads. Its fate is watched in the presence listing; once the
  broker drops it (disconnect) it reads, to learn the close code. At the end the ones still
  subscribed read everything: drop-oldest must account for every offset (received or
  inside a gap frame), block must have everything, in order. Stalled subscribers are
  excluded from delivered/expected.

After `--seconds` the publishers stop, the stalled subscribers are released (read, then
closed), every topic gets one more single `POST /v1/topics/{topic}` (the block topic must
take it again), and the healthy subscribers must account for every offset within
`--drain-timeout`.

Every `--sample-interval` the broker's GET /metrics is read; every 5 s a progress line shows
elapsed time, RSS, `broker_tasks` and connections. At the end: RSS and tasks over time, and
the memory verdict: mean RSS over the last third of the run against the middle third (the
first third is warm-up); growth under 10% is "flat".

Unless `--url`/`--ws-url` are given, the broker is started here with `quick.BrokerProcess`
(`python -m gateways serve --port 0 --ws-port 0`), its per-topic policies in a temporary
TOML file (handed over as `BROKER_CONFIG`, the env twin of `--config`), plus
`BROKER_OUTBOX_SIZE` and `BROKER_PUBLISH_TIMEOUT`; it is stopped with SIGTERM. As in
benchmarks.quick, on two or more cores the broker and this load generator are pinned to
different cores, and both processes' CPU time is reported.

Every wait is bounded. Exit status 1 if a healthy subscriber lost a message (or saw one
out of order, or was closed), and for every other entry of the PROBLEMS list: memory not
flat, a policy not keeping its promise to the stalled subscriber, publishes left without an
answer or refused on a policy that never waits, /metrics not answering (a wedged broker),
no clean exit on SIGTERM, warnings or errors on the broker's stderr. 0 otherwise.

The broker's tasks include one actor per topic, kept until `topic_idle_seconds`; a stalled
`block` topic's mailbox fills up with withdrawn (503) publishes, up to `mailbox_size`, which
shows as RSS growth until it is full (the `mailbox max` column).
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
import trio

from .lean import (
    Endpoint,
    HttpClient,
    ProtocolError,
    SubscriberGroup,
    WsSubscriber,
    close_socket,
    open_socket,
    send_all,
)
from .process import (
    PROBLEM_MARKERS,
    BrokerProcess,
    CpuMeter,
    git_commit,
    own_cpu_seconds,
    pick_cores,
    proc_cpu_seconds,
    rss_bytes,
    stop_problems,
)
from .quick import NET_ERRORS

FAMILIES = {"disconnect": "disconnect", "drop": "drop-oldest", "block": "block"}
CONFIG_TOML = """\
[topics."soak.drop.>"]
slow_consumer_policy = "drop-oldest"
[topics."soak.block.>"]
slow_consumer_policy = "block"
"""
# Broker log lines that are the expected outcome of the stalled disconnect subscriber.
EXPECTED_LOG = "closing slow consumer"
FLAT_GROWTH = 0.10
MB = 1024 * 1024


def _note(errors: list[str], what: str) -> None:
    if len(errors) < 10:
        errors.append(what)


def _count(errors: Counter[str], what: str) -> None:
    if what in errors or len(errors) < 10:
        errors[what] += 1


# -- subscribers ---------------------------------------------------------------------------


class SoakSubscriber(WsSubscriber):
    """A `WsSubscriber` that also accounts for drop-oldest `gap` frames.

    Each gap makes exactly one jump in the offsets (counted in `out_of_order`), so a stream
    is whole when `received + skipped` covers every offset and `out_of_order == gaps`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gaps = 0
        self.skipped = 0
        self.bad_gaps = 0  # gap frames whose skipped != to - from + 1
        self.closed_early = False  # the broker closed it before we did

    def _other(self, payload: bytes) -> None:
        if b'"gap"' in payload:
            try:
                frame = orjson.loads(payload)
            except orjson.JSONDecodeError:
                frame = None
            if isinstance(frame, dict) and frame.get("op") == "gap":
                self.gaps += 1
                try:
                    skipped = int(frame["skipped"])
                    if int(frame["to"]) - int(frame["from"]) + 1 != skipped:
                        self.bad_gaps += 1
                except (KeyError, TypeError, ValueError):
                    skipped = 0
                    self.bad_gaps += 1
                self.skipped += skipped
                return
        super()._other(payload)

    @property
    def accounted(self) -> int:
        """Offsets received or reported skipped."""
        return self.received + self.skipped

    def whole(self, expected: int) -> bool:
        """Offsets 0..expected-1, each received in order or inside a gap frame."""
        return (
            self.accounted == expected
            and self.out_of_order == self.gaps
            and self.bad_gaps == 0
            and (expected == 0 or self.last_offset == expected - 1)
        )


class StalledSubscriber:
    """Subscribes, then never reads: a raw socket with a tiny receive buffer.

    The handshake answer is read one byte at a time, so no frame is consumed with it; to
    read later (to learn its fate) the socket is handed to a `SoakSubscriber`.
    """

    def __init__(self, ws: Endpoint, topic: str, client: str, rcvbuf: int) -> None:
        sep = "&" if "?" in ws.path else "?"
        self.path = f"{ws.path}{sep}topic={topic}&client={client}"
        self.ws = ws
        self.topic = topic
        self.client = client
        self.rcvbuf = rcvbuf
        self.reader = SoakSubscriber(ws.host, ws.port, self.path)
        self.subscribed = False
        self.gone_at: float | None = None  # when it left the presence listing (elapsed s)
        self.kept_to_end: bool | None = None
        self.read_started: float | None = None
        self.expected: int | None = None
        self.errors: list[str] = []

    async def connect(self) -> None:
        host, port = self.ws.host, self.ws.port
        sock = await open_socket(host, port, receive_buffer=self.rcvbuf)
        try:
            key = base64.b64encode(os.urandom(16))
            await send_all(
                sock,
                b"GET %s HTTP/1.1\r\nhost: %s:%d\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
                b"sec-websocket-key: %s\r\nsec-websocket-version: 13\r\n\r\n"
                % (self.path.encode(), host.encode(), port, key),
            )
            head = bytearray()
            while not head.endswith(b"\r\n\r\n"):
                await trio.lowlevel.wait_readable(sock)
                try:
                    byte = sock.recv(1)
                except BlockingIOError:
                    continue
                if not byte:
                    raise ProtocolError("closed during the WebSocket handshake")
                head += byte
            if not head.startswith(b"HTTP/1.1 101"):
                raise ProtocolError(f"handshake answered {bytes(head[:200])!r}")
        except BaseException:
            close_socket(sock)
            raise
        self.reader.sock = sock

    async def read_to_end(self, expected: int | None, timeout: float) -> None:
        """Read until `expected` offsets are accounted for (None: until the broker closes)."""
        self.read_started = time.perf_counter()
        self.expected = expected
        reader = self.reader
        if reader.sock is None:
            return
        with trio.move_on_after(timeout):
            try:
                while not reader.done and (expected is None or reader.accounted < expected):
                    await reader.read_messages(reader.received + 1)
            except OSError as exc:
                _note(self.errors, f"reading: {exc!r}")


# -- per-family state ----------------------------------------------------------------------


@dataclass
class PublisherStats:
    requests: int = 0
    attempted: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    unknown: int = 0  # messages of requests cut by our timeout or a network error
    late: int = 0  # ticks started behind schedule (a slow answer); no catch-up burst
    offset_errors: int = 0  # 202 offsets not following the previous accepted one
    max_latency: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class TopicState:
    name: str
    healthy: list[SoakSubscriber] = field(default_factory=list)
    pub: PublisherStats = field(default_factory=PublisherStats)
    next_offset: int = 0  # from our own 202 answers
    broker_next_offset: int | None = None  # GET /v1/topics/{name} at the end


@dataclass
class ChurnStats:
    cycles: int = 0
    subscribed: int = 0
    timeouts: int = 0  # connect + subscribe (ping barrier) not done within the bound
    timeouts_by_topic: Counter[str] = field(default_factory=Counter)
    wildcard_cycles: int = 0
    messages: int = 0
    order_errors: int = 0
    closed_by_broker: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Family:
    key: str
    policy: str
    topics: list[TopicState]
    pattern: str
    churn: ChurnStats = field(default_factory=ChurnStats)
    stalled: StalledSubscriber | None = None


# -- metrics -------------------------------------------------------------------------------


def parse_metrics(text: bytes) -> dict[str, float]:
    """Prometheus text: unlabelled samples by name; labelled ones summed under their name."""
    values: dict[str, float] = {}
    for raw in text.decode(errors="replace").splitlines():
        if not raw or raw.startswith("#"):
            continue
        name_part, _, value = raw.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            number = float(value)
        except ValueError:
            continue
        values[name] = values.get(name, 0.0) + number if "{" in name_part else number
    return values


@dataclass
class Sample:
    t: float
    rss: float | None
    tasks: float | None
    connections: float | None
    published: float | None
    delivered: float | None
    dropped: float | None
    disconnects: float | None
    mailbox_max: float | None  # deepest topic mailbox (a stalled block topic fills its own)
    scrape_s: float
    gen_cpu: float
    broker_cpu: float | None


# -- the soak ------------------------------------------------------------------------------


class Soak:
    def __init__(self, args: argparse.Namespace, http: Endpoint, ws: Endpoint,
                 broker_pid: int | None) -> None:
        self.args = args
        self.http = http
        self.ws = ws
        self.broker_pid = broker_pid
        self.tag = uuid.uuid4().hex[:6]
        self.request_timeout = args.publish_timeout + 5.0
        self.families = [
            Family(
                key,
                policy,
                [TopicState(f"soak.{key}.{self.tag}.t{i}") for i in range(args.topics)],
                f"soak.{key}.{self.tag}.*",
            )
            for key, policy in FAMILIES.items()
        ]
        self.stop = trio.Event()
        self.t0 = 0.0  # trio clock at the start of the load
        self.samples: list[Sample] = []
        self.idle_before: Sample | None = None
        self.idle_after: Sample | None = None
        self.errors: list[str] = []
        self.metrics_client = HttpClient(http.host, http.port)
        self.scrape_failures = 0
        self.pad = "x" * args.payload_bytes
        self.load_cpu: dict[str, float | None] = {}
        self.end_phase: dict[str, Any] = {}

    def elapsed(self) -> float:
        return trio.current_time() - self.t0

    def ws_path(self, topic: str, client: str) -> str:
        sep = "&" if "?" in self.ws.path else "?"
        return f"{self.ws.path}{sep}topic={quote(topic, safe='.*>')}&client={client}"

    # -- HTTP helpers ----------------------------------------------------------------------

    async def get_json(self, client: HttpClient, path: str, timeout: float = 5.0) -> Any:
        """GET `path` as JSON; None on a timeout, an error or a non-200 status."""
        with trio.move_on_after(timeout):
            try:
                status, body = await client.request(b"GET", path.encode())
            except NET_ERRORS:
                return None
            if status != 200:
                return None
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError:
                return None
        return None

    async def sample(self, t: float) -> Sample:
        started = time.perf_counter()
        values: dict[str, float] = {}
        with trio.move_on_after(self.args.scrape_timeout):
            try:
                status, body = await self.metrics_client.request(b"GET", b"/metrics")
                if status == 200:
                    values = parse_metrics(body)
            except NET_ERRORS as exc:
                _note(self.errors, f"metrics at {t:.1f}s: {exc!r}")
        took = time.perf_counter() - started
        if not values:
            self.scrape_failures += 1
        gen_cpu, broker_cpu = own_cpu_seconds(), proc_cpu_seconds(self.broker_pid)
        rss = values.get("process_resident_memory_bytes", rss_bytes(self.broker_pid))
        return Sample(
            t, rss, values.get("broker_tasks"), values.get("broker_connections"),
            values.get("broker_messages_published_total"),
            values.get("broker_messages_delivered_total"),
            values.get("broker_messages_dropped_total"),
            values.get("broker_slow_consumer_disconnects_total"),
            values.get("broker_topic_mailbox_depth_max"),
            took, gen_cpu, broker_cpu,
        )

    # -- setup -----------------------------------------------------------------------------

    async def connect_all(self) -> None:
        async def healthy(family: Family, topic: TopicState, index: int) -> None:
            client = f"soak-healthy-{family.key}-{topic.name.rsplit('.', 1)[1]}-{index}"
            sub = SoakSubscriber(self.ws.host, self.ws.port, self.ws_path(topic.name, client))
            try:
                await sub.connect()
                await sub.ping(1)  # answered after the ?topic= subscription: the barrier
                topic.healthy.append(sub)
            except NET_ERRORS as exc:
                sub.abort()
                _note(self.errors, f"healthy subscriber {client}: {exc!r}")

        async def stalled(family: Family) -> None:
            sub = StalledSubscriber(self.ws, family.topics[0].name,
                                    f"soak-stalled-{family.key}", self.args.stall_rcvbuf)
            family.stalled = sub
            try:
                await sub.connect()
            except NET_ERRORS as exc:
                _note(self.errors, f"stalled subscriber {sub.client}: {exc!r}")
                return
            # It sends nothing, so presence is how we know its subscription is in place.
            client = HttpClient(self.http.host, self.http.port)
            try:
                for _ in range(50):
                    present = await self.present_clients(client, sub.topic)
                    if present is not None and sub.client in present:
                        sub.subscribed = True
                        return
                    await trio.sleep(0.1)
            finally:
                client.close()
            _note(self.errors, f"stalled subscriber {sub.client} never appeared in presence")

        with trio.move_on_after(self.args.connect_timeout) as scope:
            async with trio.open_nursery() as nursery:
                for family in self.families:
                    nursery.start_soon(stalled, family)
                    for topic in family.topics:
                        for index in range(self.args.healthy):
                            nursery.start_soon(healthy, family, topic, index)
        if scope.cancelled_caught:
            _note(self.errors, f"connecting took over {self.args.connect_timeout}s")

    async def present_clients(self, client: HttpClient, topic: str) -> set[str] | None:
        answer = await self.get_json(client, f"/v1/topics/{topic}/subscribers", timeout=3.0)
        if not isinstance(answer, dict):
            return None
        return {s.get("client", "") for s in answer.get("subscribers", [])}

    # -- load ------------------------------------------------------------------------------

    async def publisher(self, topic: TopicState, rate: float) -> None:
        """`--batch` messages per request at `rate` messages/s until `stop`."""
        args = self.args
        stats = topic.pub
        client = HttpClient(self.http.host, self.http.port)
        interval = args.batch / rate
        next_at = trio.current_time()
        seq = 0
        try:
            while not self.stop.is_set():
                with trio.move_on_at(next_at):
                    await self.stop.wait()
                if self.stop.is_set():
                    break
                batch = [{"topic": topic.name, "data": {"seq": seq + i, "pad": self.pad}}
                         for i in range(args.batch)]
                seq += args.batch
                body = orjson.dumps({"messages": batch})
                stats.requests += 1
                stats.attempted += len(batch)
                sent = time.perf_counter()
                status, answer = 0, b""
                with trio.move_on_after(self.request_timeout) as scope:
                    try:
                        status, answer = await client.request(b"POST", b"/v1/publish", body)
                    except NET_ERRORS as exc:
                        _count(stats.errors, repr(exc))
                stats.max_latency = max(stats.max_latency, time.perf_counter() - sent)
                if scope.cancelled_caught:
                    _count(stats.errors, f"no answer within {self.request_timeout:g}s")
                if status in (202, 503):
                    self.account(topic, status, answer, len(batch))
                else:
                    stats.unknown += len(batch)
                    if status:
                        _count(stats.errors, f"{status}: {answer[:200]!r}")
                now = trio.current_time()
                next_at += interval
                if next_at < now:
                    stats.late += 1
                    next_at = now
        finally:
            client.close()

    def account(self, topic: TopicState, status: int, answer: bytes, size: int) -> None:
        stats = topic.pub
        try:
            results = orjson.loads(answer)["results"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            stats.unknown += size
            _count(stats.errors, f"{status} without results: {answer[:200]!r}")
            return
        for result in results:
            if "offset" in result:
                stats.accepted += 1
                if result["offset"] != topic.next_offset:
                    stats.offset_errors += 1
                topic.next_offset = result["offset"] + 1
            else:
                stats.refused[result.get("error", {}).get("code", "?")] += 1

    async def churner(self, family: Family, index: int) -> None:
        """Connect, subscribe, read a little, leave; again, until `stop`."""
        args = self.args
        stats = family.churn
        cycle = index
        client = f"soak-churn-{family.key}-{index}"
        while not self.stop.is_set():
            cycle += 1
            wildcard = args.wildcard_churn and cycle % 2 == 0
            pattern = family.pattern if wildcard else (
                family.topics[(cycle // (2 if args.wildcard_churn else 1)) % len(family.topics)]
                .name
            )
            sub = SoakSubscriber(self.ws.host, self.ws.port, self.ws_path(pattern, client))
            stats.cycles += 1
            stats.wildcard_cycles += wildcard
            subscribed = False
            try:
                with trio.move_on_after(args.churn_timeout):
                    await sub.connect()
                    await sub.ping(cycle)
                    subscribed = True
                    stats.subscribed += 1
                    with trio.move_on_after(args.churn_dwell):
                        await sub.read_messages(args.churn_read)
                if not subscribed:
                    stats.timeouts += 1
                    stats.timeouts_by_topic[pattern] += 1
                if sub.close_code is not None or sub.eof:
                    stats.closed_by_broker[sub.close_code or 1006] += 1
                with trio.move_on_after(2.0):
                    await sub.close()
            except NET_ERRORS as exc:
                _count(stats.errors, f"{pattern}: {exc!r}")
            finally:
                sub.abort()
            stats.messages += sub.received
            if not wildcard and sub.received:
                # From "latest": the first offset is whatever came next; after it, every
                # offset must follow the previous one (or a gap frame).
                first_jump = 1 if sub.first_offset else 0
                stats.order_errors += max(0, sub.out_of_order - first_jump - sub.gaps)
            with trio.move_on_after(args.churn_pause):
                await self.stop.wait()

    async def watch_stalled(self, nursery: trio.Nursery) -> None:
        """Notice when a stalled subscriber leaves the presence listing (evicted), then let
        it read at once: the close frame is only written while it reads."""
        client = HttpClient(self.http.host, self.http.port)
        try:
            watched = [f for f in self.families if f.stalled and f.stalled.subscribed]
            while watched and not self.stop.is_set():
                for family in list(watched):
                    stalled = family.stalled
                    assert stalled is not None
                    present = await self.present_clients(client, stalled.topic)
                    if present is not None and stalled.client not in present:
                        stalled.gone_at = self.elapsed()
                        watched.remove(family)
                        nursery.start_soon(stalled.read_to_end, None, self.args.drain_timeout)
                with trio.move_on_after(self.args.stall_poll):
                    await self.stop.wait()
        finally:
            client.close()

    async def sampler(self, until: trio.Event) -> None:
        interval = self.args.sample_interval
        next_at = self.t0
        next_progress = 0.0
        while not until.is_set():
            sample = await self.sample(self.elapsed())
            self.samples.append(sample)
            if sample.t >= next_progress - interval / 2:
                self.progress(sample)
                while next_progress <= sample.t + interval / 2:
                    next_progress += self.args.progress_interval
            next_at += interval
            with trio.move_on_at(max(next_at, trio.current_time())):
                await until.wait()

    def progress(self, s: Sample) -> None:
        refused = sum(sum(t.pub.refused.values()) for f in self.families for t in f.topics)
        accepted = sum(t.pub.accepted for f in self.families for t in f.topics)
        slow = "" if s.scrape_s < 1.0 else f" | /metrics took {s.scrape_s:.1f}s"
        print(
            f"[{s.t:6.1f}s] RSS {_mb(s.rss)} MB | tasks {_fmt(s.tasks)} | connections "
            f"{_fmt(s.connections)} | accepted {accepted} refused {refused} | delivered "
            f"{_fmt(s.delivered)} dropped {_fmt(s.dropped)} evicted {_fmt(s.disconnects)}{slow}",
            flush=True,
        )

    # -- the end ---------------------------------------------------------------------------

    async def release_stalled(self) -> None:
        """Let the stalled subscribers still subscribed read everything, then close them."""
        client = HttpClient(self.http.host, self.http.port)

        async def release(family: Family) -> None:
            stalled = family.stalled
            assert stalled is not None
            present = await self.present_clients(client, stalled.topic)
            stalled.kept_to_end = None if present is None else stalled.client in present
            if stalled.read_started is None:
                expected = await self.topic_next_offset(client, family.topics[0])
                await stalled.read_to_end(expected, self.args.drain_timeout)
            with trio.move_on_after(2.0):
                await stalled.reader.close()
            stalled.reader.abort()

        try:
            for family in self.families:  # one at a time: one HTTP client
                if family.stalled is not None and family.stalled.subscribed:
                    await release(family)
        finally:
            client.close()

    async def topic_next_offset(self, client: HttpClient, topic: TopicState) -> int:
        answer = await self.get_json(client, f"/v1/topics/{topic.name}")
        if isinstance(answer, dict) and isinstance(answer.get("next_offset"), int):
            topic.broker_next_offset = answer["next_offset"]
            return answer["next_offset"]
        _note(self.errors, f"GET /v1/topics/{topic.name} failed; expecting our own count")
        return topic.next_offset

    async def final_publish(self) -> None:
        """One single POST per topic after the release: every topic must take it."""
        client = HttpClient(self.http.host, self.http.port)
        try:
            for family in self.families:
                for topic in family.topics:
                    body = orjson.dumps({"seq": "final", "pad": self.pad})
                    topic.pub.attempted += 1
                    topic.pub.requests += 1
                    status, answer = 0, b""
                    started = time.perf_counter()
                    with trio.move_on_after(self.request_timeout):
                        try:
                            status, answer = await client.request(
                                b"POST", f"/v1/topics/{topic.name}".encode(), body
                            )
                        except NET_ERRORS as exc:
                            _count(topic.pub.errors, f"final publish: {exc!r}")
                    took = time.perf_counter() - started
                    self.end_phase.setdefault("final", []).append((topic.name, status, took))
                    if status == 202:
                        self.account(topic, status,
                                     b'{"results":[%s]}' % answer, 1)
                    elif status == 503:
                        topic.pub.refused["final:" + _error_code(answer)] += 1
                    else:
                        topic.pub.unknown += 1
        finally:
            client.close()

    async def drain_healthy(self) -> None:
        """Wait until every healthy subscriber accounts for its topic's every offset."""
        client = HttpClient(self.http.host, self.http.port)
        try:
            for family in self.families:
                for topic in family.topics:
                    await self.topic_next_offset(client, topic)
        finally:
            client.close()
        started = time.perf_counter()
        with trio.move_on_after(self.args.drain_timeout):
            while True:
                behind = [
                    sub for f in self.families for t in f.topics for sub in t.healthy
                    if not sub.done and sub.accounted < _expected(t)
                ]
                if not behind:
                    break
                await trio.sleep(0.05)
        self.end_phase["drain_s"] = time.perf_counter() - started
        for family in self.families:
            for topic in family.topics:
                for sub in topic.healthy:
                    sub.closed_early = sub.done  # closed by the broker, not by us

    async def wait_idle(self) -> Sample | None:
        """After everything closed: wait (bounded) for connections to reach 0, then sample."""
        sample = None
        with trio.move_on_after(self.args.drain_timeout):
            while True:
                sample = await self.sample(self.elapsed())
                if sample.connections is not None and sample.connections <= 0:
                    break
                await trio.sleep(0.5)
        return sample

    async def run(self) -> None:
        args = self.args
        self.t0 = trio.current_time()
        self.idle_before = await self.sample(0.0)
        await self.connect_all()
        healthy = [sub for f in self.families for t in f.topics for sub in t.healthy]
        group = SubscriberGroup(healthy)
        sampling_done = trio.Event()
        async with trio.open_nursery() as outer:
            reader_scope = trio.CancelScope()

            async def read_healthy() -> None:
                with reader_scope:
                    await group.read_messages(1 << 62)

            outer.start_soon(read_healthy)
            print(f"load: {args.seconds:g}s, tag {self.tag}", flush=True)
            self.t0 = trio.current_time()
            meter = CpuMeter(self.broker_pid)
            meter.start()
            outer.start_soon(self.sampler, sampling_done)
            outer.start_soon(self.watch_stalled, outer)
            async with trio.open_nursery() as load:
                rate = args.rate / args.topics
                for family in self.families:
                    for topic in family.topics:
                        load.start_soon(self.publisher, topic, rate)
                    for index in range(args.churners):
                        load.start_soon(self.churner, family, index)
                await trio.sleep(args.seconds)
                self.stop.set()
                # Publishers finish the request in flight, churners their cycle: bounded.
                load.cancel_scope.deadline = trio.current_time() + self.request_timeout + 5.0
            self.load_cpu = meter.stop()
            sampling_done.set()
            print(f"[{self.elapsed():6.1f}s] load stopped; releasing the stalled subscribers",
                  flush=True)
            await self.release_stalled()
            await self.final_publish()
            await self.drain_healthy()
            reader_scope.cancel()
            with trio.move_on_after(3.0):
                async with trio.open_nursery() as closer:
                    for sub in healthy:
                        closer.start_soon(sub.close)
            for sub in healthy:
                sub.abort()
            outer.cancel_scope.cancel()
        self.idle_after = await self.wait_idle()
        self.metrics_client.close()


def _error_code(answer: bytes) -> str:
    try:
        return str(orjson.loads(answer)["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "?"


def _expected(topic: TopicState) -> int:
    return topic.next_offset if topic.broker_next_offset is None else topic.broker_next_offset


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / MB:.1f}"


# -- report --------------------------------------------------------------------------------


def report_family(soak: Soak, family: Family, problems: list[str]) -> list[str]:
    """Print one policy's section; return its row of the summary table."""
    args = soak.args
    topics = family.topics
    where = f"{family.policy}"
    print(f"\n{family.policy}: topics {family.pattern} ({len(topics)}), "
          f"{args.healthy} healthy subscribers per topic")
    # publishers
    for topic in topics:
        pub = topic.pub
        refused = sum(pub.refused.values())
        codes = ", ".join(f"{k} {v}" for k, v in sorted(pub.refused.items())) or "-"
        broker_next = topic.broker_next_offset
        print(
            f"  {topic.name.rsplit('.', 1)[1]}: published (accepted) {pub.accepted} of "
            f"{pub.attempted} in {pub.requests} POSTs | refused (503) {refused} [{codes}] "
            f"| unknown {pub.unknown} "
            f"| late ticks {pub.late} | slowest answer {pub.max_latency:.2f}s "
            f"| broker next_offset {_fmt(broker_next)}"
        )
        if broker_next is not None and broker_next != topic.next_offset and not pub.unknown:
            problems.append(f"{where} {topic.name}: 202 answers say next offset "
                            f"{topic.next_offset}, the broker says {broker_next}")
        if pub.offset_errors:
            problems.append(f"{where} {topic.name}: {pub.offset_errors} accepted offsets out "
                            "of sequence")
        for error, times in pub.errors.items():
            print(f"      publisher error x{times}: {error}")
        if pub.unknown:
            problems.append(f"{where} {topic.name}: {pub.unknown} messages of unanswered "
                            "requests (fate unknown)")
        if refused and family.key != "block":
            problems.append(f"{where} {topic.name}: {refused} publishes refused on a policy "
                            "that never waits for subscribers")
    # healthy subscribers
    expected = delivered = received = skipped = gaps = 0
    bad: list[str] = []
    subs = 0
    for topic in topics:
        want = _expected(topic)
        for sub in topic.healthy:
            subs += 1
            expected += want
            delivered += min(sub.accounted, want)
            received += sub.received
            skipped += sub.skipped
            gaps += sub.gaps
            if not sub.whole(want) or sub.closed_early or sub.others_seen:
                bad.append(
                    f"{sub.path.split('client=')[-1]}: received {sub.received} + skipped "
                    f"{sub.skipped} of {want}, offsets {sub.first_offset}..{sub.last_offset}, "
                    f"out of order {sub.out_of_order}, gaps {sub.gaps}, closed by the broker "
                    f"{sub.close_code or 'eof' if sub.closed_early else '-'}, other frames "
                    f"{sub.others[:2]}"
                )
    wanted = args.topics * args.healthy
    pct = 100.0 * delivered / expected if expected else 100.0
    extra = f" (received {received} + skipped in gap frames {skipped})" if skipped else ""
    print(f"  healthy ({subs}/{wanted} connected): delivered/expected {delivered}/{expected} "
          f"= {pct:.2f}%{extra}, in order, {len(bad)} incomplete")
    if subs < wanted:
        problems.append(f"{where}: only {subs}/{wanted} healthy subscribers connected")
    for line in bad:
        print(f"      INCOMPLETE {line}")
    if bad:
        problems.append(f"{where}: {len(bad)} healthy subscribers lost messages or were closed "
                        f"(delivered {delivered}/{expected})")
    if gaps and family.key != "drop":
        problems.append(f"{where}: gap frames on a lossless policy")
    # churn
    churn = family.churn
    closed = ", ".join(f"{code} x{n}" for code, n in sorted(churn.closed_by_broker.items()))
    timeouts = ", ".join(f"{t.rsplit('.', 1)[1].replace('*', 'wildcard')} {n}"
                         for t, n in sorted(churn.timeouts_by_topic.items()))
    print(
        f"  churn: {churn.cycles} connect/subscribe/read/leave cycles"
        f"{f' ({churn.wildcard_cycles} on the wildcard)' if churn.wildcard_cycles else ''}, "
        f"{churn.subscribed} subscribed, {churn.timeouts} not subscribed within "
        f"{args.churn_timeout:g}s{f' [{timeouts}]' if timeouts else ''}, {churn.messages} "
        f"messages read, {churn.order_errors} out of order"
        f"{f', closed by the broker: {closed}' if closed else ''}"
    )
    for error, times in churn.errors.items():
        print(f"      churn error x{times}: {error}")
    if churn.order_errors:
        problems.append(f"{where}: churn subscribers saw {churn.order_errors} messages out of "
                        "order")
    stalled_topic = topics[0].name
    blocked_ok = family.key == "block" and set(churn.timeouts_by_topic) <= {stalled_topic}
    if churn.timeouts and not blocked_ok:
        problems.append(f"{where}: {churn.timeouts} churn subscribes not answered within "
                        f"{args.churn_timeout:g}s [{timeouts}]")
    # the stalled subscriber
    stalled = report_stalled(family, problems)
    accepted = sum(t.pub.accepted for t in topics)
    refused = sum(sum(t.pub.refused.values()) for t in topics)
    return [family.policy, str(accepted), str(refused), f"{delivered}/{expected}",
            f"{pct:.2f}%", stalled]


def report_stalled(family: Family, problems: list[str]) -> str:
    """Print what happened to the stalled subscriber; return it in a few words."""
    stalled = family.stalled
    where = family.policy
    if stalled is None or not stalled.subscribed:
        print("  stalled: never subscribed")
        problems.append(f"{where}: the stalled subscriber never subscribed")
        return "never subscribed"
    reader = stalled.reader
    offsets = (f"offsets {reader.first_offset}..{reader.last_offset}"
               if reader.received else "no messages")
    order = "in order" if reader.out_of_order == reader.gaps else (
        f"{reader.out_of_order - reader.gaps} out of order")
    ended = (f"close {reader.close_code} {reader.close_reason!r}" if reader.close_code
             else "end of stream without a close frame" if reader.eof else "still open")
    t0_refused = sum(family.topics[0].pub.refused.values())
    if stalled.gone_at is not None:
        print(f"  stalled (t0, never read): dropped by the broker at {stalled.gone_at:.1f}s; "
              f"then read {reader.received} messages ({offsets}, {order}), {ended}")
        if family.key != "disconnect":
            problems.append(f"{where}: the stalled subscriber was disconnected ({ended})")
        elif reader.close_code != 4008:
            problems.append(f"{where}: the stalled subscriber was dropped without a 4008 "
                            f"close ({ended})")
        if reader.out_of_order != reader.gaps:
            problems.append(f"{where}: the stalled subscriber's prefix was out of order")
        how = f"closed {reader.close_code}" if reader.close_code else "dropped without close"
        return f"{how} at {stalled.gone_at:.1f}s"
    expected = stalled.expected
    whole = expected is not None and reader.whole(expected)
    if family.key == "disconnect":
        print(f"  stalled (t0, never read): NOT disconnected during the run; at the end it "
              f"read {reader.received}/{expected} ({offsets}, {order})")
        problems.append(f"{where}: the stalled subscriber was not disconnected (too little "
                        f"data to fill its outbox and socket buffers? raise --seconds, --rate "
                        f"or --payload-bytes)")
        return "not disconnected"
    kept = {True: "kept to the end", False: "NOT in presence at the end",
            None: "presence unknown at the end (query failed)"}[stalled.kept_to_end]
    if family.key == "drop":
        print(f"  stalled (t0, never read): {kept}, {reader.skipped} dropped (in {reader.gaps} "
              f"gap frames); reading at the end: received {reader.received} + skipped "
              f"{reader.skipped} = {reader.accounted}/{expected} offsets, {order}, "
              f"{'every offset accounted for' if whole else 'NOT every offset accounted for'}")
        if not whole:
            problems.append(f"{where}: the stalled subscriber's received + skipped does not "
                            f"account for every offset ({reader.accounted}/{expected})")
        if not reader.skipped:
            print("      (nothing dropped: the stall never filled the outbox)")
    else:
        print(f"  stalled (t0, never read): {kept}; publishers refused {t0_refused} messages "
              f"on t0; reading at the end: {reader.received}/{expected} messages, {order}, "
              f"{'nothing lost' if whole and not reader.gaps else 'INCOMPLETE'}")
        if not whole or reader.gaps:
            problems.append(f"{where}: the stalled subscriber did not get every accepted "
                            f"message once it read ({reader.received}/{expected})")
        if not t0_refused:
            print("      (no publish refused: the stall never filled outbox and mailbox)")
    if stalled.kept_to_end is False:
        problems.append(f"{where}: the stalled subscriber was not kept")
    for error in stalled.errors:
        print(f"      stalled error: {error}")
    kept = "kept" if stalled.kept_to_end else kept
    if family.key == "drop":
        return f"{kept}, {reader.skipped} dropped, all accounted" if whole else (
            f"{kept}, NOT all accounted")
    return f"{kept}, publishers refused {t0_refused}, nothing lost" if whole else (
        f"{kept}, INCOMPLETE")


def memory_verdict(soak: Soak, problems: list[str]) -> None:
    seconds = soak.args.seconds
    samples = [s for s in soak.samples if s.t <= seconds + 0.5]
    print(f"\nRSS and tasks over time (samples every {soak.args.sample_interval:g}s; "
          f"rows every {soak.args.progress_interval:g}s)")
    print(f"{'t s':>6} {'RSS MB':>7} {'tasks':>6} {'conns':>6} {'published':>10} "
          f"{'delivered':>10} {'dropped':>8} {'mailbox max':>11}")
    rows: list[Sample] = []
    due = 0.0
    for s in samples:
        if s.t >= due - soak.args.sample_interval / 2:
            rows.append(s)
            while due <= s.t + soak.args.sample_interval / 2:
                due += soak.args.progress_interval
    if samples and samples[-1] is not rows[-1]:
        rows.append(samples[-1])
    for s in rows:
        print(f"{s.t:6.1f} {_mb(s.rss):>7} {_fmt(s.tasks):>6} {_fmt(s.connections):>6} "
              f"{_fmt(s.published):>10} {_fmt(s.delivered):>10} {_fmt(s.dropped):>8} "
              f"{_fmt(s.mailbox_max):>11}")
    third = seconds / 3.0
    middle = [s for s in samples if third <= s.t < 2 * third]
    last = [s for s in samples if s.t >= 2 * third]

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.fmean(known) if known else None

    rss_mid, rss_last = mean([s.rss for s in middle]), mean([s.rss for s in last])
    tasks_mid, tasks_last = mean([s.tasks for s in middle]), mean([s.tasks for s in last])
    if rss_mid and rss_last:
        growth = rss_last / rss_mid - 1.0
        verdict = "flat" if growth < FLAT_GROWTH else "GROWING"
        print(f"\nmemory: mean RSS {rss_mid / MB:.1f} MB over {third:.0f}-{2 * third:.0f}s, "
              f"{rss_last / MB:.1f} MB over {2 * third:.0f}-{seconds:g}s: "
              f"{growth * 100:+.1f}% => {verdict} (first third is warm-up; flat: < "
              f"{FLAT_GROWTH * 100:.0f}%)")
        if verdict != "flat":
            problems.append(f"memory grew {growth * 100:+.1f}% from the middle to the last "
                            "third of the run")
    else:
        print("\nmemory: not enough RSS samples for a verdict")
        problems.append("no memory verdict: RSS samples missing")
    if tasks_mid and tasks_last:
        print(f"tasks: mean {tasks_mid:.0f} over the middle third, {tasks_last:.0f} over the "
              f"last ({(tasks_last / tasks_mid - 1) * 100:+.1f}%)")
    before, after = soak.idle_before, soak.idle_after
    if before and after:
        print(f"idle, before connecting: {_fmt(before.tasks)} tasks, {_fmt(before.connections)}"
              f" connections, RSS {_mb(before.rss)} MB; after everything closed: "
              f"{_fmt(after.tasks)} tasks, {_fmt(after.connections)} connections, "
              f"RSS {_mb(after.rss)} MB")
        if after.connections:
            problems.append(f"{after.connections:.0f} connections still open at the end")
        if before.tasks is not None and after.tasks is not None and after.tasks > before.tasks:
            print(f"      ({after.tasks - before.tasks:.0f} tasks more than before: idle topics "
                  "keep one actor task each until topic_idle_seconds)")


def report(soak: Soak, broker: dict[str, Any], meta: dict[str, Any]) -> list[str]:
    args = soak.args
    problems: list[str] = []
    print(f"\nsoak: {args.seconds:g}s | python {meta['python']} | {meta['cpus']} cpus | commit "
          f"{meta['commit']} | broker pid {meta['broker_pid']} cores {meta['broker_cores']} | "
          f"load generator cores {meta['gen_cores']}")
    print(f"load: {args.rate:g} msg/s per policy in bulk POSTs of {args.batch} "
          f"({args.payload_bytes}-byte pad), {args.topics} topics per policy, {args.healthy} "
          f"healthy subscribers per topic, {args.churners} churners per policy, 1 stalled "
          f"subscriber per policy (SO_RCVBUF {args.stall_rcvbuf}); broker outbox_size "
          f"{meta['outbox_size']}, publish_timeout {meta['publish_timeout']}")
    rows = [report_family(soak, family, problems) for family in soak.families]
    print(f"\n{'policy':<12} {'published':>9} {'refused':>8} {'healthy delivered/expected':>27}"
          f" {'':>8}  stalled subscriber")
    for policy, accepted, refused, ratio, pct, stalled in rows:
        print(f"{policy:<12} {accepted:>9} {refused:>8} {ratio:>27} {pct:>8}  {stalled}")
    memory_verdict(soak, problems)
    cpu = soak.load_cpu
    if cpu:
        print(
            f"\nCPU over the {cpu['window_s']:.1f}s of load: load generator "
            f"{cpu['gen_cpu_s']:.1f}s ({_fmt(cpu['gen_cpu_pct'])}% of a core), broker "
            f"{_fmt(cpu['broker_cpu_s'], '.1f')}s ({_fmt(cpu['broker_cpu_pct'])}% of a core)"
        )
    if soak.samples:
        last = soak.samples[-1]
        gaps = sum(f.stalled.reader.skipped + sum(s.skipped for t in f.topics for s in t.healthy)
                   for f in soak.families if f.stalled)
        print(f"broker counters at the end of the load: published {_fmt(last.published)}, "
              f"delivered {_fmt(last.delivered)}, dropped {_fmt(last.dropped)} (gap frames "
              f"seen here: {gaps} skipped), slow-consumer disconnects {_fmt(last.disconnects)}")
    for name, status, took in soak.end_phase.get("final", []):
        if status != 202:
            print(f"final publish to {name}: {status or 'no answer'} after {took:.1f}s")
            problems.append(f"final publish to {name} after the release: "
                            f"{status or 'no answer'}")
    if "drain_s" in soak.end_phase:
        print(f"healthy subscribers caught up {soak.end_phase['drain_s']:.2f}s after the "
              "final publish")
    if soak.scrape_failures:
        print(f"GET /metrics failed or took over {args.scrape_timeout:g}s "
              f"{soak.scrape_failures} times")
        problems.append(f"GET /metrics failed or took over {args.scrape_timeout:g}s "
                        f"{soak.scrape_failures} times (a wedged broker?)")
    for error in soak.errors:
        print(f"error: {error}")
        problems.append(error)
    if not broker.get("external"):
        lines = broker.get("stderr_all", [])
        unexpected = [line for line in lines if any(m in line for m in PROBLEM_MARKERS)
                      and EXPECTED_LOG not in line]
        expected = sum(1 for line in lines if EXPECTED_LOG in line)
        print(f"broker: SIGTERM -> exit {broker.get('exit_code')} in "
              f"{broker.get('stop_seconds')}s; stderr: {expected} slow-consumer closes, "
              f"{len(unexpected)} other warning/error lines")
        for line in unexpected[:10]:
            print(f"      {line}")
        if unexpected:
            problems.append(f"broker stderr: {len(unexpected)} warning/error lines "
                            f"({broker.get('stderr_log')})")
        elif broker.get("stderr_log") and broker.get("exit_code") == 0:
            # BrokerProcess keeps the log for any "slow consumer" line; that one is ours.
            os.unlink(broker["stderr_log"])
        problems += stop_problems(broker)
    return problems


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--seconds", type=float, default=60.0, help="length of the load (default 60)")
    add("--url", help="use a running broker's HTTP gateway (http://HOST:PORT)")
    add("--ws-url", help="...and its WebSocket endpoint (ws://HOST:PORT/v1/ws)")
    add("--broker-pid", type=int, help="with --url: the broker's pid, for its CPU time")
    add("--rate", type=float, default=200.0, help="messages/s per policy (default 200)")
    add("--batch", type=int, default=10, help="messages per bulk POST (default 10)")
    add("--payload-bytes", type=int, default=512, help="padding per message (default 512)")
    add("--topics", type=int, default=2, help="topics per policy (default 2)")
    add("--healthy", type=int, default=3, help="healthy subscribers per topic (default 3)")
    add("--churners", type=int, default=2, help="churning subscribers per policy (default 2)")
    add("--wildcard-churn", action="store_true",
        help="every other churn cycle subscribes to the family's wildcard pattern")
    add("--churn-read", type=int, default=50, help="messages a churner reads (default 50)")
    add("--churn-dwell", type=float, default=0.7, help="most seconds a churner reads (0.7)")
    add("--churn-pause", type=float, default=0.3, help="seconds between churn cycles (0.3)")
    add("--churn-timeout", type=float, default=3.0,
        help="bound on a churner's connect + subscribe + read (default 3 s)")
    add("--stall-rcvbuf", type=int, default=4096, help="stalled socket's SO_RCVBUF (4096)")
    add("--stall-poll", type=float, default=0.5, help="presence poll for evictions (0.5 s)")
    add("--outbox-size", type=int, default=256,
        help="BROKER_OUTBOX_SIZE for the broker started here (default 256)")
    add("--publish-timeout", type=float, default=0.5,
        help="BROKER_PUBLISH_TIMEOUT for the broker started here (default 0.5)")
    add("--sample-interval", type=float, default=1.0, help="metrics sampling (default 1 s)")
    add("--progress-interval", type=float, default=5.0, help="progress lines (default 5 s)")
    add("--scrape-timeout", type=float, default=5.0, help="bound on one /metrics read")
    add("--connect-timeout", type=float, default=30.0, help="bound on connecting everyone")
    add("--drain-timeout", type=float, default=15.0,
        help="bound on each end step: stalled reads, healthy catching up (default 15 s)")
    add("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    if bool(args.url) != bool(args.ws_url):
        parser.error("--url and --ws-url go together")
    if args.seconds <= 0 or args.rate <= 0 or args.batch < 1 or args.topics < 1:
        parser.error("--seconds, --rate, --batch and --topics must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    _, broker_core, gen_core = pick_cores(not args.no_pin)
    broker: BrokerProcess | None = None
    config_path = None
    if args.url:
        http_url, ws_url, broker_pid = args.url, args.ws_url, args.broker_pid
        outbox, publish_timeout = "(the broker's)", "(the broker's)"
    else:
        fd, config_path = tempfile.mkstemp(prefix="soak-", suffix=".toml")
        with os.fdopen(fd, "w") as config:
            config.write(CONFIG_TOML)
        # BrokerProcess passes the environment on: BROKER_CONFIG is --config's env twin.
        os.environ["BROKER_CONFIG"] = config_path
        os.environ["BROKER_OUTBOX_SIZE"] = str(args.outbox_size)
        os.environ["BROKER_PUBLISH_TIMEOUT"] = str(args.publish_timeout)
        outbox, publish_timeout = args.outbox_size, args.publish_timeout
        try:
            broker = BrokerProcess(broker_core, startup_timeout=30.0)
        finally:
            os.unlink(config_path)
        http_url, ws_url, broker_pid = broker.http_url, broker.ws_url, broker.pid
        print(f"broker started in {broker.startup_seconds:.2f}s: {http_url} {ws_url}",
              flush=True)
    if gen_core is not None:
        os.sched_setaffinity(0, {gen_core})
    commit, dirty = git_commit()
    meta = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "commit": f"{(commit or '?')[:10]}{' (dirty)' if dirty else ''}",
        "broker_pid": broker_pid,
        "broker_cores": broker.affinity() if broker else None,
        "gen_cores": sorted(os.sched_getaffinity(0)),
        "outbox_size": outbox,
        "publish_timeout": publish_timeout,
    }
    soak = Soak(args, Endpoint.parse(http_url), Endpoint.parse(ws_url), broker_pid)
    broker_report: dict[str, Any] = {"external": broker is None}
    try:
        # A hard bound on the whole run: a hang shows as an error, not as a stuck script.
        limit = (args.seconds + args.connect_timeout + 8 * args.drain_timeout
                 + (3 * args.topics + 2) * (args.publish_timeout + 5.0) + 60.0)
        trio.run(_bounded, soak, limit)
    finally:
        if broker is not None:
            broker_report.update(broker.stop())
            broker_report["stderr_all"] = broker.stderr_text().splitlines()
    problems = report(soak, broker_report, meta)
    if problems:
        print("\nPROBLEMS:")
        for problem in problems:
            print(f"  - {problem}")
    else:
        print("\nno problems: every healthy subscriber got every message, memory flat")
    return 1 if problems else 0


async def _bounded(soak: Soak, limit: float) -> None:
    with trio.move_on_after(limit) as scope:
        await soak.run()
    if scope.cancelled_caught:
        _note(soak.errors, f"the soak did not finish within {limit:.0f}s (a hang?)")


if __name__ == "__main__":
    sys.exit(main())
