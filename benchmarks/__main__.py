"""The benchmark suite: every scenario from one entry point, or any of them alone.

    python -m benchmarks [SCENARIO ...] [--quick] [--runs N] [--target broker|fastapi|both]
                         [--url URL --ws-url WSURL [--server-pid PID]] [--out DIR]
                         [--compare OLD.json [--against NEW.json] [--fail-on-regression]]
                         [--max-level NAME]

Without `--url`, each target's server is started here (`benchmarks.baselines.TARGETS`, or
the broker's `serve`), pinned to the first core while this load generator keeps to the last;
both processes' CPU is reported per case. Writes `<out>/<timestamp>.json` (every run's
figures and their medians), `<timestamp>.md` (the tables) and `<timestamp>-*.png` (plots).
Exit status 1 if the broker lost a message or a request failed (or, with
`--fail-on-regression`, if a figure is more than 10% worse than in OLD.json), else 0.
`--compare OLD.json --against NEW.json` compares two result files and runs nothing.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import compare, report, results
from .process import pick_cores, raise_open_files_limit
from .progress import ProgressReporter
from .scenarios import LEVEL_NAMES, QUICK, SCENARIOS, Sizes
from .suite import SuiteOptions, pin_generator, run_target, target_commands

DEFAULT_OUT = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="scenarios: " + "; ".join(f"{s.name}: {s.summary}" for s in SCENARIOS.values()))
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"any of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, 1 run, levels up to medium (the CI smoke run)")
    parser.add_argument("--runs", type=int, help="runs per scenario (default 3, quick 1)")
    parser.add_argument("--target", choices=("broker", "fastapi", "both"), default="broker")
    parser.add_argument("--url", help="use a running server's HTTP gateway (http://HOST:PORT)")
    parser.add_argument("--ws-url", help="...and its WebSocket endpoint (ws://HOST:PORT/v1/ws)")
    parser.add_argument("--server-pid", type=int,
                        help="with --url: the server's pid, for its CPU and RSS")
    parser.add_argument("--max-level", choices=(*LEVEL_NAMES, "max"),
                        help="last load level (default: all; --quick: medium)")
    parser.add_argument("--mixed-rate", type=float, help="mixed: operations/s (default 100)")
    parser.add_argument("--mixed-seconds", type=float,
                        help="mixed: duration (default 30, quick 5)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="directory for the result files (default benchmarks/results)")
    parser.add_argument("--compare", type=Path, metavar="OLD.json",
                        help="print new/old for every figure of an earlier result file")
    parser.add_argument("--against", type=Path, metavar="NEW.json",
                        help="with --compare: compare this earlier result file instead of "
                             "running anything")
    parser.add_argument("--fail-on-regression", action="store_true",
                        help="with --compare: exit 1 if a figure is >10%% worse")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="bound on each phase: connecting, publishing (default 30 s)")
    parser.add_argument("--delivery-timeout", type=float, default=5.0,
                        help="how long subscribers wait after the last publish (default 5 s)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    args = parser.parse_args(argv)
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; choose from {list(SCENARIOS)}")
    if bool(args.url) != bool(args.ws_url):
        parser.error("--url and --ws-url go together")
    if args.url and args.target == "both":
        parser.error("--url names one running server: --target broker or fastapi")
    if args.runs is not None and args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.against and not args.compare:
        parser.error("--against needs --compare")
    if args.fail_on_regression and not args.compare:
        parser.error("--fail-on-regression needs --compare")
    return args


def sizes_for(args: argparse.Namespace) -> Sizes:
    sizes = QUICK if args.quick else Sizes()
    if args.max_level:
        sizes = replace(sizes, max_level=args.max_level)
    if args.mixed_rate:
        sizes = replace(sizes, mixed_rate=args.mixed_rate)
    if args.mixed_seconds:
        sizes = replace(sizes, mixed_seconds=args.mixed_seconds)
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    old = results.load(args.compare) if args.compare else None  # fail early on a bad file
    if old is not None and args.against:
        return report_changes(old, results.load(args.against), args)
    runs = args.runs or (1 if args.quick else 3)
    names = args.scenarios or [s.name for s in SCENARIOS.values()
                               if s.in_quick or not args.quick]
    commands = target_commands()
    wanted = ["broker", "fastapi"] if args.target == "both" else [args.target]
    missing = [t for t in wanted if t not in commands and not args.url]
    if missing:
        print(f"no server command for target(s) {missing}: benchmarks.baselines.TARGETS "
              f"has {list(commands)}", file=sys.stderr)
        return 2
    soft, hard = raise_open_files_limit()
    available, server_core, gen_core = pick_cores(not args.no_pin)
    if args.url:
        server_core = None  # not ours to pin; we still keep to the last core
    pin_generator(gen_core)
    sizes = sizes_for(args)
    options = SuiteOptions(
        scenarios=names, runs=runs, sizes=sizes, timeout=args.timeout,
        delivery_timeout=args.delivery_timeout, server_core=server_core, url=args.url,
        ws_url=args.ws_url, server_pid=args.server_pid)
    pinning = {"available": available, "server_core": server_core, "generator_core": gen_core,
               "nofile": [soft, hard]}
    meta = results.host_meta(sizes, runs, args.quick, names, pinning)
    targets = {}
    with ProgressReporter() as progress:
        for target in wanted:
            targets[target] = run_target(target, commands.get(target), options, progress)
    doc = results.document(meta, targets)
    json_path = results.write(doc, args.out)
    text = report.markdown(doc)
    md_path = json_path.with_suffix(".md")
    md_path.write_text(text)
    try:
        plots = ", ".join(str(p) for p in report.plot(doc, args.out, json_path.stem))
    except ImportError:  # matplotlib comes with the `bench` (and `test`) extra
        plots = "none: pip install -e '.[bench]' for the PNG plots"
    print(text)
    print(f"results: {json_path}\nreport:  {md_path}\nplots:   {plots}")
    code = 1 if targets.get("broker", {}).get("problems") else 0
    if old is not None:
        code = max(code, report_changes(old, doc, args))
    return code


def report_changes(old: dict[str, Any], new: dict[str, Any], args: argparse.Namespace) -> int:
    """Print new/old for every shared figure; 1 only if regressions should fail the run."""
    changes = compare.compare(old, new)
    print(f"\ncompared with {args.compare}:\n{compare.render(changes)}")
    return 1 if args.fail_on_regression and any(c.regression for c in changes) else 0


if __name__ == "__main__":
    sys.exit(main())
