"""The I/O edges: HTTP and WebSocket gateways, serving, the public client, the command line."""

from .client import Client, ClientError, Gap, Message, Subscription, open_client
from .serve import Addresses, serve

__all__ = [
    "Addresses",
    "Client",
    "ClientError",
    "Gap",
    "Message",
    "Subscription",
    "open_client",
    "serve",
]
