"""Payloads from untrusted clients (issue #14 items 2, 3, 7), pure: the CBOR tag allowlist
and limits, JSON nesting and exact integers, renderings bounded and counted."""

from __future__ import annotations

import json
from typing import Any

import cbor2
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.cbor_input import (
    ACCEPTED_TAGS,
    MAX_BIGNUM_BYTES,
    MAX_CONVERTED_VALUES,
    MAX_NESTING,
    REPLACED_TAGS,
)
from broker.codec import (
    RENDERING_FACTOR,
    PayloadKind,
    RequestRejected,
    WireFormat,
    check_payload,
    checked_payload,
    decode_batch,
    decode_request,
    encode_message_cbor,
    encode_message_json,
    load_bulk_body,
    payload_as_json,
)
from broker.errors import BrokerError, InvalidPayload, PayloadTooLarge
from broker.history import History
from broker.messages import Message
from broker.metrics import BrokerCounters

from ..cbor_model import cbor_refusal

LIMIT = 1 << 20
CBOR = "application/cbor"
JSON = "application/json"


def tag(number: int, content: bytes) -> bytes:
    """The bytes of tag `number` around already-encoded `content`."""
    return cbor2.dumps(cbor2.CBORTag(number, None))[:-1] + content


def array_head(count: int) -> bytes:
    return b"\x9a" + count.to_bytes(4, "big")


def sharing_bomb(levels: int) -> bytes:
    """Value sharing that doubles at each level: [shared(x), ref, ...] nested `levels` deep,
    the issue's 1.2 KB body that asks for tens of GiB of JSON."""
    inner = cbor2.dumps("x" * 700)
    for index in range(levels):
        inner = b"\x82" + tag(28, inner) + tag(29, cbor2.dumps(index))
    return inner


def rendered(data: bytes, content_type: str) -> Message:
    kind, rendering = checked_payload(data, content_type, LIMIT)
    return Message("t", 0, data, content_type, kind, 0.0, rendering)


# ---- CBOR: the tag allowlist ------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "content"),
    [
        (30, cbor2.dumps([1, 3])),  # rational
        (4, cbor2.dumps([-2, 27315])),  # decimal fraction
        (5, cbor2.dumps([-1, 3])),  # bigfloat
        (36, cbor2.dumps("Content-Type: text/plain\r\n\r\nhi")),  # MIME
        (28, cbor2.dumps([1])),  # value sharing: shareable
        (29, cbor2.dumps(0)),  # value sharing: reference
        (25, cbor2.dumps(0)),  # string reference
        (256, cbor2.dumps(["a"])),  # string reference namespace
        (35, cbor2.dumps("a+")),  # regular expression
        (37, cbor2.dumps(b"\x00" * 16)),  # UUID
        (258, cbor2.dumps([1, 2])),  # set
        (43000, cbor2.dumps([1.0, 2.0])),  # complex number
        (6, cbor2.dumps(1)),  # unassigned
        (4000, cbor2.dumps([1, "x"])),  # unknown
        (2**64 - 1, cbor2.dumps(1)),  # the largest tag number
    ],
)
def test_cbor_tags_outside_the_allowlist_are_refused_naming_the_tag(
    number: int, content: bytes
) -> None:
    data = tag(number, content)
    with pytest.raises(InvalidPayload, match=f"CBOR tag {number} is not accepted"):
        check_payload(data, CBOR, LIMIT)
    with pytest.raises(InvalidPayload, match=f"CBOR tag {number}"):
        load_bulk_body(cbor2.dumps({"messages": []})[:-1] + b"\x81" + data, PayloadKind.CBOR)


def test_every_builtin_cbor2_decoder_but_the_allowed_ones_is_replaced() -> None:
    """cbor2's built-in tags (6.3, found by trying every tag below 70,000): each is either
    allowed or refused by a decoder of ours, never decoded by cbor2's own."""
    builtin = {0, 1, 2, 3, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261,
               1004, 43000, 55799}
    assert builtin <= set(ACCEPTED_TAGS) | set(REPLACED_TAGS)
    assert not set(ACCEPTED_TAGS) & set(REPLACED_TAGS)


def test_the_issues_sharing_body_is_refused_before_anything_is_expanded() -> None:
    body = sharing_bomb(70)  # 2**70 copies of the string if expanded
    assert 1000 < len(body) < 1300
    with pytest.raises(InvalidPayload, match=r"CBOR tag (28|29) is not accepted"):
        check_payload(body, CBOR, LIMIT)
    frame = cbor2.dumps({"op": "publish", "topic": "t", "id": 1})[:-1]
    frame = b"\xa4" + frame[1:] + cbor2.dumps("data") + body
    with pytest.raises(RequestRejected) as rejected:
        decode_request(WireFormat.CBOR, frame, LIMIT)
    assert rejected.value.error.code == "invalid_payload"


@pytest.mark.parametrize(
    ("data", "json_value", "cbor_value"),
    [
        (tag(0, cbor2.dumps("2013-03-21T20:04:00Z")), "2013-03-21T20:04:00+00:00", None),
        (tag(1, cbor2.dumps(1363896240)), "2013-03-21T20:04:00+00:00", None),
        (tag(1, cbor2.dumps(1363896240.5)), "2013-03-21T20:04:00.500000+00:00", None),
        (cbor2.dumps(2**64), str(2**64), 2**64),
        (cbor2.dumps(-(2**64) - 1), str(-(2**64) - 1), -(2**64) - 1),
        (tag(2, cbor2.dumps(b"\x05")), 5, 5),  # a small bignum is a plain integer
        (tag(55799, cbor2.dumps([1])), [1], [1]),
    ],
)
def test_allowed_tags_render_to_json_and_reach_cbor_subscribers_as_sent(
    data: bytes, json_value: Any, cbor_value: Any
) -> None:
    message = rendered(data, CBOR)
    assert orjson.loads(encode_message_json(message))["data"] == json_value
    assert encode_message_cbor(message).endswith(data)  # spliced in as it came


def test_bignums_are_limited_in_size_and_past_64_bits_refused_as_map_keys() -> None:
    largest = tag(2, cbor2.dumps(b"\xff" * MAX_BIGNUM_BYTES))
    assert orjson.loads(payload_as_json(rendered(largest, CBOR))) == str(
        2 ** (8 * MAX_BIGNUM_BYTES) - 1
    )
    with pytest.raises(InvalidPayload, match=f"bignum of {MAX_BIGNUM_BYTES + 1} bytes"):
        check_payload(tag(3, cbor2.dumps(b"\x01" * (MAX_BIGNUM_BYTES + 1))), CBOR, LIMIT)
    # Keys past 64 bits can be chosen to collide in Python's hash (quadratic map building).
    colliding = {n * (2**61 - 1): 0 for n in range(2**4, 2**4 + 3)}
    with pytest.raises(InvalidPayload, match="map key"):
        check_payload(cbor2.dumps(colliding), CBOR, LIMIT)
    assert check_payload(cbor2.dumps({2**64 - 1: 0}), CBOR, LIMIT) is PayloadKind.CBOR


def test_cbor_tags_holding_the_wrong_type_are_invalid_cbor() -> None:
    for data in (tag(0, cbor2.dumps(5)), tag(1, cbor2.dumps("x")), tag(2, cbor2.dumps("x")),
                 tag(0, cbor2.dumps("yesterday")), tag(1, cbor2.dumps(1e300))):
        with pytest.raises(InvalidPayload, match="not valid CBOR"):
            check_payload(data, CBOR, LIMIT)


# ---- CBOR: nesting and sizes ----------------------------------------------------------


def test_cbor_nesting_is_limited_to_what_orjson_can_write() -> None:
    deepest = b"\x81" * (MAX_NESTING - 1) + b"\x40"  # a byte string renders one level more
    assert check_payload(deepest, CBOR, LIMIT) is PayloadKind.CBOR
    with pytest.raises(InvalidPayload, match=f"nested deeper than {MAX_NESTING}"):
        check_payload(b"\x81" * (MAX_NESTING + 1) + b"\x00", CBOR, LIMIT)
    with pytest.raises(InvalidPayload, match="nested deeper"):
        check_payload(tag(55799, b"") * (MAX_NESTING + 1) + b"\x00", CBOR, LIMIT)


@pytest.mark.parametrize("head", [b"\x5b", b"\x7b", b"\x9b", b"\xbb"])
def test_a_huge_declared_length_fails_at_the_end_of_the_bytes_without_allocating(
    head: bytes,
) -> None:
    """cbor2 reads strings, arrays and maps as their bytes come: a 9-byte body announcing
    2**40 items is just invalid CBOR (a preallocation would raise MemoryError instead)."""
    with pytest.raises(InvalidPayload, match="not valid CBOR"):
        check_payload(head + (2**40).to_bytes(8, "big"), CBOR, LIMIT)


# ---- renderings: bounded, made once, counted ------------------------------------------


def test_a_cbor_payloads_json_rendering_is_bounded_by_the_factor() -> None:
    limit = 1000
    # `false` renders as 6 bytes ("false,") for 1: over RENDERING_FACTOR x the limit.
    blowup = array_head(limit - 5) + b"\xf4" * (limit - 5)
    with pytest.raises(InvalidPayload, match=f"at most {RENDERING_FACTOR} x max_payload"):
        check_payload(blowup, CBOR, limit)
    # Small negative integers ("-24," for 1 byte) fit the factor exactly.
    fits = array_head(limit - 5) + b"\x37" * (limit - 5)
    _, rendering = checked_payload(fits, CBOR, limit)
    assert rendering is not None and len(rendering) <= RENDERING_FACTOR * limit


def test_values_needing_python_to_render_are_limited_per_payload() -> None:
    many = array_head(MAX_CONVERTED_VALUES) + b"\x40" * MAX_CONVERTED_VALUES  # b"" each
    assert check_payload(many, CBOR, LIMIT) is PayloadKind.CBOR
    too_many = array_head(MAX_CONVERTED_VALUES + 1) + b"\x40" * (MAX_CONVERTED_VALUES + 1)
    with pytest.raises(InvalidPayload, match=f"more than {MAX_CONVERTED_VALUES}"):
        check_payload(too_many, CBOR, LIMIT)
    simple = array_head(MAX_CONVERTED_VALUES) + b"\xf8\xff" * MAX_CONVERTED_VALUES
    assert check_payload(simple, CBOR, LIMIT) is PayloadKind.CBOR
    with pytest.raises(InvalidPayload, match=f"more than {MAX_CONVERTED_VALUES} simple values"):
        check_payload(array_head(1 << 20) + b"\xe0" * (1 << 20), CBOR, 2 << 20)
    # Those bytes inside other items (here, the argument of uint8 224) are not simple values.
    lookalikes = array_head(MAX_CONVERTED_VALUES * 2) + b"\x18\xe0" * MAX_CONVERTED_VALUES * 2
    assert check_payload(lookalikes, CBOR, LIMIT) is PayloadKind.CBOR
    bignums = array_head(MAX_CONVERTED_VALUES + 1) + b"\xc2\x40" * (MAX_CONVERTED_VALUES + 1)
    with pytest.raises(InvalidPayload, match=f"more than {MAX_CONVERTED_VALUES}"):
        check_payload(bignums, CBOR, LIMIT)


def test_the_json_rendering_made_at_publish_is_what_frames_and_history_use() -> None:
    data = cbor2.dumps({"a": b"\x00"})
    message = rendered(data, CBOR)
    assert message.rendering == b'{"a":{"base64":"AA=="}}'
    # Frames splice the kept rendering: the payload is never decoded again.
    message.rendering = b'"kept"'
    assert orjson.loads(encode_message_json(message))["data"] == "kept"
    assert payload_as_json(message) == b'"kept"'


def test_history_counts_a_messages_rendering_and_cached_frames() -> None:
    history = History(max_messages=10, max_bytes=10_000)
    message = rendered(cbor2.dumps([b"\x00" * 30]), CBOR)
    assert message.rendering is not None
    history.append(message)
    held = len(message.data) + len(message.rendering)
    assert history.retained_bytes == held
    frame = message.rendered(lambda m: b"frame:" + payload_as_json(m))
    assert history.retained_bytes == held + len(frame)
    message.rendered(lambda m: b"another format")
    assert history.retained_bytes == held + len(frame) + len(b"another format")
    assert history.retained_bytes == message.retained_bytes


def test_history_evicts_by_everything_a_message_holds_and_stops_counting_it() -> None:
    history = History(max_messages=10, max_bytes=280)
    first = rendered(cbor2.dumps(b"\x00" * 60), CBOR)  # 62 bytes, and 93 of JSON
    history.append(first)
    first.rendered(lambda m: bytes(100))
    assert history.retained_bytes == first.retained_bytes == 255
    second = rendered(cbor2.dumps(b"\x01" * 10), CBOR)  # 11 bytes, and 29 of JSON
    history.append(second)  # 255 + 40 > 280: the first goes
    assert [m.offset for m in history.read(0)] == [second.offset]
    assert history.retained_bytes == second.retained_bytes
    first.rendered(lambda m: bytes(50))  # an outbox still renders it: no longer counted
    assert history.retained_bytes == second.retained_bytes


# ---- JSON: nesting and exact integers ---------------------------------------------------


def nested_json(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def test_json_nesting_past_254_is_refused_at_publish_in_every_path() -> None:
    assert check_payload(nested_json(MAX_NESTING), JSON, LIMIT) is PayloadKind.JSON
    too_deep = nested_json(MAX_NESTING + 1)
    with pytest.raises(InvalidPayload, match=f"nested deeper than {MAX_NESTING}"):
        check_payload(too_deep, JSON, LIMIT)
    with pytest.raises(InvalidPayload, match="nested deeper"):
        load_bulk_body(b'{"messages":[{"topic":"a","data":' + too_deep + b"}]}",
                       PayloadKind.JSON)
    frame = b'{"op":"publish","topic":"a","id":3,"data":' + too_deep + b"}"
    with pytest.raises(RequestRejected) as rejected:
        decode_request(WireFormat.JSON, frame, LIMIT)
    assert (rejected.value.error.code, rejected.value.request_id) == ("invalid_payload", 3)
    # Brackets inside strings do not count.
    assert check_payload(orjson.dumps(["[" * 600]), JSON, LIMIT) is PayloadKind.JSON


BIG = [2**64, -(2**63) - 1, 2**200, -(10**300), 123456789012345678901234567890]


def test_json_integers_past_64_bits_reach_cbor_subscribers_exact() -> None:
    data = orjson.dumps({"n": 1})[:-1] + b',"big":' + json.dumps(BIG).encode() + b"}"
    message = rendered(data, JSON)
    assert cbor2.loads(encode_message_cbor(message))["data"] == {"n": 1, "big": BIG}
    assert encode_message_json(message).endswith(data + b"}")  # JSON: the bytes as sent
    frame = b'{"op":"publish","topic":"a","data":' + json.dumps(BIG).encode() + b"}"
    request = decode_request(WireFormat.JSON, frame, LIMIT)
    assert json.loads(request.data) == BIG
    body = b'{"messages":[{"topic":"a","data":' + json.dumps(BIG).encode() + b"}]}"
    [(_, payload)] = decode_batch(load_bulk_body(body, PayloadKind.JSON), PayloadKind.JSON,
                                  LIMIT)
    assert json.loads(payload.data) == BIG


def test_long_digit_runs_that_are_not_big_integers_render_as_before() -> None:
    data = orjson.dumps({"id": "12345678901234567890123", "x": 1.2345678901234567890123})
    message = rendered(data, JSON)
    assert cbor2.loads(encode_message_cbor(message))["data"] == orjson.loads(data)


# ---- fuzz: every input refused cleanly, or rendered within the bound ---------------------

FUZZ_LIMIT = 4096


def _tagged(number: int, value: Any) -> cbor2.CBORTag:
    return cbor2.CBORTag(number, value)


cbor_leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(), st.text(max_size=8), st.binary(max_size=8), st.just(cbor2.undefined),
    st.integers(0, 255).filter(lambda n: not 20 <= n <= 31).map(cbor2.CBORSimpleValue),
)
tag_numbers = st.one_of(st.sampled_from(sorted(set(ACCEPTED_TAGS) | set(REPLACED_TAGS))),
                        st.integers(0, 2**64 - 1))
cbor_trees = st.recursive(
    cbor_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), inner, max_size=3),
        st.builds(_tagged, tag_numbers, inner),
    ),
    max_leaves=10,
)


def _deep(levels: int, opener: bytes) -> bytes:
    return opener * levels + b"\x00"


cbor_bodies = st.one_of(
    cbor_trees.map(lambda value: cbor2.dumps(value, value_sharing=True)),
    cbor_trees.map(cbor2.dumps),
    st.binary(max_size=64),
    st.builds(_deep, st.integers(MAX_NESTING - 3, MAX_NESTING + 3),
              st.sampled_from([b"\x81", b"\xd9\xd9\xf7", b"\xc6", b"\xa1\x00"])),
    st.builds(lambda head, cut: head[:cut], st.binary(min_size=1, max_size=16),
              st.integers(0, 16)),
)


def assert_renders_within_bound(message: Message, limit: int) -> None:
    as_json = encode_message_json(message)
    as_cbor = encode_message_cbor(message)
    orjson.loads(as_json)
    cbor2.loads(as_cbor)
    envelope = 256
    assert len(as_json) <= RENDERING_FACTOR * limit + envelope
    assert len(as_cbor) <= RENDERING_FACTOR * limit + envelope


@settings(max_examples=400, deadline=None)
@given(cbor_bodies)
def test_fuzz_cbor_bodies_are_refused_cleanly_or_render_within_the_bound(body: bytes) -> None:
    try:
        message = rendered_with_limit(body, CBOR, FUZZ_LIMIT)
    except (InvalidPayload, PayloadTooLarge):
        return
    assert cbor_refusal(body) is None, "the broker took what its rules refuse"
    assert_renders_within_bound(message, FUZZ_LIMIT)


def rendered_with_limit(data: bytes, content_type: str, limit: int) -> Message:
    kind, rendering = checked_payload(data, content_type, limit)
    return Message("t", 0, data, content_type, kind, 0.0, rendering)


@settings(max_examples=300, deadline=None)
@given(cbor_trees, st.sampled_from([WireFormat.CBOR, WireFormat.JSON]))
def test_fuzz_publish_frames_are_rejected_cleanly_or_render_within_the_bound(
    data: Any, fmt: WireFormat
) -> None:
    obj = {"op": "publish", "topic": "t", "id": 1, "data": data}
    try:
        frame: bytes | str = (
            cbor2.dumps(obj, value_sharing=True) if fmt is WireFormat.CBOR
            else json.dumps(obj, default=repr)
        )
    except (ValueError, TypeError):
        return
    try:
        request = decode_request(fmt, frame, FUZZ_LIMIT)
    except RequestRejected as rejected:
        assert isinstance(rejected.error, BrokerError)
        return
    message = Message("t", 0, request.data, request.content_type, request.kind, 0.0,
                      request.rendering)
    assert_renders_within_bound(message, FUZZ_LIMIT)


json_trees = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**200), max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner,
                                                                  max_size=3),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None)
@given(json_trees, st.integers(0, MAX_NESTING + 4))
def test_fuzz_json_bodies_keep_integers_exact_or_are_refused_for_depth(
    value: Any, depth: int
) -> None:
    body = b"[" * depth + json.dumps(value).encode() + b"]" * depth
    try:
        message = rendered_with_limit(body, JSON, FUZZ_LIMIT)
    except PayloadTooLarge:
        return
    except InvalidPayload as refused:
        assert "nested deeper" in refused.message
        return
    assert cbor2.loads(encode_message_cbor(message))["data"] == json.loads(body)
    assert_renders_within_bound(message, FUZZ_LIMIT)


def test_the_budgets_retained_bytes_follow_every_history_change_without_drift() -> None:
    counters = BrokerCounters()
    history = History(max_messages=10, max_bytes=280, counters=counters)
    first = rendered(cbor2.dumps(b"\x00" * 60), CBOR)
    history.append(first)
    first.rendered(lambda m: bytes(100))  # a frame cached after the append
    assert counters.retained_bytes == history.retained_bytes == 255
    second = rendered(cbor2.dumps(b"\x01" * 10), CBOR)
    history.append(second)  # the first goes, frame and all
    assert counters.retained_bytes == history.retained_bytes == second.retained_bytes
    history.clear()
    first.rendered(lambda m: bytes(50))  # evicted messages count nowhere
    second.rendered(lambda m: bytes(70))
    assert counters.retained_bytes == history.retained_bytes == 0
