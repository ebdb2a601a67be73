"""The broker's domain: topics, subscriptions, wire formats, policies. No sockets, no HTTP."""

from . import codec
from .connection import OpenConnections, Subscriber, SubscriberInfo, next_connection_id
from .errors import (
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
from .formats import PayloadKind, WireFormat
from .memory_budget import MemoryBudget, MemoryStatistics
from .messages import HistoryPage, Message, Payload, SubscribeResult
from .node import Broker, open_broker
from .outbox import Outbox
from .outbox_items import ControlFrame, Gap, Offer
from .policies import CloseReason, SlowConsumerPolicy
from .settings import SETTING_NAMES, Settings, SettingsError, TopicSettings, load_settings
from .subjects import SubjectTrie, pattern_matches, validate_pattern, validate_topic
from .topic import TopicActor, TopicStatistics

__all__ = [
    "SETTING_NAMES",
    "AlreadySubscribed",
    "Broker",
    "BrokerError",
    "CloseReason",
    "ControlFrame",
    "Draining",
    "Gap",
    "HistoryPage",
    "InvalidFrame",
    "InvalidPayload",
    "InvalidTopic",
    "MemoryBudget",
    "MemoryStatistics",
    "Message",
    "NotSubscribed",
    "Offer",
    "OpenConnections",
    "Outbox",
    "Overloaded",
    "Payload",
    "PayloadKind",
    "PayloadTooLarge",
    "Settings",
    "SettingsError",
    "SlowConsumerPolicy",
    "SubjectTrie",
    "SubscribeResult",
    "Subscriber",
    "SubscriberInfo",
    "TooManySubscriptions",
    "TooManyTopics",
    "TopicActor",
    "TopicBusy",
    "TopicNotFound",
    "TopicSettings",
    "TopicStatistics",
    "Unavailable",
    "UnknownOperation",
    "UnsupportedContentType",
    "WireFormat",
    "codec",
    "load_settings",
    "next_connection_id",
    "open_broker",
    "pattern_matches",
    "validate_pattern",
    "validate_topic",
]
