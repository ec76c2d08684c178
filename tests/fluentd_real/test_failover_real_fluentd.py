"""Levity's FLUENTD_SERVERS failover against two real Fluentd processes: the primary is killed
(SIGKILL) under charger traffic and started again. Every event Levity emitted is in the union of
the two Fluentds' outputs, deduplicated by event_id, and Levity's spool is empty at the end.

Skipped where no Fluentd is installed (FLUENTD_BIN or `fluentd` on PATH)."""

import asyncio

from levity.audit.spool import inspect_spool
from tests.integration.test_fluentd_failover import wait_until
from tests.support.levity_process import free_port
from tests.support.ocpp_client import raw_charge_point
from tests.support.real_fluentd import FluentdProcess, require_fluentd


async def traffic(url, group, chargers=10, calls=30):
    async def one(n):
        async with raw_charge_point(url, f"CP-{group}{n}") as cp:
            assert (await cp.call("b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}))[0] == 3
            for i in range(calls):
                assert (await cp.call(str(i), "Heartbeat", {}))[0] == 3
    await asyncio.gather(*(one(n) for n in range(chargers)))


async def test_primary_fluentd_killed_and_restarted_under_load(levity, tmp_path):
    binary = require_fluentd()
    primary = FluentdProcess(binary, tmp_path / "primary", free_port())
    standby = FluentdProcess(binary, tmp_path / "standby", free_port())
    await asyncio.gather(asyncio.to_thread(primary.start), asyncio.to_thread(standby.start))
    try:
        server = levity({"FLUENTD_ENABLED": "true", "FLUENTD_TIMEOUT": "2",
                         "FLUENTD_SERVERS": f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"})
        metrics = server.metrics
        await traffic(server.url, "A")
        await wait_until(lambda: metrics()["levity_audit_unacknowledged_events"] == 0, "delivery to the primary")

        load = asyncio.create_task(traffic(server.url, "B", calls=100))
        await asyncio.sleep(0.1)  # under load
        await asyncio.to_thread(primary.kill)
        await load
        await traffic(server.url, "D")  # after the crash, whatever the timing of the load above
        await wait_until(lambda: metrics()["levity_audit_unacknowledged_events"] == 0, "failover to the standby")
        label = f'server="127.0.0.1:{standby.port}"'
        assert metrics()[f"levity_fluentd_acknowledged_events{{{label}}}"] > 0

        await asyncio.to_thread(primary.start)
        label = f'server="127.0.0.1:{primary.port}"'
        await wait_until(lambda: metrics()[f"levity_fluentd_active{{{label}}}"] == 1, "the primary preferred again")
        await traffic(server.url, "C")
        await wait_until(lambda: metrics()["levity_audit_unacknowledged_events"] == 0, "delivery after the return")
        emitted = metrics()['levity_audit_events_total{state="emitted"}']
        server.stop()
        assert inspect_spool(server.workdir / "spool").events == 0
    finally:
        await asyncio.gather(asyncio.to_thread(primary.stop), asyncio.to_thread(standby.stop))

    records = primary.records() + standby.records()
    ids = {r["event_id"] for r in records}
    assert len(ids) >= emitted, (len(ids), emitted)
    assert {r["charge_point_id"] for r in records} >= {f"CP-{g}{n}" for g in "ABCD" for n in range(10)}
    heartbeats = {r["event_id"] for r in records if r["event_type"] == "heartbeat"}
    assert len(heartbeats) == 10 * (30 + 100 + 30 + 30)  # every answered Heartbeat's event, once after dedup
