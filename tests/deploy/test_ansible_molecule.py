"""Molecule scenarios (molecule/): converge, idempotence (a second run changes nothing), verify.

  levity  the levity role, fully: venv, hardened unit running, a real OCPP BootNotification on
          port 9000 answered Accepted, audit events received by a Fluentd forward stand-in,
          hardening checked in the running process.
  stack   fluentd, elasticsearch and kibana with their package steps switched off (Treasure
          Data's and Elastic's repositories cannot be reached here): users, directories,
          secrets, fluent.conf rendered by levity.fluentconf, unit drop-ins loaded by systemd,
          and the index template, ILM policy and data view sent to a stand-in of their APIs.
  fluentd-service
          the fluentd role managing the service behind fluent-package's unit contract (its
          fluentd.service, user _fluentd, /opt/fluent) on a host without /bin/kill, with the
          levity role's Levity sending over TLS with a shared key: converge, idempotence, events
          flowing, a changed fluent.conf reloaded (same process), a restart, a key the service
          user cannot read refused by the dry-run before any restart (then fixed and restarted),
          no directory named after a path placeholder. The `fluentd` behind the unit is the
          suite's test double (tests/support/fluentd_double.py) or, when
          LEVITY_TEST_FLUENTD_ROOT names a directory laid out like /opt/fluent (bin/fluentd, and
          an optional apt-packages file listing the Debian packages it needs), a real Fluentd.
  postgresql
          the postgresql role on Debian's PostgreSQL: Levity's user logs in with its password over
          TCP (a wrong one is refused), and `levity db upgrade` / `levity db status`, run from the
          machine running molecule as a Levity host would, create and report Levity's schema,
          owned by Levity's user, without printing the password.
  haproxy the haproxy role on Debian's HAProxy in front of two stand-ins answering GET /health:
          the written configuration validates, /health through HAProxy reaches a backend on the
          chargers' port and the API port, and still does with one backend stopped.

They run on podman with levity-test-systemd:bookworm, which scripts/test-host-setup.sh builds
(`make test` runs it first). Without podman they are skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests.deploy.test_ansible import ROOT, run, tool_env

pytestmark = pytest.mark.deploy

IMAGE = "levity-test-systemd:bookworm"


@pytest.fixture(scope="module")
def podman():
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: scripts/test-host-setup.sh installs it (needs root and apt) "
                    "and says why when it cannot")
    if subprocess.run(["podman", "image", "exists", IMAGE], env=tool_env()).returncode != 0:
        pytest.fail(f"podman has no {IMAGE} image: run `bash scripts/test-host-setup.sh`", pytrace=False)


def _fluentd_behind_the_unit() -> str:
    root = os.environ.get("LEVITY_TEST_FLUENTD_ROOT")
    if not root:
        return "the test double (set LEVITY_TEST_FLUENTD_ROOT for a real Fluentd)"
    if not (Path(root) / "bin" / "fluentd").is_file():
        pytest.fail(f"LEVITY_TEST_FLUENTD_ROOT={root} has no bin/fluentd", pytrace=False)
    return f"the real Fluentd in {root}"


# molecule has its own 900 s limit below; the suite's 300 s default would cut a run on a busy
# machine short before it.
@pytest.mark.timeout(1080)
@pytest.mark.parametrize("scenario", ["levity", "stack", "fluentd-service", "postgresql", "haproxy"])
def test_molecule_scenario(podman, scenario):
    behind = _fluentd_behind_the_unit() if scenario == "fluentd-service" else ""
    started = time.monotonic()
    try:
        result = run("molecule", "test", "--scenario-name", scenario, timeout=900)
    finally:
        # molecule test destroys its instance at the end; make sure nothing is left when it was cut short.
        subprocess.run(["molecule", "destroy", "--scenario-name", scenario], cwd=ROOT, env=tool_env(),
                       capture_output=True, timeout=120, check=False)
    output = result.stdout + result.stderr
    for step in ("converge", "idempotence", "verify"):
        assert f"{step}: Executed: Successful" in output.replace("\u279c ", ""), f"{step} did not run:\n{output[-4000:]}"
    print(f"molecule test -s {scenario}: {time.monotonic() - started:.0f} s{', fluentd: ' + behind if behind else ''}")
