"""`python -m benchmarks.soak`: the flags, starting (or using) the broker, the bounded run,
the report and the exit status. What the soak does is the package docstring.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
from typing import Any

import trio

from ..lean import (
    Endpoint,
)
from ..process import (
    BrokerProcess,
    git_commit,
    pick_cores,
)
from . import __doc__ as SOAK_DOC
from .errors import _note
from .load import Soak
from .report import report

CONFIG_TOML = """\
[topics."soak.drop.>"]
slow_consumer_policy = "drop-oldest"
[topics."soak.block.>"]
slow_consumer_policy = "block"
"""


# -- main ----------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=SOAK_DOC,
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
