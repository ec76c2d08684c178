"""logrotate's way with the audit file (LEVITY_AUDIT_SINK=file): move it away, send SIGHUP;
Levity carries on in a new file and loses no event, with one process and with workers."""

import asyncio
import os
import signal

import pytest

from tests.conftest import read_audit_file
from tests.support.ocpp_client import raw_charge_point

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}
IDS = [f"CP-ROT{n}" for n in range(6)]


async def boot_all(url, unique_id):
    for charge_point_id in IDS:
        async with raw_charge_point(url, charge_point_id) as cp:
            assert (await cp.call(unique_id, "BootNotification", BOOT))[0] == 3


async def until(condition, seconds=10.0):
    for _ in range(int(seconds * 10)):
        if condition():
            return True
        await asyncio.sleep(0.1)
    return False


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_sighup_reopens_the_audit_file_after_logrotate_moved_it(levity, workers):
    server = levity({"LEVITY_WORKERS": workers})
    audit = server.workdir / "audit.jsonl"
    rotated = server.workdir / "audit.jsonl.1"
    await boot_all(server.url, "before")
    assert await until(lambda: len(read_audit_file(audit)) == 3 * len(IDS))  # connect, boot, disconnect

    audit.rename(rotated)
    os.kill(server.process.pid, signal.SIGHUP)
    assert await until(lambda: server.log().count("reopened") == int(workers)), server.log()
    await boot_all(server.url, "after")
    assert server.stop() == 0

    before, after = read_audit_file(rotated), read_audit_file(audit)
    assert len(before) == len(after) == 3 * len(IDS)
    assert {e["record"]["charge_point_id"] for e in after} == set(IDS)
    assert os.stat(audit).st_mode & 0o777 == 0o600  # the new file is as private as the first
