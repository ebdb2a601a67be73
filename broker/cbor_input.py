"""CBOR from untrusted clients, decoded with bounded cost: a tag allowlist and limits.

cbor2 decodes some semantic tags into costly Python objects (tag 30 into a `Fraction`, tag
4 into a `Decimal` whose rendering is quadratic in its exponent, tag 36 into a parsed MIME
message) and resolves value sharing (tags 28/29) into a graph that renders exponentially.
Here every tag outside `ACCEPTED_TAGS` is refused where the decoder meets it, before its
content is used: cbor2's own decoders for the built-in tags are replaced by refusals
(`semantic_decoders`) and unknown tags reach `tag_hook`, which refuses as well. What is
accepted costs time linear in the payload's size in cbor2's C decoder.

Sizes need no check of ours: cbor2 (checked on 6.3) allocates a string, array or map as its
bytes arrive, never from its declared length, so a 9-byte header that announces 2**40
bytes fails at the end of the input.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime
from typing import Any

import cbor2

# Tags decoded: date/time (0: RFC 3339 text, 1: epoch seconds), bignums (2, 3; at most
# `MAX_BIGNUM_BYTES` bytes) and the self-describe prefix (55799, which only marks the data
# as CBOR). Each has a decoder of ours (55799: cbor2's, which returns the content) whose
# cost is linear in its content.
ACCEPTED_TAGS = (0, 1, 2, 3, 55799)
# cbor2's built-in decoders (6.3: found by decoding every tag below 70,000) that we replace
# by a refusal: decimal fractions and bigfloats (4, 5), string references (25, 256), value
# sharing (28, 29), rationals (30), regular expressions (35), MIME (36), UUIDs (37), IP
# addresses and networks (52, 54, 260, 261), dates (100, 1004), sets (258) and complex
# numbers (43000). Several are costly or unbounded; the cheap ones would render to JSON
# as Python's text for the object, which no JSON reader can read back.
REPLACED_TAGS = (4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004, 43000)
# A bignum's magnitude in bytes: 1024 bits. Its JSON rendering is its decimal text
# (CPython's int-to-text is quadratic, and refused past 4,300 digits); 128 bytes are 309
# digits, about the largest a JSON reader takes as a number (1.8e308, a double's limit).
MAX_BIGNUM_BYTES = 128
# Values in one payload that take a Python call to decode or to render as JSON (byte
# strings, bignums, dates, simple values, undefined): each costs ~0.6 us where the rest
# of a payload costs ~0.03 us a value in C, so a 1 MiB payload of them alone would hold the
# event loop ~0.6 s. 32,768 of them cost ~20 ms to decode and as much to render.
MAX_CONVERTED_VALUES = 32_768
# Containers and tags nested in one another. 254 is what orjson writes (a payload's JSON
# rendering must be writable), and what JSON payloads are held to (`json_input`).
MAX_NESTING = 254


class RefusedCBOR(ValueError):
    """CBOR that is well formed but outside what the broker decodes; the message says why."""


class BigInteger:
    """A bignum beyond 64 bits, as decoded: orjson cannot write such an int, and would
    refuse the whole value; this one reaches its `default` instead (rendered as the
    number's decimal text), so rendering never has to walk the value in Python. Encode
    values holding one with `cbor2.dumps(..., default=encode_big_integer)`."""

    __slots__ = ("value",)

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BigInteger) and other.value == self.value

    def __hash__(self) -> int:
        return hash(self.value)

    def __repr__(self) -> str:
        return f"BigInteger({self.value})"


def encode_big_integer(encoder: cbor2.CBOREncoder, value: Any) -> None:
    """cbor2's `default` for `BigInteger` (a bignum again)."""
    if not isinstance(value, BigInteger):
        raise cbor2.CBOREncodeTypeError(f"cannot encode {type(value).__name__}")
    encoder.encode(value.value)


# Values converted by our tag decoders in the `load_cbor_item` call under way (decoding is
# synchronous and our decoders never decode, so one count serves every call).
_converted = [0]


def _count_conversion() -> None:
    _converted[0] += 1
    if _converted[0] > MAX_CONVERTED_VALUES:
        raise RefusedCBOR(
            f"more than {MAX_CONVERTED_VALUES} tagged values (bignums, dates) in one item"
        )


def load_cbor_item(data: bytes) -> Any:
    """Decode exactly one CBOR item under the allowlist and limits above.

    Raises `RefusedCBOR` naming the reason for a refused tag, a bignum too large or nesting
    too deep, and another exception (cbor2's, or ValueError for trailing bytes) for data
    that is not valid CBOR (a tag whose content is of the wrong type, a bad date).
    Trailing bytes are an error (`cbor2.loads` ignores them, which would let a payload mean
    one thing to CBOR and another to JSON readers).
    """
    if len(data) > MAX_CONVERTED_VALUES and _too_many_simple_values(data):
        raise RefusedCBOR(f"more than {MAX_CONVERTED_VALUES} simple values in one item")
    stream = io.BytesIO(data)
    _converted[0] = 0
    decoder = cbor2.CBORDecoder(
        stream, tag_hook=_refuse_unknown_tag, semantic_decoders=_SEMANTIC_DECODERS,
        max_depth=MAX_NESTING,
    )
    try:
        value = decoder.decode()
    except cbor2.CBORDecodeError as exc:
        refusal = _refusal_in(exc)
        if refusal is not None:
            raise refusal from None
        if "nesting depth" in str(exc):
            raise RefusedCBOR(f"CBOR nested deeper than {MAX_NESTING} levels") from None
        raise
    if stream.tell() != len(data):
        raise ValueError(f"{len(data) - stream.tell()} bytes after the CBOR item")
    return value


# Simple values other than false/true/null/undefined (0xE0-0xF3, 0xF8 nn): cbor2 makes a
# Python object of each (~0.3 us: 1 MiB of them held the event loop 285 ms), with no hook
# to stop it, so they are counted before decoding.
_SIMPLE_VALUE_BYTES = bytes(range(0xE0, 0xF4)) + b"\xf8"
# Bytes after an item's first byte in its head (its argument), by first byte.
_ARGUMENT_BYTES = bytes({24: 1, 25: 2, 26: 4, 27: 8}.get(byte & 0x1F, 0) for byte in range(256))


def _too_many_simple_values(data: bytes) -> bool:
    """Whether `data` holds more than `MAX_CONVERTED_VALUES` simple values.

    Counting their bytes is a C pass (~1 ms a MiB) and a bound: most payloads stop there.
    Past it, the item heads are read in Python (strings skipped whole, ~0.1 us a head),
    stopping at the first simple value past the limit, so an array of them costs ~5 ms;
    a crafted body of other items with those bytes in their arguments, ~60 ms a MiB.
    """
    if len(data) - len(data.translate(None, _SIMPLE_VALUE_BYTES)) <= MAX_CONVERTED_VALUES:
        return False
    argument = _ARGUMENT_BYTES
    count = 0
    at, end = 0, len(data)
    while at < end:
        first = data[at]
        if first >= 0xE0:
            if first < 0xF4 or first == 0xF8:
                count += 1
                if count > MAX_CONVERTED_VALUES:
                    return True
            at += 1 + argument[first]
        elif 0x40 <= first < 0x80:  # a byte or text string (or chunk): skip its bytes
            info = first & 0x1F
            if info < 24:
                at += 1 + info
            elif info == 31:  # indefinite: its chunks are read as heads
                at += 1
            else:
                size = argument[first]
                at += 1 + size + int.from_bytes(data[at + 1:at + 1 + size], "big")
        else:
            at += 1 + argument[first]
    return False


def _refusal_in(exc: BaseException) -> RefusedCBOR | None:
    """cbor2 wraps what a hook raises (once per enclosing tag): find ours in the chain."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < MAX_NESTING + 2:
        if isinstance(cause, RefusedCBOR):
            return cause
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return None


def _refuse_unknown_tag(tag: cbor2.CBORTag, immutable: bool = False) -> Any:
    raise RefusedCBOR(_not_accepted(tag.tag))


def _not_accepted(tag: int) -> str:
    accepted = ", ".join(map(str, ACCEPTED_TAGS))
    return f"CBOR tag {tag} is not accepted (accepted tags: {accepted})"


def _refusal(tag: int) -> Any:
    message = _not_accepted(tag)

    def refuse(value: Any, immutable: bool = False) -> Any:
        raise RefusedCBOR(message)

    return refuse


def _date_time_text(value: Any, immutable: bool = False) -> datetime:
    """Tag 0: an RFC 3339 date/time (read by `datetime.fromisoformat`, linear)."""
    _count_conversion()
    if not isinstance(value, str):
        raise ValueError("a CBOR date/time (tag 0) must hold a text string")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("a CBOR date/time (tag 0) that is not RFC 3339") from None


def _epoch_date_time(value: Any, immutable: bool = False) -> datetime:
    """Tag 1: seconds since 1970 (UTC)."""
    _count_conversion()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("a CBOR epoch date/time (tag 1) must hold a number")
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise ValueError("a CBOR epoch date/time (tag 1) out of range") from None


def _bignum(negative: bool) -> Any:
    def decode(value: Any, immutable: bool = False) -> int | BigInteger:
        _count_conversion()
        if not isinstance(value, bytes):
            raise ValueError("a CBOR bignum (tag 2/3) must hold a byte string")
        if len(value) > MAX_BIGNUM_BYTES:
            raise RefusedCBOR(
                f"a CBOR bignum of {len(value)} bytes; at most {MAX_BIGNUM_BYTES} are accepted"
            )
        number = int.from_bytes(value, "big")
        if immutable and number >> 64:
            # Map keys: integers past 64 bits can be chosen to share one hash (n * (2**61
            # - 1)), which would make building the map quadratic.
            raise RefusedCBOR("a CBOR bignum beyond 64 bits as a map key")
        if negative:
            number = -1 - number
        return number if -(1 << 63) <= number < (1 << 64) else BigInteger(number)

    return decode


_SEMANTIC_DECODERS: dict[int, Any] = {tag: _refusal(tag) for tag in REPLACED_TAGS}
_SEMANTIC_DECODERS[2] = _bignum(negative=False)
_SEMANTIC_DECODERS[3] = _bignum(negative=True)
_SEMANTIC_DECODERS[0] = _date_time_text
_SEMANTIC_DECODERS[1] = _epoch_date_time
