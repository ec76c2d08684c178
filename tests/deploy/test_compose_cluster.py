"""The compose stack's "cluster" profile (two Levity instances, PostgreSQL, HAProxy), validated
offline with Debian's docker-compose as the rest of the stack (images cannot be pulled here)."""

from __future__ import annotations

from pathlib import Path

import jinja2
import yaml

from tests.deploy.test_compose import COMPOSE_FILE, STACK, docker_compose

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "roles" / "haproxy" / "templates" / "haproxy.cfg.j2"
COMPOSE_HAPROXY = STACK / "haproxy" / "haproxy.cfg"


def render_compose_haproxy() -> str:
    """The role's template with the compose stack's values."""
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                     trim_blocks=True, lstrip_blocks=True)
    environment.filters["comment"] = lambda text: f"# {text}"
    defaults = yaml.safe_load((ROOT / "roles" / "haproxy" / "defaults" / "main.yml").read_text())
    return environment.from_string(TEMPLATE.read_text()).render({
        **defaults, "ansible_managed": "Rendered from roles/haproxy/templates/haproxy.cfg.j2 for the compose stack",
        "haproxy_log_target": "stdout format raw", "haproxy_maxconn": 20000, "haproxy_api_bind_address": "*",
        "haproxy_levity_servers": [{"name": "levity-a", "address": "levity-a"},
                                   {"name": "levity-b", "address": "levity-b"}]})


def test_the_compose_haproxy_configuration_is_the_roles_template_rendered():
    assert COMPOSE_HAPROXY.read_text() == render_compose_haproxy()


def test_cluster_profile_validates_offline_and_is_wired(tmp_path):
    env_file = tmp_path / "empty.env"
    env_file.write_text("")
    result = docker_compose("--profile", "cluster", "config", env_file=env_file)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert {"postgres", "levity-db-upgrade", "levity-a", "levity-b", "haproxy"} <= set(services)
    for name in ("postgres", "levity-db-upgrade", "levity-a", "levity-b", "haproxy"):
        assert services[name]["profiles"] == ["cluster"]
    for name in ("levity-a", "levity-b"):
        environment = services[name]["environment"]
        assert environment["LEVITY_DATABASE"] == "postgresql://levity@postgres:5432/levity"  # no password in it
        assert "ports" not in services[name], "only HAProxy is published"
        assert services[name]["depends_on"]["levity-db-upgrade"]["condition"] == "service_completed_successfully"
    assert services["levity-db-upgrade"]["command"] == ["levity", "db", "upgrade"]
    assert {dep: spec["condition"] for dep, spec in services["haproxy"]["depends_on"].items()} == {
        "levity-a": "service_healthy", "levity-b": "service_healthy"}
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert raw["services"]["levity"].get("profiles") is None, "the single instance stays the default"
    assert "server levity-a levity-a:9000 id 1" in COMPOSE_HAPROXY.read_text()
