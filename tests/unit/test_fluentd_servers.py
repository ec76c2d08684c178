"""FLUENTD_SERVERS: parsing, defaults and the one-line errors that name the setting."""

import pytest

from levity.config import ConfigError, load_settings


def servers(value, **env):
    return load_settings(environ={"FLUENTD_SERVERS": value, **env}).fluentd_server_list()


def test_unset_means_fluentd_host_alone():
    settings = load_settings(environ={"FLUENTD_HOST": "fluentd.local", "FLUENTD_PORT": "24230"})
    assert settings.fluentd_server_list() == [("fluentd.local", 24230)]


def test_ports_default_to_fluentd_port_and_the_order_is_kept():
    assert servers("agg-2:24225, agg-1,[fd00::1]:24226", FLUENTD_PORT="24230", FLUENTD_HOST="ignored") == [
        ("agg-2", 24225), ("agg-1", 24230), ("fd00::1", 24226)]


@pytest.mark.parametrize("value, message", [
    ("", "empty"),
    ("   ", "empty"),
    ("a,,b", "empty entry"),
    ("a:1,b:1,", "empty entry"),
    ("a:0", "port out of range"),
    ("a:65536", "port out of range"),
    ("a:http", "port out of range"),
    ("a b:1", "malformed host"),
    ("fd00::1:24224", "IPv6"),
    ("[fd00::1", "IPv6"),
    ("a:24224,A", "duplicate entry a:24224"),
    ("a:1,b,a:1", "duplicate entry a:1"),
])
def test_bad_lists_are_one_line_errors_naming_the_setting(value, message):
    with pytest.raises(ConfigError) as raised:
        servers(value)
    text = str(raised.value)
    assert text.startswith("FLUENTD_SERVERS: ") and message in text and "\n" not in text


def test_the_flag_wins_over_the_variable():
    import argparse

    from levity.config import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--fluentd-servers", "x:1,y:2"])
    settings = load_settings(args, environ={"FLUENTD_SERVERS": "z:3"})
    assert settings.fluentd_server_list() == [("x", 1), ("y", 2)]
