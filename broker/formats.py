"""Payload kinds and wire formats: the two enums that messages and the codec both name.

Apart from `codec.py` so that `messages.py` can name a payload's kind without importing the
codec, and the codec can import `Message` and `Payload` (no import cycle).
"""

from __future__ import annotations

import enum


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


__all__ = ["PayloadKind", "WireFormat"]
