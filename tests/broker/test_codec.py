"""Wire formats without sockets: payload kinds and checks, message frames, request decoding."""

from __future__ import annotations

from typing import Any

import cbor2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.codec import (
    MAX_BATCH_MESSAGES,
    PayloadKind,
    PingRequest,
    PublishRequest,
    RequestRejected,
    SubscribeRequest,
    UnsubscribeRequest,
    WireFormat,
    _json_default,
    check_payload,
    decode_batch,
    decode_request,
    encode_message_cbor,
    encode_message_json,
    encode_ok,
    encode_published,
    jsonable,
    payload_kind,
    to_json,
)
from broker.errors import InvalidPayload, InvalidTopic, PayloadTooLarge
from broker.messages import Message, Payload

# ---- payload kinds and payload checks ---------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "kind"),
    [
        ("application/json", PayloadKind.JSON),
        ("application/json; charset=utf-8", PayloadKind.JSON),
        ("Application/JSON", PayloadKind.JSON),
        ("  application/json ; q=1", PayloadKind.JSON),
        ("application/vnd.api+json", PayloadKind.JSON),
        ("application/problem+json; charset=utf-8", PayloadKind.JSON),
        ("application/cbor", PayloadKind.CBOR),
        ("application/senml+cbor", PayloadKind.CBOR),
        ("text/plain", PayloadKind.TEXT),
        ("text/csv; charset=utf-8", PayloadKind.TEXT),
        ("TEXT/HTML", PayloadKind.TEXT),
        ("application/octet-stream", PayloadKind.BINARY),
        ("image/png", PayloadKind.BINARY),
        ("application/xml", PayloadKind.BINARY),
        ("application/jsonl", PayloadKind.BINARY),
        (None, PayloadKind.BINARY),
        ("", PayloadKind.BINARY),
        ("; charset=utf-8", PayloadKind.BINARY),
    ],
)
def test_payload_kind_follows_the_media_type(content_type: str | None, kind: PayloadKind) -> None:
    assert payload_kind(content_type) is kind


@pytest.mark.parametrize(
    ("data", "content_type", "kind"),
    [
        (b'{"a": [1, 2.5, null]}', "application/json", PayloadKind.JSON),
        (b"  42 ", "application/json", PayloadKind.JSON),
        (cbor2.dumps({"a": b"\x00"}), "application/cbor", PayloadKind.CBOR),
        ("h\u00e9llo".encode(), "text/plain", PayloadKind.TEXT),
        (b"\xff\x00\xfe", "application/octet-stream", PayloadKind.BINARY),
        (b"\xff\x00\xfe", None, PayloadKind.BINARY),
        (b"", None, PayloadKind.BINARY),
    ],
)
def test_check_payload_accepts_valid_payloads_and_returns_their_kind(
    data: bytes, content_type: str | None, kind: PayloadKind
) -> None:
    assert check_payload(data, content_type, 1024) is kind


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"", "application/json"),
        (b"{", "application/json"),
        (b"{'a': 1}", "application/json"),
        (b"NaN", "application/json"),
        (b"[1] [2]", "application/json"),
        (b'"\xff"', "application/json"),
        (b"", "application/cbor"),
        (b"\x82\x01", "application/cbor"),  # array of 2, only one item
        (b"\xff", "application/cbor"),  # "break" outside an indefinite item
        (b"\x01\x02", "application/cbor"),  # one item followed by trailing bytes
        (b"\xff\xfe", "text/plain"),
        (b"caf\xc3", "text/plain; charset=utf-8"),
        (b"\xed\xa0\x80", "text/plain"),  # an encoded surrogate is not UTF-8
    ],
)
def test_check_payload_rejects_payloads_that_do_not_parse_as_their_kind(
    data: bytes, content_type: str
) -> None:
    with pytest.raises(InvalidPayload) as info:
        check_payload(data, content_type, 1024)
    assert info.value.code == "invalid_payload"


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", None])
def test_check_payload_enforces_the_size_limit_inclusively(content_type: str | None) -> None:
    assert check_payload(b"1" * 10, content_type, 10) is not None
    with pytest.raises(PayloadTooLarge) as info:
        check_payload(b"1" * 11, content_type, 10)
    assert info.value.code == "payload_too_large"


# ---- message frames ---------------------------------------------------------------------


def message(data: bytes, kind: PayloadKind, topic: str = "orders.eu", offset: int = 7) -> Message:
    content_type = {
        PayloadKind.JSON: "application/json",
        PayloadKind.CBOR: "application/cbor",
        PayloadKind.TEXT: "text/plain; charset=utf-8",
        PayloadKind.BINARY: "application/octet-stream",
    }[kind]
    return Message(topic, offset, data, content_type, kind, 1700000000.0)


def frame(data: Any) -> dict[str, Any]:
    return {"op": "message", "topic": "orders.eu", "offset": 7, "data": data}


# (payload bytes, kind, data in a JSON frame, data in a CBOR frame)
RENDERINGS = [
    pytest.param(b'{"n": 1, "tags": ["a"]}', PayloadKind.JSON,
                 {"n": 1, "tags": ["a"]}, {"n": 1, "tags": ["a"]}, id="json-object"),
    pytest.param(b"null", PayloadKind.JSON, None, None, id="json-null"),
    pytest.param(b"3.5", PayloadKind.JSON, 3.5, 3.5, id="json-number"),
    pytest.param("h\u00e9llo \u2603".encode(), PayloadKind.TEXT,
                 "h\u00e9llo \u2603", "h\u00e9llo \u2603", id="text"),
    pytest.param(b"", PayloadKind.TEXT, "", "", id="empty-text"),
    pytest.param(b"\x00\xff", PayloadKind.BINARY, {"base64": "AP8="}, b"\x00\xff", id="binary"),
    pytest.param(b"", PayloadKind.BINARY, {"base64": ""}, b"", id="empty-binary"),
    pytest.param(cbor2.dumps({"a": [1, 2], "b": b"\x00\x01"}), PayloadKind.CBOR,
                 {"a": [1, 2], "b": {"base64": "AAE="}}, {"a": [1, 2], "b": b"\x00\x01"},
                 id="cbor-map-with-bytes"),
    pytest.param(cbor2.dumps({1: "one"}), PayloadKind.CBOR,
                 {"1": "one"}, {1: "one"}, id="cbor-int-keys"),
    pytest.param(cbor2.dumps(2**70), PayloadKind.CBOR,
                 str(2**70), 2**70, id="cbor-bignum"),
    pytest.param(bytes([0xC0]) + cbor2.dumps("2013-03-21T20:04:00Z"), PayloadKind.CBOR,
                 "2013-03-21T20:04:00+00:00",
                 cbor2.loads(bytes([0xC0]) + cbor2.dumps("2013-03-21T20:04:00Z")),
                 id="cbor-date-time-tag"),
]


@pytest.mark.parametrize(("data", "kind", "json_data", "cbor_data"), RENDERINGS)
def test_encode_message_json_renders_each_kind_as_the_contract_says(
    data: bytes, kind: PayloadKind, json_data: Any, cbor_data: Any
) -> None:
    assert orjson.loads(encode_message_json(message(data, kind))) == frame(json_data)


@pytest.mark.parametrize(("data", "kind", "json_data", "cbor_data"), RENDERINGS)
def test_encode_message_cbor_renders_each_kind_as_the_contract_says(
    data: bytes, kind: PayloadKind, json_data: Any, cbor_data: Any
) -> None:
    assert cbor2.loads(encode_message_cbor(message(data, kind))) == frame(cbor_data)


def test_cbor_message_frame_is_exactly_one_cbor_item() -> None:
    encoded = encode_message_cbor(message(cbor2.dumps([1, 2]), PayloadKind.CBOR))
    assert cbor2.dumps(cbor2.loads(encoded)) == encoded


def test_message_frames_carry_topic_and_offset() -> None:
    msg = message(b"1", PayloadKind.JSON, topic="a-b.c_d", offset=123456789)
    expected = {"op": "message", "topic": "a-b.c_d", "offset": 123456789, "data": 1}
    assert orjson.loads(encode_message_json(msg)) == expected
    assert cbor2.loads(encode_message_cbor(msg)) == expected


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=15,
)


@settings(deadline=None)
@given(JSON_VALUES)
def test_json_payload_round_trips_through_both_frame_formats(value: Any) -> None:
    msg = message(orjson.dumps(value), PayloadKind.JSON)
    assert orjson.loads(encode_message_json(msg))["data"] == value
    assert cbor2.loads(encode_message_cbor(msg))["data"] == value


@settings(deadline=None)
@given(JSON_VALUES)
def test_cbor_payload_round_trips_through_both_frame_formats(value: Any) -> None:
    msg = message(cbor2.dumps(value), PayloadKind.CBOR)
    assert cbor2.loads(encode_message_cbor(msg))["data"] == value
    assert orjson.loads(encode_message_json(msg))["data"] == value


# ---- decode_request ---------------------------------------------------------------------

LIMIT = 50


def encodings(obj: Any) -> list[tuple[WireFormat, bytes | str]]:
    """The same object as every input the decoder accepts: JSON bytes, JSON str, CBOR."""
    text = orjson.dumps(obj)
    return [(WireFormat.JSON, text), (WireFormat.JSON, text.decode()),
            (WireFormat.CBOR, cbor2.dumps(obj))]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"op": "subscribe", "topic": "a.>", "id": 1}, SubscribeRequest("a.>", "latest", 1)),
        ({"op": "subscribe", "topic": "a.*", "from": "earliest", "id": "s"},
         SubscribeRequest("a.*", "earliest", "s")),
        ({"op": "subscribe", "topic": "a", "from": "latest"},
         SubscribeRequest("a", "latest", None)),
        ({"op": "subscribe", "topic": "a", "from": 0, "id": 2}, SubscribeRequest("a", 0, 2)),
        ({"op": "subscribe", "topic": "a", "from": 99, "id": 2}, SubscribeRequest("a", 99, 2)),
        ({"op": "unsubscribe", "topic": "a.>", "id": 3}, UnsubscribeRequest("a.>", 3)),
        ({"op": "ping", "id": [1, 2]}, PingRequest([1, 2])),
        ({"op": "ping"}, PingRequest(None)),
    ],
)
def test_decode_request_parses_each_op_in_every_wire_format(obj: Any, expected: Any) -> None:
    for fmt, raw in encodings(obj):
        assert decode_request(fmt, raw, LIMIT) == expected


@pytest.mark.parametrize("data", [{"n": 1}, [1, "two"], "text", 0, None])
def test_decode_request_publish_reencodes_data_in_the_frames_format(data: Any) -> None:
    obj = {"op": "publish", "topic": "orders.eu", "data": data, "id": 9}
    for fmt, raw in encodings(obj)[:2]:
        assert decode_request(fmt, raw, LIMIT) == PublishRequest(
            "orders.eu", orjson.dumps(data), "application/json", PayloadKind.JSON, 9
        )
    fmt, raw = encodings(obj)[2]
    assert decode_request(fmt, raw, LIMIT) == PublishRequest(
        "orders.eu", cbor2.dumps(data), "application/cbor", PayloadKind.CBOR, 9,
        orjson.dumps(data),  # its JSON rendering, made once at publish
    )


def test_decode_request_cbor_publish_keeps_byte_strings() -> None:
    raw = cbor2.dumps({"op": "publish", "topic": "t", "data": b"\x00\x01", "id": 1})
    request = decode_request(WireFormat.CBOR, raw, LIMIT)
    assert isinstance(request, PublishRequest)
    assert cbor2.loads(request.data) == b"\x00\x01"


def test_decode_request_accepts_publish_data_exactly_at_the_limit() -> None:
    # A 48-character string is 50 bytes in JSON (quotes) and in CBOR (2-byte head).
    obj = {"op": "publish", "topic": "t", "data": "x" * 48, "id": 1}
    for fmt, raw in encodings(obj):
        request = decode_request(fmt, raw, LIMIT)
        assert isinstance(request, PublishRequest)
        assert len(request.data) == LIMIT


@pytest.mark.parametrize(
    ("fmt", "raw"),
    [
        (WireFormat.JSON, b"{not json"),
        (WireFormat.JSON, ""),
        (WireFormat.JSON, b"\xff"),
        (WireFormat.CBOR, b""),
        (WireFormat.CBOR, b"\xa1\x62op"),  # map whose value is missing
        (WireFormat.CBOR, b"\xff"),
    ],
)
def test_decode_request_rejects_undecodable_frames_as_invalid_frame(
    fmt: WireFormat, raw: bytes | str
) -> None:
    with pytest.raises(RequestRejected) as info:
        decode_request(fmt, raw, LIMIT)
    assert info.value.error.code == "invalid_frame"
    assert info.value.request_id is None


@pytest.mark.parametrize("obj", [[{"op": "ping", "id": 1}], "ping", 1, None])
def test_decode_request_rejects_frames_that_are_not_objects(obj: Any) -> None:
    for fmt, raw in encodings(obj):
        with pytest.raises(RequestRejected) as info:
            decode_request(fmt, raw, LIMIT)
        assert info.value.error.code == "invalid_frame"
        assert info.value.request_id is None


BAD_REQUESTS = [
    pytest.param({"id": 7}, "invalid_frame", id="missing-op"),
    pytest.param({"op": 5, "id": 7}, "invalid_frame", id="non-string-op"),
    pytest.param({"op": None, "id": 7}, "invalid_frame", id="null-op"),
    pytest.param({"op": "dance", "id": 7}, "unknown_op", id="unknown-op"),
    pytest.param({"op": "SUBSCRIBE", "topic": "a", "id": 7}, "unknown_op", id="op-case"),
    pytest.param({"op": "subscribe", "id": 7}, "invalid_frame", id="subscribe-no-topic"),
    pytest.param({"op": "subscribe", "topic": 5, "id": 7}, "invalid_topic", id="topic-not-str"),
    pytest.param({"op": "subscribe", "topic": "a..b", "id": 7}, "invalid_topic", id="bad-pattern"),
    pytest.param({"op": "subscribe", "topic": "a.>.b", "id": 7}, "invalid_topic", id="tail-mid"),
    pytest.param({"op": "unsubscribe", "topic": "a b", "id": 7}, "invalid_topic",
                 id="unsubscribe-bad-topic"),
    pytest.param({"op": "unsubscribe", "id": 7}, "invalid_frame", id="unsubscribe-no-topic"),
    pytest.param({"op": "publish", "topic": "a.*", "data": 1, "id": 7}, "invalid_topic",
                 id="publish-star"),
    pytest.param({"op": "publish", "topic": "a.>", "data": 1, "id": 7}, "invalid_topic",
                 id="publish-tail"),
    pytest.param({"op": "publish", "topic": "", "data": 1, "id": 7}, "invalid_topic",
                 id="publish-empty-topic"),
    pytest.param({"op": "publish", "data": 1, "id": 7}, "invalid_frame", id="publish-no-topic"),
    pytest.param({"op": "publish", "topic": "a", "id": 7}, "invalid_frame", id="publish-no-data"),
    pytest.param({"op": "publish", "topic": "a", "data": "x" * 49, "id": 7},
                 "payload_too_large", id="publish-oversize"),
    pytest.param({"op": "subscribe", "topic": "a", "from": -1, "id": 7}, "invalid_frame",
                 id="from-negative"),
    pytest.param({"op": "subscribe", "topic": "a", "from": "middle", "id": 7}, "invalid_frame",
                 id="from-unknown-word"),
    pytest.param({"op": "subscribe", "topic": "a", "from": True, "id": 7}, "invalid_frame",
                 id="from-bool"),
    pytest.param({"op": "subscribe", "topic": "a", "from": 1.5, "id": 7}, "invalid_frame",
                 id="from-float"),
    pytest.param({"op": "subscribe", "topic": "a", "from": [0], "id": 7}, "invalid_frame",
                 id="from-list"),
]


@pytest.mark.parametrize(("obj", "code"), BAD_REQUESTS)
def test_decode_request_rejects_bad_requests_with_a_stable_code_and_their_id(
    obj: dict[str, Any], code: str
) -> None:
    for fmt, raw in encodings(obj):
        with pytest.raises(RequestRejected) as info:
            decode_request(fmt, raw, LIMIT)
        assert info.value.error.code == code, fmt
        assert info.value.request_id == 7, fmt


def test_request_rejected_without_an_id_has_request_id_none() -> None:
    with pytest.raises(RequestRejected) as info:
        decode_request(WireFormat.JSON, b'{"op":"nope"}', LIMIT)
    assert info.value.error.code == "unknown_op"
    assert info.value.request_id is None
    assert str(info.value) == info.value.error.message


# ---- decode_batch -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "dumps", "content_type"),
    [(PayloadKind.JSON, orjson.dumps, "application/json"),
     (PayloadKind.CBOR, cbor2.dumps, "application/cbor")],
)
def test_decode_batch_returns_payloads_in_request_order(
    kind: PayloadKind, dumps: Any, content_type: str
) -> None:
    document = {"messages": [{"topic": "b", "data": {"n": 1}}, {"topic": "a.x", "data": "s"},
                             {"topic": "b", "data": None}]}
    # CBOR entries carry their JSON rendering, made once at publish.
    def rendering(value: Any) -> bytes | None:
        return orjson.dumps(value) if kind is PayloadKind.CBOR else None

    assert decode_batch(document, kind, 1024) == [
        ("b", Payload(dumps({"n": 1}), content_type, kind, rendering({"n": 1}))),
        ("a.x", Payload(dumps("s"), content_type, kind, rendering("s"))),
        ("b", Payload(dumps(None), content_type, kind, rendering(None))),
    ]


def test_decode_batch_accepts_an_empty_batch() -> None:
    assert decode_batch({"messages": []}, PayloadKind.JSON, 1024) == []


@pytest.mark.parametrize(
    "document",
    [[], "messages", None, {}, {"messages": {"topic": "a", "data": 1}}, {"messages": "a"}],
)
def test_decode_batch_rejects_a_body_that_is_not_an_object_with_a_message_list(
    document: Any,
) -> None:
    with pytest.raises(InvalidPayload) as info:
        decode_batch(document, PayloadKind.JSON, 1024)
    assert info.value.code == "invalid_payload"


@pytest.mark.parametrize("entry", [5, "a", None, ["a", 1], {"topic": "a"}])
def test_decode_batch_rejects_a_bad_entry_naming_its_index(entry: Any) -> None:
    document = {"messages": [{"topic": "ok", "data": 1}, {"topic": "ok", "data": 2}, entry]}
    with pytest.raises(InvalidPayload, match=r"messages\[2\]"):
        decode_batch(document, PayloadKind.JSON, 1024)


@pytest.mark.parametrize("topic", ["a..b", "a.*", "a.>", "", 5, None])
def test_decode_batch_rejects_a_bad_topic_naming_its_index(topic: Any) -> None:
    entry: dict[str, Any] = {"data": 1} if topic is None else {"topic": topic, "data": 1}
    document = {"messages": [{"topic": "ok", "data": 1}, entry]}
    with pytest.raises(InvalidTopic, match=r"messages\[1\]") as info:
        decode_batch(document, PayloadKind.JSON, 1024)
    assert info.value.code == "invalid_topic"


@pytest.mark.parametrize("kind", [PayloadKind.JSON, PayloadKind.CBOR])
def test_decode_batch_rejects_an_oversize_entry_naming_its_index(kind: PayloadKind) -> None:
    document = {"messages": [{"topic": "a", "data": "x" * 48}, {"topic": "a", "data": "x" * 49}]}
    with pytest.raises(PayloadTooLarge, match=r"messages\[1\]") as info:
        decode_batch(document, kind, LIMIT)
    assert info.value.code == "payload_too_large"


def test_decode_batch_rejects_more_messages_than_allowed() -> None:
    entry = {"topic": "a", "data": 1}
    assert len(decode_batch({"messages": [entry] * MAX_BATCH_MESSAGES}, PayloadKind.JSON, 9)) == (
        MAX_BATCH_MESSAGES
    )
    with pytest.raises(PayloadTooLarge):
        decode_batch({"messages": [entry] * (MAX_BATCH_MESSAGES + 1)}, PayloadKind.JSON, 9)


def test_decode_batch_rejects_data_the_body_format_cannot_encode() -> None:
    deep: Any = []
    for _ in range(300):
        deep = [deep]
    document = {"messages": [{"topic": "a", "data": deep}]}
    with pytest.raises(InvalidPayload, match=r"messages\[0\]"):
        decode_batch(document, PayloadKind.JSON, 1024)


def test_decode_batch_keeps_json_integers_past_64_bits_exact_in_both_renderings() -> None:
    document = {"messages": [{"topic": "a", "data": [2**64, -(2**70)]}]}
    [(_, payload)] = decode_batch(document, PayloadKind.JSON, 1024)
    assert payload.data == b"[18446744073709551616,-1180591620717411303424]"
    message = Message("a", 0, payload.data, payload.content_type, payload.kind, 0.0)
    assert cbor2.loads(encode_message_cbor(message))["data"] == [2**64, -(2**70)]


def test_cyclic_cbor_from_shared_references_is_refused_at_publish() -> None:
    cyclic = b"\xd8\x1c\x81\xd8\x1d\x00"  # shareable([sharedref(0)]): a list holding itself
    with pytest.raises(InvalidPayload):
        check_payload(cyclic, "application/cbor", 1024)


def test_cbor_simple_values_have_a_json_rendering() -> None:
    data = cbor2.dumps([cbor2.CBORSimpleValue(119)])
    assert check_payload(data, "application/cbor", 1024) is PayloadKind.CBOR
    message = Message("t", 0, data, "application/cbor", PayloadKind.CBOR, 0.0)
    assert orjson.loads(encode_message_json(message))["data"] == [{"simple": 119}]


def test_request_ids_keep_their_full_int64_range_and_unechoable_ids_are_refused() -> None:
    frame = orjson.dumps({"op": "ping", "id": -(2**63)})
    request = decode_request(WireFormat.JSON, frame, 1024)
    assert orjson.loads(encode_ok(WireFormat.JSON, request.id)) == {"op": "ok", "id": -(2**63)}
    cyclic_id = b"\xa2bopdpingbid\xd8\x1c\x81\xd8\x1d\x00"
    with pytest.raises(RequestRejected) as rejected:
        decode_request(WireFormat.CBOR, cyclic_id, 1024)
    assert rejected.value.error.code == "invalid_payload"  # value sharing is refused
    assert "tag 29" in rejected.value.error.message  # the first met: inside the 28
    # A lone surrogate escape is refused by orjson already (never a str id to echo).
    with pytest.raises(RequestRejected) as rejected:
        decode_request(WireFormat.JSON, b'{"op": "ping", "id": "\\ud800"}', 1024)
    assert rejected.value.error.code == "invalid_frame"
    # Past 64 bits (JSON reads such a number as a float): CBOR echoes the int.
    cbor_huge = cbor2.dumps({"op": "ping", "id": 2**64})
    request = decode_request(WireFormat.CBOR, cbor_huge, 1024)
    assert cbor2.loads(encode_ok(WireFormat.CBOR, request.id))["id"] == 2**64


@pytest.mark.parametrize("request_id", ["plain", "ünïcode", None, 0, 2**64 - 1, -(2**63), 1.5,
                                        [1, "x"], {"k": True}])
def test_echoable_ids_are_accepted_in_both_formats(request_id: object) -> None:
    for fmt, dumps in ((WireFormat.JSON, orjson.dumps), (WireFormat.CBOR, cbor2.dumps)):
        request = decode_request(fmt, dumps({"op": "ping", "id": request_id}), 1024)
        assert request.id == request_id
        assert encode_ok(fmt, request.id)  # and it can be written back


CBOR_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False) | st.text(max_size=8) | st.binary(max_size=8)
    | st.just(cbor2.undefined),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=4) | st.integers(), children, max_size=4)
    | st.builds(cbor2.CBORTag, st.integers(min_value=6, max_value=20), children),
    max_leaves=12,
)


@settings(max_examples=300)
@given(CBOR_VALUES)
def test_to_json_writes_plain_values_directly_and_the_rest_as_the_walk_does(value: Any) -> None:
    """The fast path (orjson first) gives the same text as walking with `jsonable`."""
    assert to_json(value) == orjson.dumps(jsonable(value), default=_json_default)


@pytest.mark.parametrize("fmt", [WireFormat.JSON, WireFormat.CBOR])
def test_a_publish_ok_is_the_ok_with_topic_and_offset(fmt: WireFormat) -> None:
    assert encode_published(fmt, "p1", "a.b", 41) == encode_ok(fmt, "p1", topic="a.b", offset=41)
    assert encode_published(fmt, b"\x01" if fmt is WireFormat.CBOR else 7, "t", 0) == encode_ok(
        fmt, b"\x01" if fmt is WireFormat.CBOR else 7, topic="t", offset=0)
