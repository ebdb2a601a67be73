"""The client's HTTP side: one keep-alive HTTP/1.1 connection (h11 over a trio socket).

`HttpConnection` sends one request at a time on one TCP connection and keeps it open for
the next (never a connection per request). Concurrent callers queue on a `trio.Lock`: the
order of requests is the order in which the lock is granted (FIFO in trio), so one task's
publishes to a topic get increasing offsets. For parallel requests, open several clients
or batch with `POST /v1/publish`.

`ClientError` is the client's one error type (HTTP answers, timeouts, lost connections and
WebSocket closes alike), with a stable machine `code`. The functions that build request
bodies and turn answers into values or errors do no I/O and are tested without sockets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import cbor2
import h11
import orjson
import trio

# Bytes asked for per receive: the broker's answers are small, but history pages are not.
RECEIVE_SIZE = 65536
# Largest response head h11 accepts (headers are tiny; a huge one means a wrong server).
MAX_HEAD_BYTES = 64 * 1024

JSON = "application/json"
CBOR = "application/cbor"
OCTET_STREAM = "application/octet-stream"


class ClientError(Exception):
    """Anything that went wrong talking to the broker, with a stable machine `code`.

    - HTTP answers: the contract's error `code` and `message`, the `status`, and
      `retry_after` (seconds, from `Retry-After`) when the broker invites a retry.
    - `timeout`: the call took longer than the client's timeout.
    - `connection_failed`: the broker could not be reached; `connection_lost`: the
      connection broke during a request (after the one transparent reconnect).
    - `protocol_error`: the answer was not HTTP, JSON or WebSocket as expected.
    - `closed`: the broker closed a subscription's WebSocket; `close_code` and `message`
      carry its close code and reason (4008 slow consumer, 1001 shutdown, 1011 topic failed).
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        close_code: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.retry_after = retry_after
        self.close_code = close_code

    def __repr__(self) -> str:
        extra = "".join(
            f", {name}={value!r}"
            for name, value in (
                ("status", self.status),
                ("retry_after", self.retry_after),
                ("close_code", self.close_code),
            )
            if value is not None
        )
        return f"ClientError({self.code!r}, {self.message!r}{extra})"


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A whole HTTP answer: status, headers (lower-case names) and body."""

    status: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class HttpStatistics:
    """`connections_opened` counts TCP connects; `reconnects` the ones that replaced a
    connection the server had closed while idle; `requests` the answers received."""

    connections_opened: int
    reconnects: int
    requests: int


@dataclass(frozen=True, slots=True)
class HttpEndpoint:
    """Host, port and path prefix of an `http://` URL."""

    host: str
    port: int
    prefix: str

    @classmethod
    def parse(cls, url: str) -> HttpEndpoint:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ClientError("invalid_url", f"need an http://HOST[:PORT] URL, got {url!r}")
        try:
            port = parts.port or 80
        except ValueError as exc:
            raise ClientError("invalid_url", f"bad port in {url!r}") from exc
        return cls(parts.hostname, port, parts.path.rstrip("/"))


# -- pure: request bodies and answers ------------------------------------------------------


def topic_path(topic: str, suffix: str = "") -> str:
    """`/v1/topics/{topic}{suffix}`, the topic percent-encoded so any string is a safe path."""
    return f"/v1/topics/{quote(topic, safe='')}{suffix}"


def encode_payload(
    data: Any, *, cbor: bool = False, content_type: str | None = None
) -> tuple[bytes, str]:
    """The body and `Content-Type` for publishing `data`.

    Bytes are sent as they are (`application/octet-stream` unless `content_type` says
    otherwise); any other value as JSON, or as CBOR with `cbor=True`.
    """
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data), content_type or OCTET_STREAM
    try:
        if cbor:
            return cbor2.dumps(data), content_type or CBOR
        return orjson.dumps(data), content_type or JSON
    except (TypeError, ValueError, cbor2.CBOREncodeError) as exc:
        raise ClientError("invalid_payload", f"cannot encode {type(data).__name__}: {exc}") from exc


def encode_batch(messages: Iterable[tuple[str, Any]], *, cbor: bool = False) -> tuple[bytes, str]:
    """The body of `POST /v1/publish`: `{"messages": [{"topic", "data"}, ...]}`."""
    document = {"messages": [{"topic": topic, "data": data} for topic, data in messages]}
    return encode_payload(document, cbor=cbor)


def retry_after_seconds(value: bytes | None) -> float | None:
    """`Retry-After` in seconds (the broker sends delta-seconds), None if absent or a date."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def load_json(response: HttpResponse) -> Any:
    """The JSON body of an answer; `protocol_error` if it is not JSON."""
    try:
        return orjson.loads(response.body)
    except orjson.JSONDecodeError as exc:
        raise ClientError(
            "protocol_error",
            f"expected a JSON answer, got {response.body[:80]!r}",
            status=response.status,
        ) from exc


def error_from_body(body: Any, status: int, retry_after: float | None) -> ClientError:
    """A `ClientError` from the contract's `{"error": {"code", "message"}}` body."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        message = error.get("message")
        return ClientError(
            error["code"],
            message if isinstance(message, str) else "",
            status=status,
            retry_after=retry_after,
        )
    return ClientError(f"http_{status}", f"HTTP {status}: {body!r:.200}", status=status,
                       retry_after=retry_after)


def error_from_response(response: HttpResponse) -> ClientError:
    """The error a non-2xx answer stands for (its JSON body if it has one)."""
    retry_after = retry_after_seconds(response.header(b"retry-after"))
    try:
        body: Any = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        body = response.body.decode("utf-8", "replace")
    return error_from_body(body, response.status, retry_after)


def expect_success(response: HttpResponse) -> Any:
    """The JSON body of a 2xx answer; raise the answer's `ClientError` otherwise."""
    if not 200 <= response.status < 300:
        raise error_from_response(response)
    return load_json(response)


def offset_from_response(response: HttpResponse) -> int:
    """The offset of a single publish (`202 {"topic", "offset"}`)."""
    body = expect_success(response)
    offset = body.get("offset") if isinstance(body, dict) else None
    if not isinstance(offset, int):
        raise ClientError("protocol_error", f"publish answer without an offset: {body!r:.200}")
    return offset


def batch_results(response: HttpResponse, expected: int) -> list[int | ClientError]:
    """Per message of a bulk publish: its offset, or the `ClientError` that refused it.

    A 202, or an error answer that carries `results` (a 503 when a topic refused part of
    the batch for backpressure), is reported per message; any other error is raised, since
    then nothing was published.
    """
    retry_after = retry_after_seconds(response.header(b"retry-after"))
    if 200 <= response.status < 300:
        body = load_json(response)
    else:
        try:
            body = orjson.loads(response.body)
        except orjson.JSONDecodeError:
            raise error_from_response(response) from None
        if not isinstance(body, dict) or not isinstance(body.get("results"), list):
            raise error_from_body(body, response.status, retry_after)
    results = body.get("results") if isinstance(body, dict) else None
    if not isinstance(results, list) or len(results) != expected:
        raise ClientError(
            "protocol_error", f"bulk answer without {expected} results: {body!r:.200}",
            status=response.status,
        )
    outcomes: list[int | ClientError] = []
    for result in results:
        offset = result.get("offset") if isinstance(result, dict) else None
        if isinstance(offset, int):
            outcomes.append(offset)
        else:
            outcomes.append(error_from_body(result, response.status, retry_after))
    return outcomes


# -- I/O: the keep-alive connection -----------------------------------------------------


class _StaleConnection(Exception):
    """The server closed the connection before answering a single byte."""


class HttpConnection:
    """One keep-alive HTTP/1.1 connection to the broker, opened on first use.

    `request` holds a `trio.Lock` for the whole exchange, so concurrent callers take turns
    on the one connection. If a reused connection turns out closed by the server (idle
    keep-alive timeout: end of stream or a reset before any byte of the answer), the request
    is sent once more on a fresh connection; a request that was already answered in part
    is never repeated. Every request is bounded by `timeout` (the wait for the lock
    included): past it, `ClientError("timeout")`. A request interrupted by a timeout or
    cancellation closes the connection, whose state is then unknown; the next reconnects.
    """

    def __init__(self, url: str, timeout: float) -> None:
        self.endpoint = HttpEndpoint.parse(url)
        self.timeout = timeout
        self._host_header = (
            self.endpoint.host if self.endpoint.port == 80
            else f"{self.endpoint.host}:{self.endpoint.port}"
        ).encode()
        self._lock = trio.Lock()
        self._stream: trio.SocketStream | None = None
        self._protocol: h11.Connection | None = None
        self._connections_opened = 0
        self._reconnects = 0
        self._requests = 0
        self._closed = False

    def statistics(self) -> HttpStatistics:
        return HttpStatistics(self._connections_opened, self._reconnects, self._requests)

    async def request(
        self, method: str, target: str, body: bytes = b"", content_type: str | None = None
    ) -> HttpResponse:
        """Send one request on the kept-alive connection and return the whole answer."""
        try:
            with trio.fail_after(self.timeout):
                async with self._lock:
                    return await self._request_with_retry(method, target, body, content_type)
        except trio.TooSlowError:
            raise ClientError(
                "timeout", f"{method} {target}: no answer within {self.timeout:g} s"
            ) from None

    async def aclose(self) -> None:
        """Close the connection; later requests raise `ClientError("closed")`."""
        self._closed = True
        self._discard()
        await trio.lowlevel.checkpoint()

    async def _request_with_retry(
        self, method: str, target: str, body: bytes, content_type: str | None
    ) -> HttpResponse:
        if self._closed:
            raise ClientError("closed", "the client is closed")
        request = self._request_event(method, self.endpoint.prefix + target, body, content_type)
        for attempt in range(2):
            reused = self._stream is not None
            if not reused:
                await self._connect()
            try:
                return await self._exchange(request, body)
            except _StaleConnection:
                self._discard()
                if not reused or attempt:
                    raise ClientError(
                        "connection_lost", f"{method} {target}: the broker closed the connection"
                    ) from None
                self._reconnects += 1  # it had closed the idle connection: one fresh attempt
            except BaseException:
                self._discard()
                raise
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _request_event(
        self, method: str, target: str, body: bytes, content_type: str | None
    ) -> h11.Request:
        headers = [(b"host", self._host_header), (b"content-length", b"%d" % len(body))]
        if content_type is not None:
            headers.append((b"content-type", content_type.encode()))
        try:
            return h11.Request(method=method, target=target, headers=headers)
        except h11.LocalProtocolError as exc:
            raise ClientError("invalid_request", f"cannot send {method} {target!r}: {exc}") from exc

    async def _connect(self) -> None:
        host, port = self.endpoint.host, self.endpoint.port
        try:
            self._stream = await trio.open_tcp_stream(host, port)  # TCP_NODELAY is set
        except OSError as exc:
            raise ClientError(
                "connection_failed", f"cannot connect to http://{host}:{port}: {exc}"
            ) from exc
        self._protocol = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
        self._connections_opened += 1

    def _discard(self) -> None:
        """Drop the connection now (synchronous: safe in cancelled and failing paths)."""
        if self._stream is not None:
            self._stream.socket.close()
        self._stream = None
        self._protocol = None

    async def _exchange(self, request: h11.Request, body: bytes) -> HttpResponse:
        """Write the request, read its answer; `_StaleConnection` if the server had closed."""
        stream, protocol = self._stream, self._protocol
        assert stream is not None and protocol is not None
        head = protocol.send(request) or b""
        if body:
            head += protocol.send(h11.Data(data=body)) or b""
        head += protocol.send(h11.EndOfMessage()) or b""
        answered = False
        try:
            await stream.send_all(head)
            status = 0
            headers: tuple[tuple[bytes, bytes], ...] = ()
            chunks: list[bytes] = []
            while True:
                event = protocol.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(RECEIVE_SIZE)
                    if data:
                        answered = True
                    elif not answered:
                        raise _StaleConnection
                    protocol.receive_data(data)
                elif isinstance(event, h11.Response):
                    status, headers = event.status_code, tuple(event.headers)
                elif isinstance(event, h11.Data):
                    chunks.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    raise _StaleConnection  # only possible before any byte of an answer
                # InformationalResponse (1xx): nothing to keep
        except (trio.BrokenResourceError, OSError) as exc:
            if not answered:
                raise _StaleConnection from exc
            raise ClientError("connection_lost", f"connection broke mid-answer: {exc}") from exc
        except h11.RemoteProtocolError as exc:
            raise ClientError("protocol_error", f"bad HTTP answer: {exc}") from exc
        self._requests += 1
        if protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
            protocol.start_next_cycle()
        else:
            self._discard()  # `Connection: close`, or HTTP/1.0: the next request reconnects
        return HttpResponse(status, headers, b"".join(chunks))
