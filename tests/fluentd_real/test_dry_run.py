"""Every shipped profile through a real `fluentd --dry-run`, with the plugins it uses, and
without "parameter ... is not used" warnings (Fluentd only warns about unknown parameters).

Skipped where no Fluentd is installed (FLUENTD_BIN or `fluentd` on PATH)."""

import re

import pytest

from levity.fluentconf import render_file, shipped_profiles
from levity.fluentconf.profile import profiles_dir
from tests.support.certs import make_certs
from tests.support.real_fluentd import require_fluentd, run_dry_run

ENV_REF = re.compile(r"ENV\['([A-Z_][A-Z0-9_]*)'\]")
MISSING_PLUGIN = re.compile(r"Unknown \w+ plugin '(\w+)'")
# Plugins that come in gems of their own, not with Fluentd: a Fluentd without one cannot check
# the profiles that use it (as no Fluentd at all cannot check any).
GEM_PLUGINS = {"elasticsearch", "s3", "cloudwatch_logs", "prometheus", "prometheus_monitor",
               "prometheus_output_monitor"}


@pytest.fixture(scope="module")
def fluentd():
    return require_fluentd()


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory):
    """The files the profiles read under /etc/fluent/tls, as real PEM files."""
    directory = tmp_path_factory.mktemp("etc-fluent")
    bundle = make_certs(directory / "certs", hosts=("fluentd.levity.internal", "localhost"))
    (directory / "tls").mkdir()
    for name, source in (("fluentd.crt", bundle.server_cert), ("fluentd.key", bundle.server_key),
                         ("es-ca.crt", bundle.ca_cert)):
        (directory / "tls" / name).write_bytes(source.read_bytes())
    return directory


@pytest.mark.parametrize("name", sorted(shipped_profiles()))
def test_profile_passes_a_real_dry_run(name, fluentd, tls_dir, tmp_path):
    text = render_file(profiles_dir() / f"{name}.yaml")
    # Host paths moved under the test's directory: certificates must exist, buffers be writable.
    text = (text.replace("/etc/fluent/", f"{tls_dir}/").replace("/var/log/fluent/", f"{tmp_path}/log/")
            .replace(" /fluentd/", f" {tmp_path}/fluentd/"))
    config = tmp_path / "fluent.conf"
    config.write_text(text)
    env = {variable: "test-value" for variable in ENV_REF.findall(text)}
    result = run_dry_run(fluentd, config, env)
    output = result.stdout + result.stderr
    missing = MISSING_PLUGIN.search(output)
    if result.returncode and missing and missing.group(1) in GEM_PLUGINS:
        pytest.skip(f"the {name} profile uses the {missing.group(1)} plugin, a separate gem this Fluentd "
                    f"({fluentd}) does not have")
    assert result.returncode == 0, output[-6000:]
    unused = [line for line in output.splitlines() if "is not used" in line]
    assert not unused, unused
