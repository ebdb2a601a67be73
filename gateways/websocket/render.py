"""The frames the broker sends on its own: a message, a gap report, rendered once.

A message's frame is the same bytes for every subscriber of one wire format, so it is made
once per message per format and cached on the message (`Message.rendered`, keyed by these
long-lived functions); the outbox queues the message and writes the cached frame.
"""

from __future__ import annotations

from collections.abc import Callable

from broker import Gap, Message, WireFormat, codec

from .frames import binary_frame, text_frame


def render_json(message: Message) -> bytes:
    """A `message` frame for `broker.v1.json` connections (cached on the message)."""
    return text_frame(codec.encode_message_json(message))


def render_cbor(message: Message) -> bytes:
    """A `message` frame for `broker.v1.cbor` connections (cached on the message)."""
    return binary_frame(codec.encode_message_cbor(message))


RENDERERS: dict[WireFormat, Callable[[Message], bytes]] = {
    WireFormat.JSON: render_json,
    WireFormat.CBOR: render_cbor,
}


def _gap_object(gap: Gap) -> dict[str, object]:
    """`{"op": "gap", ...}`: messages of a topic dropped for this subscriber."""
    return {"op": "gap", "topic": gap.topic, "skipped": gap.skipped,
            "from": gap.first, "to": gap.last}


def render_gap_json(gap: Gap) -> bytes:
    return text_frame(codec.encode_object(WireFormat.JSON, _gap_object(gap)))


def render_gap_cbor(gap: Gap) -> bytes:
    return binary_frame(codec.encode_object(WireFormat.CBOR, _gap_object(gap)))


GAP_RENDERERS: dict[WireFormat, Callable[[Gap], bytes]] = {
    WireFormat.JSON: render_gap_json,
    WireFormat.CBOR: render_gap_cbor,
}


__all__ = [
    "GAP_RENDERERS",
    "RENDERERS",
    "render_cbor",
    "render_gap_cbor",
    "render_gap_json",
    "render_json",
]
