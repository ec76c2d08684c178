"""The compose stack's "ha" profile: two Fluentd aggregators Levity fails over between (offline)."""

import yaml

from tests.deploy.test_compose import COMPOSE_FILE, ENV_EXAMPLE, docker_compose, env_file  # noqa: F401 (fixture)


def ha_config(env_file) -> dict:
    result = docker_compose("--profile", "ha", "config", env_file=env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_ha_profile_validates_offline(env_file):
    result = docker_compose("--profile", "ha", "config", "-q", env_file=env_file)
    assert result.returncode == 0, result.stderr


def test_ha_profile_adds_two_aggregators_with_the_rendered_config_and_a_buffer_each(env_file):
    services = ha_config(env_file)["services"]
    aggregators = {name: services[name] for name in ("fluentd-aggregator-1", "fluentd-aggregator-2")}
    buffers = set()
    for name, service in aggregators.items():
        assert service["profiles"] == ["ha"]
        assert service["image"] == services["fluentd"]["image"]
        assert service["healthcheck"] == services["fluentd"]["healthcheck"]
        assert service["depends_on"]["fluentd-config"]["condition"] == "service_completed_successfully"
        mounts = dict(v.split(":")[1::-1] for v in service["volumes"])
        assert mounts["/fluentd/etc"] == "fluentd-etc"
        buffers.add(mounts["/fluentd/buffer"])
    assert len(buffers) == 2 and "fluentd-buffer" not in buffers  # never two Fluentds on one buffer
    # Without the profile they do not exist, and Levity sends to the single fluentd service.
    plain = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    assert all(plain[name].get("profiles") == ["ha"] for name in aggregators)


def test_levity_takes_its_server_list_from_fluentd_servers(tmp_path):
    env_file = tmp_path / "ha.env"
    env_file.write_text(ENV_EXAMPLE.read_text().replace(
        "FLUENTD_SERVERS=fluentd", "FLUENTD_SERVERS=fluentd-aggregator-1,fluentd-aggregator-2,fluentd"))
    environment = ha_config(env_file)["services"]["levity"]["environment"]
    assert environment["FLUENTD_SERVERS"] == "fluentd-aggregator-1,fluentd-aggregator-2,fluentd"
    defaults = tmp_path / "empty.env"
    defaults.write_text("")
    assert ha_config(defaults)["services"]["levity"]["environment"]["FLUENTD_SERVERS"] == "fluentd"
