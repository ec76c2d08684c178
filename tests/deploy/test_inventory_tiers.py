"""The production inventory's Fluentd tiers: each group renders its profile, and the forwarders
send to exactly the aggregators the inventory deploys."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from levity.fluentconf import load_profile, render
from levity.fluentconf.lint import lint
from levity.fluentconf.profile import profiles_dir

pytestmark = pytest.mark.deploy

ROOT = Path(__file__).resolve().parents[2]
INVENTORY = ROOT / "inventories" / "production"


def inventory() -> dict:
    tool = Path(sys.executable).with_name("ansible-inventory")
    if not tool.exists():
        pytest.fail("ansible-inventory is not installed: pip install -e '.[deploy]' (make test does)")
    result = subprocess.run([str(tool), "-i", str(INVENTORY), "--list"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT, check=True)
    return json.loads(result.stdout)


def test_each_tier_renders_its_profile_and_forwarders_point_at_the_aggregators():
    data = inventory()
    hostvars = data["_meta"]["hostvars"]
    aggregators = data["fluentd_aggregators"]["hosts"]
    forwarders = data["fluentd_forwarders"]["hosts"]
    assert len(aggregators) >= 2 and set(forwarders) == set(data["levity"]["hosts"])
    assert set(data["fluentd"]["children"]) >= {"fluentd_aggregators", "fluentd_forwarders"}
    for host in aggregators:
        assert hostvars[host]["fluentd_profile"] == "aggregator"
    for host in forwarders:
        assert hostvars[host]["fluentd_profile"] == "forwarder"
        # Levity there sends to the forwarder on loopback.
        assert hostvars[host]["levity_fluentd_host"] == "127.0.0.1" and not hostvars[host]["levity_fluentd_tls"]
        assert hostvars[host]["fluentd_tls_files"] == []  # the aggregators' key stays on the aggregators
    for name in ("aggregator", "forwarder"):
        text = render(load_profile(profiles_dir() / f"{name}.yaml"))
        assert lint(text) == [], name
    forwarder = load_profile(profiles_dir() / "forwarder.yaml")
    (output,) = forwarder.outputs
    assert output.require_ack_response and any(s.standby for s in output.servers)
    assert {s.host for s in output.servers if not s.standby} == set(aggregators)
