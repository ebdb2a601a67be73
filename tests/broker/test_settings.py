"""Configuration: defaults, TOML, BROKER_* environment and flags, per-topic overrides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from broker.policies import SlowConsumerPolicy
from broker.settings import Settings, SettingsError, TopicSettings, load_settings

WriteConfig = Callable[[str], Path]


@pytest.fixture
def write_config(tmp_path: Path) -> WriteConfig:
    def write(text: str) -> Path:
        path = tmp_path / "broker.toml"
        path.write_text(text)
        return path

    return write


def test_defaults_apply_with_no_file_env_or_flags() -> None:
    settings = load_settings(flags={}, environ={})
    assert settings == Settings()
    assert (settings.host, settings.port, settings.ws_port) == ("127.0.0.1", 8080, 8081)
    assert settings.max_payload_bytes == 1024 * 1024
    assert settings.topic_defaults == TopicSettings()
    assert settings.topic_overrides == ()
    assert settings.for_topic("any.topic") == TopicSettings()


def test_toml_file_values_are_read_and_typed(write_config: WriteConfig) -> None:
    path = write_config(
        'host = "0.0.0.0"\n'
        "port = 9000\n"
        "publish_timeout = 2.5\n"
        "drain_seconds = 3\n"
        'log_level = "debug"\n'
    )
    settings = load_settings(environ={}, config_path=path)
    assert settings.host == "0.0.0.0"
    assert settings.port == 9000
    assert settings.publish_timeout == 2.5
    assert settings.drain_seconds == 3.0
    assert isinstance(settings.drain_seconds, float)
    assert settings.log_level == "debug"
    assert settings.ws_port == 8081  # untouched keys keep their defaults


def test_the_config_file_can_be_named_by_broker_config(write_config: WriteConfig) -> None:
    path = write_config("port = 9001\n")
    assert load_settings(environ={"BROKER_CONFIG": str(path)}).port == 9001


def test_config_path_argument_wins_over_broker_config(
    write_config: WriteConfig, tmp_path: Path
) -> None:
    other = tmp_path / "other.toml"
    other.write_text("port = 1111\n")
    path = write_config("port = 9002\n")
    assert load_settings(environ={"BROKER_CONFIG": str(other)}, config_path=path).port == 9002


def test_environment_overrides_toml(write_config: WriteConfig) -> None:
    path = write_config("port = 9000\nws_port = 9001\npublish_timeout = 2.5\n")
    environ = {"BROKER_PORT": "9100", "BROKER_PUBLISH_TIMEOUT": "0.25"}
    settings = load_settings(environ=environ, config_path=path)
    assert settings.port == 9100
    assert settings.publish_timeout == 0.25
    assert settings.ws_port == 9001


def test_unrelated_environment_variables_are_ignored() -> None:
    settings = load_settings(environ={"PORT": "1", "BROKER_NOT_A_SETTING": "x", "HOME": "/"})
    assert settings == Settings()


def test_flags_override_environment_and_none_flags_are_ignored(write_config: WriteConfig) -> None:
    path = write_config('port = 9000\nhost = "toml-host"\nlog_level = "warning"\n')
    environ = {"BROKER_PORT": "9100", "BROKER_HOST": "env-host"}
    flags = {"port": 9200, "host": None, "log_level": None}
    settings = load_settings(flags=flags, environ=environ, config_path=path)
    assert settings.port == 9200
    assert settings.host == "env-host"
    assert settings.log_level == "warning"


def test_flag_values_are_converted_to_the_settings_type() -> None:
    settings = load_settings(flags={"port": "9300", "publish_timeout": "3"}, environ={})
    assert settings.port == 9300
    assert settings.publish_timeout == 3.0


def test_dashes_in_toml_keys_are_accepted(write_config: WriteConfig) -> None:
    path = write_config(
        "max-payload-bytes = 2048\n"
        "ws-port = 9999\n"
        "[topics.default]\n"
        "history-messages = 5\n"
        "slow-consumer-policy = \"disconnect\"\n"
        '[topics."logs.>"]\n'
        "mailbox-size = 8\n"
        "slow-consumer-grace = 0.25\n"
        "flush-delay = 0\n"
    )
    settings = load_settings(environ={}, config_path=path)
    assert settings.max_payload_bytes == 2048
    assert settings.ws_port == 9999
    assert settings.topic_defaults.history_messages == 5
    assert settings.topic_defaults.slow_consumer_policy is SlowConsumerPolicy.DISCONNECT
    assert settings.for_topic("logs.app").mailbox_size == 8
    assert settings.for_topic("logs.app").slow_consumer_grace == 0.25
    assert settings.topic_defaults.slow_consumer_grace == 2.0
    assert settings.for_topic("logs.app").flush_delay == 0
    assert settings.topic_defaults.flush_delay == 0.001


@pytest.mark.parametrize(
    "text",
    [
        'colour = "red"\n',
        "[server]\nport = 1\n",
        "[topics.default]\nhistory_forever = 1\n",
        '[topics."a.>"]\nmailbox = 3\n',
        "[topics.default]\nslow_consumer_grace = -1\n",
        "[topics.default]\nflush_delay = 2\n",
        "[topics.default]\nflush_delay = -0.001\n",
    ],
)
def test_unknown_toml_keys_raise_settings_error(write_config: WriteConfig, text: str) -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(environ={}, config_path=write_config(text))
    assert info.value.code == "invalid_settings"


def test_unknown_flags_raise_settings_error() -> None:
    with pytest.raises(SettingsError, match="colour"):
        load_settings(flags={"colour": "red"}, environ={})


@pytest.mark.parametrize(
    "text",
    [
        'port = "eighty"\n',
        "port = 70000\n",
        "port = -1\n",
        "port = true\n",
        "port = [80]\n",
        "max_payload_bytes = 0\n",
        "outbox_size = 0\n",
        "outbox_bytes = 0\n",
        "max_topics = -5\n",
        'publish_timeout = "soon"\n',
        "[topics.default]\nmailbox_size = 0\n",
        "[topics.default]\nhistory_messages = -1\n",
        "[topics.default]\nhistory_bytes = -1\n",
        '[topics.default]\nslow_consumer_policy = "drop"\n',
        '[topics."a.>"]\nmailbox_size = 0\n',
        '[topics."a..b"]\nmailbox_size = 4\n',
        '[topics."a.>.b"]\nmailbox_size = 4\n',
        "topics = 5\n",
        "[topics]\nx = 1\n",
        "port = \n",  # not TOML
    ],
)
def test_bad_toml_values_raise_settings_error(write_config: WriteConfig, text: str) -> None:
    with pytest.raises(SettingsError):
        load_settings(environ={}, config_path=write_config(text))


@pytest.mark.parametrize("text", ["port = 8080.5\n", "max_payload_bytes = 1.5\n"])
def test_a_fractional_value_for_an_integer_setting_is_rejected(
    write_config: WriteConfig, text: str
) -> None:
    with pytest.raises(SettingsError):
        load_settings(environ={}, config_path=write_config(text))


def test_a_missing_config_file_raises_settings_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(environ={}, config_path=tmp_path / "absent.toml")


@pytest.mark.parametrize(
    "environ",
    [
        {"BROKER_PORT": "eighty"},
        {"BROKER_PORT": "8080.5"},
        {"BROKER_PORT": "65536"},
        {"BROKER_PUBLISH_TIMEOUT": "soon"},
        {"BROKER_MAX_BODY_BYTES": "0"},
    ],
)
def test_bad_environment_values_raise_settings_error(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        load_settings(environ=environ)


@pytest.mark.parametrize("flags", [{"port": "x"}, {"port": True}, {"ws_port": 100000}])
def test_bad_flag_values_raise_settings_error(flags: dict[str, Any]) -> None:
    with pytest.raises(SettingsError):
        load_settings(flags=flags, environ={})


def test_topics_default_table_changes_every_topics_defaults(write_config: WriteConfig) -> None:
    path = write_config(
        "[topics.default]\nhistory_messages = 50\nhistory_bytes = 4096\nmailbox_size = 16\n"
    )
    settings = load_settings(environ={}, config_path=path)
    expected = TopicSettings(history_messages=50, history_bytes=4096, mailbox_size=16)
    assert settings.topic_defaults == expected
    assert settings.for_topic("orders.eu") == expected
    assert settings.topic_overrides == ()


def test_topic_override_applies_to_matching_topics_only(write_config: WriteConfig) -> None:
    path = write_config('[topics."metrics.>"]\nhistory_messages = 5\n')
    settings = load_settings(environ={}, config_path=path)
    assert settings.for_topic("metrics.cpu").history_messages == 5
    assert settings.for_topic("metrics.cpu.host-1").history_messages == 5
    assert settings.for_topic("metrics") == TopicSettings()  # '>' needs one more token
    assert settings.for_topic("orders.metrics") == TopicSettings()


@pytest.mark.parametrize("default_first", [True, False])
def test_topic_override_inherits_the_topics_default_table(
    write_config: WriteConfig, default_first: bool
) -> None:
    default = "[topics.default]\nmailbox_size = 64\nhistory_messages = 50\n"
    override = '[topics."metrics.>"]\nhistory_messages = 5\n'
    path = write_config(default + override if default_first else override + default)
    settings = load_settings(environ={}, config_path=path)
    assert settings.for_topic("metrics.cpu") == TopicSettings(history_messages=5, mailbox_size=64)
    assert settings.for_topic("orders") == TopicSettings(history_messages=50, mailbox_size=64)


@pytest.mark.parametrize("broad_first", [True, False])
def test_the_more_specific_override_wins_whatever_the_file_order(
    write_config: WriteConfig, broad_first: bool
) -> None:
    tables = {
        "broad": '[topics."metrics.>"]\nhistory_messages = 5\n',
        "narrow": '[topics."metrics.cpu.*"]\nhistory_messages = 1\n',
        "exact": '[topics."metrics.cpu.total"]\nhistory_messages = 0\n',
        "everything": '[topics.">"]\nhistory_messages = 99\n',
    }
    order = ["everything", "broad", "narrow", "exact"]
    if not broad_first:
        order.reverse()
    path = write_config("".join(tables[name] for name in order))
    settings = load_settings(environ={}, config_path=path)
    assert settings.for_topic("metrics.mem").history_messages == 5
    assert settings.for_topic("metrics.cpu.host1").history_messages == 1
    assert settings.for_topic("metrics.cpu.total").history_messages == 0
    assert settings.for_topic("metrics.cpu.host1.core0").history_messages == 5
    assert settings.for_topic("orders").history_messages == 99


@pytest.mark.parametrize("long_first", [True, False])
def test_with_equal_literal_tokens_the_longer_pattern_wins(
    write_config: WriteConfig, long_first: bool
) -> None:
    long = '[topics."a.*.*"]\nhistory_messages = 3\n'
    short = '[topics."a.>"]\nhistory_messages = 2\n'
    path = write_config(long + short if long_first else short + long)
    settings = load_settings(environ={}, config_path=path)
    assert settings.for_topic("a.b.c").history_messages == 3
    assert settings.for_topic("a.b").history_messages == 2


def test_an_equally_specific_tie_goes_to_the_pattern_listed_first(
    write_config: WriteConfig,
) -> None:
    path = write_config(
        '[topics."metrics.*"]\nhistory_messages = 7\n[topics."*.cpu"]\nhistory_messages = 8\n'
    )
    settings = load_settings(environ={}, config_path=path)
    assert settings.for_topic("metrics.cpu").history_messages == 7
    assert settings.for_topic("metrics.mem").history_messages == 7
    assert settings.for_topic("host.cpu").history_messages == 8


def test_outbox_bytes_defaults_to_8_mib_and_comes_from_env_and_flags() -> None:
    assert load_settings(environ={}).outbox_bytes == 8 * 1024 * 1024
    assert load_settings(environ={"BROKER_OUTBOX_BYTES": "65536"}).outbox_bytes == 65536
    assert load_settings(flags={"outbox_bytes": "1024"}, environ={}).outbox_bytes == 1024
