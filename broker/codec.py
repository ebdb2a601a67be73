"""Wire formats, pure: payload kinds, client request decoding, server frame encoding.

The `PayloadKind` and `WireFormat` enums live in `formats.py` (so `messages.py` need not
import this module) and are re-exported here.

No I/O here. JSON uses orjson (several times faster than the stdlib on both encode and
decode); CBOR uses cbor2. A `message` frame splices the payload bytes in where the format
allows (a JSON payload into a JSON frame, a CBOR payload into a CBOR frame) so the hot path
does not decode and re-encode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2
import orjson

from .cbor_input import RefusedCBOR, encode_big_integer, load_cbor_item
from .errors import (
    BrokerError,
    InvalidFrame,
    InvalidPayload,
    InvalidTopic,
    PayloadTooLarge,
    UnknownOperation,
)
from .formats import PayloadKind, WireFormat
from .json_input import (
    _DIGIT_RUN,
    _DIGITS,
    SHALLOW_BYTES,
    RefusedJSON,
    check_nesting,
    dump_json,
    load_exact,
    load_json,
    may_hold_big_integers,
)
from .messages import Message, Payload
from .rendering import (
    RENDERING_FACTOR,
    _json_default,
    jsonable,
    payload_as_cbor,
    payload_as_json,
    payload_json_fragment,
    to_json,
)
from .subjects import validate_pattern, validate_topic

__all__ = [  # what other modules take from here, re-exported from the split-off modules too
    "RENDERING_FACTOR",
    "PayloadKind",
    "WireFormat",
    "_json_default",
    "check_payload",
    "checked_payload",
    "decode_batch",
    "decode_request",
    "encode_message_cbor",
    "encode_message_json",
    "jsonable",
    "load_bulk_body",
    "load_cbor_item",
    "payload_as_cbor",
    "payload_as_json",
    "payload_json_fragment",
    "to_json",
]

DEFAULT_CONTENT_TYPE = "application/octet-stream"


def media_type(content_type: str | None) -> str:
    """`application/json; charset=utf-8` -> `application/json`; missing -> octet-stream."""
    if not content_type:
        return DEFAULT_CONTENT_TYPE
    return content_type.split(";", 1)[0].strip().lower() or DEFAULT_CONTENT_TYPE


def payload_kind(content_type: str | None) -> PayloadKind:
    kind = media_type(content_type)
    if kind == "application/json" or kind.endswith("+json"):
        return PayloadKind.JSON
    if kind == "application/cbor" or kind.endswith("+cbor"):
        return PayloadKind.CBOR
    if kind.startswith("text/"):
        return PayloadKind.TEXT
    return PayloadKind.BINARY


def check_payload(data: bytes, content_type: str | None, max_bytes: int) -> PayloadKind:
    """Validate a payload for its content type; returns its kind or raises a BrokerError
    (see `checked_payload`)."""
    return checked_payload(data, content_type, max_bytes)[0]


def checked_payload(
    data: bytes, content_type: str | None, max_bytes: int
) -> tuple[PayloadKind, bytes | None]:
    """Validate a payload for its content type: its kind, and the rendering made now (a
    CBOR payload's JSON, bounded, see `rendering`; else None: the payload's other renderings
    are cheap and made when a frame first needs one). Raises a BrokerError naming what is
    wrong.

    JSON and CBOR payloads must parse (CBOR under `cbor_input`'s tag allowlist and limits,
    JSON at most `MAX_NESTING` deep) and text must be UTF-8, so that every subscriber,
    whatever its wire format, can be sent a faithful rendering.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"payload is {len(data)} bytes; the limit is {max_bytes}")
    kind = payload_kind(content_type)
    if kind is PayloadKind.JSON:
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidPayload(f"body is not valid JSON: {exc}") from exc
        if len(data) > SHALLOW_BYTES:  # shorter cannot be too deep (inline: per publish)
            try:
                check_nesting(data, value)
            except RefusedJSON as exc:
                raise InvalidPayload(f"body is refused: {exc}") from None
        return kind, None
    if kind is PayloadKind.CBOR:
        return kind, _bounded_json(_load_cbor(data, "body"), "body", max_bytes)
    if kind is PayloadKind.TEXT:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidPayload(f"text body is not valid UTF-8: {exc}") from exc
    return kind, None


def _bounded_json(value: Any, what: str, max_bytes: int) -> bytes:
    """The JSON rendering of a decoded CBOR value, refused past `RENDERING_FACTOR` x
    `max_bytes` (so memory per message is bounded, and counted in `history_bytes`)."""
    rendering = _cbor_as_json(value, what)
    limit = RENDERING_FACTOR * max_bytes
    if len(rendering) > limit:
        raise InvalidPayload(
            f"{what} renders to {len(rendering)} bytes of JSON; at most {RENDERING_FACTOR}"
            f" x max_payload_bytes ({limit}) are accepted"
        )
    return rendering


def _cbor_as_json(value: Any, what: str) -> bytes:
    """The JSON rendering of a CBOR value, or `InvalidPayload` if it has none: checked at
    publish, so rendering for subscribers later cannot fail."""
    try:
        return to_json(value, counted=True)
    except (RecursionError, TypeError, ValueError, orjson.JSONEncodeError) as exc:
        refusal = exc.__cause__ if isinstance(exc.__cause__, RefusedCBOR) else exc
        raise InvalidPayload(f"{what} cannot be shown as JSON: {refusal}") from None


def _load_cbor(data: bytes, what: str) -> Any:
    try:
        return load_cbor_item(data)
    except RefusedCBOR as exc:
        raise InvalidPayload(f"{what} is refused: {exc}") from None
    except Exception as exc:  # cbor2 raises several unrelated types for bad input
        raise InvalidPayload(f"{what} is not valid CBOR: {exc}") from exc


def load_bulk_body(body: bytes, kind: PayloadKind) -> Any:
    """The document of a bulk publish body (JSON with exact integers, or CBOR under the
    allowlist), or `InvalidPayload` naming why not."""
    if kind is PayloadKind.CBOR:
        return _load_cbor(body, "body")
    try:
        return load_json(body)
    except RefusedJSON as exc:
        raise InvalidPayload(f"body is refused: {exc}") from None
    except Exception as exc:
        raise InvalidPayload(f"body is not valid JSON: {exc}") from exc


def encode_message_json(message: Message) -> bytes:
    """`{"op":"message","topic":...,"offset":N,"data":...}` with the payload spliced in."""
    return b"".join(
        (
            b'{"op":"message","topic":',
            orjson.dumps(message.topic),
            b',"offset":',
            str(message.offset).encode("ascii"),
            b',"data":',
            payload_as_json(message),
            b"}",
        )
    )


_CBOR_MESSAGE_HEAD = b"\xa4" + cbor2.dumps("op") + cbor2.dumps("message") + cbor2.dumps("topic")
_CBOR_OFFSET_KEY = cbor2.dumps("offset")
_CBOR_DATA_KEY = cbor2.dumps("data")


def encode_message_cbor(message: Message) -> bytes:
    """The CBOR map of a `message` frame, with the payload's CBOR spliced in as `data`."""
    return b"".join(
        (
            _CBOR_MESSAGE_HEAD,
            cbor2.dumps(message.topic),
            _CBOR_OFFSET_KEY,
            cbor2.dumps(message.offset),
            _CBOR_DATA_KEY,
            payload_as_cbor(message),
        )
    )


def encode_object(fmt: WireFormat, obj: dict[str, Any]) -> bytes:
    """Encode a reply (`ok`, `error`, ...) for a connection's wire format."""
    if fmt is WireFormat.JSON:
        return to_json(obj)
    return cbor2.dumps(obj, default=encode_big_integer)


def encode_ok(fmt: WireFormat, request_id: Any, **fields: Any) -> bytes:
    return encode_object(fmt, {"op": "ok", "id": request_id, **fields})


def encode_published(fmt: WireFormat, request_id: Any, topic: str, offset: int) -> bytes:
    """A publish's `ok` (`encode_ok` with topic and offset, without merging keyword
    arguments: half the time, on every WebSocket publish)."""
    return encode_object(fmt, {"op": "ok", "id": request_id, "topic": topic, "offset": offset})


def encode_error(fmt: WireFormat, request_id: Any, error: BrokerError) -> bytes:
    return encode_object(
        fmt, {"op": "error", "id": request_id, "code": error.code, "message": error.message}
    )


# ---- client requests -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    topic: str
    start: int | str
    id: Any


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    topic: str
    id: Any


@dataclass(slots=True)  # per publish: not frozen (see `messages.Payload`); never mutated
class PublishRequest:
    topic: str
    data: bytes
    content_type: str
    kind: PayloadKind
    id: Any
    rendering: bytes | None = None  # made at publish, see `messages.Payload`


@dataclass(frozen=True, slots=True)
class PingRequest:
    id: Any


ClientRequest = SubscribeRequest | UnsubscribeRequest | PublishRequest | PingRequest


class RequestRejected(Exception):
    """A client frame that cannot be served; carries the error and the request's id."""

    def __init__(self, error: BrokerError, request_id: Any = None) -> None:
        super().__init__(error.message)
        self.error = error
        self.request_id = request_id


def parse_start(value: Any) -> int | str:
    """`"latest"`, `"earliest"` or a non-negative offset; anything else is invalid."""
    if value is None:
        return "latest"
    if isinstance(value, str) and value in ("latest", "earliest"):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InvalidFrame('"from" must be "latest", "earliest" or an offset >= 0')


def decode_request(fmt: WireFormat, frame: bytes | str, max_payload_bytes: int) -> ClientRequest:
    """Decode one client frame into a request object, or raise `RequestRejected`."""
    try:
        # A CBOR connection takes only binary frames (its caller refuses text ones), so a
        # CBOR `frame` is bytes; not checked again per frame (`ws-publish`).
        obj = orjson.loads(frame) if fmt is WireFormat.JSON else load_cbor_item(frame)  # type: ignore[arg-type]
    except RefusedCBOR as exc:
        raise RequestRejected(InvalidPayload(f"frame is refused: {exc}")) from None
    except Exception as exc:
        raise RequestRejected(InvalidFrame(f"frame is not valid {fmt.name}: {exc}")) from exc
    if not isinstance(obj, dict):
        raise RequestRejected(InvalidFrame("a frame must be an object with an \"op\" field"))
    request_id = obj.get("id")
    if not _plainly_echoable(request_id):
        try:
            encode_object(fmt, {"id": request_id})
        except (RecursionError, TypeError, ValueError, orjson.JSONEncodeError,
                cbor2.CBOREncodeError) as exc:
            raise RequestRejected(
                InvalidFrame(f"the id cannot be echoed back: {exc}")
            ) from None
    try:
        return _request_from_object(fmt, obj, request_id, max_payload_bytes, frame)
    except BrokerError as exc:
        raise RequestRejected(exc, request_id) from exc


def _plainly_echoable(request_id: Any) -> bool:
    """True for the ids clients use (an ASCII string, None, an int orjson writes), which
    both formats echo back as they are: no trial encoding per request (`ws-publish`).
    Others (a JSON string with a lone surrogate escape, a huge int, ...) are tried."""
    kind = type(request_id)
    if kind is str:
        text: str = request_id  # (a str: tested above, once, for every kind of id)
        return text.isascii()
    return request_id is None or (kind is int and -(1 << 63) <= request_id < (1 << 64))


def _request_from_object(
    fmt: WireFormat,
    obj: dict[Any, Any],
    request_id: Any,
    max_payload_bytes: int,
    frame: bytes | str,
) -> ClientRequest:
    op = obj.get("op")
    if op == "subscribe":
        return SubscribeRequest(
            validate_pattern(_required(obj, "topic")), parse_start(obj.get("from")), request_id
        )
    if op == "unsubscribe":
        return UnsubscribeRequest(validate_pattern(_required(obj, "topic")), request_id)
    if op == "publish":
        topic = validate_topic(_required(obj, "topic"))
        if "data" not in obj:
            raise InvalidFrame('"publish" needs a "data" field')
        value = obj["data"]
        try:
            if fmt is WireFormat.JSON:
                # orjson read integers past 64 bits as floats: such a frame is read again.
                # Inline (the check is ~0.2 us, on every WebSocket publish: `ws-publish`).
                if (_DIGIT_RUN in frame.translate(_DIGITS) if type(frame) is bytes
                        else may_hold_big_integers(frame)):
                    data = dump_json(load_exact(frame)["data"])
                else:
                    data = orjson.dumps(value)
                if len(data) > max_payload_bytes:
                    raise PayloadTooLarge(
                        f"payload is {len(data)} bytes; the limit is {max_payload_bytes}"
                    )
                return PublishRequest(topic, data, "application/json", PayloadKind.JSON,
                                      request_id)
            data = cbor2.dumps(value, default=encode_big_integer)
        except (RecursionError, TypeError, ValueError, orjson.JSONEncodeError,
                cbor2.CBOREncodeError) as exc:
            raise InvalidPayload(f'"data" cannot be encoded: {exc}') from None
        if len(data) > max_payload_bytes:
            raise PayloadTooLarge(
                f"payload is {len(data)} bytes; the limit is {max_payload_bytes}"
            )
        rendering = _bounded_json(value, '"data"', max_payload_bytes)
        return PublishRequest(topic, data, "application/cbor", PayloadKind.CBOR, request_id,
                              rendering)
    if op == "ping":
        return PingRequest(request_id)
    if not isinstance(op, str):
        raise InvalidFrame('a frame needs a string "op" field')
    raise UnknownOperation(f"unknown op {op!r}")


def _required(obj: dict[Any, Any], key: str) -> Any:
    if key not in obj:
        raise InvalidFrame(f"missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise InvalidTopic(f"field {key!r} must be a string")
    return value


# ---- bulk publish ----------------------------------------------------------------------

# Messages one bulk request may carry (the body size limit applies as well).
MAX_BATCH_MESSAGES = 10_000


def decode_batch(
    document: Any, body_kind: PayloadKind, max_payload_bytes: int
) -> list[tuple[str, Any]]:
    """Validate a whole bulk body `{"messages": [{"topic", "data"}, ...]}` before publishing.

    Returns `(topic, Payload)` pairs in request order; raises a BrokerError naming the first
    bad entry, so a batch is published entirely or not at all (as far as validation goes).
    `document` comes from `load_bulk_body`: integers exact, nesting checked; each entry's
    rendering is made here as for a single publish (`checked_payload`).
    """
    if not isinstance(document, dict) or not isinstance(document.get("messages"), list):
        raise InvalidPayload('bulk body must be an object {"messages": [...]}')
    entries = document["messages"]
    if len(entries) > MAX_BATCH_MESSAGES:
        raise PayloadTooLarge(f"a bulk request carries at most {MAX_BATCH_MESSAGES} messages")
    if body_kind is PayloadKind.JSON:
        encode, content_type = dump_json, "application/json"
    else:
        encode, content_type = _encode_cbor, "application/cbor"
    batch = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "data" not in entry:
            raise InvalidPayload(f'messages[{index}] must be an object with "topic" and "data"')
        try:
            topic = validate_topic(entry.get("topic"))
        except InvalidTopic as exc:
            raise InvalidTopic(f"messages[{index}]: {exc.message}") from exc
        try:
            data = encode(entry["data"])
        except Exception as exc:
            raise InvalidPayload(f"messages[{index}].data cannot be encoded: {exc}") from exc
        if len(data) > max_payload_bytes:
            raise PayloadTooLarge(
                f"messages[{index}] is {len(data)} bytes; the limit is {max_payload_bytes}"
            )
        rendering = None
        if body_kind is PayloadKind.CBOR:
            rendering = _bounded_json(entry["data"], f"messages[{index}].data",
                                      max_payload_bytes)
        batch.append((topic, Payload(data, content_type, body_kind, rendering)))
    return batch


def _encode_cbor(value: Any) -> bytes:
    return cbor2.dumps(value, default=encode_big_integer)
