"""`broker serve|pub|sub|bench`: the command line.

`serve` runs the broker (on top of `serve` and `load_settings`); `pub` and `sub` are thin
commands over the public client (`gateways.client`); `bench` makes this process
`python -m benchmarks` (the suite is not imported here: nothing in gateways/ imports
benchmarks/). Exit codes: 0 done, 1 the broker failed us (unreachable, refused, closed),
2 bad usage.
"""

from __future__ import annotations

import argparse
import base64
import gc
import importlib.util
import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import cbor2
import orjson
import trio

from broker import SETTING_NAMES, BrokerError, Settings, load_settings

from .client import (
    DEFAULT_HTTP_URL,
    DEFAULT_TIMEOUT,
    DEFAULT_WS_URL,
    ClientError,
    Gap,
    Message,
    open_client,
)
from .serve import Addresses, serve

log = logging.getLogger("broker.cli")


# The settings `serve` has a flag of its own for; the others get a generic one.
_SERVE_FLAGS = ("host", "port", "ws_port", "log_level")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broker", description="A message broker on trio.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("serve", help="run the broker (HTTP publish, WebSocket fan-out)")
    run.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    run.add_argument("--port", type=int, help="HTTP port (default 8080; 0 picks a free one)")
    run.add_argument("--ws-port", type=int, dest="ws_port",
                     help="WebSocket port (default 8081; 0 picks a free one)")
    run.add_argument("--config", help="TOML configuration file")
    run.add_argument("--log-level", dest="log_level",
                     choices=["debug", "info", "warning", "error"], help="default info")
    for name in SETTING_NAMES:  # every other setting too, e.g. --max-payload-bytes 1000
        if name not in _SERVE_FLAGS:
            run.add_argument("--" + name.replace("_", "-"), dest=name, metavar="VALUE",
                             help=f"setting {name} (README: Configuration)")
    _add_pubsub_commands(commands)
    commands.add_parser(
        "bench", add_help=False,
        help="run the benchmark suite: python -m benchmarks (`broker bench --help` for "
        "its options)",
    )
    return parser


def _add_pubsub_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    pub = commands.add_parser("pub", help="publish a message (prints its offset)")
    pub.add_argument("topic", metavar="TOPIC")
    pub.add_argument("data", metavar="DATA",
                     help="a JSON value; anything that does not parse goes as a JSON string")
    pub.add_argument("--url", default=os.environ.get("BROKER_URL", DEFAULT_HTTP_URL),
                     help=f"HTTP gateway (default $BROKER_URL or {DEFAULT_HTTP_URL})")
    pub.add_argument("--cbor", action="store_true", help="send the value as CBOR")
    pub.add_argument("--count", type=_positive, default=1,
                     help="publish it this many times (one line per offset)")
    pub.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                     help=f"seconds per request (default {DEFAULT_TIMEOUT:g})")

    sub = commands.add_parser(
        "sub", help="print messages as JSON lines: {topic, offset, data}; gaps as "
        "{gap: {topic, skipped, from, to}}",
    )
    sub.add_argument("topics", nargs="+", metavar="TOPIC", help="topics or patterns (*, >)")
    sub.add_argument("--ws-url", dest="ws_url",
                     default=os.environ.get("BROKER_WS_URL", DEFAULT_WS_URL),
                     help=f"WebSocket endpoint (default $BROKER_WS_URL or {DEFAULT_WS_URL})")
    sub.add_argument("--from", dest="start", type=_start, default=None,
                     help="earliest, latest (default) or an offset")
    sub.add_argument("--count", type=_positive, default=None,
                     help="exit 0 after this many messages")
    sub.add_argument("--cbor", action="store_true", help="use the broker.v1.cbor subprotocol")
    sub.add_argument("--name", help="client name shown in presence listings")
    sub.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                     help=f"seconds to connect and subscribe (default {DEFAULT_TIMEOUT:g})")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _start(text: str) -> str | int:
    if text in ("earliest", "latest"):
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("earliest, latest or an offset") from None
    if value < 0:
        raise argparse.ArgumentTypeError("an offset is 0 or more")
    return value


def parse_data(text: str) -> Any:
    """DATA as given on the command line: its JSON value if it parses, else the string."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _json_default(value: Any) -> Any:
    """JSON for what CBOR can carry and JSON cannot (byte strings as in API.md, tags)."""
    if isinstance(value, bytes | bytearray):
        return {"base64": base64.b64encode(value).decode()}
    if isinstance(value, cbor2.CBORTag):
        return {"tag": value.tag, "value": value.value}
    return repr(value)


def item_line(item: Message | Gap) -> bytes:
    """One output line of `broker sub` (with its newline)."""
    if isinstance(item, Message):
        document: dict[str, Any] = {"topic": item.topic, "offset": item.offset, "data": item.data}
    else:
        document = {"gap": {"topic": item.topic, "skipped": item.skipped, "from": item.first,
                            "to": item.last}}
    return orjson.dumps(document, default=_json_default, option=orjson.OPT_APPEND_NEWLINE
                        | orjson.OPT_NON_STR_KEYS)


def _fail(command: str, error: ClientError) -> int:
    status = f" ({error.status})" if error.status is not None else ""
    print(f"broker {command}: {error.code}{status}: {error.message}", file=sys.stderr)
    return 1


async def _publish(args: argparse.Namespace) -> int:
    """`broker pub`: DATA `--count` times on one keep-alive connection, one offset a line."""
    data = parse_data(args.data)
    async with open_client(http_url=args.url, timeout=args.timeout) as client:
        for _ in range(args.count):
            offset = await client.publish(args.topic, data, cbor=args.cbor)
            print(offset, flush=True)
    return 0


async def _subscribe(args: argparse.Namespace) -> int:
    """`broker sub`: a JSON line per item, flushed at once (`| jq` and `| head` see each);
    `subscribed to ...` on stderr once every subscription is in effect."""
    out = sys.stdout.buffer
    received = 0
    async with open_client(ws_url=args.ws_url, timeout=args.timeout) as client, \
            client.subscribe(*args.topics, from_=args.start, name=args.name,
                             format="cbor" if args.cbor else "json") as subscription:
        for topic, ok in subscription.subscribed.items():
            print(f"broker sub: subscribed to {topic} (next offset {ok.get('next_offset')})",
                  file=sys.stderr, flush=True)
        async for item in subscription:
            out.write(item_line(item))
            out.flush()
            if isinstance(item, Message):
                received += 1
                if args.count is not None and received >= args.count:
                    return 0
    print("broker sub: the broker closed the connection", file=sys.stderr)
    return 1


def _run_client_command(command: str, run: Any, args: argparse.Namespace) -> int:
    """Run `pub`/`sub`: ClientError -> exit 1 with its message; Ctrl-C and a closed
    stdout (`| head`) -> exit 0."""
    try:
        return trio.run(run, args)
    except ClientError as exc:
        return _fail(command, exc)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # Whoever read our output has gone: stop quietly, and keep Python's own flush at
        # exit from complaining about the closed pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


# The benchmark suite's package, run by name (`broker bench`): never imported here.
BENCHMARKS = "benchmarks"


def _bench(argv: list[str]) -> int:
    """Become `python -m benchmarks ARGV` (what the `broker-bench` command runs too): the
    same interpreter, environment and working directory, its exit status ours. Exit 2
    with a message, and no exec, if the suite is not installed."""
    if importlib.util.find_spec(BENCHMARKS) is None:
        print(
            "broker bench: the benchmark suite is not available; install the project "
            "with its `bench` extra from a source checkout",
            file=sys.stderr,
        )
        return 2
    sys.stdout.flush()  # what is buffered would be lost with this process's image
    sys.stderr.flush()
    os.execv(sys.executable, [sys.executable, "-m", BENCHMARKS, *argv])


# CPython's collector, tuned for the `broker serve` process (embedders calling `serve()`
# keep their own settings). The start-up heap (modules, the app) is frozen out of full
# collections, and the youngest generation is collected every 7,000 net allocations, not
# 700: a publish or a connection makes many short-lived objects that reference counting
# frees anyway. Measured: a broker that had run the `levels` ladder answered single
# publishes 22% slower than a fresh one; with this, as fast (3,211 -> 3,191 msg/s).
GC_THRESHOLDS = (7000, 10, 10)


def _tune_gc() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def _serve_until_signalled(settings: Settings) -> int:
    """Serve; the first SIGINT/SIGTERM drains (exit 0), a second one exits at once (1)."""
    stop = trio.Event()
    forced = False
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def watch_signals() -> None:
                nonlocal forced
                async for signum in signals:
                    if not stop.is_set():
                        log.info("%s: draining (send it again to exit at once)",
                                 signal.Signals(signum).name)
                        stop.set()
                    else:
                        forced = True
                        nursery.cancel_scope.cancel()
                        return

            async def run(*, task_status: trio.TaskStatus[Addresses]) -> None:
                await serve(settings, stop, task_status=task_status)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            addresses = await nursery.start(run)
            _tune_gc()
            print(addresses.listening_line(), flush=True)
    return 1 if forced else 0


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["bench"]:  # everything after it is the suite's own
        return _bench(arguments[1:])
    args = _parser().parse_args(arguments)
    if args.command == "pub":
        return _run_client_command("pub", _publish, args)
    if args.command == "sub":
        return _run_client_command("sub", _subscribe, args)
    if args.command == "serve":
        flags = {name: getattr(args, name) for name in SETTING_NAMES}
        try:
            settings = load_settings(flags, config_path=args.config)
        except BrokerError as exc:
            print(f"broker: {exc.message}", file=sys.stderr)
            return 2
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        )
        try:
            return trio.run(_serve_until_signalled, settings)
        except (OSError, ExceptionGroup) as exc:
            error = _os_error(exc)
            if error is None:
                raise
            print(f"broker: cannot listen: {error}", file=sys.stderr)
            return 1
    return 2


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind `exc` (nurseries wrap it in exception groups) when that is all
    it is, e.g. a port in use: one line for the user, not a traceback."""
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(OSError)
        if matched is None or rest is not None:
            return None
        first: BaseException = matched
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        exc = first
    return exc if isinstance(exc, OSError) else None


if __name__ == "__main__":
    sys.exit(main())
