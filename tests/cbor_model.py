"""A model of the broker's CBOR input rules (README, "Payload rendering"), read off the bytes.

Independent of `broker.cbor_input` (which leans on cbor2's hooks): a recursive reader of
RFC 8949's item heads that says whether well-formed CBOR breaks a rule, and which. The
fuzz tests use it to know what the broker must answer.
"""

from __future__ import annotations

ACCEPTED_TAGS = frozenset((0, 1, 2, 3, 55799))
MAX_BIGNUM_BYTES = 128
MAX_NESTING = 254


class _End(Exception):
    """The bytes ended, or are not CBOR: the model has no verdict past this point."""


def cbor_refusal(data: bytes) -> str | None:
    """The first rule `data` breaks (a tag outside the allowlist, a bignum past 128 bytes or,
    in a map key, past 64 bits, nesting past 254), in decoding order; None if none is met
    before the bytes end or stop being CBOR."""
    try:
        _item(data, 0, 0, False)
    except _Refused as refused:
        return str(refused)
    except (_End, IndexError, RecursionError):
        return None
    return None


class _Refused(Exception):
    pass


def _head(data: bytes, at: int) -> tuple[int, int | None, int]:
    """(major type, argument or None for indefinite, position after the head)."""
    initial = data[at]
    major, info = initial >> 5, initial & 0x1F
    if info < 24:
        return major, info, at + 1
    if info in (24, 25, 26, 27):
        size = 1 << (info - 24)
        if at + 1 + size > len(data):
            raise _End
        return major, int.from_bytes(data[at + 1:at + 1 + size], "big"), at + 1 + size
    if info == 31 and major in (2, 3, 4, 5, 7):
        return major, None, at + 1
    raise _End  # reserved additional information: not CBOR


def _item(data: bytes, at: int, depth: int, in_key: bool) -> int:
    """Read the item at `at` (nested in `depth` containers and tags, inside a map key or
    not); its end."""
    major, argument, at = _head(data, at)
    if major in (0, 1) or major == 7:
        if argument is None:
            raise _End  # a break outside an indefinite item
        return at
    if major in (2, 3):
        if argument is not None:
            if at + argument > len(data):
                raise _End
            return at + argument
        while data[at] != 0xFF:
            chunk_major, length, at = _head(data, at)
            if chunk_major != major or length is None:
                raise _End
            at += length
        return at + 1
    if depth + 1 > MAX_NESTING:
        raise _Refused(f"nested deeper than {MAX_NESTING} levels")
    if major == 6:
        assert argument is not None
        if argument not in ACCEPTED_TAGS:
            raise _Refused(f"tag {argument}")
        if argument in (2, 3):
            content_major, length, content_at = _head(data, at)
            if content_major == 2 and length is not None:
                if length > MAX_BIGNUM_BYTES:
                    raise _Refused(f"a bignum of {length} bytes")
                magnitude = data[content_at:content_at + length].lstrip(b"\0")
                if in_key and len(magnitude) > 8 and content_at + length <= len(data):
                    raise _Refused("a bignum past 64 bits in a map key")
        return _item(data, at, depth + 1, in_key)
    count = argument
    per_entry = 2 if major == 5 else 1
    if count is None:
        while data[at] != 0xFF:
            at = _entry(data, at, depth, in_key, per_entry)
        return at + 1
    for _ in range(count):
        at = _entry(data, at, depth, in_key, per_entry)
    return at


def _entry(data: bytes, at: int, depth: int, in_key: bool, per_entry: int) -> int:
    """An array item (`per_entry` 1) or a map's key and value (2)."""
    if per_entry == 2:
        at = _item(data, at, depth + 1, True)
    return _item(data, at, depth + 1, in_key)
