"""Molecule scenarios (molecule/): converge, idempotence (a second run changes nothing), verify.

  levity  the levity role, fully: venv, hardened unit running, a real OCPP BootNotification on
          port 9000 answered Accepted, audit events received by a Fluentd forward stand-in,
          hardening checked in the running process.
  stack   fluentd, elasticsearch and kibana with their package steps switched off (Treasure
          Data's and Elastic's repositories cannot be reached here): users, directories,
          secrets, fluent.conf rendered by levity.fluentconf, unit drop-ins loaded by systemd,
          and the index template, ILM policy and data view sent to a stand-in of their APIs.

They run on podman with levity-test-systemd:bookworm, which scripts/test-host-setup.sh builds
(`make test` runs it first). Without podman they are skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import time

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


# Converge runs apt inside the container (Prometheus, Python packages): beyond the suite's 300 s.
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("scenario", ["levity", "stack"])
def test_molecule_scenario(podman, scenario):
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
    print(f"molecule test -s {scenario}: {time.monotonic() - started:.0f} s")
