"""`Soak`: the run. Connects the healthy and stalled subscribers, runs the publishers and
churners, samples /metrics, watches the stalled subscribers' fate under each slow-consumer
policy, then the end phases: release the stalled ones, one more publish per topic, the
healthy subscribers catching up.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any
from urllib.parse import quote

import orjson
import trio

from ..lean import (
    Endpoint,
    HttpClient,
    SubscriberGroup,
)
from ..process import (
    CpuMeter,
    own_cpu_seconds,
    proc_cpu_seconds,
    rss_bytes,
)
from ..quick import NET_ERRORS
from .errors import _count, _note
from .state import (
    FAMILIES,
    Family,
    Sample,
    TopicState,
    _error_code,
    _expected,
    _fmt,
    _mb,
    parse_metrics,
)
from .subscribers import SoakSubscriber, StalledSubscriber

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
