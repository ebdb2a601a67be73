"""The broker's error hierarchy: each error carries a stable machine `code`.

Gateways translate these to HTTP statuses, WebSocket `error` frames and close codes in one
table (`gateways/errors.py`); nothing in the domain knows about HTTP.
"""

from __future__ import annotations


class BrokerError(Exception):
    """Base of every error a client can be told about. `code` is stable and documented."""

    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidTopic(BrokerError):
    """A topic name or subscription pattern that breaks the naming rules."""

    code = "invalid_topic"


class InvalidPayload(BrokerError):
    """A body or field that does not parse or has the wrong type."""

    code = "invalid_payload"


class PayloadTooLarge(BrokerError):
    """A payload (or request body) over the configured size limit."""

    code = "payload_too_large"


class UnsupportedContentType(BrokerError):
    """A body whose content type the endpoint cannot read."""

    code = "unsupported_content_type"


class TopicBusy(BrokerError):
    """The topic's bounded mailbox stayed full past the publish timeout: not accepted."""

    code = "topic_busy"


class Overloaded(BrokerError):
    """The broker holds its memory budget (`max_memory`): not accepted, retry later."""

    code = "overloaded"


class Draining(BrokerError):
    """The broker is shutting down and takes no new work."""

    code = "draining"


class TopicNotFound(BrokerError):
    """The topic does not exist (nothing was published to it and nobody subscribes)."""

    code = "not_found"


class TooManySubscriptions(BrokerError):
    """A connection asked for more subscriptions than the limit allows."""

    code = "too_many_subscriptions"


class TooManyTopics(BrokerError):
    """Creating the topic would exceed the broker's topic limit."""

    code = "too_many_topics"


class NotSubscribed(BrokerError):
    """An unsubscribe for a topic this connection does not subscribe to."""

    code = "not_subscribed"


class AlreadySubscribed(BrokerError):
    """A subscribe for a topic or pattern this connection already subscribes to."""

    code = "already_subscribed"


class InvalidFrame(BrokerError):
    """A WebSocket frame that is not a valid request object."""

    code = "invalid_frame"


class UnknownOperation(BrokerError):
    """A request whose `op` the broker does not know."""

    code = "unknown_op"


class Unavailable(BrokerError):
    """A topic did not answer in time (it crashed or is overloaded); retry later."""

    code = "unavailable"
