"""Broker-wide counters and their Prometheus export.

Hot paths bump plain integers on `BrokerCounters` (a Prometheus `Counter.inc` per delivery
would cost a lock acquisition each) and observe into `LatencyHistogram` (prometheus-client's
`Histogram.observe` scans its buckets and takes two locks: ~3 us per publish);
`BrokerCollector` reads them at scrape time. Metric names follow Prometheus conventions
and carry no per-topic labels.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass, field

import trio
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

# Buckets for publish latency: most publishes take tens of microseconds in the broker;
# the top buckets catch backpressure waits up to the publish timeout.
PUBLISH_BUCKETS = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
)


@dataclass(slots=True)
class BrokerCounters:
    """Monotonic counts, bumped in place by actors (single-threaded: no lock needed)."""

    published: int = 0
    forwarded: int = 0
    delivered: int = 0
    slow_consumer_disconnects: int = 0
    dropped: int = 0
    slow_consumer_waits: int = 0
    topic_crashes: int = 0
    topic_restarts: int = 0
    topics_created: int = 0
    topics_reaped: int = 0
    connections_opened: int = 0
    connections_closed: int = 0
    # What the memory budget adds up (`broker.memory_budget`), kept by the topics as they
    # change: history bytes retained by every topic, payload bytes waiting in mailboxes.
    retained_bytes: int = 0
    mailbox_bytes: int = 0
    publish_rejections: dict[str, int] = field(default_factory=dict)

    def reject(self, code: str) -> None:
        self.publish_rejections[code] = self.publish_rejections.get(code, 0) + 1


@dataclass(frozen=True, slots=True)
class Gauges:
    """Point-in-time figures read at scrape time."""

    connections: int = 0
    topics: int = 0
    subscriptions: int = 0
    # Entries of closed connections not yet forgotten by their topic (should fall to 0).
    closed_subscriptions: int = 0
    topic_mailbox_depth: int = 0
    topic_mailbox_depth_max: int = 0
    retained_messages: int = 0
    retained_bytes: int = 0
    outbox_depth_max: int = 0
    tasks: int = 0
    # The memory budget's last look (`MemoryBudget.statistics`).
    memory_budget: int = 0
    memory_used: int = 0
    memory_overloaded: bool = False
    memory_shed: int = 0
    memory_refused: int = 0


class BrokerCollector(Collector):
    """Exposes `BrokerCounters` and the latest `Gauges` in Prometheus text format."""

    def __init__(self, counters: BrokerCounters) -> None:
        self.counters = counters
        self.gauges = Gauges()

    def collect(self) -> Iterator[Metric]:
        c = self.counters
        for name, value, text in (
            ("broker_messages_published", c.published, "Messages accepted with an offset."),
            ("broker_messages_forwarded", c.forwarded, "Frames queued to subscriber outboxes."),
            ("broker_messages_delivered", c.delivered, "Message frames written to sockets."),
            ("broker_slow_consumer_disconnects", c.slow_consumer_disconnects,
             "Subscribers closed with 4008 by the slow-consumer policy."),
            ("broker_messages_dropped", c.dropped,
             "Messages dropped for slow subscribers (drop-oldest policy)."),
            ("broker_slow_consumer_waits", c.slow_consumer_waits,
             "Times a topic waited for a full subscriber outbox (block policy)."),
            ("broker_topic_crashes", c.topic_crashes, "Topic actor crashes."),
            ("broker_topic_restarts", c.topic_restarts, "Topic actor restarts."),
            ("broker_topics_created", c.topics_created, "Topics created."),
            ("broker_topics_reaped", c.topics_reaped, "Idle topics removed."),
            ("broker_connections_opened", c.connections_opened, "WebSocket connections opened."),
            ("broker_connections_closed", c.connections_closed, "WebSocket connections closed."),
        ):
            yield CounterMetricFamily(name, text, value=value)
        g = self.gauges
        yield CounterMetricFamily(
            "broker_memory_shed", "Subscribers closed with 4008 to bring memory under "
            "max_memory (largest queued first).", value=g.memory_shed,
        )
        yield CounterMetricFamily(
            "broker_memory_refusals", "Publishes and topic creations refused as overloaded "
            "(memory at max_memory).", value=g.memory_refused,
        )
        rejected = CounterMetricFamily(
            "broker_publish_rejections", "Publishes refused, by error code.", labels=["code"]
        )
        for code, value in sorted(c.publish_rejections.items()):
            rejected.add_metric([code], value)
        yield rejected
        for name, value, text in (
            ("broker_connections", g.connections, "Open WebSocket connections."),
            ("broker_topics", g.topics, "Topics that exist."),
            ("broker_subscriptions", g.subscriptions, "Live subscriber entries across topics."),
            ("broker_subscriptions_closed", g.closed_subscriptions,
             "Entries of closed connections that topics have not yet forgotten."),
            ("broker_topic_mailbox_depth", g.topic_mailbox_depth,
             "Requests queued in all topic mailboxes."),
            ("broker_topic_mailbox_depth_max", g.topic_mailbox_depth_max,
             "Deepest single topic mailbox."),
            ("broker_retained_messages", g.retained_messages, "Messages retained in history."),
            ("broker_outbox_depth_max", g.outbox_depth_max,
             "Most frames queued for one subscriber (bounded by outbox_size, 2x in grace)."),
            ("broker_retained_bytes", g.retained_bytes, "Payload bytes retained in history."),
            ("broker_tasks", g.tasks, "trio tasks alive in the process (leak detector)."),
            ("broker_memory_budget_bytes", g.memory_budget, "max_memory (0: no budget)."),
            ("broker_memory_used_bytes", g.memory_used,
             "Bytes the broker holds by its own count (history, queued payloads and "
             "frames, per-topic and per-connection costs)."),
            ("broker_memory_overloaded", int(g.memory_overloaded),
             "1 while memory is at the budget: publishes refused, slow consumers shed."),
        ):
            yield GaugeMetricFamily(name, text, value=value)


def task_count() -> int:
    """Every trio task in the run, counted from the root (cheap enough per scrape)."""
    count = 0
    stack = [trio.lowlevel.current_root_task()]
    while stack:
        task = stack.pop()
        if task is None:
            continue
        count += 1
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


class LatencyHistogram(Collector):
    """A Prometheus histogram observed from one thread without locks: one list slot and a
    float bumped per observation; buckets are made cumulative at scrape time."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1  # the first bound >= seconds
        self.sum += seconds

    def collect(self) -> Iterator[Metric]:
        cumulative, total = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += count
            cumulative.append((_bucket_label(bound), total))
        yield HistogramMetricFamily(
            self.name, self.documentation, buckets=cumulative, sum_value=self.sum
        )


def _bucket_label(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class BrokerMetrics:
    """The registry of one broker: its collector and the publish latency histogram."""

    def __init__(self, counters: BrokerCounters) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.collector = BrokerCollector(counters)
        self.registry.register(self.collector)
        # process_resident_memory_bytes, process_cpu_seconds_total, open fds (Linux).
        ProcessCollector(registry=self.registry)
        self.publish_seconds = LatencyHistogram(
            "broker_publish_duration_seconds",
            "Time from a publish reaching the broker to its offset being assigned.",
            PUBLISH_BUCKETS,
        )
        self.registry.register(self.publish_seconds)
