"""A real `levity serve` with FLUENTD_SERVERS: the primary dies under charger traffic and comes
back; every audit event is in the union of the two servers and the spool empties."""

import asyncio

from levity.audit.spool import inspect_spool
from tests.support.forward_receiver import ForwardReceiver
from tests.support.ocpp_client import raw_charge_point


async def wait_until(predicate, what, timeout=30.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def charge(url, charger, calls):
    async with raw_charge_point(url, charger) as cp:
        assert (await cp.call("b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}))[0] == 3
        for i in range(calls):
            assert (await cp.call(str(i), "Heartbeat", {}))[0] == 3


async def test_primary_dies_under_load_and_comes_back(levity):
    with ForwardReceiver() as primary, ForwardReceiver() as standby:
        server = levity({"FLUENTD_ENABLED": "true", "FLUENTD_TIMEOUT": "1",
                         "FLUENTD_SERVERS": f"127.0.0.1:{primary.port},127.0.0.1:{standby.port}"})
        metrics = server.metrics
        await asyncio.gather(*(charge(server.url, f"CP-A{n}", 20) for n in range(5)))
        await wait_until(lambda: metrics()["levity_audit_unacknowledged_events"] == 0, "delivery to the primary")
        assert primary.events and not standby.events

        primary.refuse = True  # dies: listener closed, connections reset
        await asyncio.gather(*(charge(server.url, f"CP-B{n}", 20) for n in range(5)))
        await wait_until(lambda: metrics()["levity_audit_unacknowledged_events"] == 0, "failover to the standby")
        assert standby.events

        primary.refuse = False  # back: preferred again
        label = f'server="127.0.0.1:{primary.port}"'
        await wait_until(lambda: metrics()[f"levity_fluentd_active{{{label}}}"] == 1, "the primary preferred again")
        before = len(primary.events)
        await asyncio.gather(*(charge(server.url, f"CP-C{n}", 20) for n in range(5)))
        await wait_until(lambda: metrics()["levity_audit_unacknowledged_events"] == 0, "delivery after the return")
        assert len(primary.events) > before

        emitted = metrics()['levity_audit_events_total{state="emitted"}']
        server.stop()
        assert inspect_spool(server.workdir / "spool").events == 0  # nothing left behind
        events = primary.events + standby.events
        ids = {e.record["event_id"] for e in events}
        # Every event Levity emitted arrived at least once (duplicates carry the same event_id).
        assert len(ids) >= emitted
        assert {e.record["charge_point_id"] for e in events} >= {f"CP-{g}{n}" for g in "ABC" for n in range(5)}
