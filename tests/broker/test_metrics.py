"""`LatencyHistogram`: the lock-free publish-latency histogram, read as Prometheus text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from broker.metrics import LatencyHistogram


def scrape(histogram: LatencyHistogram) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(histogram)
    samples: dict[str, float] = {}
    for line in generate_latest(registry).decode().splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_buckets_are_cumulative_and_a_value_on_a_bound_counts_in_that_bucket() -> None:
    histogram = LatencyHistogram("t_seconds", "test", (0.001, 0.01, 0.1))
    for seconds in (0.0005, 0.001, 0.002, 0.1, 3.0):
        histogram.observe(seconds)
    samples = scrape(histogram)
    assert samples['t_seconds_bucket{le="0.001"}'] == 2  # 0.0005 and exactly 0.001
    assert samples['t_seconds_bucket{le="0.01"}'] == 3
    assert samples['t_seconds_bucket{le="0.1"}'] == 4
    assert samples['t_seconds_bucket{le="+Inf"}'] == 5
    assert samples["t_seconds_count"] == 5
    assert abs(samples["t_seconds_sum"] - 3.1035) < 1e-9


def test_an_unobserved_histogram_exports_zeros() -> None:
    samples = scrape(LatencyHistogram("t_seconds", "test", (0.5,)))
    assert samples['t_seconds_bucket{le="0.5"}'] == 0
    assert samples['t_seconds_bucket{le="+Inf"}'] == 0 and samples["t_seconds_count"] == 0
