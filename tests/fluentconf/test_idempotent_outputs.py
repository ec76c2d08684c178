"""Replays never double: Elasticsearch outputs write with _id = event_id, S3 keys carry ${chunk_id}."""

import re

import pytest

from levity.fluentconf import render_file, shipped_profiles
from levity.fluentconf.lint import lint
from levity.fluentconf.profile import profiles_dir

RENDERED = {name: render_file(profiles_dir() / f"{name}.yaml") for name in sorted(shipped_profiles())}


def sections(text, plugin):
    """The bodies of the <match> sections of one plugin type."""
    return [m.group(1) for m in re.finditer(r"<match \*\*>\n    @type " + plugin + r"\n(.*?)\n  </match>", text, re.S)]


def test_the_shipped_profiles_use_elasticsearch_and_s3():
    assert any(sections(text, "elasticsearch") for text in RENDERED.values())
    assert any(sections(text, "s3") for text in RENDERED.values())


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_every_elasticsearch_output_writes_with_the_event_id_as_document_id(name):
    for body in sections(RENDERED[name], "elasticsearch"):
        assert re.search(r"^    id_key event_id$", body, re.M)
        assert re.search(r"^    write_operation index$", body, re.M)


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_every_s3_object_key_carries_the_chunk_id(name):
    for body in sections(RENDERED[name], "s3"):
        (key,) = re.findall(r"^    s3_object_key_format (\S+)$", body, re.M)
        assert "${chunk_id}" in key and key.startswith("%{path}")


def test_the_checker_flags_outputs_that_would_double_or_overwrite():
    text = RENDERED["production"]
    without_id = text.replace("    id_key event_id\n", "")
    without_chunk = text.replace("_${chunk_id}", "")
    assert any("without id_key" in issue.message for issue in lint(without_id))
    assert any("without ${chunk_id}" in issue.message for issue in lint(without_chunk))
    assert not [issue for issue in lint(text) if "id_key" in issue.message or "chunk_id" in issue.message]
