"""`RequestReader`: one connection's HTTP/1.1 requests, parsed by llhttp as bytes arrive.

llhttp (through httptools: the parser of Node.js and uvicorn) frames the requests, strictly
(RFC 9112: no bare LF, no folded lines, no whitespace before a colon, one Content-Length,
never both lengths, chunked last), and looks at each byte once: parsing costs time linear
in what arrives, however it is split. On top of it, our rules and limits: the head is at
most `MAX_HEAD_BYTES` and `MAX_HEADERS` headers (431); chunk extensions, chunk sizes'
leading zeros and trailers, the framing beyond what the chunks' sizes need, count against
the same limit (431, as Node.js after CVE-2024-22019); the body against `max_body` (413);
and `wire.request_head`'s checks (Host, lengths, codings: 400, 501; versions: 505).

Pure (bytes in with `feed`, requests out with `next_request`); no socket and no clock.
"""

from __future__ import annotations

import math
from dataclasses import replace
from functools import partial

from httptools import (
    HttpParserCallbackError,
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
)

from .wire import MAX_HEAD_BYTES, MAX_HEADERS, HttpError, RequestHead, request_head

# The head may be MAX_HEAD_BYTES plus its closing blank line, as `wire.parse_head`.
HEAD_LIMIT = MAX_HEAD_BYTES + 4
# The bytes of a request line besides its method and target: two spaces, "HTTP/1.1", CRLF;
# and of a header line besides its name and value: ": " and CRLF.
REQUEST_LINE_BYTES = 12
HEADER_LINE_BYTES = 4
# The framing a chunk needs besides its size's hex digits: CRLF after the size and after
# the data (the last chunk's second CRLF is the one ending its empty trailer section).
CHUNK_FRAMING_BYTES = 4
_METHODS = {m.encode(): m for m in ("GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH")}


class RequestReader:
    """Requests read from one connection, in order.

    `feed(data)` parses the bytes that arrived (never raising: a refusal is kept for its
    turn); `next_request()` is the next complete request as (head, body), None until one is
    complete, or raises the `HttpError` that refused the request after those before it.
    After a refusal, or an `Upgrade` request (answered, then the connection ends), no more
    requests are read. `head` is the head of the request being read once it is complete
    (for `Expect: 100-continue` and the body's time bound), else None.
    """

    __slots__ = (
        "_after_completed", "_blocks", "_body_bytes", "_chunk_marks", "_completed",
        "_counted_body", "_done", "_fed", "_framing", "_head_bytes", "_head_now", "_headers",
        "_last", "_marks", "_max_body", "_parser", "_pieces", "_ready", "_refusal", "_target",
        "_trailers", "_whole", "head", "in_progress", "on_body", "on_chunk_header",
    )

    def __init__(self, max_body: int) -> None:
        self._max_body = max_body
        # Body pieces and one mark per chunk header, appended by llhttp's callbacks with
        # no Python frame: a body of 400,000 one-byte chunks makes 800,000 calls.
        self._pieces: list[bytes] = []
        self._chunk_marks: list[None] = []
        self.on_body = self._pieces.append
        self.on_chunk_header = partial(self._chunk_marks.append, None)
        self._parser = HttpRequestParser(self)
        self._parser.set_dangerous_leniencies(lenient_version=True)  # 505 is ours to say
        # Complete requests not yet taken (a list: an empty deque is 600 bytes a connection).
        self._ready: list[tuple[RequestHead, bytes]] = []
        self._refusal: HttpError | None = None
        self._done = False  # refused or upgraded: the rest of the stream is not HTTP to us
        self.head: RequestHead | None = None
        self.in_progress = False  # a request has begun and is not complete
        # The request being read.
        self._target = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0  # its head as written without padding (request line, lines)
        self._trailers = 0
        self._blocks: list[bytes] = []  # a chunked body's pieces so far, joined per read
        self._body_bytes = 0
        self._fed = 0  # bytes of earlier reads that belong to it (see `_account`)
        self._whole = True  # every byte of it is known: it began no read after another
        self._head_now = False  # its head completed in this read
        # Chunked: framing bytes, chunk headers and body bytes in the reads counted.
        self._framing = self._marks = self._counted_body = 0
        # The current read.
        self._completed = 0  # requests completed in it
        self._after_completed = False  # ... and one began after the last of them
        # The last request completed in it if chunked: its body bytes and chunk headers
        # in this read, for counting its framing once the read is known to end with it.
        self._last: tuple[int, int] | None = None

    def next_request(self) -> tuple[RequestHead, bytes] | None:
        """The next complete request, None if more bytes are needed; raises `HttpError`
        once the requests before a refused one are taken."""
        if self._ready:
            return self._ready.pop(0)
        if self._refusal is not None:
            raise self._refusal
        return None

    @property
    def finished(self) -> bool:
        """No more requests will be read (refused, or upgraded): stop reading."""
        return self._done

    def feed(self, data: bytes) -> None:
        """Parse `data`, the next bytes of the stream."""
        if self._done:
            return
        self._completed = 0
        self._after_completed = False
        self._last = None
        try:
            self._parser.feed_data(data)
        except HttpParserCallbackError as exc:
            cause = exc.__context__
            self._refuse(cause if isinstance(cause, HttpError)
                         else HttpError(400, f"malformed request: {exc}"))
            return
        except HttpParserUpgrade:
            self._upgraded()
            return
        except HttpParserError as exc:
            self._refuse(HttpError(400, f"malformed request: {exc}"))
            return
        try:
            self._account(len(data))
        except HttpError as error:
            self._refuse(error)

    # llhttp's callbacks, in the order it makes them.

    def on_message_begin(self) -> None:
        self.in_progress = True
        self.head = None
        self._target = b""
        self._headers = []
        self._head_bytes = 0
        self._trailers = 0
        self._blocks = []
        self._body_bytes = 0
        self._fed = 0
        self._whole = not self._completed
        self._after_completed = self._completed > 0
        self._head_now = False
        self._framing = self._marks = self._counted_body = 0
        self._last = None

    def on_url(self, part: bytes) -> None:
        target = self._target = self._target + part
        if len(target) > HEAD_LIMIT:
            raise HttpError(431, f"the request head is over {MAX_HEAD_BYTES} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.head is not None:  # a trailer field: its bytes are counted as framing
            self._trailers += 1
            if self._trailers > MAX_HEADERS:
                raise HttpError(431, f"a request carries at most {MAX_HEADERS} trailers")
            return
        self._head_bytes += len(name) + len(value) + HEADER_LINE_BYTES
        headers = self._headers
        headers.append((name.lower(), value.rstrip(b" \t")))  # llhttp strips the left
        if len(headers) > MAX_HEADERS:
            raise HttpError(431, f"a request carries at most {MAX_HEADERS} headers")
        if self._head_bytes > HEAD_LIMIT:
            raise HttpError(431, f"the request head is over {MAX_HEAD_BYTES} bytes")

    def on_headers_complete(self) -> None:
        parser = self._parser
        version = parser.get_http_version()
        if version == "1.1":
            http_11 = True
        elif version == "1.0":
            http_11 = False
        else:
            raise HttpError(505, f"HTTP/{version} is not supported; use HTTP/1.1")
        raw_method = parser.get_method()
        method = _METHODS.get(raw_method) or raw_method.decode("ascii")
        target = self._target
        self._head_bytes += len(raw_method) + len(target) + REQUEST_LINE_BYTES + 2
        if self._head_bytes > HEAD_LIMIT:
            raise HttpError(431, f"the request head is over {MAX_HEAD_BYTES} bytes")
        head = request_head(method, target, http_11, tuple(self._headers))
        if head.content_length is not None and head.content_length > self._max_body:
            raise HttpError(413, f"body is {head.content_length} bytes; "
                                 f"the limit is {self._max_body}")
        self.head = head
        self._head_now = True

    def on_message_complete(self) -> None:
        head = self.head
        assert head is not None  # llhttp completes no message before its head
        pieces = self._pieces
        if head.chunked:
            body = b"".join(pieces)
            if self._blocks:
                self._blocks.append(body)
                body = b"".join(self._blocks)
            if len(body) > self._max_body:
                raise HttpError(413, f"body is over the limit of {self._max_body} bytes")
            if not self._after_completed:  # else its share of this read is not known
                self._last = (len(body) - self._body_bytes, len(self._chunk_marks))
            self._chunk_marks.clear()
        else:
            body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
            self._last = None
        pieces.clear()
        self._ready.append((head, body))
        self._completed += 1
        self.in_progress = False
        self.head = None

    # What llhttp does not bound.

    def _account(self, size: int) -> None:
        """After a read of `size` bytes: the limits llhttp does not keep, checked.

        A read's bytes are attributed to a request only where that is certain: where one
        request ended and the next began within a read (pipelining), llhttp does not say
        where, so the framing in that read is not counted for either (their heads are)."""
        if self._last is not None:  # the read ended with that request, or blank lines
            body, marks = self._last
            self._count_framing(size, body, marks)
            if self._excess() > MAX_HEAD_BYTES:
                self._ready.pop()
                raise _framing_error()
        if self.in_progress:
            head = self.head
            counted = not self._after_completed  # else it began in this read after another
            if head is None:
                if counted:
                    self._fed += size
                if self._fed > HEAD_LIMIT:
                    raise HttpError(431, f"the request head is over {MAX_HEAD_BYTES} bytes")
            elif head.chunked:
                pieces = self._pieces
                block = b"".join(pieces)
                pieces.clear()
                self._blocks.append(block)
                self._body_bytes += len(block)
                if self._body_bytes > self._max_body:
                    raise HttpError(413, f"body is over the limit of {self._max_body} bytes")
                if counted:
                    self._count_framing(size, len(block), len(self._chunk_marks))
                    if self._excess() > MAX_HEAD_BYTES:
                        raise _framing_error()
                self._chunk_marks.clear()
                self._fed += size
        self._after_completed = False
        self._head_now = False

    def _count_framing(self, size: int, body: int, marks: int) -> None:
        """Count a read of `size` bytes holding `body` bytes of a chunked body and `marks`
        chunk headers. If the head ended in it, only what follows the head is framing,
        which is known if every earlier byte of the request is (`_whole`)."""
        if self._head_now:
            if not self._whole:
                return
            size += self._fed - self._head_bytes
        self._framing += size - body
        self._marks += marks
        self._counted_body += body

    def _excess(self) -> float:
        """The counted framing beyond what the counted chunks need: CRLFs and a size digit
        each, and more digits for longer chunks: a chunk of s bytes needs floor(log16 s)
        more, which summed over chunks is at most body/16, and (log being concave) at most
        k log16(body/k) for k = min(chunks, body/e). Counted this way, extensions, leading
        zeros and trailers are what is left, less that bound's slack."""
        marks, body = self._marks, self._counted_body
        more = 0.0
        if marks and body:
            k = min(marks, body / math.e)
            more = min(body / 16, k * math.log(body / k, 16))
        return self._framing - (CHUNK_FRAMING_BYTES + 1) * marks - more

    def _refuse(self, error: HttpError) -> None:
        self._refusal = error
        self._done = True
        self.in_progress = False

    def _upgraded(self) -> None:
        """An `Upgrade` request (llhttp stops after it): answered as a plain request, and
        the connection ends; refused if it has a body, which llhttp leaves unread."""
        self._done = True
        self.in_progress = False
        if not self._ready:
            self._refusal = HttpError(400, "malformed request")
            return
        head, body = self._ready.pop()
        if head.has_body:
            self._refusal = HttpError(400, "an Upgrade request with a body is not served")
            return
        self._ready.append((replace(head, keep_alive=False), body))


def _framing_error() -> HttpError:
    return HttpError(431, f"chunk extensions and trailers are over {MAX_HEAD_BYTES} bytes")


__all__ = ["HEAD_LIMIT", "RequestReader"]
