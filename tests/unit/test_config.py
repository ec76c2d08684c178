import argparse

import pytest

from levity.config import ConfigError, Settings, add_arguments, load_settings


def parse(argv, environ=None):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return load_settings(parser.parse_args(argv), environ or {})


def test_defaults_match_the_contract():
    settings = parse([])
    assert (settings.fluentd_enabled, settings.fluentd_host, settings.fluentd_port) == (False, "localhost", 24224)
    assert settings.port == 9000 and settings.database == "levity.db"


def test_environment_then_flags_win():
    environ = {"FLUENTD_ENABLED": "true", "FLUENTD_PORT": "24225", "LEVITY_PORT": "9100", "LEVITY_LOG_LEVEL": "debug"}
    assert parse([], environ).fluentd_enabled is True
    assert parse([], environ).log_level == "DEBUG"
    settings = parse(["--port", "9200", "--fluentd-enabled", "false"], environ)
    assert (settings.port, settings.fluentd_port, settings.fluentd_enabled) == (9200, 24225, False)


@pytest.mark.parametrize("environ, message", [
    ({"FLUENTD_ENABLED": "maybe"}, "FLUENTD_ENABLED: expected true or false"),
    ({"FLUENTD_PORT": "70000"}, "FLUENTD_PORT: expected a port"),
    ({"LEVITY_BOOT_POLICY": "sometimes"}, "LEVITY_BOOT_POLICY: expected one of accept, pending, rejected"),
    ({"LEVITY_SPOOL_MAX_BYTES": "lots"}, "LEVITY_SPOOL_MAX_BYTES"),
])
def test_bad_values_name_the_setting(environ, message):
    with pytest.raises(ConfigError, match=message):
        parse([], environ)


def test_sizes_and_secrets(tmp_path):
    assert parse([], {"LEVITY_SPOOL_MAX_BYTES": "64MB"}).spool_max_bytes == 64 << 20
    key_file = tmp_path / "key"
    key_file.write_text("from-file\n")
    settings = parse([], {"LEVITY_ID_TAG_KEY_FILE": str(key_file)})
    assert settings.secret("id_tag_key") == b"from-file"
    assert Settings(id_tag_key="s3cret").redacted()["id_tag_key"] == "<set>"
    assert "s3cret" not in repr(Settings(id_tag_key="s3cret").redacted())
    with pytest.raises(ConfigError, match="cannot read"):
        Settings(id_tag_key_file=str(tmp_path / "missing")).secret("id_tag_key")


def test_serve_help_tells_every_variable(capsys):
    from levity.cli import main

    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    out = capsys.readouterr().out
    for variable in ["FLUENTD_ENABLED", "FLUENTD_HOST", "FLUENTD_PORT", "LEVITY_DATABASE", "LEVITY_ID_TAG_MODE"]:
        assert variable in out


# Values no setting of its kind can use; each must end in one ConfigError naming the variable,
# never another exception (LEVITY_SECURITY_PROFILE=7 used to raise a TypeError).
def _bad_values(name):
    from dataclasses import fields

    from levity import config

    f = next(f for f in fields(Settings) if f.name == name)
    parse = f.metadata["parse"]
    if f.metadata["choices"]:
        return ["7", "bogus", ""]
    return {
        config._positive_int: ["7x", "-5", "0", "1.5", "nan"],
        config._positive_float: ["fast", "-1", "0", "nan", "inf"],
        config._port: ["70000", "-1", "http"],
        config._size: ["lots", "-5", "0", "1.5.3k"],
        config._bool: ["maybe", "2"],
    }.get(parse, [])


def _setting_names():
    from dataclasses import fields

    return [f.name for f in fields(Settings) if _bad_values(f.name)]


@pytest.mark.parametrize("name", _setting_names())
def test_every_setting_refuses_bad_values_with_one_config_error(name):
    from dataclasses import fields

    variable = next(f for f in fields(Settings) if f.name == name).metadata["env"]
    for value in _bad_values(name):
        with pytest.raises(ConfigError, match=f"^{variable}: ") as refused:
            parse([], {variable: value})
        assert "\n" not in str(refused.value)


def test_security_profile_7_is_a_one_line_error_from_the_cli(capsys, monkeypatch):
    from levity.cli import main

    monkeypatch.setenv("LEVITY_SECURITY_PROFILE", "7")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err == "levity: configuration error: LEVITY_SECURITY_PROFILE: expected one of 0, 1, 2, 3, got '7'\n"


def test_limits_have_variables_and_defaults():
    settings = parse([], {"LEVITY_MAX_QUEUED_FRAMES": "8", "LEVITY_MAX_QUEUED_BYTES": "256k",
                          "LEVITY_MAX_SEND_BUFFER_BYTES": "64k", "LEVITY_AUTH_FAILURES_PER_MINUTE": "3"})
    assert (settings.max_queued_frames, settings.max_queued_bytes, settings.max_send_buffer_bytes,
            settings.auth_failures_per_minute) == (8, 256 << 10, 64 << 10, 3)
