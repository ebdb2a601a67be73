"""Wire formats, pure: payload kinds, client request decoding, server frame encoding.

No I/O here. JSON uses orjson (several times faster than the stdlib on both encode and
decode); CBOR uses cbor2. A `message` frame splices the payload bytes in where the format
allows (a JSON payload into a JSON frame, a CBOR payload into a CBOR frame) so the hot path
does not decode and re-encode.
"""

from __future__ import annotations

import base64
import enum
import io
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import cbor2
import orjson

from .errors import (
    BrokerError,
    InvalidFrame,
    InvalidPayload,
    InvalidTopic,
    PayloadTooLarge,
    UnknownOperation,
)
from .subjects import validate_pattern, validate_topic

if TYPE_CHECKING:
    from .messages import Message

DEFAULT_CONTENT_TYPE = "application/octet-stream"


class PayloadKind(enum.Enum):
    """How a payload is shown to subscribers, decided by its content type."""

    JSON = "json"
    CBOR = "cbor"
    TEXT = "text"
    BINARY = "binary"


class WireFormat(enum.Enum):
    """The WebSocket subprotocols, and the frame type each uses."""

    JSON = "broker.v1.json"
    CBOR = "broker.v1.cbor"

    @property
    def subprotocol(self) -> str:
        return self.value


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
    """Validate a payload for its content type; returns its kind or raises a BrokerError.

    JSON and CBOR payloads must parse and text must be UTF-8, so that every subscriber,
    whatever its wire format, can be sent a faithful rendering.
    """
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"payload is {len(data)} bytes; the limit is {max_bytes}")
    kind = payload_kind(content_type)
    if kind is PayloadKind.JSON:
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            raise InvalidPayload(f"body is not valid JSON: {exc}") from exc
    elif kind is PayloadKind.CBOR:
        _cbor_as_json(_load_cbor(data, "body"), "body")
    elif kind is PayloadKind.TEXT:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidPayload(f"text body is not valid UTF-8: {exc}") from exc
    return kind


def load_cbor_item(data: bytes) -> Any:
    """Decode exactly one CBOR item; trailing bytes are an error (`cbor2.loads` ignores
    them, which would let a payload mean one thing to CBOR and another to JSON readers)."""
    stream = io.BytesIO(data)
    value = cbor2.CBORDecoder(stream).decode()
    if stream.tell() != len(data):
        raise ValueError(f"{len(data) - stream.tell()} bytes after the CBOR item")
    return value


def _cbor_as_json(value: Any, what: str) -> bytes:
    """The JSON rendering of a CBOR value, or `InvalidPayload` if it has none (e.g. the
    cyclic structures CBOR's shared-reference tags can build): checked at publish, so
    rendering for subscribers later cannot fail."""
    try:
        return to_json(value)
    except (RecursionError, TypeError, ValueError, orjson.JSONEncodeError) as exc:
        raise InvalidPayload(f"{what} cannot be shown as JSON: {type(exc).__name__}") from None


def _load_cbor(data: bytes, what: str) -> Any:
    try:
        return load_cbor_item(data)
    except Exception as exc:  # cbor2 raises several unrelated types for bad input
        raise InvalidPayload(f"{what} is not valid CBOR: {exc}") from exc


# ---- JSON views of arbitrary values ----------------------------------------------------


def _json_default(value: Any) -> Any:
    """orjson's fallback for leaf values CBOR can carry and JSON cannot: simple values
    become `{"simple": n}`; decimals, fractions, IP addresses, regexes etc. their text."""
    if isinstance(value, cbor2.CBORSimpleValue):
        return {"simple": value.value}
    if isinstance(value, re.Pattern):
        return value.pattern
    return str(value)


def to_json(value: Any) -> bytes:
    """JSON text of any decoded value (see `jsonable` and `_json_default`).

    Plain JSON values (all that a JSON connection ever sends) are written as they are:
    orjson raises TypeError on everything `jsonable` would change (byte strings, tags,
    sets, non-string keys, integers beyond 64 bits), and only then is the value walked.
    """
    try:
        return orjson.dumps(value)
    except TypeError:
        return orjson.dumps(jsonable(value), default=_json_default)


def jsonable(value: Any) -> Any:
    """A value orjson can write: byte strings become `{"base64": ...}`, as the contract says."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {k if isinstance(k, str) else str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, cbor2.CBORTag):
        return {"tag": value.tag, "value": jsonable(value.value)}
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)  # beyond what orjson (and most JSON readers) take as a number
    if value is cbor2.undefined:
        return None
    if isinstance(value, set | frozenset):
        return [jsonable(v) for v in value]
    return value


def payload_as_json(message: Message) -> bytes:
    """The JSON text of a message's `data` field, per the contract's passthrough rules."""
    kind = message.kind
    if kind is PayloadKind.JSON:
        return message.data
    if kind is PayloadKind.TEXT:
        return orjson.dumps(message.data.decode("utf-8"))
    if kind is PayloadKind.CBOR:
        return to_json(cbor2.loads(message.data))
    return b'{"base64":"' + base64.b64encode(message.data) + b'"}'


def payload_as_cbor(message: Message) -> bytes:
    """The CBOR encoding of a message's `data` field, per the contract's passthrough rules."""
    kind = message.kind
    if kind is PayloadKind.CBOR:
        return message.data
    if kind is PayloadKind.JSON:
        return cbor2.dumps(orjson.loads(message.data))
    if kind is PayloadKind.TEXT:
        return cbor2.dumps(message.data.decode("utf-8"))
    return cbor2.dumps(message.data)


def payload_value(message: Message) -> Any:
    """The payload as a Python value (for JSON listings such as history replies)."""
    return orjson.loads(payload_as_json(message))


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
    return cbor2.dumps(obj)


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
    if value in ("latest", "earliest"):
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise InvalidFrame('"from" must be "latest", "earliest" or an offset >= 0')


def decode_request(fmt: WireFormat, frame: bytes | str, max_payload_bytes: int) -> ClientRequest:
    """Decode one client frame into a request object, or raise `RequestRejected`."""
    try:
        obj = orjson.loads(frame) if fmt is WireFormat.JSON else load_cbor_item(frame)
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
        return _request_from_object(fmt, obj, request_id, max_payload_bytes)
    except BrokerError as exc:
        raise RequestRejected(exc, request_id) from exc


def _plainly_echoable(request_id: Any) -> bool:
    """True for the ids clients use (an ASCII string, None, an int orjson writes), which
    both formats echo back as they are: no trial encoding per request (`ws-publish`).
    Others (a JSON string with a lone surrogate escape, a huge int, ...) are tried."""
    kind = type(request_id)
    if kind is str:
        return request_id.isascii()  # type: ignore[no-any-return]
    return request_id is None or (kind is int and -(1 << 63) <= request_id < (1 << 64))


def _request_from_object(
    fmt: WireFormat, obj: dict[Any, Any], request_id: Any, max_payload_bytes: int
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
        try:
            if fmt is WireFormat.JSON:
                data, kind = orjson.dumps(obj["data"]), PayloadKind.JSON
                content_type = "application/json"
            else:
                data, kind = cbor2.dumps(obj["data"]), PayloadKind.CBOR
                content_type = "application/cbor"
                _cbor_as_json(obj["data"], '"data"')
        except (RecursionError, TypeError, ValueError, orjson.JSONEncodeError,
                cbor2.CBOREncodeError) as exc:
            raise InvalidPayload(f'"data" cannot be encoded: {type(exc).__name__}') from None
        if len(data) > max_payload_bytes:
            raise PayloadTooLarge(
                f"payload is {len(data)} bytes; the limit is {max_payload_bytes}"
            )
        return PublishRequest(topic, data, content_type, kind, request_id)
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
    """
    from .messages import Payload

    if not isinstance(document, dict) or not isinstance(document.get("messages"), list):
        raise InvalidPayload('bulk body must be an object {"messages": [...]}')
    entries = document["messages"]
    if len(entries) > MAX_BATCH_MESSAGES:
        raise PayloadTooLarge(f"a bulk request carries at most {MAX_BATCH_MESSAGES} messages")
    if body_kind is PayloadKind.JSON:
        dumps, content_type = orjson.dumps, "application/json"
    else:
        dumps, content_type = cbor2.dumps, "application/cbor"
    batch = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or "data" not in entry:
            raise InvalidPayload(f'messages[{index}] must be an object with "topic" and "data"')
        try:
            topic = validate_topic(entry.get("topic"))
        except InvalidTopic as exc:
            raise InvalidTopic(f"messages[{index}]: {exc.message}") from exc
        try:
            data = dumps(entry["data"])
        except Exception as exc:
            raise InvalidPayload(f"messages[{index}].data cannot be encoded: {exc}") from exc
        if len(data) > max_payload_bytes:
            raise PayloadTooLarge(
                f"messages[{index}] is {len(data)} bytes; the limit is {max_payload_bytes}"
            )
        batch.append((topic, Payload(data, content_type, body_kind)))
    return batch
