"""Protocol errors are logged at debug, and summed up at info at most once per period."""

from __future__ import annotations

import logging

import pytest

from gateways.websocket.protocol_log import ProtocolErrorLog


def test_a_flood_of_protocol_errors_makes_one_info_line_per_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.protocol_log")
    errors = ProtocolErrorLog(log, period=10.0)
    with caplog.at_level(logging.DEBUG, logger="test.protocol_log"):
        for n in range(1000):
            errors.closed(n, "protocol error", now=1000.0 + n * 0.01)  # 10 s of errors
        errors.closed(1000, "message too big", now=1010.5)
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(debug) == 1001
    assert len(info) == 2
    assert info[0].startswith("1 WebSocket connections closed")
    assert info[1].startswith("1000 WebSocket connections closed for protocol errors in the "
                              "last 10 s (the latest: message too big)")


def test_debug_lines_name_the_connection(caplog: pytest.LogCaptureFixture) -> None:
    errors = ProtocolErrorLog(logging.getLogger("test.protocol_log2"))
    with caplog.at_level(logging.DEBUG, logger="test.protocol_log2"):
        errors.closed(42, "protocol error", now=5.0)
    assert "connection 42: closing: protocol error" in caplog.messages
