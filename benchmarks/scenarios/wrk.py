"""`wrk`: HTTP publishes driven by wrk (the C load generator), 16 keep-alive connections.

A second view of publish speed that does not depend on our own Python client: `single`
measures one sequential connection as a Python client sees it; here wrk keeps 16
connections busy for a few seconds and reports what the server sustains. Runs only where
`wrk` is on the PATH (Debian's package `wrk`); elsewhere the case says why (`na`).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import trio

from .context import ScenarioContext

CONNECTIONS = 16
# The request every connection repeats: a small JSON publish.
SCRIPT = """wrk.method = "POST"
wrk.body = '{"price":1.25,"sym":"ABC"}'
wrk.headers["Content-Type"] = "application/json"
"""
_RATE = re.compile(r"Requests/sec:\s+([0-9.]+)")
_PERCENTILE = re.compile(r"^\s+(50|90|99)(?:\.000)?%\s+([0-9.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def parse_wrk(output: str) -> dict[str, Any]:
    """The figures of wrk's `--latency` report: requests/s, p50/p90/p99 in ms, failures."""
    figures: dict[str, Any] = {}
    rate = _RATE.search(output)
    figures["requests_per_s"] = float(rate.group(1)) if rate else None
    for percentile, value, unit in _PERCENTILE.findall(output):
        figures[f"p{percentile}_ms"] = float(value) * _UNIT_MS[unit]
    failures = 0
    non_2xx = _NON_2XX.search(output)
    if non_2xx:
        failures += int(non_2xx.group(1))
    errors = _SOCKET_ERRORS.search(output)
    if errors:
        failures += sum(int(n) for n in errors.groups())
    figures["failures"] = failures
    return figures


async def run_wrk(ctx: ScenarioContext, run: int) -> dict[str, dict[str, Any]]:
    wrk = shutil.which("wrk")
    if wrk is None:
        return {"wrk": {"na": "wrk is not installed (Debian: apt-get install wrk)"}}
    seconds = max(1, round(ctx.sizes.wrk_seconds))
    url = f"{ctx.http_url}/v1/topics/{ctx.topic('wrk', run)}"
    ctx.progress.begin(f"wrk {CONNECTIONS} connections, {seconds} s", 1)
    with tempfile.TemporaryDirectory() as folder:
        script = Path(folder) / "publish.lua"
        script.write_text(SCRIPT)
        meter = ctx.meter()
        meter.start()
        # The generator's core affinity is inherited: wrk runs where the suite runs.
        done = await trio.run_process(
            [wrk, "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "--latency", "-s", str(script),
             url],
            capture_stdout=True, capture_stderr=True, check=False,
        )
        cpu = meter.stop()
    output = done.stdout.decode(errors="replace")
    figures = {**parse_wrk(output), **cpu, "errors": []}
    if done.returncode != 0 or figures["requests_per_s"] is None:
        figures["failures"] = figures.get("failures", 0) + 1
        figures["errors"] = [f"wrk exit {done.returncode}: {done.stderr.decode()[:200]}"]
    figures["rate_per_s"] = figures["requests_per_s"]
    ctx.progress.advance(1)
    ctx.progress.end(f"{figures['requests_per_s'] or 0:.0f} req/s")
    return {"wrk": figures}
