"""The soak's state: the policy families, per-topic and per-family counts, /metrics samples,
and the small formatting functions the run and the report share.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import orjson

from .subscribers import SoakSubscriber, StalledSubscriber

FAMILIES = {"disconnect": "disconnect", "drop": "drop-oldest", "block": "block"}
# Broker log lines that are the expected outcome of the stalled disconnect subscriber.
EXPECTED_LOG = "closing slow consumer"
FLAT_GROWTH = 0.10
MB = 1024 * 1024


# -- per-family state ----------------------------------------------------------------------


@dataclass
class PublisherStats:
    requests: int = 0
    attempted: int = 0
    accepted: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    unknown: int = 0  # messages of requests cut by our timeout or a network error
    late: int = 0  # ticks started behind schedule (a slow answer); no catch-up burst
    offset_errors: int = 0  # 202 offsets not following the previous accepted one
    max_latency: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class TopicState:
    name: str
    healthy: list[SoakSubscriber] = field(default_factory=list)
    pub: PublisherStats = field(default_factory=PublisherStats)
    next_offset: int = 0  # from our own 202 answers
    broker_next_offset: int | None = None  # GET /v1/topics/{name} at the end


@dataclass
class ChurnStats:
    cycles: int = 0
    subscribed: int = 0
    timeouts: int = 0  # connect + subscribe (ping barrier) not done within the bound
    timeouts_by_topic: Counter[str] = field(default_factory=Counter)
    wildcard_cycles: int = 0
    messages: int = 0
    order_errors: int = 0
    closed_by_broker: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


@dataclass
class Family:
    key: str
    policy: str
    topics: list[TopicState]
    pattern: str
    churn: ChurnStats = field(default_factory=ChurnStats)
    stalled: StalledSubscriber | None = None


# -- metrics -------------------------------------------------------------------------------


def parse_metrics(text: bytes) -> dict[str, float]:
    """Prometheus text: unlabelled samples by name; labelled ones summed under their name."""
    values: dict[str, float] = {}
    for raw in text.decode(errors="replace").splitlines():
        if not raw or raw.startswith("#"):
            continue
        name_part, _, value = raw.rpartition(" ")
        name = name_part.split("{", 1)[0]
        try:
            number = float(value)
        except ValueError:
            continue
        values[name] = values.get(name, 0.0) + number if "{" in name_part else number
    return values


@dataclass
class Sample:
    t: float
    rss: float | None
    tasks: float | None
    connections: float | None
    published: float | None
    delivered: float | None
    dropped: float | None
    disconnects: float | None
    mailbox_max: float | None  # deepest topic mailbox (a stalled block topic fills its own)
    scrape_s: float
    gen_cpu: float
    broker_cpu: float | None



def _error_code(answer: bytes) -> str:
    try:
        return str(orjson.loads(answer)["error"]["code"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return "?"


def _expected(topic: TopicState) -> int:
    return topic.next_offset if topic.broker_next_offset is None else topic.broker_next_offset


def _fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value / MB:.1f}"
