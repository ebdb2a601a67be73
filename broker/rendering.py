"""A payload shown in the other wire format: CBOR as JSON, JSON as CBOR, text and bytes.

The costly one is made once, at publish (`codec.checked_payload`), and kept on the message
(`Message.rendering`): a CBOR payload's JSON text, bounded by `RENDERING_FACTOR` x
`max_payload_bytes`. Every later use (frames for subscribers, history answers) splices
those bytes in and never decodes the payload again. The others (a JSON payload as CBOR,
integers exact; text; bytes) cost time linear in the payload and are made when a frame
first needs them, once per message (`Message.rendered`, counted in `history_bytes`).
"""

from __future__ import annotations

import base64
import re
from typing import TYPE_CHECKING, Any

import cbor2
import orjson

from .cbor_input import MAX_CONVERTED_VALUES, BigInteger, RefusedCBOR, load_cbor_item
from .json_input import load_exact

if TYPE_CHECKING:
    from .messages import Message

# A CBOR payload's JSON rendering may be at most this many times `max_payload_bytes`
# (4 MiB under the default 1 MiB limit), else the payload is refused at publish. Ordinary
# CBOR renders to 1-3x its size (byte strings 1.33x plus 13 bytes, a double up to 25
# characters for 9 bytes, `-24,` for one byte); 4x still takes a limit-sized array of
# booleans or small negative integers, and refuses what only blows up (arrays of simple
# values render 14x: `{"simple":19},` for one byte).
RENDERING_FACTOR = 4


def _json_default(value: Any) -> Any:
    """orjson's fallback for leaf values CBOR can carry and JSON cannot: byte strings
    become `{"base64": ...}` as the contract says, simple values `{"simple": n}`,
    `undefined` null; tags `{"tag": n, "value": ...}`; anything else its text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, BigInteger):
        return str(value.value)  # beyond what orjson (and most JSON readers) take as a number
    if isinstance(value, cbor2.CBORSimpleValue):
        return {"simple": value.value}
    if value is cbor2.undefined:
        return None
    if isinstance(value, cbor2.CBORTag):
        return {"tag": value.tag, "value": value.value}
    if isinstance(value, set | frozenset):
        return list(value)
    if isinstance(value, re.Pattern):
        return value.pattern
    return str(value)


class _CountedDefault:
    """`_json_default` that refuses past `MAX_CONVERTED_VALUES` calls: a payload's JSON
    rendering costs at most that many Python calls (see `cbor_input`)."""

    __slots__ = ("calls",)

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, value: Any) -> Any:
        self.calls += 1
        if self.calls > MAX_CONVERTED_VALUES:
            raise RefusedCBOR(
                f"more than {MAX_CONVERTED_VALUES} values to convert for JSON"
                " (byte strings, simple values, undefined)"
            )
        return _json_default(value)


# Non-string map keys (CBOR allows them) written as orjson writes them: 1 -> "1".
_ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS


def to_json(value: Any, counted: bool = False) -> bytes:
    """JSON text of any decoded value: orjson with `_json_default` for what JSON lacks.

    `counted`: a payload's rendering (from `cbor_input`, bignums as `BigInteger`), refused
    (`RefusedCBOR`) past `MAX_CONVERTED_VALUES` conversions, and never walked in Python:
    what orjson cannot write even so (a CBOR integer below -2**63 that is not a bignum, a
    map key that is a byte string, an array or a map) raises TypeError. Otherwise (replies
    to clients) such a value is walked in Python first (`jsonable`).
    """
    if counted:
        return orjson.dumps(value, default=_CountedDefault(), option=_ORJSON_OPTIONS)
    try:
        return orjson.dumps(value, default=_json_default, option=_ORJSON_OPTIONS)
    except TypeError as exc:
        if "ecursion" in str(exc):
            raise
        return orjson.dumps(jsonable(value), default=_json_default)


def jsonable(value: Any) -> Any:
    """A value orjson can write: byte strings become `{"base64": ...}`, as the contract says;
    integers beyond 64 bits their decimal text; map keys their text."""
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, dict):
        return {_key_text(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, cbor2.CBORTag):
        return {"tag": value.tag, "value": jsonable(value.value)}
    if isinstance(value, BigInteger):
        return str(value.value)
    if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
        return str(value)  # beyond what orjson (and most JSON readers) take as a number
    if value is cbor2.undefined:
        return None
    if isinstance(value, set | frozenset):
        return [jsonable(v) for v in value]
    return value


def _key_text(key: Any) -> str:
    """A map key's text, as orjson writes keys under OPT_NON_STR_KEYS (`to_json`'s fast
    path), so both paths render a payload alike."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | float):
        return orjson.dumps(key).decode()
    return str(key)


def cbor_as_json(data: bytes) -> bytes:
    """The JSON rendering of CBOR `data` (decoded under `cbor_input`'s limits)."""
    return to_json(load_cbor_item(data), counted=True)


def payload_as_json(message: Message) -> bytes:
    """The JSON text of a message's `data` field, per the contract's passthrough rules."""
    kind = message.kind.value
    if kind == "json":
        return message.data
    if kind == "cbor":
        rendering = message.rendering
        return cbor_as_json(message.data) if rendering is None else rendering
    if kind == "text":
        return orjson.dumps(message.data.decode("utf-8"))
    return b'{"base64":"' + base64.b64encode(message.data) + b'"}'


def payload_as_cbor(message: Message) -> bytes:
    """The CBOR encoding of a message's `data` field, per the contract's passthrough rules."""
    kind = message.kind.value
    if kind == "cbor":
        return message.data
    if kind == "json":
        return cbor2.dumps(load_exact(message.data))  # integers beyond 64 bits stay exact
    if kind == "text":
        return cbor2.dumps(message.data.decode("utf-8"))
    return cbor2.dumps(message.data)


def payload_json_fragment(message: Message) -> orjson.Fragment:
    """The payload's JSON text for splicing into a JSON answer (history): not parsed again."""
    return orjson.Fragment(payload_as_json(message))
