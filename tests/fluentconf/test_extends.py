"""`extends`: deep merge, named lists merged by name, null removes, cycles refused."""

import yaml

from levity.fluentconf import load_profile, render
from levity.fluentconf.profile import profiles_dir


def test_staging_extends_production():
    staging = load_profile(profiles_dir() / "staging.yaml")
    assert staging.chain == ("production",)
    assert staging.output("elasticsearch").host == "elasticsearch.staging.levity.internal"
    assert staging.output("elasticsearch").scheme == "https"  # inherited
    assert [server.host for server in staging.output("billing").servers] == ["billing.staging.levity.internal"]
    assert staging.filters[0].record["environment"] == "staging"
    assert staging.filters[0].record["region"] == "eu-west-1"  # inherited


def test_relative_extends_named_merge_and_null_removal(tmp_path, base):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    child = {
        "extends": "./base.yaml",
        "description": "child",
        "sources": {"forward": {"port": 24225}},
        "outputs": [{"name": "es", "host": "es.child", "buffer": {"retry_timeout": None}},
                    {"name": "extra", "type": "stdout"}],
        "routes": [{"match": "ocpp.**", "outputs": ["es", "files", "console", "extra"]}],
    }
    (tmp_path / "child.yaml").write_text(yaml.safe_dump(child))
    profile = load_profile(tmp_path / "child.yaml")
    assert profile.chain == ("base",)
    assert [output.name for output in profile.outputs] == ["console", "files", "es", "extra"]
    es = profile.output("es")
    assert es.host == "es.child" and es.user == "writer" and es.buffer.retry_timeout is None
    assert es.buffer.total_limit_size == "1g"
    assert profile.doc.sources.forward.port == 24225
    assert "extends base" in render(profile).splitlines()[0]


def test_extends_cycle(tmp_path, base):
    a = dict(base, extends="b.yaml")
    b = dict(base, extends="a.yaml")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(a))
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(b))
    import pytest
    from levity.fluentconf import ProfileError

    with pytest.raises(ProfileError) as caught:
        load_profile(tmp_path / "a.yaml")
    assert "cycle" in caught.value.expected
