"""The attack suite's harness measures what it claims: a stalled broker fails the probe."""

from __future__ import annotations

import os
import signal

import pytest
import trio

from .attack import broker_process, latency_probe, raw_connect, wait_for


async def test_the_probe_sees_deliveries_and_the_process_figures_are_read() -> None:
    async with broker_process("--max-payload-bytes", "2048") as proc:
        assert proc.rss_bytes() > 10 * 1024 * 1024
        assert proc.open_fds() >= 3
        assert proc.cpu_seconds() > 0
        async with latency_probe(proc) as probe:
            await wait_for(lambda: probe.deliveries >= 5, what="five probe deliveries")
        assert 0 < probe.worst <= probe.bound
        # A flag of any setting reaches the broker: a payload over 2048 bytes is refused.
        stream = await raw_connect(proc.http_port)
        body = b"x" * 3000
        await stream.send_all(b"POST /v1/topics/a HTTP/1.1\r\nHost: h\r\ncontent-length: "
                              b"%d\r\n\r\n%s" % (len(body), body))
        assert (await stream.receive_some(1024)).startswith(b"HTTP/1.1 413")
        await stream.aclose()


async def test_the_probe_fails_when_the_broker_stalls() -> None:
    async with broker_process() as proc:
        with pytest.raises(AssertionError, match="bystander waited"):
            async with latency_probe(proc) as probe:
                await wait_for(lambda: probe.deliveries >= 1, what="a probe delivery")
                os.kill(proc.pid, signal.SIGSTOP)
                try:
                    await trio.sleep(0.3)  # the stall being measured, not a synchronisation
                finally:
                    os.kill(proc.pid, signal.SIGCONT)
