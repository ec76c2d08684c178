"""Each schema and semantic error names the file, the key path, what was found and what was expected."""

import pytest
import yaml

from levity.fluentconf import ProfileError, load_profile, render_file


def test_base_profile_is_valid(base, write_profile):
    assert "ocpp.transaction.**" in render_file(write_profile(base))


def _only(error: ProfileError, key_path: str) -> ProfileError:
    for problem in error.problems:
        if problem.key_path == key_path:
            return problem
    raise AssertionError(f"no problem at {key_path}: {error}")


def test_message_format_names_file_path_found_expected(base, profile_error):
    base["outputs"][2]["buffer"]["total_limit_size"] = "12 parsecs"
    error = profile_error(base)
    assert error.file.endswith("profile.yaml")
    assert error.key_path == "outputs[2].buffer.total_limit_size"
    assert error.found == "'12 parsecs'"
    assert "size" in error.expected
    assert str(error).endswith("profile.yaml: outputs[2].buffer.total_limit_size: found '12 parsecs'; "
                               "expected a size like 512m, 8MB, 1g or a number of bytes")


@pytest.mark.parametrize("key,value", [("flush_interval", "5 minutes"), ("retry_timeout", "-1"),
                                       ("retry_max_interval", "1w")])
def test_bad_duration(base, profile_error, key, value):
    base["outputs"][2]["buffer"][key] = value
    problem = _only(profile_error(base), f"outputs[2].buffer.{key}")
    assert problem.found == repr(value) and "duration" in problem.expected


def test_unknown_output_type(base, profile_error):
    base["outputs"].append({"name": "k", "type": "kafka"})
    problem = _only(profile_error(base), "outputs[3].type")
    assert problem.found == "'kafka'" and "elasticsearch" in problem.expected and "s3" in problem.expected


def test_unknown_filter_type(base, profile_error):
    base["filters"][0]["type"] = "parser"
    problem = _only(profile_error(base), "filters[0].type")
    assert problem.found == "'parser'" and "grep" in problem.expected


def test_route_to_undefined_output(base, profile_error):
    base["routes"][1]["outputs"].append("billing")
    problem = _only(profile_error(base), "routes[1].outputs[2]")
    assert problem.found == "'billing'" and "console, es, files" in problem.expected


def test_tag_placeholder_without_tag_chunk_key(base, profile_error):
    base["outputs"][1]["buffer"]["chunk_keys"] = ["time"]
    problem = _only(profile_error(base), "outputs[1].path")
    assert "${tag}" in problem.found and "'tag' in buffer.chunk_keys" in problem.expected


def test_time_placeholder_without_time_chunk_key(base, profile_error):
    base["outputs"][1]["buffer"] = {"type": "file", "chunk_keys": ["tag"]}
    problem = _only(profile_error(base), "outputs[1].path")
    assert "time placeholders" in problem.found and "'time' in buffer.chunk_keys" in problem.expected


def test_time_chunk_key_needs_timekey(base, profile_error):
    del base["outputs"][1]["buffer"]["timekey"]
    problem = _only(profile_error(base), "outputs[1].buffer")
    assert "timekey" in problem.expected


def test_timekey_shorter_than_path_granularity(base, profile_error):
    base["outputs"][1]["buffer"]["timekey"] = "1h"
    problem = _only(profile_error(base), "outputs[1].buffer.timekey")
    assert "86400" in problem.expected


def test_file_output_tag_key_without_tag_placeholder(base, profile_error):
    base["outputs"][1]["path"] = "/var/log/fluent/ocpp/%Y-%m-%d"
    problem = _only(profile_error(base), "outputs[1].path")
    assert "${tag}" in problem.expected


def test_file_output_needs_a_buffer(base, profile_error):
    del base["outputs"][1]["buffer"]
    problem = _only(profile_error(base), "outputs[1].buffer")
    assert problem.found == "nothing"


@pytest.mark.parametrize("where", ["outputs[2].password", "sources.forward.security.shared_key"])
def test_literal_secret_is_rejected_and_not_echoed(base, profile_error, where):
    if where.startswith("outputs"):
        base["outputs"][2]["password"] = "hunter2-secret"
    else:
        base["sources"]["forward"]["security"] = {"self_hostname": "fluentd", "shared_key": "hunter2-secret"}
    error = profile_error(base)
    problem = _only(error, where)
    assert "literal secret" in problem.found and "{env: NAME}" in problem.expected
    assert "hunter2" not in str(error)


@pytest.mark.parametrize("ref,expected", [({"env": "lower-case"}, "^[A-Z_][A-Z0-9_]*$"),
                                          ({"file": "/etc/it's"}, "no quotes"),
                                          ({"env": "A", "file": "/a"}, "exactly one")])
def test_unsafe_secret_references(base, profile_error, ref, expected):
    base["outputs"][2]["password"] = ref
    assert expected in _only(profile_error(base), "outputs[2].password").expected


def test_tls_without_cert_paths(base, profile_error):
    base["sources"]["forward"]["tls"] = {"enabled": True, "cert_path": "/etc/fluent/cert.pem"}
    problem = _only(profile_error(base), "sources.forward.tls")
    assert "private_key_path" in problem.expected and "cert_path" in problem.found


def test_mutual_tls_needs_ca_path(base, profile_error):
    base["sources"]["forward"]["tls"] = {"cert_path": "/c.pem", "private_key_path": "/k.pem", "client_cert_auth": True}
    assert "ca_path" in _only(profile_error(base), "sources.forward.tls").expected


def test_duplicate_output_names(base, profile_error):
    base["outputs"].append({"name": "console", "type": "stdout"})
    problem = _only(profile_error(base), "outputs[3].name")
    assert "outputs[0]" in problem.found and "unique" in problem.expected


@pytest.mark.parametrize("mutate,key_path", [
    (lambda p: p.update(colour="blue"), "colour"),
    (lambda p: p["outputs"][2].update(type_name="fluentd"), "outputs[2].type_name"),
    (lambda p: p["outputs"][2]["buffer"].update(chunk_size="1m"), "outputs[2].buffer.chunk_size"),
    (lambda p: p["sources"]["forward"].update(prot=1), "sources.forward.prot"),
    (lambda p: p["routes"][0].update(label="x"), "routes[0].label"),
    (lambda p: p["filters"][0].update(enable_ruby=True), "filters[0].enable_ruby"),
])
def test_unknown_keys_anywhere(base, profile_error, mutate, key_path):
    mutate(base)
    problem = _only(profile_error(base), key_path)
    assert problem.found.startswith("unknown key") and problem.expected.startswith("one of:")


def test_shadowed_route(base, profile_error):
    base["routes"].reverse()
    problem = _only(profile_error(base), "routes[1].match")
    assert "first matching <match> wins" in problem.expected


def test_unused_output(base, profile_error):
    base["routes"][0]["outputs"] = ["files"]
    assert "no route" in _only(profile_error(base), "outputs[2].name").found


def test_missing_required_keys(profile_error):
    error = profile_error({"description": "x"})
    assert {p.key_path for p in error.problems} >= {"outputs", "routes"}
    assert all(p.found == "nothing" for p in error.problems)


def test_bad_enum_and_numbers(base, profile_error):
    base["outputs"][2]["buffer"]["overflow_action"] = "explode"
    base["sources"]["forward"]["port"] = 70000
    error = profile_error(base)
    assert "'block'" in _only(error, "outputs[2].buffer.overflow_action").expected
    assert "65535" in _only(error, "sources.forward.port").expected


def test_secondary_with_retry_forever(base, profile_error):
    base["outputs"][2]["buffer"] = {"type": "file", "retry_forever": True}
    base["outputs"][2]["secondary"] = True
    assert "retry_timeout" in _only(profile_error(base), "outputs[2].secondary").expected


def test_duplicate_buffer_path(base, profile_error):
    base["outputs"][2]["buffer"]["path"] = "/var/log/fluent/buffer/files"
    assert "one output" in _only(profile_error(base), "outputs[2].buffer.path").expected


def test_yaml_syntax_error_and_duplicate_keys(profile_error):
    error = profile_error("description: x\noutputs: [\n")
    assert error.expected == "valid YAML" and error.key_path.startswith("line ")
    error = profile_error("description: x\ndescription: y\n")
    assert "duplicate key 'description'" in error.found


def test_top_level_must_be_a_mapping(profile_error):
    assert "mapping" in profile_error("- a\n- b\n").expected


def test_newline_in_a_value_is_rejected(base, profile_error):
    base["filters"][0]["record"]["environment"] = "prod\n</filter>"
    assert "single-line" in _only(profile_error(base), "filters[0].record.environment").expected


def test_cloudwatch_stream_options_are_exclusive(base, profile_error):
    base["outputs"].append({"name": "cw", "type": "cloudwatch_logs", "region": "eu-west-1",
                            "log_stream_name": "all", "buffer": {"type": "memory"}})
    base["routes"][1]["outputs"].append("cw")
    assert "exactly one" in _only(profile_error(base), "outputs[3]").expected


def test_extends_unknown_profile(base, profile_error):
    base["extends"] = "no-such-profile"
    assert _only(profile_error(base), "extends").found == "'no-such-profile'"


def test_errors_are_value_errors_and_list_all_problems(base, profile_error):
    base["outputs"][2]["buffer"]["total_limit_size"] = "big"
    base["outputs"].append({"name": "k", "type": "kafka"})
    error = profile_error(base)
    assert isinstance(error, ValueError) and len(error.problems) == 2
    assert len(str(error).splitlines()) == 2


def test_grep_patterns_are_checked(base, profile_error):
    base["filters"].append({"name": "g", "type": "grep", "regexp": [{"key": "reason", "pattern": "a # b"}]})
    assert "'#'" in _only(profile_error(base), "filters[1].regexp[0].pattern").expected
    base["filters"][1]["regexp"][0]["pattern"] = "(unclosed"
    assert "regular expression" in _only(profile_error(base), "filters[1].regexp[0].pattern").expected
    base["filters"][1] = {"name": "g", "type": "grep"}
    assert "at least one of" in _only(profile_error(base), "filters[1]").expected


def test_record_values_are_quoted_safely(base, write_profile):
    base["filters"][0]["record"] = {"site": "Depot #4 'north'", "count": 3, "flag": True,
                                    "host": "${hostname}", "token": {"env": "SITE_TOKEN"}}
    text = render_file(write_profile(base))
    assert "    site 'Depot #4 \\'north\\''\n" in text
    assert "    count 3\n" in text and "    flag true\n" in text
    assert "    host '${hostname}'\n" in text
    assert "    token \"#{ENV['SITE_TOKEN']}\"\n" in text
