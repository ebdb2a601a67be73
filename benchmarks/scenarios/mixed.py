"""`mixed`: a rate-limited mixed workload after a published multicast-registry load test.

Operations are started at a fixed rate (default 100/s) against absolute deadlines, in the
repeating order R E R M R E R M R E (50% register, 30% enumerate, 20% multicast), each in
its own task so a slow one never delays the schedule:

- register: open a WebSocket subscribed to one of G group topics with a client name
  (`?topic=...&client=...`), ping barrier; the connection stays open (the registry grows);
- enumerate: `GET /v1/topics?prefix=...` and `GET /v1/topics/{t}/subscribers` alternately
  (n/a on targets without listing and presence);
- multicast: publish one message to a group topic; its targets are the group's
  connections registered before the publish was sent. After the run every target must have
  received it: delivered / targets.

Latency is each operation's own round trip (multicast: the publish request). A progress
line every 5 s; every operation bounded by the phase timeout."""

from __future__ import annotations

import select
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from ..lean import HttpClient, WsSubscriber
from ..schedule import RateSchedule, accuracy_pct, achieved_rate, run_at_rate
from ..stats import latency_summary, rate
from .context import NET_ERRORS, ScenarioContext, note
from .subscribers import close_group

PATTERN = "RERMRERMRE"
OPERATIONS = {"R": "register", "E": "enumerate", "M": "multicast"}
PROGRESS_INTERVAL = 5.0
OPERATION_TIMEOUT = 10.0
# Pooled HTTP connections idle this long are not reused (servers close idle keep-alive
# connections after a few seconds: hypercorn's default is 5 s).
POOL_IDLE_SECONDS = 2.0


@dataclass
class Registered:
    sub: WsSubscriber
    group: int
    at: float  # perf_counter once its ping was answered


@dataclass
class OperationStats:
    count: int = 0
    ok: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


class LiveReader:
    """Reads a growing set of subscribers from one task through one epoll set."""

    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.subscribers: dict[int, WsSubscriber] = {}

    def add(self, sub: WsSubscriber) -> None:
        assert sub.sock is not None
        fd = sub.sock.fileno()
        self.subscribers[fd] = sub
        self.epoll.register(fd, select.EPOLLIN)

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            await trio.lowlevel.wait_readable(self.epoll)
            for fd, _ in self.epoll.poll(0):
                sub = self.subscribers.get(fd)
                if sub is None or sub.sock is None:
                    continue
                sub.receive_ready()
                await sub.send_pongs()
                if sub.done:
                    self.epoll.unregister(fd)
                    del self.subscribers[fd]

    def close(self) -> None:
        trio.lowlevel.notify_closing(self.epoll)
        self.epoll.close()


def got_offset(sub: WsSubscriber, offset: int) -> bool:
    """Whether a subscriber (subscribed at "latest") received `offset`, in order."""
    if sub.first_offset is None or sub.last_offset is None:
        return False
    disorder = sub.out_of_order - (1 if sub.first_offset != 0 else 0)
    return disorder == 0 and sub.first_offset <= offset <= sub.last_offset


class MixedRun:
    """State of one mixed run: the registry, the HTTP connection pool, the statistics."""

    def __init__(self, ctx: ScenarioContext, run: int) -> None:
        self.ctx = ctx
        self.groups = [ctx.topic("mixed", run, f"g{g}") for g in range(ctx.sizes.mixed_groups)]
        self.prefix = ctx.topic("mixed", run) + "."
        self.registered: list[Registered] = []
        self.reader = LiveReader()
        self.idle_clients: list[tuple[HttpClient, float]] = []  # most recently used last
        self.stats = {name: OperationStats() for name in OPERATIONS.values()}
        self.multicasts: list[tuple[int, int, list[Registered]]] = []  # group, offset, targets
        self.skipped = 0
        self.launched = dict.fromkeys(OPERATIONS.values(), 0)

    async def http(self, method: bytes, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """One request on a pooled keep-alive connection. Connections idle for longer than
        `POOL_IDLE_SECONDS` are dropped unused: the server may be closing them (its
        keep-alive timeout), and a request racing that close would count as a failure."""
        now = time.monotonic()
        client = None
        while self.idle_clients:
            candidate, since = self.idle_clients.pop()
            if now - since < POOL_IDLE_SECONDS:
                client = candidate
                break
            candidate.close()
        if client is None:
            client = HttpClient(self.ctx.http.host, self.ctx.http.port)
        try:
            answer = await client.request(method, path.encode(), body)
        except BaseException:
            client.close()
            raise
        self.idle_clients.append((client, time.monotonic()))
        return answer

    async def timed(self, name: str, operation: Callable[[], Awaitable[bool]]) -> None:
        stats = self.stats[name]
        stats.count += 1
        started = time.perf_counter()
        try:
            with trio.fail_after(OPERATION_TIMEOUT):
                ok = await operation()
        except (*NET_ERRORS, trio.TooSlowError) as exc:
            note(stats.errors, repr(exc))
            ok = False
        if ok:
            stats.ok += 1
            stats.latencies.append(time.perf_counter() - started)
        self.ctx.progress.advance()

    async def register(self, index: int) -> bool:
        group = index % len(self.groups)
        sub = WsSubscriber(self.ctx.ws.host, self.ctx.ws.port,
                           self.ctx.ws_path(self.groups[group], f"reg-{index}"))
        try:
            await sub.connect()
            await sub.ping(1)
        except BaseException:
            sub.abort()
            raise
        self.registered.append(Registered(sub, group, time.perf_counter()))
        self.reader.add(sub)
        return True

    async def enumerate(self, index: int) -> bool:
        if index % 2:
            path = f"/v1/topics?prefix={self.prefix}"
        else:
            path = f"/v1/topics/{self.groups[index % len(self.groups)]}/subscribers"
        status, body = await self.http(b"GET", path)
        if status != 200:
            note(self.stats["enumerate"].errors, f"{status}: {body[:120]!r}")
        return status == 200

    async def multicast(self, index: int) -> bool:
        group = index % len(self.groups)
        sent = time.perf_counter()
        targets = [r for r in self.registered if r.group == group and r.at < sent]
        status, body = await self.http(b"POST", f"/v1/topics/{self.groups[group]}",
                                       b'{"multicast":%d}' % index)
        if status != 202:
            note(self.stats["multicast"].errors, f"{status}: {body[:120]!r}")
            return False
        self.multicasts.append((group, orjson.loads(body)["offset"], targets))
        return True

    def launch(self, nursery: trio.Nursery) -> Callable[[int], None]:
        def start(index: int) -> None:
            name = OPERATIONS[PATTERN[index % len(PATTERN)]]
            if name == "enumerate" and not self.ctx.can("listing"):
                self.skipped += 1
                return
            ordinal = self.launched[name]  # per operation, so every group gets each kind
            self.launched[name] += 1
            nursery.start_soon(self.timed, name, lambda: getattr(self, name)(ordinal))
        return start

    async def report_progress(self, started: float) -> None:
        while True:
            await trio.sleep(PROGRESS_INTERVAL)
            elapsed = time.perf_counter() - started
            done = sum(s.count for s in self.stats.values())
            parts = ", ".join(f"{n} {s.ok}/{s.count}" for n, s in self.stats.items())
            self.ctx.progress.note(f"mixed {elapsed:4.0f}s: {done} ops ({done / elapsed:.1f}/s)"
                                   f" {parts}, {len(self.registered)} registered")


async def run_mixed(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    sizes = ctx.sizes
    state = MixedRun(ctx, run)
    total = int(sizes.mixed_rate * sizes.mixed_seconds)
    ctx.progress.begin(f"mixed {sizes.mixed_rate:.0f} ops/s for {sizes.mixed_seconds:.0f}s",
                       total)
    meter = ctx.meter()
    meter.start()
    started = time.perf_counter()
    launched: list[float] = []
    try:
        async with trio.open_nursery() as outer:
            reader_scope = trio.CancelScope()

            async def read() -> None:
                with reader_scope:
                    await state.reader.run()

            outer.start_soon(read)
            progress_scope = trio.CancelScope()

            async def progress() -> None:
                with progress_scope:
                    await state.report_progress(started)

            outer.start_soon(progress)
            async with trio.open_nursery() as operations:
                schedule = RateSchedule(sizes.mixed_rate, sizes.mixed_seconds,
                                        trio.current_time())
                launched = await run_at_rate(schedule, state.launch(operations))
            progress_scope.cancel()
            # Drain: wait (bounded) until every multicast reached its targets.
            with trio.move_on_after(ctx.delivery_timeout):
                while not all(got_offset(t.sub, offset) for _, offset, targets
                              in state.multicasts for t in targets):
                    await trio.sleep(0.05)
            reader_scope.cancel()
    finally:
        state.reader.close()
    cpu = meter.stop()
    await close_group([r.sub for r in state.registered])
    for client, _ in state.idle_clients:
        client.close()
    targets = sum(len(t) for _, _, t in state.multicasts)
    delivered = sum(got_offset(t.sub, offset) for _, offset, ts in state.multicasts for t in ts)
    achieved = achieved_rate(len(launched), launched[0] if launched else 0.0,
                             launched[-1] if launched else 0.0, sizes.mixed_rate)
    cases: dict[str, dict[str, Any]] = {}
    failures = 0
    for name, stats in state.stats.items():
        if name == "enumerate" and not ctx.can("listing"):
            cases[f"mixed.{name}"] = {"na": "target has no listing or presence endpoints",
                                      "errors": []}
            continue
        failed = stats.count - stats.ok
        failures += failed
        cases[f"mixed.{name}"] = {
            "requests": stats.count,
            "failures": failed,
            "success_pct": 100.0 * stats.ok / stats.count if stats.count else None,
            **latency_summary(stats.latencies),
            "rate_per_s": rate(stats.count, sizes.mixed_seconds),
            "errors": stats.errors,
        }
    cases["mixed.multicast"].update({
        "targets": targets, "delivered": delivered, "expected": targets,
        "lost": targets - delivered,
        "delivered_pct": 100.0 * delivered / targets if targets else None,
    })
    cases["mixed"] = {
        "requests": len(launched) - state.skipped,
        "failures": failures + (targets - delivered),
        "target_rate_per_s": sizes.mixed_rate,
        "achieved_rate_per_s": achieved,
        "rate_accuracy_pct": accuracy_pct(achieved, sizes.mixed_rate),
        "registered": len(state.registered),
        **cpu,
        "errors": [],
    }
    ctx.progress.end(f"{achieved:.1f} ops/s, multicast {delivered}/{targets}")
    return cases
