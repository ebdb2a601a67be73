"""Publishing for the benchmarks: request bodies built before the clock starts, a
sequential publisher on one lean keep-alive connection, and the same publisher in a
process of its own (`python -m benchmarks.publisher`), so back-to-back publishing does not
wait behind the subscribers' reading in the suite's process.

The subprocess prints one JSON object; its times are `time.monotonic()` (CLOCK_MONOTONIC,
system-wide on Linux), which the suite converts to its own `perf_counter` timeline.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
import trio

from .lean import Endpoint, HttpClient, ProtocolError

NET_ERRORS = (OSError, ProtocolError, ValueError, KeyError)
MAX_ERRORS = 10
# Requests the publisher subprocess sends to another topic before its clock starts.
WARMUP_REQUESTS = 50


def single_bodies(count: int, start: int = 0) -> list[bytes]:
    """Small JSON payloads, one per single publish."""
    return [b'{"seq":%d,"source":"bench"}' % i for i in range(start, start + count)]


def bulk_bodies(messages: list[tuple[str, int]], bulk: int) -> tuple[list[bytes], list[int]]:
    """`POST /v1/publish` bodies of up to `bulk` (topic, seq) messages each, and their sizes."""
    bodies, sizes = [], []
    for first in range(0, len(messages), bulk):
        batch = [{"topic": t, "data": {"seq": s, "source": "bench"}}
                 for t, s in messages[first:first + bulk]]
        bodies.append(orjson.dumps({"messages": batch}))
        sizes.append(len(batch))
    return bodies, sizes


@dataclass
class PublishOutcome:
    """What a sequential publisher achieved; times on the perf_counter timeline."""

    accepted: int = 0
    failures: int = 0
    requests: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, accepted requests
    t_first: float | None = None  # first request sent
    t_last: float | None = None  # last answer read
    last_answer: bytes = b""
    errors: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(what)


async def publish_sequentially(
    client: HttpClient, path: bytes, bodies: list[bytes], sizes: list[int] | None,
    timeout: float, outcome: PublishOutcome | None = None, until: float | None = None,
) -> PublishOutcome:
    """Send `bodies` one after another (cycling through them until `until`, a perf_counter
    time, when given). Messages not answered 202 count as failures; bounded by `timeout`."""
    out = outcome or PublishOutcome()
    sizes = sizes or [1] * len(bodies)
    with trio.move_on_after(timeout) as scope:
        index = 0
        while index < len(bodies) or until is not None:
            if until is not None and time.perf_counter() >= until:
                break
            body, size = bodies[index % len(bodies)], sizes[index % len(bodies)]
            index += 1
            sent = time.perf_counter()
            if out.t_first is None:
                out.t_first = sent
            out.requests += 1
            try:
                status, answer = await client.request(b"POST", path, body)
            except NET_ERRORS as exc:
                out.failures += size
                out.note(f"publish: {exc!r}")
                continue
            out.t_last = time.perf_counter()
            if status == 202:
                out.accepted += size
                out.latencies.append(out.t_last - sent)
                out.last_answer = answer
            else:
                out.failures += size
                out.note(f"publish {status}: {answer[:200]!r}")
    if scope.cancelled_caught and until is None:
        left = sum(sizes) - out.accepted - out.failures
        out.failures += left
        out.note(f"{left} messages not published within {timeout}s")
    return out


async def publish_from_subprocess(
    url: str, topic: str, count: int, timeout: float, seconds: float | None = None,
) -> dict[str, Any]:
    """Run `python -m benchmarks.publisher` (single publishes of `count` messages, or flat
    out for `seconds`) and return its result with times moved to our perf_counter."""
    argv = [sys.executable, "-m", "benchmarks.publisher", "--url", url, "--topic", topic,
            "--count", str(count), "--timeout", str(timeout)]
    if seconds is not None:
        argv += ["--seconds", str(seconds)]
    with trio.fail_after(timeout + 30.0):
        done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True,
                                      check=False)
    if done.returncode != 0:
        raise RuntimeError(f"publisher exited {done.returncode}: {done.stderr[-1000:]!r}")
    result: dict[str, Any] = orjson.loads(done.stdout)
    shift = time.perf_counter() - time.monotonic()
    for key in ("t_first", "t_last"):
        if result.get(key) is not None:
            result[key] += shift
    return result


async def _child(args: argparse.Namespace) -> dict[str, Any]:
    http = Endpoint.parse(args.url)
    client = HttpClient(http.host, http.port)
    try:
        await client.connect()
        warm_up = f"/v1/topics/{args.topic}.warmup".encode()
        for body in single_bodies(WARMUP_REQUESTS):  # connection and code paths: not timed
            await client.request(b"POST", warm_up, body)
        until = None if args.seconds is None else time.perf_counter() + args.seconds
        bodies = single_bodies(args.count)
        outcome = await publish_sequentially(
            client, f"/v1/topics/{args.topic}".encode(), bodies, None, args.timeout,
            until=until)
    finally:
        client.close()
    shift = time.monotonic() - time.perf_counter()
    return {
        "accepted": outcome.accepted,
        "failures": outcome.failures,
        "requests": outcome.requests,
        "latencies": outcome.latencies,
        "t_first": None if outcome.t_first is None else outcome.t_first + shift,
        "t_last": None if outcome.t_last is None else outcome.t_last + shift,
        "last_answer": outcome.last_answer.decode(errors="replace"),
        "errors": outcome.errors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.publisher")
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    result = trio.run(_child, args)
    sys.stdout.buffer.write(orjson.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
