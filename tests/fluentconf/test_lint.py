"""The structural checker itself, on configs that are wrong in one way each."""

import pytest

from levity.fluentconf.lint import lint, parse

GOOD = """\
<system>
  log_level info
</system>
<source>
  @type forward
  port 24224
  <security>
    self_hostname fluentd
    shared_key "#{ENV['FLUENTD_SHARED_KEY']}"
  </security>
</source>
<match ocpp.**>
  @type relabel
  @label @out_files
</match>
<label @out_files>
  <match **>
    @type file
    @id out_files
    path /var/log/fluent/${tag}/%Y-%m-%d
    <buffer tag,time>
      @type file
      path /var/log/fluent/buffer/files
      timekey 1d
    </buffer>
  </match>
</label>
"""


def messages(text):
    return [issue.message for issue in lint(text)]


def test_good_config_is_clean():
    assert lint(GOOD) == []


def test_parse_builds_the_tree():
    root, issues = parse(GOOD)
    assert issues == []
    assert [section.name for section in root.children] == ["system", "source", "match", "label"]
    match = root.children[3].children[0]
    assert match.type == "file" and match.sections("buffer")[0].arg == "tag,time"


@pytest.mark.parametrize("text,expected", [
    (GOOD.replace("</source>\n", "", 1), "<source> is never closed"),
    (GOOD.replace("  </security>\n", "", 1), "</source> closes <security>"),
    (GOOD + "</match>\n", "closes nothing"),
    (GOOD + "<match x.**>\n  @type stdout\n", "is never closed"),
])
def test_unbalanced_sections(text, expected):
    assert any(expected in message for message in messages(text))


def test_missing_type():
    assert "<source> has no @type" in messages(GOOD.replace("  @type forward\n", ""))


def test_unknown_parameter_of_a_core_plugin():
    text = GOOD.replace("  port 24224\n", "  port 24224\n  prot 1\n")
    assert "parameter 'prot' is not used by source plugin 'forward'" in messages(text)


def test_unknown_parameter_in_buffer_and_unknown_section():
    text = GOOD.replace("      timekey 1d\n", "      timekey 1d\n      chunk_size 1m\n      <bogus>\n      </bogus>\n")
    found = messages(text)
    assert any("'chunk_size' is not used by <buffer>" in m for m in found)
    assert any("section <bogus> is not used" in m for m in found)


def test_required_parameter_missing():
    text = GOOD.replace("    path /var/log/fluent/${tag}/%Y-%m-%d\n", "")
    assert "match plugin 'file' needs the parameter 'path'" in messages(text)


def test_values_must_have_the_right_kind():
    text = GOOD.replace("  port 24224\n", "  port twenty\n").replace("timekey 1d", "timekey one day")
    found = messages(text)
    assert "port 'twenty' is not an integer" in found
    assert any("timekey 'one day' is not a duration" in m for m in found)


def test_literal_secret_is_flagged():
    text = GOOD.replace("\"#{ENV['FLUENTD_SHARED_KEY']}\"", "hunter2")
    assert any("shared_key must be" in m for m in messages(text))
    text = GOOD.replace("ENV['FLUENTD_SHARED_KEY']", "ENV['x; system(1)']")
    assert any("shared_key must be" in m for m in messages(text))


def test_placeholders_need_their_chunk_keys():
    found = messages(GOOD.replace("<buffer tag,time>", "<buffer time>"))
    assert any("has ${tag} but the buffer chunk keys" in m for m in found)
    found = messages(GOOD.replace("<buffer tag,time>", "<buffer tag>").replace("      timekey 1d\n", ""))
    assert any("time placeholders but the chunk keys" in m for m in found)
    found = messages(GOOD.replace("timekey 1d", "timekey 1h"))
    assert any("shorter than the finest placeholder" in m for m in found)


def test_undefined_and_unused_labels():
    assert any("@label @nowhere is not defined" in m for m in messages(GOOD.replace("@label @out_files", "@label @nowhere")))


def test_shadowed_match():
    text = GOOD.replace("</label>\n", "</label>\n", 1) + "<match ocpp.transaction.**>\n  @type stdout\n</match>\n"
    assert any("never matches" in m for m in messages(text))


def test_elasticsearch_type_name_and_gem_parameters():
    text = GOOD + ("<match es.**>\n  @type elasticsearch\n  host es\n  type_name fluentd\n"
                   "  index_nam typo\n</match>\n")
    found = messages(text)
    assert any("type_name is deprecated" in m for m in found)
    assert "parameter 'index_nam' is not used by match plugin 'elasticsearch'" in found


def test_cloudwatch_needs_one_group_and_one_stream_option():
    text = GOOD + ("<match cw.**>\n  @type cloudwatch_logs\n  log_group_name /g\n  log_stream_name s\n"
                   "  use_tag_as_stream true\n</match>\n")
    assert any("exactly one of log_stream_name" in m for m in messages(text))


def test_duplicate_ids_and_buffer_paths():
    text = GOOD + ("<match other.**>\n  @type file\n  @id out_files\n  path /x/${tag}/%Y-%m-%d\n"
                   "  <buffer tag,time>\n    @type file\n    path /var/log/fluent/buffer/files\n    timekey 1d\n"
                   "  </buffer>\n</match>\n")
    found = messages(text)
    assert any("@id 'out_files' is also used" in m for m in found)
    assert any("buffer path '/var/log/fluent/buffer/files' is also used" in m for m in found)


def test_flush_interval_with_time_key_needs_interval_mode():
    text = GOOD.replace("      timekey 1d\n", "      timekey 1d\n      flush_interval 10s\n")
    assert any("flush_mode is interval" in m for m in messages(text))
