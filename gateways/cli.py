"""`broker serve`: the command line, on top of `serve` and `load_settings`."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import trio

from broker import BrokerError, Settings, load_settings

from .serve import serve

log = logging.getLogger("broker.cli")


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
    return parser


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

            async def run(*, task_status: trio.TaskStatus[object]) -> None:
                await serve(settings, stop, task_status=task_status)
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_signals)
            addresses = await nursery.start(run)
            print(addresses.listening_line(), flush=True)  # type: ignore[attr-defined]
    return 1 if forced else 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "serve":
        flags = {
            "host": args.host, "port": args.port, "ws_port": args.ws_port,
            "log_level": args.log_level,
        }
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
        except OSError as exc:
            print(f"broker: cannot listen: {exc}", file=sys.stderr)
            return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
