"""The server's side of the WebSocket opening handshake (RFC 6455 section 4.2), pure.

A request head parsed by `http.wire.parse_head` in; out comes either `Accept` (the 101
response bytes and what the connection needs: wire format, `?topic=` subscriptions, client
name) or `Reject` (a JSON error response, then the connection closes). No I/O.

Why not wsproto's handshake: it runs the request through h11 and builds h11 events, a
quarter of the server's CPU per connection (`python -m benchmarks connect`, `idle`). Frames
after the handshake are still wsproto's (`wsproto.connection.Connection`).

Checks, in the order that decides the answer: an upgrade request at all (400; one whose
`Sec-WebSocket-Version` is missing or not 13 is told `Sec-WebSocket-Version: 13`, as RFC
6455 section 4.2.2 asks), the path (404), then the names in the query (400
`invalid_topic`; 400 `bad_request` for a `?client=` name over MAX_CLIENT_BYTES; 429
`too_many_subscriptions`).
Extensions (permessage-deflate) are never accepted: frames are pre-built once per message
and written as they are to every subscriber.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from urllib.parse import unquote_plus

import orjson

from broker import BrokerError, TooManySubscriptions, WireFormat, validate_pattern

from ..errors import error_body
from ..http.wire import HttpError, RequestHead, response_head

# RFC 6455 section 1.3: appended to the client's key before hashing.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
VERSION = b"13"
# Longest `?client=` name, in UTF-8 bytes: it is kept per connection and repeated in every
# presence listing (at the 64 KiB handshake limit, 200 clients made an 11 MiB listing).
MAX_CLIENT_BYTES = 128
# What a refusal says when the client's protocol version is not ours (RFC 6455 4.2.2).
_VERSION_HEADER = ((b"sec-websocket-version", VERSION),)
# Subprotocol name -> wire format; with none offered, broker.v1.json.
SUBPROTOCOLS = {wire_format.subprotocol: wire_format for wire_format in WireFormat}
DEFAULT_FORMAT = WireFormat.JSON

_SWITCHING = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: "
)


@dataclass(frozen=True, slots=True)
class Accept:
    """The upgrade is accepted: send `response`, then speak WebSocket in `wire_format`."""

    response: bytes
    wire_format: WireFormat
    patterns: list[str]  # `?topic=` values, each once, in query order
    client: str  # `?client=` (the last one), "" if none


@dataclass(frozen=True, slots=True)
class Reject:
    """The upgrade is refused: send `response` (a JSON error body) and close."""

    status: int
    code: str
    response: bytes


def accept_token(key: bytes) -> bytes:
    """`Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`: base64(sha1(key + GUID))."""
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def reject(
    status: int, code: str, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
) -> Reject:
    """A JSON error response (the body every HTTP error of the broker has)."""
    body = orjson.dumps(error_body(code, message))
    return Reject(status, code, response_head(status, b"application/json", len(body),
                                              headers, close=True) + body)


def reject_unreadable(error: HttpError) -> Reject:
    """The answer to a request head `parse_head` refused: 400, whatever status it names
    (431 for a head over 16 KiB, 505 for HTTP/2.0, ...), as this port has always answered
    anything that is not an upgrade request."""
    return reject(400, "bad_request", f"not a WebSocket upgrade: {error.message}")


def answer(head: RequestHead, path: str, max_subscriptions: int) -> Accept | Reject:
    """Accept or refuse the opening request `head` for the endpoint at `path`."""
    headers = dict(head.headers)  # the last value of each, as RequestHead.header reads
    problem = upgrade_problem(head, headers)
    if problem is not None:
        version = () if headers.get(b"sec-websocket-version") == VERSION else _VERSION_HEADER
        return reject(400, "bad_request", f"not a WebSocket upgrade: {problem}", version)
    if head.raw_path != path.encode("ascii"):
        return reject(404, "not_found", f"the WebSocket endpoint is {path}")
    patterns: list[str] = []
    client = ""
    for name, value in query_fields(head.query):
        if name == "topic":
            patterns.append(value)
        elif name == "client":
            client = value
    if len(client.encode("utf-8", "surrogatepass")) > MAX_CLIENT_BYTES:
        return reject(400, "bad_request",
                      f"a ?client= name is at most {MAX_CLIENT_BYTES} bytes (UTF-8)")
    try:
        for pattern in patterns:
            validate_pattern(pattern)
        patterns = list(dict.fromkeys(patterns))
        if len(patterns) > max_subscriptions:
            raise TooManySubscriptions(
                f"a connection holds at most {max_subscriptions} subscriptions"
            )
    except BrokerError as exc:
        status = 429 if isinstance(exc, TooManySubscriptions) else 400
        return reject(status, exc.code, exc.message)
    wire_format = DEFAULT_FORMAT
    chosen = b""
    for offered in offered_subprotocols(head):
        found = SUBPROTOCOLS.get(offered)
        if found is not None:
            wire_format = found
            chosen = b"Sec-WebSocket-Protocol: %s\r\n" % offered.encode("ascii")
            break
    key = headers[b"sec-websocket-key"]  # upgrade_problem checked it
    response = _SWITCHING + accept_token(key) + b"\r\n" + chosen + b"\r\n"
    return Accept(response, wire_format, patterns, client)


def upgrade_problem(
    head: RequestHead, headers: dict[bytes, bytes] | None = None
) -> str | None:
    """What makes `head` not a valid WebSocket upgrade request, or None if it is one.
    `headers`: `dict(head.headers)`, if the caller has it already."""
    if head.method != "GET":
        return "the method must be GET"
    if not head.http_11:
        return "HTTP/1.1 is required"
    if headers is None:
        headers = dict(head.headers)
    upgrade = headers.get(b"upgrade")
    if upgrade is None or upgrade.lower() != b"websocket":
        return "missing header 'Upgrade: websocket'"
    if b"upgrade" not in head.header_tokens(b"connection"):
        return "missing header 'Connection: Upgrade'"
    if headers.get(b"sec-websocket-version") != VERSION:
        return "missing header 'Sec-WebSocket-Version: 13'"
    key = headers.get(b"sec-websocket-key")
    if key is None:
        return "missing header 'Sec-WebSocket-Key'"
    if not valid_key(key):
        return "Sec-WebSocket-Key is not 16 bytes in base64"
    return None


def offered_subprotocols(head: RequestHead) -> list[str]:
    """Every `Sec-WebSocket-Protocol` name the client offers, in order (names are
    case-sensitive, so these are not lower-cased)."""
    return [
        token.strip().decode("latin-1")
        for name, value in head.headers if name == b"sec-websocket-protocol"
        for token in value.split(b",") if token.strip()
    ]


def valid_key(key: bytes) -> bool:
    """A `Sec-WebSocket-Key` is a random 16-byte value in base64 (24 characters)."""
    if len(key) != 24:
        return False
    try:
        return len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        return False


def query_fields(query: bytes) -> list[tuple[str, str]]:
    """`a=1&b=&c` -> [("a", "1"), ("b", ""), ("c", "")], as `urllib.parse.parse_qsl` with
    `keep_blank_values=True` reads it (`+` and %-escapes decoded, UTF-8 with
    replacement), but without its cost for the usual escape-free query."""
    text = query.decode("ascii")  # parse_head let only visible ASCII into the target
    fields = []
    for field in text.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        if "%" in field or "+" in field:
            name, value = unquote_plus(name), unquote_plus(value)
        fields.append((name, value))
    return fields


__all__ = [
    "GUID",
    "MAX_CLIENT_BYTES",
    "SUBPROTOCOLS",
    "Accept",
    "Reject",
    "accept_token",
    "answer",
    "offered_subprotocols",
    "query_fields",
    "reject",
    "reject_unreadable",
    "upgrade_problem",
    "valid_key",
]
