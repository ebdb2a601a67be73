"""The public trio client: publish over HTTP, subscribe over WebSocket.

    async with open_client(http_url="http://127.0.0.1:8080",
                           ws_url="ws://127.0.0.1:8081/v1/ws") as client:
        offset = await client.publish("orders.eu", {"id": 1})
        async with client.subscribe("orders.*", from_="earliest") as subscription:
            async for item in subscription:      # Message or Gap
                ...

- `client`: `Client` and `open_client`, what users hold;
- `http`: the one keep-alive HTTP/1.1 connection (h11) and `ClientError`, the client's one
  error type;
- `websocket`: a `Subscription` (trio-websocket), and the `Message` and `Gap` it yields.

It talks to the broker over the wire only: nothing here imports the server's modules.
"""

from .client import DEFAULT_HTTP_URL, DEFAULT_TIMEOUT, DEFAULT_WS_URL, Client, open_client
from .http import ClientError, HttpStatistics
from .websocket import Gap, Message, Subscription

__all__ = [
    "DEFAULT_HTTP_URL",
    "DEFAULT_TIMEOUT",
    "DEFAULT_WS_URL",
    "Client",
    "ClientError",
    "Gap",
    "HttpStatistics",
    "Message",
    "Subscription",
    "open_client",
]
