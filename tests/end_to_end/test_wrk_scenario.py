"""The `wrk` scenario reads wrk's report correctly (figures, and failures it must count)."""

from __future__ import annotations

from benchmarks.scenarios.wrk import parse_wrk

REPORT = """Running 5s test @ http://127.0.0.1:8080/v1/topics/bench.wrk
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   812.34us  201.11us   5.20ms   91.00%
  Latency Distribution
     50%  788.00us
     75%  850.00us
     90%    1.02ms
     99%    1.50ms
  98600 requests in 5.00s, 12.22MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  19720.11
Transfer/sec:      2.44MB
"""


def test_wrk_figures_are_read_from_its_latency_report() -> None:
    figures = parse_wrk(REPORT)
    assert figures["requests_per_s"] == 19720.11
    assert figures["p50_ms"] == 0.788
    assert figures["p90_ms"] == 1.02
    assert figures["p99_ms"] == 1.5
    assert figures["failures"] == 4 + 2 + 1  # non-2xx answers and socket errors


def test_a_report_without_a_rate_has_none() -> None:
    failed = parse_wrk("unable to connect to 127.0.0.1:1 Connection refused")
    assert failed["requests_per_s"] is None
