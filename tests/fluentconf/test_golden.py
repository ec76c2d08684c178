"""Every shipped profile renders to its golden file, deterministically, and passes the checker.

Regenerate the golden files after an intended change:
    LEVITY_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/fluentconf
and review the diff (git diff tests/fluentconf/golden) before committing.
"""

import os
import re
from pathlib import Path

import pytest

from levity.fluentconf import load_profile, render, render_file, shipped_profiles
from levity.fluentconf.lint import lint
from levity.fluentconf.profile import profiles_dir

GOLDEN = Path(__file__).parent / "golden"
REPOSITORY = Path(__file__).resolve().parents[2]
SHIPPED = sorted(shipped_profiles())
REQUIRED = {"stdout", "dev", "file", "elasticsearch", "cloudwatch", "s3", "billing", "metadata", "high-value",
            "tls", "production", "staging", "compose"}


def test_every_required_profile_is_shipped_with_a_description():
    profiles = shipped_profiles()
    assert REQUIRED <= set(profiles)
    assert all(profiles[name] and "\n" not in profiles[name] for name in profiles)


@pytest.mark.parametrize("name", SHIPPED)
def test_golden(name):
    text = render_file(profiles_dir() / f"{name}.yaml")
    golden = GOLDEN / f"{name}.conf"
    if os.environ.get("LEVITY_UPDATE_GOLDEN"):
        golden.write_text(text)
    assert golden.exists(), f"no golden file for {name}: run with LEVITY_UPDATE_GOLDEN=1"
    assert text == golden.read_text()


@pytest.mark.parametrize("name", SHIPPED)
def test_render_is_deterministic_and_relative(name):
    path = profiles_dir() / f"{name}.yaml"
    first, second = render_file(path), render(load_profile(path))
    assert first == second
    assert str(profiles_dir().resolve()) not in first and str(REPOSITORY) not in first
    assert f'from the profile "{name}" (profiles/{name}.yaml' in first.splitlines()[0]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_passes_the_structural_check(name):
    issues = lint(render_file(profiles_dir() / f"{name}.yaml"))
    assert issues == [], "\n".join(map(str, issues))


@pytest.mark.parametrize("name", SHIPPED)
def test_secrets_only_as_embedded_ruby(name):
    text = render_file(profiles_dir() / f"{name}.yaml")
    for line in text.splitlines():
        key = line.strip().split(" ", 1)[0]
        if key in ("shared_key", "password", "aws_key_id", "aws_sec_key", "private_key_passphrase"):
            assert re.fullmatch(r"""\S+ "#\{ENV\['[A-Z_][A-Z0-9_]*'\]\}\"""", line.strip()), line


def test_production_routes_transactions_to_billing_and_storage():
    text = render_file(profiles_dir() / "production.yaml")
    matches = re.findall(r"^<match (\S+)>", text, flags=re.M)
    assert matches[:2] == ["ocpp.transaction.**", "ocpp.**"]
    transaction_block = text.split("<match ocpp.transaction.**>")[1].split("</match>")[0]
    assert "@type copy" in transaction_block
    for label in ("@out_billing", "@out_elasticsearch", "@out_archive"):
        assert f"@label {label}" in transaction_block
        assert f"<label {label}>" in text
    assert "<transport tls>" in text and "<security>" in text and "@type monitor_agent" in text
    assert "@type secondary_file" in text and "overflow_action block" in text
    assert "type_name" not in text.replace("suppress_type_name", "").replace("no type_name", "")


def test_elasticsearch_parameters_for_es8():
    text = render_file(profiles_dir() / "elasticsearch.yaml")
    for line in ("index_name ocpp_events", "tag_key @log_name", "include_tag_key true", "suppress_type_name true",
                 "verify_es_version_at_startup false", "default_elasticsearch_version 8"):
        assert f"    {line}\n" in text


def test_compose_profile_uses_stdout_and_elasticsearch_service():
    text = render_file(profiles_dir() / "compose.yaml")
    assert "@type stdout" in text and "host elasticsearch\n" in text and "port 9200\n" in text


def test_cloudwatch_and_s3_parameters():
    cloudwatch = render_file(profiles_dir() / "cloudwatch.yaml")
    for line in ("log_group_name /ocpp/audit", "use_tag_as_stream true", "auto_create_stream true"):
        assert f"    {line}\n" in cloudwatch
    assert "log_stream_name" not in cloudwatch  # the plugin refuses both
    s3 = render_file(profiles_dir() / "s3.yaml")
    assert "path ocpp/${tag}/%Y/%m/%d/" in s3 and "<buffer tag,time>" in s3 and "@type json" in s3


def test_staging_differs_from_production_only_where_it_must():
    production = render_file(profiles_dir() / "production.yaml").splitlines()
    staging = render_file(profiles_dir() / "staging.yaml").splitlines()
    assert sum(1 for line in staging if line not in production) < 15
    assert "    environment staging" in staging


def test_prometheus_when_asked(tmp_path):
    text = render_file(Path(__file__).parent / "data" / "prometheus.yaml")
    assert "@type prometheus\n" in text and "@type prometheus_monitor" in text
    assert "@type prometheus_output_monitor" in text
    assert lint(text) == []
