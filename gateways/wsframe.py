"""Moved to `gateways.websocket.frames`. This name stays only until `benchmarks/lean.py`
and `benchmarks/idle.py` import `client_frame` from there; then delete this file."""

from .websocket.frames import client_frame

__all__ = ["client_frame"]
