"""Abrupt disconnects leak nothing: presence, gauges and the task count return to baseline."""

from __future__ import annotations

import httpx
import pytest
import trio
import trio.testing

from ..conftest import RunningBroker, receive, request, wait_until, websocket
from .rawws import RawWebSocket, masked_frame

ABRUPT = 1000
AT_ONCE = 100


@pytest.mark.slow  # a storm of 1,000 connections
async def test_a_thousand_abrupt_disconnects_leave_no_subscriber_entries(
    running: RunningBroker,
) -> None:
    broker = running.broker
    async with websocket(running, "topic=churn.a") as witness:
        await request(witness, op="ping", id=0)
        baseline_tasks = (await broker.gauges()).tasks
        port = running.addresses.ws_port
        for round_start in range(0, ABRUPT, AT_ONCE):
            raws: list[RawWebSocket] = []
            for n in range(round_start, round_start + AT_ONCE):
                raw = await RawWebSocket.connect(port, "/v1/ws?topic=churn.a&topic=churn.*")
                # Half of them vanish mid-frame, half between frames.
                if n % 2:
                    await raw.send(masked_frame(0x1, b'{"op": "ping"}')[:5])
                raws.append(raw)
            await wait_until(lambda: _subscriber_count(running, AT_ONCE + 1))
            for raw in raws:
                await raw.aclose()
            await wait_until(lambda: _connections(broker, 1))
        await wait_until(lambda: _subscriber_count(running, 1))
        assert [s.client for s in await broker.subscribers("churn.a")] == [""]
        gauges = await broker.gauges()
        assert (gauges.connections, gauges.subscriptions) == (1, 1)
        counters = broker.counters
        assert counters.connections_opened - counters.connections_closed == 1
        assert counters.connections_closed == ABRUPT
        # No task is left behind by any of the 1,000 connections.
        await trio.testing.wait_all_tasks_blocked()
        assert (await broker.gauges()).tasks == baseline_tasks
        # And the survivor still gets its messages, from both its subscriptions, once.
        async with httpx.AsyncClient() as http:
            await http.post(f"{running.http_url}/v1/topics/churn.a", json="after")
        assert (await receive(witness))["data"] == "after"
        assert await request(witness, op="ping", id=1) == {"op": "ok", "id": 1}


async def _subscriber_count(running: RunningBroker, count: int) -> bool:
    return len(await running.broker.subscribers("churn.a")) == count


async def _connections(broker, count: int) -> bool:  # type: ignore[no-untyped-def]
    return broker.connections == count
