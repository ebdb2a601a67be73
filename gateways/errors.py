"""The one table from broker error codes to HTTP statuses (and the WebSocket close codes).

Every error a client can see is listed here and in the README's error table.
"""

from __future__ import annotations

from broker.errors import (
    AlreadySubscribed,
    BrokerError,
    Draining,
    InvalidFrame,
    InvalidPayload,
    InvalidTopic,
    NotSubscribed,
    Overloaded,
    PayloadTooLarge,
    TooManySubscriptions,
    TooManyTopics,
    TopicBusy,
    TopicNotFound,
    Unavailable,
    UnknownOperation,
    UnsupportedContentType,
)

HTTP_STATUS: dict[str, int] = {
    InvalidTopic.code: 400,
    InvalidPayload.code: 400,
    InvalidFrame.code: 400,
    UnknownOperation.code: 400,
    AlreadySubscribed.code: 409,
    NotSubscribed.code: 404,
    TopicNotFound.code: 404,
    PayloadTooLarge.code: 413,
    UnsupportedContentType.code: 415,
    TooManySubscriptions.code: 429,
    TooManyTopics.code: 429,
    TopicBusy.code: 503,
    Draining.code: 503,
    Overloaded.code: 503,
    Unavailable.code: 503,
    BrokerError.code: 500,
}

# Seconds a client should wait before retrying, for the statuses that invite a retry.
RETRY_AFTER: dict[str, int] = {TopicBusy.code: 1, Unavailable.code: 1, Overloaded.code: 1}

# Generic HTTP errors raised by the framework (unknown route, wrong method, ...).
HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_content_type",
    431: "headers_too_large",
    500: "internal",
    501: "not_implemented",
    505: "http_version_not_supported",
}


def http_status(error: BrokerError) -> int:
    return HTTP_STATUS.get(error.code, 500)


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The JSON error body every HTTP error uses."""
    return {"error": {"code": code, "message": message}}
