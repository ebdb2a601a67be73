"""Protocol errors of WebSocket clients, logged without letting clients flood the log.

Each is logged at debug; at info, at most one summary line per `SUMMARY_SECONDS`
("N connections closed for protocol errors in the last 10 s"), written by the first error
after the period (a quiet broker writes nothing). A client that breaks the protocol in a
loop costs a counter, not a log line.
"""

from __future__ import annotations

import logging
import time

# Seconds between two info lines summing up protocol errors.
SUMMARY_SECONDS = 10.0


class ProtocolErrorLog:
    """Counts protocol-error closes and logs them as the module docstring says."""

    __slots__ = ("_count", "_line_at", "_log", "_period", "_since")

    def __init__(self, log: logging.Logger, period: float = SUMMARY_SECONDS) -> None:
        self._log = log
        self._period = period
        self._count = 0  # errors since `_since`, not summed up yet
        self._since = time.monotonic()
        self._line_at = -period  # when the last summary was written

    def closed(self, connection_id: int, reason: str, now: float | None = None) -> None:
        """Connection `connection_id` is closed for `reason` (a client's fault)."""
        self._log.debug("connection %d: closing: %s", connection_id, reason)
        self._count += 1
        now = time.monotonic() if now is None else now
        if now - self._line_at >= self._period:
            self._log.info(
                "%d WebSocket connections closed for protocol errors in the last %.0f s "
                "(the latest: %s)", self._count, now - self._since, reason,
            )
            self._count = 0
            self._since = self._line_at = now


__all__ = ["SUMMARY_SECONDS", "ProtocolErrorLog"]
