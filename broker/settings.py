"""All configuration in one typed, frozen object, built from flags, `BROKER_*` env and TOML.

Precedence: command-line flags, then environment, then the TOML file, then defaults.
Per-topic overrides live in TOML tables keyed by pattern: `[topics."metrics.>"]`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import BrokerError
from .memory_budget import default_max_memory
from .policies import SlowConsumerPolicy
from .subjects import SubjectTrie, validate_pattern


class SettingsError(BrokerError):
    """A configuration value that cannot be used; raised at startup, never at run time."""

    code = "invalid_settings"


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """What a topic keeps and how it treats slow subscribers."""

    # Retained messages per topic, by count and by payload bytes (whichever binds first).
    history_messages: int = 1000
    history_bytes: int = 16 * 1024 * 1024
    # Publishes queued for the topic actor; past it publishers wait up to publish_timeout.
    mailbox_size: int = 1024
    slow_consumer_policy: SlowConsumerPolicy = SlowConsumerPolicy.DISCONNECT
    # `disconnect` only: seconds a subscriber's outbox may stay over `outbox_size` (its
    # writer taking nothing) before 4008; meanwhile it holds up to 2 x outbox_size frames.
    slow_consumer_grace: float = 2.0
    # Under sustained traffic (a message arriving within this many seconds of the topic's
    # last write), hold subscribers' writes up to this long to send several messages per
    # write; a topic that was quiet writes at once. 0 writes every message at once.
    flush_delay: float = 0.001


@dataclass(frozen=True, slots=True)
class Settings:
    """The whole broker configuration. Every field can be set by flag, env or TOML."""

    host: str = "127.0.0.1"
    port: int = 8080
    ws_port: int = 8081
    log_level: str = "info"
    # Largest message payload accepted (NATS' default is 1 MiB too).
    max_payload_bytes: int = 1024 * 1024
    # Largest HTTP body (bulk publish carries many payloads).
    max_body_bytes: int = 8 * 1024 * 1024
    # Seconds a publish may take in all (mailbox room + the topic reaching it) before 503.
    publish_timeout: float = 1.0
    # Frames queued per WebSocket connection: past this, the slow-consumer policy applies.
    outbox_size: int = 4096
    # Bytes of frames queued per WebSocket connection (`Outbox.queued_bytes`): past this,
    # the slow-consumer policy applies too. 8 MiB = 4096 frames of 2 KiB, so small messages
    # meet `outbox_size` first and big ones this (eight of the largest payloads by default).
    outbox_bytes: int = 8 * 1024 * 1024
    # Seconds a slow consumer's last write may take before the socket is just dropped.
    close_timeout: float = 2.0
    # Subscriptions one connection may hold; topics the broker may hold.
    max_subscriptions: int = 1000
    max_topics: int = 100_000
    # A topic with no subscribers and no publish for this long is removed (0 disables).
    topic_idle_seconds: float = 600.0
    # Grace period for draining on SIGTERM/SIGINT before everything is cancelled.
    drain_seconds: float = 5.0
    # Seconds a WebSocket client has to complete its opening handshake.
    handshake_timeout: float = 10.0
    # Seconds from a request's first byte to the end of its head (slowloris bound).
    header_timeout: float = 10.0
    # Bytes per second an incomplete HTTP body or WebSocket frame must keep arriving at,
    # after a grace of `header_timeout`: a trickle is closed, a slow link is not.
    min_receive_rate: float = 1024.0
    # Seconds one write to a client (an HTTP answer, a WebSocket batch) may take; past it
    # the connection is closed and what it held is released.
    write_timeout: float = 10.0
    # Bytes the broker may hold (history, queued publishes and frames, topics, connections;
    # README: Delivery guarantees): past it publishes are refused `overloaded` and the
    # largest slow consumers shed. Default: half the machine's (or cgroup's) memory,
    # read at start; 0 = no budget.
    max_memory: int = field(default_factory=default_max_memory)
    topic_defaults: TopicSettings = field(default_factory=TopicSettings)
    topic_overrides: tuple[tuple[str, TopicSettings], ...] = ()

    def for_topic(self, name: str) -> TopicSettings:
        """The settings of topic `name`: the most specific matching override, or defaults.

        Specificity: more literal tokens wins, then longer patterns; ties keep file order.
        """
        if not self.topic_overrides:
            return self.topic_defaults
        trie: SubjectTrie[int] = SubjectTrie()
        for index, (pattern, _) in enumerate(self.topic_overrides):
            trie.insert(pattern, index)
        best: tuple[int, int, int] | None = None
        for pattern, index in trie.match(name):
            tokens = pattern.split(".")
            literal = sum(1 for token in tokens if token not in ("*", ">"))
            rank = (literal, len(tokens), -index)
            if best is None or rank > best:
                best = rank
        if best is None:
            return self.topic_defaults
        return self.topic_overrides[-best[2]][1]


_SCALARS = {
    f.name: f for f in fields(Settings) if f.name not in ("topic_defaults", "topic_overrides")
}
_TOPIC_FIELDS = {f.name: f for f in fields(TopicSettings)}
# The broker-wide settings that flags, env and TOML keys can name (`broker serve --NAME`).
SETTING_NAMES: tuple[str, ...] = tuple(_SCALARS)


def _convert(name: str, kind: Any, value: Any) -> Any:
    kind_name = kind if isinstance(kind, str) else getattr(kind, "__name__", str(kind))
    try:
        # Strings come from env and flags; TOML and callers give typed values, which must
        # already be of the right type: no silent truncation of 8080.5 to 8080.
        if kind_name == "int":
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ValueError
            return int(value)
        if kind_name == "float":
            if isinstance(value, bool) or not isinstance(value, int | float | str):
                raise ValueError
            return float(value)
        if kind_name == "str":
            if not isinstance(value, str):
                raise ValueError
            return value
        if kind_name == "SlowConsumerPolicy":
            return SlowConsumerPolicy(str(value))
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"setting {name!r}: cannot use {value!r} as {kind_name}") from exc
    raise SettingsError(f"setting {name!r}: unsupported type {kind_name}")


def _topic_settings(base: TopicSettings, table: Mapping[str, Any], where: str) -> TopicSettings:
    changes = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in _TOPIC_FIELDS:
            raise SettingsError(f"{where}: unknown topic setting {key!r}")
        changes[name] = _convert(f"{where}.{key}", _TOPIC_FIELDS[name].type, value)
    return dataclasses.replace(base, **changes)


def load_settings(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    config_path: str | Path | None = None,
) -> Settings:
    """Build `Settings`: flags (None values ignored) over `BROKER_*` env over TOML file.

    The TOML file may be named by `config_path`, or else by `BROKER_CONFIG`.
    """
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    environ = os.environ if environ is None else environ
    path = config_path or environ.get("BROKER_CONFIG")
    values: dict[str, Any] = {}
    topic_defaults = TopicSettings()
    overrides: list[tuple[str, dict[str, Any]]] = []  # [topics."<pattern>"] tables, in order

    if path:
        try:
            document = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"cannot read config file {path}: {exc}") from exc
        for key, value in document.items():
            name = key.replace("-", "_")
            if name == "topics":
                if not isinstance(value, dict):
                    raise SettingsError("[topics] must be a table")
                for pattern, table in value.items():
                    if not isinstance(table, dict):
                        raise SettingsError(f"[topics.{pattern!r}] must be a table")
                    if pattern == "default":
                        topic_defaults = _topic_settings(topic_defaults, table, "topics.default")
                    else:
                        overrides.append((pattern, table))
            elif name in _SCALARS:
                values[name] = _convert(name, _SCALARS[name].type, value)
            else:
                raise SettingsError(f"unknown setting {key!r} in {path}")

    for name, spec in _SCALARS.items():
        env_key = f"BROKER_{name.upper()}"
        if env_key in environ:
            values[name] = _convert(env_key, spec.type, environ[env_key])
    for name, value in flags.items():
        if name not in _SCALARS:
            raise SettingsError(f"unknown setting {name!r}")
        values[name] = _convert(name, _SCALARS[name].type, value)

    resolved: list[tuple[str, TopicSettings]] = []
    for pattern, table in overrides:
        try:
            validate_pattern(pattern)
        except BrokerError as exc:
            raise SettingsError(f"[topics.{pattern!r}]: {exc.message}") from exc
        resolved.append((pattern, _topic_settings(topic_defaults, table, f"topics.{pattern}")))
    settings = Settings(**values, topic_defaults=topic_defaults, topic_overrides=tuple(resolved))
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    positive = ("max_payload_bytes", "max_body_bytes", "outbox_size", "outbox_bytes",
                "max_subscriptions", "max_topics")
    for name in positive:
        if getattr(settings, name) < 1:
            raise SettingsError(f"setting {name!r} must be at least 1")
    if settings.max_memory < 0:
        raise SettingsError("setting 'max_memory' must be >= 0 bytes (0: no budget)")
    for name in ("header_timeout", "min_receive_rate", "write_timeout"):
        if getattr(settings, name) <= 0:
            raise SettingsError(f"setting {name!r} must be above 0")
    for name in ("port", "ws_port"):
        if not 0 <= getattr(settings, name) <= 65535:
            raise SettingsError(f"setting {name!r} must be a TCP port (0 picks a free one)")
    topics = [settings.topic_defaults, *(t for _, t in settings.topic_overrides)]
    for topic in topics:
        if topic.mailbox_size < 1 or topic.history_messages < 0 or topic.history_bytes < 0:
            raise SettingsError("topic mailbox_size must be >= 1 and history limits >= 0")
        if topic.slow_consumer_grace < 0:
            raise SettingsError("topic slow_consumer_grace must be >= 0 seconds")
        if not 0 <= topic.flush_delay <= 1:
            raise SettingsError("topic flush_delay must be between 0 and 1 second")
