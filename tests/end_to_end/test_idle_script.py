"""benchmarks/idle.py connects idle subscribers, and proves them alive by a delivery each."""

from __future__ import annotations

import resource

import pytest

from benchmarks.idle import FileLimitTooLow, check_file_limit, run_idle
from benchmarks.lean import server_frames

from ..conftest import StartBroker

CONNECTIONS = 50


async def test_every_idle_subscriber_connects_and_receives_its_check(
    start_broker: StartBroker,
) -> None:
    running = await start_broker()
    result = await run_idle(
        running.http_url, running.ws_url(), CONNECTIONS, None, topics=7, wave=20,
        connect_timeout=10.0, delivery_timeout=10.0,
    )
    assert result["connected"] == CONNECTIONS
    assert result["failures"] == 0
    assert result["errors"] == []
    assert result["publish_topics"] == 7
    assert result["published"] == 7
    assert result["delivered"] == CONNECTIONS
    assert result["duplicate_or_extra_messages"] == 0
    assert result["latency_p50_ms"] is not None
    assert result["connect_per_s"] is not None and result["connect_per_s"] > 0


async def test_one_topic_per_connection_when_topics_is_zero(
    start_broker: StartBroker,
) -> None:
    running = await start_broker()
    result = await run_idle(running.http_url, running.ws_url(), 10, None, topics=0)
    assert result["publish_topics"] == 10
    assert result["delivered"] == 10


def test_a_limit_below_the_connections_says_which_ulimit_to_use() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    too_many = (hard if hard != resource.RLIM_INFINITY else 1 << 30) + 1
    with pytest.raises(FileLimitTooLow, match=f"ulimit -n {too_many + 100}"):
        check_file_limit(too_many)


def test_split_frames_keeps_a_partial_frame_for_later() -> None:
    long_payload = b"x" * 300
    data = b"\x81\x02hi" + b"\x81\x7e\x01\x2c" + long_payload + b"\x89\x05pi"
    frames, rest = server_frames(data)
    assert frames == [(0x1, b"hi"), (0x1, long_payload)]
    assert rest == b"\x89\x05pi"
