"""Servers the benchmarks can run against: our broker and baselines speaking the same slice of
the v1 contract (single and bulk publish over HTTP, `/v1/ws` subscribe, ping and publish).

`TARGETS` maps a target name to the arguments after `sys.executable` that start it on free
ports; every target prints `broker listening on http://HOST:PORT ws://HOST:PORT/v1/ws` once
it listens and exits 0 on SIGTERM, so a launcher starts any of them by changing only the
command. Run them from the repository root (the modules are found from there).

Importing this package imports no web framework: a suite can list targets without the
`baselines` extra installed.
"""

from __future__ import annotations

TARGETS: dict[str, list[str]] = {
    "broker": ["-m", "gateways", "serve", "--port", "0", "--ws-port", "0"],
    "fastapi": ["-m", "benchmarks.baselines.fastapi_app", "--port", "0", "--ws-port", "0"],
}

__all__ = ["TARGETS"]
