"""The HTTP gateway's contract: statuses, JSON error bodies, listings, health and metrics."""

from __future__ import annotations

import json

import cbor2
import httpx
import orjson
import pytest
import trio

from ..conftest import RunningBroker, StartBroker


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]


@pytest.mark.parametrize(
    "topic", ["a..b", ".a", "a.", "a b", "caf%C3%A9", "a.*", "a.>", "x" * 256]
)
async def test_publish_to_an_invalid_topic_name_is_400_invalid_topic(
    http: httpx.AsyncClient, topic: str
) -> None:
    response = await http.post(f"/v1/topics/{topic}", json=1)
    assert_error(response, 400, "invalid_topic")


async def test_malformed_json_body_is_400_and_nothing_is_published(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/v1/topics/t", content=b'{"a": ', headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_payload")
    assert (await http.get("/v1/topics/t")).status_code == 404
    ok = await http.post("/v1/topics/t", json={"a": 1})
    assert ok.json()["offset"] == 0


async def test_malformed_cbor_and_bad_utf8_text_are_400(http: httpx.AsyncClient) -> None:
    cbor = await http.post(
        "/v1/topics/t", content=b"\xff\xff", headers={"content-type": "application/cbor"}
    )
    assert_error(cbor, 400, "invalid_payload")
    text = await http.post(
        "/v1/topics/t", content=b"\xc3\x28", headers={"content-type": "text/plain"}
    )
    assert_error(text, 400, "invalid_payload")


async def test_payload_over_the_limit_is_413(start_broker: StartBroker) -> None:
    running = await start_broker(max_payload_bytes=1000)
    async with httpx.AsyncClient(base_url=running.http_url) as http:
        response = await http.post("/v1/topics/t", content=b"x" * 1001)
        assert_error(response, 413, "payload_too_large")
        exact = await http.post("/v1/topics/t", content=b"x" * 1000)
        assert exact.status_code == 202


async def test_chunked_body_over_the_limit_is_413(start_broker: StartBroker) -> None:
    running = await start_broker(max_payload_bytes=1000, max_body_bytes=1000)

    async def chunks():  # no content-length: the limit must hold while streaming
        for _ in range(10):
            yield b"y" * 500

    async with httpx.AsyncClient(base_url=running.http_url) as http:
        response = await http.post("/v1/topics/t", content=chunks())
        assert_error(response, 413, "payload_too_large")


async def test_a_declared_length_past_every_limit_is_refused_before_the_body_is_sent(
    start_broker: StartBroker,
) -> None:
    """A client announcing 100 MB gets its 413 at once: nothing is buffered or awaited."""
    running = await start_broker(max_payload_bytes=1000, max_body_bytes=2000)
    stream = await trio.open_tcp_stream("127.0.0.1", running.addresses.port)
    async with stream:
        await stream.send_all(
            b"POST /v1/topics/t HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000000\r\n\r\n"
        )
        answer = b""
        with trio.fail_after(5):
            while b"\r\n\r\n" not in answer or not answer.endswith(b"}}"):
                chunk = await stream.receive_some(65536)
                assert chunk, answer
                answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), head
    assert orjson.loads(body)["error"]["code"] == "payload_too_large"


async def test_bulk_publish_with_an_unsupported_content_type_is_415(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post(
        "/v1/publish", content=b"messages", headers={"content-type": "text/plain"}
    )
    assert_error(response, 415, "unsupported_content_type")


async def test_bulk_publish_returns_offsets_in_request_order(http: httpx.AsyncClient) -> None:
    messages = [{"topic": t, "data": i} for i, t in enumerate(["a", "b", "a", "c", "a"])]
    response = await http.post("/v1/publish", json={"messages": messages})
    assert response.status_code == 202
    assert response.json()["results"] == [
        {"topic": "a", "offset": 0},
        {"topic": "b", "offset": 0},
        {"topic": "a", "offset": 1},
        {"topic": "c", "offset": 0},
        {"topic": "a", "offset": 2},
    ]
    history = (await http.get("/v1/topics/a/messages?from=0")).json()
    assert [m["data"] for m in history["messages"]] == [0, 2, 4]


async def test_history_answers_splice_each_payloads_json_rendering(
    http: httpx.AsyncClient,
) -> None:
    """The JSON made at publish (CBOR) or the payload's own bytes (JSON) go into the
    answer as they are: nothing is decoded again per read, and big integers stay exact."""
    payloads = [
        ("application/cbor", cbor2.dumps({"b": b"\x00\x01", "n": 2**70})),
        ("application/json", b'{"big":123456789012345678901234567890}'),
        ("text/plain", "h\u00e9".encode()),
        ("application/octet-stream", b"\xff"),
    ]
    for content_type, body in payloads:
        response = await http.post(
            "/v1/topics/r", content=body, headers={"content-type": content_type})
        assert response.status_code == 202
    history = await http.get("/v1/topics/r/messages?from=0")
    assert history.status_code == 200
    assert [m["data"] for m in json.loads(history.text)["messages"]] == [
        {"b": {"base64": "AAE="}, "n": str(2**70)},
        {"big": 123456789012345678901234567890},
        "h\u00e9",
        {"base64": "/w=="},
    ]


async def test_bulk_publish_in_cbor(http: httpx.AsyncClient) -> None:
    body = cbor2.dumps({"messages": [{"topic": "c", "data": b"\x01"}]})
    response = await http.post(
        "/v1/publish", content=body, headers={"content-type": "application/cbor"}
    )
    assert response.status_code == 202
    assert response.json()["results"] == [{"topic": "c", "offset": 0}]


async def test_bulk_publish_with_one_bad_topic_publishes_nothing(
    http: httpx.AsyncClient,
) -> None:
    messages = [{"topic": "good", "data": 1}, {"topic": "bad topic", "data": 2}]
    response = await http.post("/v1/publish", json={"messages": messages})
    assert_error(response, 400, "invalid_topic")
    assert "messages[1]" in response.json()["error"]["message"]
    assert (await http.get("/v1/topics/good")).status_code == 404


@pytest.mark.parametrize(
    "body",
    [b"[]", b'{"messages": 3}', b'{"messages": [{"topic": "a"}]}', b'{"messages": [7]}', b"{"],
)
async def test_bulk_publish_with_a_malformed_body_is_400(
    http: httpx.AsyncClient, body: bytes
) -> None:
    response = await http.post(
        "/v1/publish", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "invalid_payload")


async def test_unknown_topic_is_404_and_unknown_route_is_json_404(
    http: httpx.AsyncClient,
) -> None:
    assert_error(await http.get("/v1/topics/nope"), 404, "not_found")
    assert_error(await http.get("/v1/topics/nope/subscribers"), 404, "not_found")
    assert_error(await http.get("/v1/nothing-here"), 404, "not_found")
    assert_error(await http.delete("/v1/topics/a"), 405, "method_not_allowed")


async def test_topic_listing_and_description(http: httpx.AsyncClient) -> None:
    for topic in ("orders.eu", "orders.us", "users.new", "orders.eu"):
        await http.post(f"/v1/topics/{topic}", json=1)
    listing = (await http.get("/v1/topics", params={"prefix": "orders."})).json()
    assert [t["name"] for t in listing["topics"]] == ["orders.eu", "orders.us"]
    one = (await http.get("/v1/topics/orders.eu")).json()
    assert one["next_offset"] == 2 and one["retained"] == 2 and one["subscribers"] == 0


async def test_history_query_parameters_are_validated(http: httpx.AsyncClient) -> None:
    await http.post("/v1/topics/h", json=1)
    assert_error(await http.get("/v1/topics/h/messages?from=x"), 400, "invalid_payload")
    assert_error(await http.get("/v1/topics/h/messages?limit=0"), 400, "invalid_payload")


async def test_health_and_readiness(running: RunningBroker, http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/readyz")).status_code == 200
    running.broker.begin_drain()
    assert (await http.get("/readyz")).status_code == 503
    refused = await http.post("/v1/topics/t", json=1)
    assert_error(refused, 503, "draining")


async def test_metrics_expose_counters_gauges_and_latency(http: httpx.AsyncClient) -> None:
    for _ in range(3):
        await http.post("/v1/topics/m", json=1)
    await http.post("/v1/topics/bad topic", json=1)
    text = (await http.get("/metrics")).text
    assert "broker_messages_published_total 3.0" in text
    assert "broker_topics 1.0" in text
    assert "broker_publish_duration_seconds_count 3.0" in text
    for name in ("broker_messages_delivered_total", "broker_slow_consumer_disconnects_total",
                 "broker_connections ", "broker_topic_mailbox_depth ", "broker_tasks ",
                 "process_resident_memory_bytes "):
        assert name in text


async def test_a_path_with_doubled_slashes_is_a_json_404_not_a_redirect(
    http: httpx.AsyncClient,
) -> None:
    response = await http.post("//v1/topics/a.b", json=1)
    assert_error(response, 404, "not_found")
