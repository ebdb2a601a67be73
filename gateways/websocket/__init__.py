"""The WebSocket gateway: `/v1/ws` on a listener of our own, one task per connection.

- `listener`: `serve_websocket`, the accept loop, each connection's handshake and task,
  and the drain;
- `handshake`: the opening handshake (pure, on `gateways.http.wire.parse_head`);
- `connection`: `WebSocketConnection`, one accepted WebSocket served by one task: its
  lifecycle and writing, with its reading side (`intake`) and its requests (`dispatch`)
  as mixins over the slots they share (`connection_slots`);
- `reader`: client frames taken apart (pure: the fast path, and frame boundaries);
- `frames`: server frames built for pre-encoded payloads (pure);
- `render`: the frames the broker sends on its own (messages, gaps), rendered once;
- `protocol_log`: clients' protocol errors, logged without flooding the log.
"""

from .connection import WebSocketConnection
from .listener import PATH, serve_websocket
from .render import RENDERERS, render_cbor, render_json

__all__ = [
    "PATH",
    "RENDERERS",
    "WebSocketConnection",
    "render_cbor",
    "render_json",
    "serve_websocket",
]
