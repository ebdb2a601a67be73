"""A first benchmark of the broker: publish latency and WebSocket fan-out throughput.

    python -m benchmarks.quick [--runs 3] [--json PATH] [--url URL --ws-url WSURL]

Scenarios (each run uses fresh topic names; runs are interleaved so noise spreads evenly):

- `single`: N sequential `POST /v1/topics/{topic}` of a small JSON body on ONE keep-alive
  connection. Reports msg/s, p50/p95/p99 latency and failures (non-202, errors, timeouts),
  and checks the last answer's offset is N-1.
- `fanout`: S WebSocket subscribers on one topic (each sends one ping after connecting and
  waits for its `ok`: the "subscribed" barrier), then M messages published as fast as
  possible as single POSTs on one keep-alive connection. deliveries/s = S*M / (time from
  the first publish to the last frame received by any subscriber). Every subscriber must
  see offsets 0..M-1 in order (count, first and last offset, no out-of-order frame).
- `fanout-bulk`: the same, with the M messages sent as `POST /v1/publish` of 50 each.

Every wait has a timeout: a lost message shows as delivered < expected, never as a hang.

Unless `--url`/`--ws-url` are given, the broker is started here as a subprocess
(`python -m gateways serve --port 0 --ws-port 0`) and stopped with SIGTERM. On a machine
with two or more cores the broker is pinned to one core and this load generator to another.
CPU seconds of both (getrusage for ours, /proc/PID/stat for the broker's) are reported per
run, as a share of the run's wall time, so the figures say who was busy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import trio

from .lean import Endpoint, HttpClient, ProtocolError, SubscriberGroup, WsSubscriber

# READY_LINE and REPO are re-exported: benchmarks.idle imports them from here.
from .process import READY_LINE as READY_LINE
from .process import REPO as REPO
from .process import BrokerProcess, CpuMeter, git_commit, pick_cores, stop_problems

SMALL_BODY = b'{"event":"bench","seq":1,"source":"benchmarks.quick","ok":true}'
WARMUP_REQUESTS = 200
NET_ERRORS = (OSError, ProtocolError, ValueError, KeyError)


# -- scenarios ---------------------------------------------------------------------------


class Context:
    """Where the broker is and how long anything may take."""

    def __init__(self, args: argparse.Namespace, http: Endpoint, ws: Endpoint,
                 broker_pid: int | None) -> None:
        self.args = args
        self.http = http
        self.ws = ws
        self.broker_pid = broker_pid
        self.timeout: float = args.timeout
        self.delivery_timeout: float = args.delivery_timeout
        self.tag = uuid.uuid4().hex[:6]

    def topic(self, kind: str, run: int) -> str:
        return f"bench.{kind}.{self.tag}.r{run}"

    def meter(self) -> CpuMeter:
        return CpuMeter(self.broker_pid)


def percentile(sorted_values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _note(errors: list[str], what: str) -> None:
    if len(errors) < 10:
        errors.append(what)


async def run_single(ctx: Context, run: int) -> dict[str, Any]:
    """N sequential publishes on one keep-alive connection."""
    n = ctx.args.messages
    topic = ctx.topic("single", run)
    path = f"/v1/topics/{topic}".encode()
    client = HttpClient(ctx.http.host, ctx.http.port)
    errors: list[str] = []
    with trio.move_on_after(ctx.timeout):
        for _ in range(WARMUP_REQUESTS):  # connection, code paths; not measured
            try:
                await client.request(b"POST", b"/v1/topics/bench.warmup", SMALL_BODY)
            except NET_ERRORS as exc:
                _note(errors, f"warm-up: {exc!r}")
                break
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    failures = finished = 0
    last_body = b""
    reconnects_before = client.reconnects
    meter = ctx.meter()
    meter.start()
    with trio.move_on_after(ctx.timeout):
        for _ in range(n):
            sent = time.perf_counter()
            try:
                status, body = await client.request(b"POST", path, SMALL_BODY)
            except NET_ERRORS as exc:
                failures += 1
                finished += 1
                _note(errors, repr(exc))
                continue
            took = time.perf_counter() - sent
            finished += 1
            statuses[status] += 1
            if status == 202:
                latencies.append(took)
                last_body = body
            else:
                failures += 1
                _note(errors, f"{status}: {body[:200]!r}")
    cpu = meter.stop()
    client.close()
    timed_out = n - finished
    if timed_out:
        _note(errors, f"{timed_out} requests not done within {ctx.timeout}s")
    last_offset = None
    if last_body:
        try:
            last_offset = orjson.loads(last_body)["offset"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            _note(errors, f"bad 202 body {last_body[:200]!r}")
    if latencies and last_offset != n - 1 and not failures + timed_out:
        _note(errors, f"last answer's offset {last_offset}, expected {n - 1}")
    latencies.sort()
    wall = cpu["window_s"] or 0.0
    ok = len(latencies)

    def ms(value: float | None) -> float | None:
        return None if value is None else value * 1000.0

    return {
        "topic": topic,
        "requests": n,
        "ok": ok,
        "failures": failures + timed_out,
        "timed_out": timed_out,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "reconnects": client.reconnects - reconnects_before,
        "msg_per_s": ok / wall if wall > 0 else None,
        "p50_ms": ms(percentile(latencies, 50)),
        "p95_ms": ms(percentile(latencies, 95)),
        "p99_ms": ms(percentile(latencies, 99)),
        "max_ms": ms(latencies[-1] if latencies else None),
        "last_offset": last_offset,
        "errors": errors,
        **cpu,
    }


def _publish_plan(topic: str, messages: int, bulk: int) -> tuple[bytes, list[bytes], list[int]]:
    """(path, bodies, messages per body), built before the clock starts."""
    if bulk <= 1:
        bodies = [b'{"seq":%d,"source":"bench"}' % i for i in range(messages)]
        return f"/v1/topics/{topic}".encode(), bodies, [1] * messages
    bodies, sizes = [], []
    for first in range(0, messages, bulk):
        seqs = range(first, min(messages, first + bulk))
        batch = [{"topic": topic, "data": {"seq": i, "source": "bench"}} for i in seqs]
        bodies.append(orjson.dumps({"messages": batch}))
        sizes.append(len(batch))
    return b"/v1/publish", bodies, sizes


async def run_fanout(ctx: Context, run: int, bulk: int) -> dict[str, Any]:
    """S subscribers on one topic, M messages published as fast as possible."""
    subscribers, messages = ctx.args.subscribers, ctx.args.fanout_messages
    topic = ctx.topic("bulk" if bulk > 1 else "fanout", run)
    sep = "&" if "?" in ctx.ws.path else "?"
    subs = [
        WsSubscriber(ctx.ws.host, ctx.ws.port, f"{ctx.ws.path}{sep}topic={topic}&client=bench-{i}")
        for i in range(subscribers)
    ]
    errors: list[str] = []
    ready: list[WsSubscriber] = []

    async def connect(sub: WsSubscriber) -> None:
        try:
            await sub.connect()
            await sub.ping(1)
            ready.append(sub)
        except NET_ERRORS as exc:
            _note(errors, f"subscriber connect: {exc!r}")

    connect_started = time.perf_counter()
    with trio.move_on_after(ctx.timeout):
        async with trio.open_nursery() as nursery:
            for sub in subs:
                nursery.start_soon(connect, sub)
    connect_seconds = time.perf_counter() - connect_started
    if len(ready) < subscribers:
        _note(errors, f"only {len(ready)}/{subscribers} subscribers ready")

    path, bodies, sizes = _publish_plan(topic, messages, bulk)
    client = HttpClient(ctx.http.host, ctx.http.port)
    with trio.move_on_after(ctx.timeout):
        try:
            await client.connect()
        except OSError as exc:
            _note(errors, f"publisher connect: {exc!r}")
    accepted = pub_failures = 0
    pub_latencies: list[float] = []
    last_answer = b""

    async def read(scope: trio.CancelScope) -> None:
        with scope:
            try:
                await SubscriberGroup(ready).read_messages(messages)
            except NET_ERRORS as exc:
                _note(errors, f"subscriber read: {exc!r}")

    meter = ctx.meter()
    readers = trio.CancelScope()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(read, readers)
        await trio.sleep(0)
        meter.start()
        t0 = time.perf_counter()
        with trio.move_on_after(ctx.timeout):
            for body, size in zip(bodies, sizes, strict=True):
                sent = time.perf_counter()
                try:
                    status, answer = await client.request(b"POST", path, body)
                except NET_ERRORS as exc:
                    pub_failures += size
                    _note(errors, f"publish: {exc!r}")
                    continue
                pub_latencies.append(time.perf_counter() - sent)
                if status == 202:
                    accepted += size
                    last_answer = answer
                else:
                    pub_failures += size
                    _note(errors, f"publish {status}: {answer[:200]!r}")
        t_published = time.perf_counter()
        readers.deadline = trio.current_time() + ctx.delivery_timeout
    cpu = meter.stop()
    client.close()
    if accepted + pub_failures < messages:
        _note(errors, f"{messages - accepted - pub_failures} publishes not done in time")

    expected = subscribers * messages
    delivered = sum(sub.received for sub in subs)
    incomplete = []
    for index, sub in enumerate(subs):
        complete = (
            sub.received == messages
            and sub.first_offset == 0
            and sub.last_offset == messages - 1
            and sub.out_of_order == 0
        )
        if not complete or sub.others_seen:
            incomplete.append({
                "subscriber": index,
                "ready": sub in ready,
                "received": sub.received,
                "first_offset": sub.first_offset,
                "last_offset": sub.last_offset,
                "out_of_order": sub.out_of_order,
                "close_code": sub.close_code,
                "close_reason": sub.close_reason,
                "eof": sub.eof,
                "other_frames": sub.others[:3],
            })
    t_last = max((sub.t_last for sub in subs if sub.received), default=None)
    elapsed = None if t_last is None else t_last - t0

    with trio.move_on_after(3.0):
        async with trio.open_nursery() as nursery:
            for sub in subs:
                nursery.start_soon(sub.close)
    for sub in subs:  # any the timeout cut short
        sub.abort()

    last_offset = None
    if last_answer:
        try:
            answer = orjson.loads(last_answer)
            last_offset = (answer["results"][-1] if "results" in answer else answer)["offset"]
        except (orjson.JSONDecodeError, KeyError, TypeError, IndexError):
            _note(errors, f"bad 202 body {last_answer[:200]!r}")
    if accepted == messages and last_offset != messages - 1:
        _note(errors, f"last publish answer's offset {last_offset}, expected {messages - 1}")
    publish_s = t_published - t0
    pub_latencies.sort()
    return {
        "topic": topic,
        "subscribers": subscribers,
        "ready": len(ready),
        "messages": messages,
        "bulk": bulk,
        "requests": len(bodies),
        "connect_s": connect_seconds,
        "accepted": accepted,
        "publish_failures": pub_failures,
        "publish_msg_per_s": accepted / publish_s if publish_s > 0 else None,
        "publish_s": publish_s,
        "publish_p50_ms": None if not pub_latencies else percentile(pub_latencies, 50) * 1000,
        "last_publish_offset": last_offset,
        "expected": expected,
        "delivered": delivered,
        "delivered_pct": 100.0 * delivered / expected if expected else None,
        "complete_subscribers": subscribers - len(incomplete),
        "deliver_s": elapsed,
        "deliveries_per_s": delivered / elapsed if elapsed else None,
        "incomplete": incomplete[:10],
        "incomplete_count": len(incomplete),
        "errors": errors,
        **cpu,
    }


# -- driver and report -------------------------------------------------------------------

SCENARIOS = ("single", "fanout", "fanout-bulk")


async def run_all(ctx: Context) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in ctx.args.scenarios}
    for run in range(1, ctx.args.runs + 1):
        for name in ctx.args.scenarios:
            if name == "single":
                result = await run_single(ctx, run)
            elif name == "fanout":
                result = await run_fanout(ctx, run, bulk=1)
            else:
                result = await run_fanout(ctx, run, bulk=ctx.args.bulk_size)
            results[name].append(result)
            print(f"  run {run} {name}: done", file=sys.stderr, flush=True)
            await trio.sleep(0.3)  # let the broker finish tearing down connections
    return results


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median of every numeric field present in all runs; totals for counts of loss."""
    out: dict[str, Any] = {}
    for key, value in runs[0].items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        values = [r[key] for r in runs if isinstance(r.get(key), int | float)]
        if len(values) == len(runs):
            out[key] = statistics.median(values)
    for key in ("failures", "delivered", "expected", "publish_failures", "incomplete_count"):
        if key in runs[0]:
            out[f"total_{key}"] = sum(r[key] for r in runs)
    return out


def _fmt(value: Any, spec: str = ".0f") -> str:
    if value is None:
        return "-"
    if isinstance(value, float | int):
        return format(value, spec)
    return str(value)


def print_table(meta: dict[str, Any], results: dict[str, list[dict[str, Any]]],
                medians: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"python {meta['python']} | {meta['cpu_count']} cpus | commit {meta['git_commit']} "
        f"| broker pid {meta['broker']['pid']} cores {meta['broker']['cores']} "
        f"| load generator cores {meta['load_generator']['cores']}"
    )

    def cpu(r: dict[str, Any]) -> str:
        gen, broker = r.get("gen_cpu_pct"), r.get("broker_cpu_pct")
        return f"{_fmt(gen) + '%' if gen is not None else '-':>7} " + (
            f"{_fmt(broker) + '%' if broker is not None else '-':>7}"
        )

    if "single" in results:
        print(f"\nsingle: {args.messages} sequential POSTs, one keep-alive connection")
        print(f"{'run':>6} {'msg/s':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
              f"{'max ms':>7} {'fail':>5} {'gen%':>7} {'broker%':>7}")
        rows = [(str(i), r) for i, r in enumerate(results["single"], 1)]
        rows.append(("median", medians["single"]))
        for label, r in rows:
            print(
                f"{label:>6} {_fmt(r.get('msg_per_s')):>8} {_fmt(r.get('p50_ms'), '.2f'):>7} "
                f"{_fmt(r.get('p95_ms'), '.2f'):>7} {_fmt(r.get('p99_ms'), '.2f'):>7} "
                f"{_fmt(r.get('max_ms'), '.1f'):>7} "
                f"{_fmt(r.get('total_failures', r.get('failures'))):>5} {cpu(r)}"
            )
    for name in ("fanout", "fanout-bulk"):
        if name not in results:
            continue
        how = "single POSTs" if name == "fanout" else f"bulk POSTs of {args.bulk_size}"
        print(f"\n{name}: {args.subscribers} subscribers x {args.fanout_messages} messages, "
              f"{how}")
        print(f"{'run':>6} {'deliv/s':>8} {'deliv s':>7} {'pub/s':>7} {'pub s':>6} "
              f"{'delivered/expected':>20} {'bad subs':>8} {'gen%':>7} {'broker%':>7}")
        rows = [(str(i), r) for i, r in enumerate(results[name], 1)]
        rows.append(("median", medians[name]))
        for label, r in rows:
            delivered = r.get("total_delivered", r.get("delivered"))
            expected = r.get("total_expected", r.get("expected"))
            pct = 100.0 * delivered / expected if expected else 0.0
            bad = r.get("total_incomplete_count", r.get("incomplete_count"))
            print(
                f"{label:>6} {_fmt(r.get('deliveries_per_s')):>8} "
                f"{_fmt(r.get('deliver_s'), '.3f'):>7} {_fmt(r.get('publish_msg_per_s')):>7} "
                f"{_fmt(r.get('publish_s'), '.3f'):>6} "
                f"{f'{delivered}/{expected} {pct:.1f}%':>20} {_fmt(bad):>8} {cpu(r)}"
            )
    print(
        "\ndeliv/s = subscribers x messages / (first publish -> last frame received by all);"
        "\ngen% / broker%: CPU time of the load generator / the broker over the run's wall"
        " time (100% = one\ncore busy throughout). Median rows: medians, except fail,"
        " delivered/expected and bad subs,\nwhich are totals over all runs."
    )


def problems_of(results: dict[str, list[dict[str, Any]]], broker: dict[str, Any]) -> list[str]:
    """Everything that should not happen: failures, losses, errors, an unclean exit."""
    problems = []
    for name, runs in results.items():
        for i, r in enumerate(runs, 1):
            where = f"{name} run {i}"
            if r.get("failures"):
                problems.append(f"{where}: {r['failures']} failed publishes")
            if r.get("publish_failures"):
                problems.append(f"{where}: {r['publish_failures']} messages not accepted")
            if "expected" in r and (r["delivered"] != r["expected"] or r["incomplete_count"]):
                problems.append(
                    f"{where}: delivered {r['delivered']}/{r['expected']}, "
                    f"{r['incomplete_count']} subscribers incomplete, e.g. {r['incomplete'][:2]}"
                )
            if r.get("errors"):
                problems.append(f"{where}: {r['errors']}")
    problems += stop_problems(broker)
    if broker.get("stderr_problem_count"):
        problems.append(
            f"broker stderr has {broker['stderr_problem_count']} warning/error lines "
            f"({broker.get('stderr_log')}), e.g. {broker['stderr_problems'][:5]}"
        )
    return problems


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quick", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1, help="runs of each scenario (default 1)")
    parser.add_argument("--json", metavar="PATH", help="write all results as JSON to PATH")
    parser.add_argument("--url", help="use a running broker's HTTP gateway (http://HOST:PORT)")
    parser.add_argument("--ws-url", help="...and its WebSocket endpoint (ws://HOST:PORT/v1/ws)")
    parser.add_argument("--broker-pid", type=int,
                        help="with --url: the broker's pid, to report its CPU time")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS))
    parser.add_argument("-n", "--messages", type=int, default=3000,
                        help="single: sequential publishes (default 3000)")
    parser.add_argument("-s", "--subscribers", type=int, default=100,
                        help="fanout: subscribers (default 100)")
    parser.add_argument("-m", "--fanout-messages", type=int, default=200,
                        help="fanout: messages (default 200)")
    parser.add_argument("--bulk-size", type=int, default=50,
                        help="fanout-bulk: messages per request (default 50)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="bound on each phase: connecting, publishing (default 30 s)")
    parser.add_argument("--delivery-timeout", type=float, default=5.0,
                        help="how long subscribers wait after the last publish (default 5 s)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    if bool(args.url) != bool(args.ws_url):
        parser.error("--url and --ws-url go together")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    available, broker_core, gen_core = pick_cores(not args.no_pin)
    if args.url:
        broker_core = None  # not ours to pin; we still keep to the last core
    broker: BrokerProcess | None = None
    if args.url:
        http_url, ws_url, broker_pid = args.url, args.ws_url, args.broker_pid
    else:
        broker = BrokerProcess(broker_core, startup_timeout=30.0)
        http_url, ws_url, broker_pid = broker.http_url, broker.ws_url, broker.pid
        print(f"broker started in {broker.startup_seconds:.2f}s: {http_url} {ws_url}",
              file=sys.stderr)
    if gen_core is not None:
        os.sched_setaffinity(0, {gen_core})
    broker_report: dict[str, Any] = {"pid": broker_pid, "external": broker is None}
    meta: dict[str, Any] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "cpu_count": os.cpu_count(),
        "cpus_available": available,
        "platform": platform.platform(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "broker": {
            "pid": broker_pid,
            "http_url": http_url,
            "ws_url": ws_url,
            "cores": broker.affinity() if broker else None,
        },
        "load_generator": {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0))},
    }
    meta["git_commit"], meta["git_dirty"] = git_commit()
    ctx = Context(args, Endpoint.parse(http_url), Endpoint.parse(ws_url), broker_pid)
    total = CpuMeter(broker_pid)
    total.start()
    try:
        results = trio.run(run_all, ctx)
    finally:
        meta["totals"] = total.stop()
        if broker is not None:
            broker_report.update(broker.stop())
    meta["broker"]["shutdown"] = broker_report
    medians = {name: median_of(runs) for name, runs in results.items()}
    print_table(meta, results, medians, args)
    problems = problems_of(results, broker_report)
    if broker is not None:
        print(f"broker: SIGTERM -> exit {broker_report.get('exit_code')} in "
              f"{broker_report.get('stop_seconds')}s, "
              f"{broker_report.get('stderr_problem_count')} warning/error lines on stderr")
    if problems:
        print("\nPROBLEMS:")
        for problem in problems:
            print(f"  - {problem}")
    if args.json:
        params = {k: v for k, v in vars(args).items() if k != "json"}
        document = {"meta": meta, "params": params, "medians": medians, "runs": results,
                    "problems": problems}
        Path(args.json).write_text(json.dumps(document, indent=2, default=str) + "\n")
        print(f"\nresults written to {args.json}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
