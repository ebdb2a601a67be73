"""JSON from clients, held to what every rendering can show: nesting and exact integers.

orjson parses fast but reads an integer beyond 64 bits as a float, and writes at most 254
levels of nesting. A JSON payload nested deeper would be accepted and then fail in every
later rendering (history answers, CBOR frames); one with a big integer would reach CBOR
subscribers as a float. So nesting past `MAX_NESTING` is refused, and a text that may hold
such an integer (a run of 19 digits or more: 2**63 has 19) is parsed again by the standard
library, which keeps integers exact. Only such texts take that slower path.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from .cbor_input import MAX_BIGNUM_BYTES, MAX_NESTING

# A digit run that long may be an integer orjson cannot hold (below -2**63 or from 2**64).
_LONG_DIGITS = re.compile(rb"\d{19}")
_LONG_DIGITS_TEXT = re.compile(r"\d{19}")
# The integers orjson reads and writes as they are.
_INT64_MIN = -(1 << 63)
_UINT64_END = 1 << 64
# Integers as large as a CBOR bignum may be (`cbor_input.MAX_BIGNUM_BYTES`): 309 digits.
_MAX_INTEGER_BITS = MAX_BIGNUM_BYTES * 8


class RefusedJSON(ValueError):
    """Valid JSON the broker does not accept (too deep, an integer too large): says why."""


def check_nesting(text: bytes | str, value: Any) -> None:
    """Refuse `value` (parsed from `text`) if nested deeper than `MAX_NESTING`.

    Counting brackets is a bound on the depth and costs two C scans; only a text with more
    brackets than the limit is checked exactly, by orjson writing the value (which refuses
    past 254 levels, exactly `MAX_NESTING`).
    """
    if isinstance(text, bytes):
        brackets = text.count(b"[") + text.count(b"{")
    else:
        brackets = text.count("[") + text.count("{")
    if brackets <= MAX_NESTING:
        return
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if "Recursion" in str(exc) or "recursion" in str(exc):
            raise RefusedJSON(f"JSON nested deeper than {MAX_NESTING} levels") from None
        # Anything else (an integer past 64 bits) is the caller's to look at.


def may_hold_big_integers(text: bytes | str) -> bool:
    """False when no integer in `text` can be beyond orjson's range (the common case)."""
    if isinstance(text, bytes):
        return _LONG_DIGITS.search(text) is not None
    return _LONG_DIGITS_TEXT.search(text) is not None


def load_exact(text: bytes | str) -> tuple[Any, bool]:
    """Parse JSON (already known valid) keeping every integer exact: the value, and whether
    it holds an integer beyond orjson's range. Raises `RefusedJSON` past `MAX_NESTING`
    levels or for an integer beyond 1024 bits."""
    found = False

    def exact_int(digits: str) -> int:
        nonlocal found
        # Bits grow by log2(10) a digit: more digits than that many bits allow is too big.
        if len(digits) > _MAX_INTEGER_BITS * 0.302 + 2:
            raise RefusedJSON(f"a JSON integer beyond {_MAX_INTEGER_BITS} bits")
        number = int(digits)
        if not _INT64_MIN <= number < _UINT64_END:
            if number.bit_length() > _MAX_INTEGER_BITS:
                raise RefusedJSON(f"a JSON integer beyond {_MAX_INTEGER_BITS} bits")
            found = True
        return number

    try:
        value = json.loads(text, parse_int=exact_int)
    except RecursionError:
        raise RefusedJSON(f"JSON nested deeper than {MAX_NESTING} levels") from None
    return value, found


def load_json(text: bytes | str) -> Any:
    """Parse a client's JSON document, integers exact. Raises orjson.JSONDecodeError for
    what is not JSON and `RefusedJSON` for what is refused (see the module docstring)."""
    value = orjson.loads(text)
    check_nesting(text, value)
    if may_hold_big_integers(text):
        value, _ = load_exact(text)
    return value


def dump_json(value: Any) -> bytes:
    """JSON text of a value from `load_json`: orjson, or the standard library when the
    value holds integers beyond 64 bits (which orjson refuses)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        if not _holds_big_integers(value):
            raise
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _holds_big_integers(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool):
            if not _INT64_MIN <= item < _UINT64_END:
                return True
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False
