"""HTTP/1.1 on the wire, as pure functions: request heads and bodies in, response bytes out.

No I/O here (the h11 split). The HTTP port's requests are framed by llhttp
(`reader`), which then applies `request_head`'s rules; the WebSocket handshake parses
its one opening request with `parse_head`. Strict where leniency lets requests be smuggled
or misread (RFC 9112): both `Content-Length` and `Transfer-Encoding` (even an empty one),
conflicting lengths, folded header lines and whitespace before a header's colon are
refused, each with the status the RFC names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import unquote

# A request head (request line and headers) larger than this is refused with 431.
MAX_HEAD_BYTES = 16 * 1024
# Most header lines one request may carry (431 past it).
MAX_HEADERS = 100

_HEAD_END = b"\r\n\r\n"
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TARGET = re.compile(rb"[\x21-\x7e]+")
_VALUE_FORBIDDEN = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_REASONS: dict[int, bytes] = {s.value: s.phrase.encode("ascii") for s in HTTPStatus}


class HttpError(Exception):
    """The request cannot be served as HTTP/1.1: answer `status` and close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A parsed request line and its headers (names lower-cased, values without padding)."""

    method: str
    target: str
    path: str  # percent-decoded, as ASGI's `path`
    raw_path: bytes
    query: bytes
    http_11: bool
    headers: tuple[tuple[bytes, bytes], ...]
    content_length: int | None
    chunked: bool
    keep_alive: bool
    expect_continue: bool

    def header(self, name: bytes) -> bytes | None:
        """The last value of header `name` (lower-case), or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found

    def header_tokens(self, name: bytes) -> list[bytes]:
        """The comma-separated tokens of every `name` header, lower-cased (e.g. Connection)."""
        tokens: list[bytes] = []
        for key, value in self.headers:
            if key == name:
                tokens.extend(t.strip().lower() for t in value.split(b",") if t.strip())
        return tokens

    @property
    def has_body(self) -> bool:
        return self.chunked or bool(self.content_length)


def parse_head(
    buffer: bytes | bytearray, limit: int = MAX_HEAD_BYTES
) -> tuple[RequestHead, int] | None:
    """The request head at the start of `buffer` and its length in bytes, or None if it
    is not complete yet. Raises `HttpError` for a malformed or oversized head."""
    end = buffer.find(_HEAD_END, 0, limit + len(_HEAD_END))
    if end < 0:
        if len(buffer) >= limit + len(_HEAD_END):
            raise HttpError(431, f"the request head is over {limit} bytes")
        return None
    lines = bytes(buffer[:end]).split(b"\r\n")
    if len(lines) > MAX_HEADERS + 1:
        raise HttpError(431, f"a request carries at most {MAX_HEADERS} headers")
    method, target, http_11 = _request_line(lines[0])
    headers: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not _TOKEN.fullmatch(name):
            # Also refuses obs-fold (a line starting with whitespace) and "name :".
            raise HttpError(400, f"malformed header line {line[:64]!r}")
        value = value.strip(b" \t")
        if _VALUE_FORBIDDEN.search(value):
            raise HttpError(400, f"control character in header {name.decode('ascii')!r}")
        headers.append((name.lower(), value))
    head = request_head(method, target, http_11, tuple(headers))
    return head, end + len(_HEAD_END)


def _request_line(line: bytes) -> tuple[str, bytes, bool]:
    parts = line.split(b" ")
    if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]):
        raise HttpError(400, f"malformed request line {line[:80]!r}")
    method, target, version = parts
    if version == b"HTTP/1.1":
        http_11 = True
    elif version == b"HTTP/1.0":
        http_11 = False
    elif version.startswith(b"HTTP/"):
        raise HttpError(505, f"{version.decode('ascii', 'replace')} is not supported; use HTTP/1.1")
    else:
        raise HttpError(400, f"malformed request line {line[:80]!r}")
    return method.decode("ascii"), target, http_11


def request_head(method: str, target: bytes, http_11: bool,
                 headers: tuple[tuple[bytes, bytes], ...]) -> RequestHead:
    """The head of a request whose request line and header lines were read as given
    (names lower-cased, values without padding). Raises `HttpError` if it breaks a rule
    no framing settles: the target's form, `Host`, lengths, codings."""
    if not _TARGET.fullmatch(target):
        raise HttpError(400, f"malformed request target {target[:80]!r}")
    grouped: dict[bytes, list[bytes]] = {}  # one pass: each name's values, in order
    for name, value in headers:
        grouped.setdefault(name, []).append(value)
    lengths = set(grouped.get(b"content-length", ()))
    encodings = grouped.get(b"transfer-encoding")
    codings = [t for value in encodings or () for t in value.lower().split(b",") if t.strip()]
    host = grouped.get(b"host", [])
    if http_11 and len(host) != 1:
        raise HttpError(400, "an HTTP/1.1 request carries exactly one Host header")
    content_length: int | None = None
    chunked = False
    if encodings is not None and lengths:
        # Even an empty Transfer-Encoding: a proxy in front may frame the body by it.
        raise HttpError(400, "both Content-Length and Transfer-Encoding")
    if encodings is not None and not codings:
        raise HttpError(400, "an empty Transfer-Encoding")
    if codings:
        if [c.strip() for c in codings] != [b"chunked"]:
            raise HttpError(501, "the only transfer coding served is chunked")
        chunked = True
    elif lengths:
        if len(lengths) > 1:
            raise HttpError(400, "conflicting Content-Length headers")
        value = lengths.pop()
        if not value.isdigit() or len(value) > 18:
            raise HttpError(400, f"Content-Length {value[:20]!r} is not a length")
        content_length = int(value)

    if target.startswith(b"/"):
        raw_path, _, query = target.partition(b"?")
    elif target.startswith((b"http://", b"https://")):  # absolute form: keep the path
        rest = target.split(b"//", 1)[1]
        slash = rest.find(b"/")
        raw_path, _, query = (rest[slash:] if slash >= 0 else b"/").partition(b"?")
    elif target == b"*" and method == "OPTIONS":
        raw_path, query = b"*", b""
    else:
        raise HttpError(400, f"request target {target[:80]!r} is not a path")

    connection = [t.strip().lower() for value in grouped.get(b"connection", ())
                  for t in value.split(b",")]
    keep_alive = b"close" not in connection if http_11 else b"keep-alive" in connection
    # RFC 9112 6.1: an HTTP/1.0 message with Transfer-Encoding ends its connection.
    keep_alive = keep_alive and (http_11 or not chunked)
    expect = [value.lower() for value in grouped.get(b"expect", ())]
    return RequestHead(
        method=method,
        target=target.decode("ascii"),
        path=unquote(raw_path.decode("ascii")),
        raw_path=raw_path,
        query=query,
        http_11=http_11,
        headers=headers,
        content_length=content_length,
        chunked=chunked,
        keep_alive=keep_alive,
        expect_continue=http_11 and b"100-continue" in expect,
    )


def response_head(status: int, content_type: bytes | None, length: int,
                  headers: tuple[tuple[bytes, bytes], ...] | list[tuple[bytes, bytes]] = (),
                  close: bool = False) -> bytes:
    """Status line and headers of a response whose body is `length` bytes."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b"Unknown"))]
    if content_type is not None:
        lines.append(b"content-type: %s\r\n" % content_type)
    lines.append(b"content-length: %d\r\n" % length)
    for name, value in headers:
        lines.append(b"%s: %s\r\n" % (name, value))
    if close:
        lines.append(b"connection: close\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

__all__ = [
    "CONTINUE",
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "HttpError",
    "RequestHead",
    "parse_head",
    "request_head",
    "response_head",
]
