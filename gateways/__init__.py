"""The I/O edges: HTTP and WebSocket gateways, serving, and the command line."""

from .serve import Addresses, serve

__all__ = ["Addresses", "serve"]
