"""With Fluentd down, chargers still get every answer and the failure is logged once."""

import asyncio

from tests.support.levity_process import free_port
from tests.support.ocpp_client import raw_charge_point


async def test_fluentd_down_does_not_slow_or_stop_answers(levity):
    closed_port = free_port()  # nothing listens there
    server = levity({"FLUENTD_ENABLED": "true", "FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(closed_port)})

    async def charger(n):
        async with raw_charge_point(server.url, f"CP-DOWN{n}") as cp:
            assert (await cp.call("b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}))[0] == 3
            for i in range(100):
                assert (await cp.call(str(i), "Heartbeat", {}, timeout=2))[0] == 3
            start = await cp.call("s", "StartTransaction", {"connectorId": 1, "idTag": "U", "meterStart": 0,
                                                            "timestamp": "2024-01-15T10:10:00Z"}, timeout=2)
            assert start[0] == 3 and start[2]["transactionId"] > 0

    await asyncio.gather(*(charger(n) for n in range(10)))
    await asyncio.sleep(1.5)  # let the sink notice and report the failure
    assert server.metrics()['levity_audit_events_total{state="emitted"}'] >= 10 * 103
    server.stop()
    fluentd_lines = [line for line in server.log().splitlines()
                     if "Fluentd" in line and ("ERROR" in line or "WARNING" in line)]
    # One line when the failure starts, not one per event (1,000+ events were emitted).
    assert 1 <= len(fluentd_lines) <= 2, fluentd_lines
