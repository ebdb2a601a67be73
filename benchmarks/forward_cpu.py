"""Broker CPU per delivery on the fan-out path alone, in one process: low-noise.

    python -m benchmarks.forward_cpu [--subscribers 1000] [--messages 100] [--bulk 50]

A real `open_broker` with N subscribers whose outboxes write to real (AF_UNIX) sockets
through the same non-blocking path the WebSocket gateway uses; M messages published as
bulk batches of B; `time.process_time()` around publish -> every outbox written. No HTTP,
no WebSocket parsing, no load generator: only the topic, the outboxes and the write
syscalls, so the figure moves with our code and barely with a busy machine (the
end-to-end figures of `python -m benchmarks fanout` are far noisier on a shared box).
Reports the median of `--repeat` rounds as deliveries per CPU second.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable

import trio

from broker import Outbox, Settings, Subscriber, open_broker
from gateways.websocket import render_json


def _writer(fd: int) -> Callable[[bytes], int]:
    return lambda data: os.write(fd, data)


def _drain(sock: socket.socket) -> None:
    while True:
        try:
            if not sock.recv(1 << 20, socket.MSG_DONTWAIT):
                return
        except BlockingIOError:
            return


async def measure(subscribers: int, messages: int, bulk: int, repeat: int) -> list[float]:
    """CPU seconds of each round (all messages to all subscribers, written to sockets)."""
    rounds: list[float] = []
    async with open_broker(Settings(topic_idle_seconds=0)) as broker:
        pairs = [socket.socketpair() for _ in range(subscribers)]
        try:
            for n, (ours, _) in enumerate(pairs):
                ours.setblocking(False)
                ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
                outbox = Outbox(4096, render_json, broker.counters, _writer(ours.fileno()))
                await broker.subscribe(Subscriber(n + 1, "", outbox, lambda _: None), "t")
            payloads = [
                broker.payload(b'{"n":%d,"pad":"%s"}' % (n, b"x" * 60), "application/json")
                for n in range(messages)
            ]
            expected = 0
            for _ in range(repeat):
                started = time.process_time()
                for first in range(0, messages, bulk):
                    await broker.publish_many([("t", p) for p in payloads[first:first + bulk]])
                await broker.flush()
                rounds.append(time.process_time() - started)
                expected += messages * subscribers
                for _, theirs in pairs:
                    _drain(theirs)
            if broker.counters.delivered != expected:
                raise SystemExit(f"delivered {broker.counters.delivered}, expected {expected}")
        finally:
            for ours, theirs in pairs:
                ours.close()
                theirs.close()
    return rounds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.forward_cpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-s", "--subscribers", type=int, default=1000)
    parser.add_argument("-m", "--messages", type=int, default=100)
    parser.add_argument("-b", "--bulk", type=int, default=50)
    parser.add_argument("-r", "--repeat", type=int, default=11)
    args = parser.parse_args(argv)
    rounds = trio.run(measure, args.subscribers, args.messages, args.bulk, args.repeat)
    median = statistics.median(rounds)
    deliveries = args.subscribers * args.messages
    print(f"{args.subscribers} subscribers x {args.messages} messages in batches of "
          f"{args.bulk}: median {median * 1000:.1f} ms CPU per round "
          f"({deliveries / median:,.0f} deliveries per CPU second), every frame written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
