"""The HTTP gateway: our HTTP/1.1 server, the publish route in front, the Quart app behind.

- `server`: `HttpServer`, one task per connection on a plain socket (`gateways.tcp`),
  requests read by `reader` (llhttp, pure) under the rules of `wire` (HTTP/1.1 heads and
  answers as pure functions; the WebSocket handshake parses its request with it too);
- `publish_route`: `PublishRoute`, the two publish requests answered before the app;
- `app`: the quart-trio app (listings, history, health, metrics, error pages), served
  through `asgi_bridge` (`AsgiBridge`: one ASGI scope per complete request, and the
  app's lifespan).

`gateways.serve` puts them together.
"""

from .app import create_app
from .asgi_bridge import AsgiBridge
from .publish_route import PublishRoute
from .server import Handler, HttpRequest, HttpResponse, HttpServer, error_response, json_response
from .wire import HttpError, RequestHead, parse_head, response_head

__all__ = [
    "AsgiBridge",
    "Handler",
    "HttpError",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "PublishRoute",
    "RequestHead",
    "create_app",
    "error_response",
    "json_response",
    "parse_head",
    "response_head",
]
