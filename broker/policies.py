"""Every outcome of a full mailbox, named. The put site picks one; none is silent.

- Topic mailbox full (publishers outrun a topic): publishers wait up to
  `publish_timeout`, then get `TopicBusy` (HTTP 503): backpressure made visible.
- Connection outbox full (a subscriber does not read): the topic's `SlowConsumerPolicy`.
"""

from __future__ import annotations

import enum


class SlowConsumerPolicy(enum.Enum):
    """What a topic does when a subscriber's outbox is full as it forwards a message."""

    # Close that subscriber with 4008 "slow consumer"; it resumes from history with `from`.
    DISCONNECT = "disconnect"
    # Drop this topic's oldest message queued for that subscriber (or, if none is queued,
    # the new one); a `gap` frame before the topic's next message says how many.
    DROP_OLDEST = "drop-oldest"
    # Lossless: the topic waits for room. Publishers then wait on the topic's full mailbox
    # and get 503 `topic_busy` after `publish_timeout`: the slowest subscriber sets the pace.
    BLOCK = "block"


class CloseReason(enum.Enum):
    """Every way a WebSocket connection can end, with its close code (cf. NATS ClosedState)."""

    NORMAL = (1000, "normal closure")
    GOING_AWAY = (1001, "broker shutting down")
    PROTOCOL_ERROR = (1002, "protocol error")
    UNSUPPORTED_DATA = (1003, "unsupported data")
    INVALID_PAYLOAD = (1007, "invalid frame payload data")
    POLICY_VIOLATION = (1008, "too many invalid frames")
    RECEIVE_TIMEOUT = (1008, "frame not completed in time")
    MESSAGE_TOO_BIG = (1009, "message too big")
    SLOW_CONSUMER = (4008, "slow consumer")
    TOPIC_FAILED = (1011, "topic failed")
    CLIENT_CLOSED = (1000, "client closed")
    CONNECTION_LOST = (1006, "connection lost")

    @property
    def code(self) -> int:
        return self.value[0]

    @property
    def reason(self) -> str:
        return self.value[1]
