"""The I/O edges: the HTTP and WebSocket gateways, serving them, the public client, the
command line.

- `http/`: the HTTP gateway (our HTTP/1.1 server, the publish route, the Quart app);
- `websocket/`: the WebSocket gateway (listener, handshake, one task per connection);
- `client/`: the public trio client, which reaches a broker over the wire only;
- shared by both gateways: `tcp` (plain-socket listeners, the accept loop, the one write
  loop, reads by a deadline) and `errors` (the one table from error codes to HTTP
  statuses and WebSocket close codes);
- `serve`: the composition root (the broker and both gateways, the drain);
- `cli`: `broker serve|pub|sub|bench` (`__main__`: `python -m gateways`).
"""

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
