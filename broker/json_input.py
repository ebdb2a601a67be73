"""JSON from clients, held to what every rendering can show: nesting and exact integers.

orjson parses fast but reads an integer beyond 64 bits as a float, and writes at most 254
levels of nesting. A JSON payload nested deeper would be accepted and then fail in every
later rendering (history answers, CBOR frames): nesting past `MAX_NESTING` is refused at
publish. A payload is kept byte for byte, so its integers stay exact in JSON; its CBOR
rendering (`load_exact`, made once when a CBOR frame first needs it) reads a text that may
hold such an integer (a run of 19 digits or more: 2**63 has 19) with the standard library,
which keeps integers exact. Only such texts take that slower path. orjson refuses numbers
past a double's range (about 1.8e308) as infinity, so an integer in a payload has at most
309 digits.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

from .cbor_input import MAX_NESTING

# A digit run that long may be an integer orjson cannot hold (below -2**63 or from 2**64).
# Found in bytes by mapping digits to "1" and the rest to "0" and looking for 19 ones: two
# C passes, ~0.2 us for 100 bytes where a regex search took ~1 us.
_DIGITS = bytes(0x31 if 0x30 <= byte <= 0x39 else 0x30 for byte in range(256))
_DIGIT_RUN = b"1" * 19
_LONG_DIGITS_TEXT = re.compile(r"[0-9]{19}")
# The integers orjson reads and writes as they are.
_INT64_MIN = -(1 << 63)
_UINT64_END = 1 << 64
# A JSON text this short cannot nest past `MAX_NESTING` (two bytes a level).
SHALLOW_BYTES = 2 * MAX_NESTING


class RefusedJSON(ValueError):
    """Valid JSON the broker does not accept (nested too deep): the message says why."""


def check_nesting(text: bytes | str, value: Any) -> None:
    """Refuse `value` (parsed from `text`) if nested deeper than `MAX_NESTING`.

    A text of at most `SHALLOW_BYTES` cannot be that deep; else counting brackets bounds
    the depth (two C scans); only a text with more brackets than the limit is checked
    exactly, by orjson writing the value (it refuses past 254 levels: `MAX_NESTING`).
    """
    if len(text) <= SHALLOW_BYTES:
        return
    if isinstance(text, bytes):
        brackets = text.count(b"[") + text.count(b"{")
    else:
        brackets = text.count("[") + text.count("{")
    if brackets <= MAX_NESTING:
        return
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if "ecursion" in str(exc):
            raise RefusedJSON(f"JSON nested deeper than {MAX_NESTING} levels") from None
        raise


def may_hold_big_integers(text: bytes | str) -> bool:
    """False when no integer in `text` can be beyond orjson's range (the common case)."""
    if isinstance(text, bytes):
        return _DIGIT_RUN in text.translate(_DIGITS)
    return _LONG_DIGITS_TEXT.search(text) is not None


def load_exact(text: bytes | str) -> Any:
    """Parse JSON (already known valid, at most `MAX_NESTING` deep) keeping every integer
    exact: orjson, or the standard library for a text that may hold big integers."""
    if not may_hold_big_integers(text):
        return orjson.loads(text)
    return json.loads(text)


def load_json(text: bytes | str) -> Any:
    """Parse a client's JSON document, integers exact. Raises orjson.JSONDecodeError for
    what is not JSON and `RefusedJSON` for nesting past `MAX_NESTING`."""
    value = orjson.loads(text)
    check_nesting(text, value)
    if may_hold_big_integers(text):
        value = json.loads(text)
    return value


def dump_json(value: Any) -> bytes:
    """JSON text of a value from `load_json`: orjson, or the standard library when the
    value holds integers beyond 64 bits (which orjson refuses)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
