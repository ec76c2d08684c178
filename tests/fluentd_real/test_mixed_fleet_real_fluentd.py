"""A whole OCPP 2.0.1 session and a whole 1.6 session on one port, in the same run, through a real
Fluentd: the clients are the `ocpp` library's (each validates Levity's answers against its
version's schemas), and every event Fluentd wrote is checked against the contract's table
(levity.audit.events: tag, required fields and their types).

Skipped where no Fluentd is installed (FLUENTD_BIN or `fluentd` on PATH)."""

import asyncio

from ocpp.v16 import call as call16
from ocpp.v201 import call

from levity.audit.events import TAGS, conformance_errors
from tests.integration.test_fluentd_failover import wait_until
from tests.support.levity_process import free_port
from tests.support.ocpp201_client import BOOT, energy, library_charging_station, transaction_event
from tests.support.ocpp_client import BOOT as BOOT16
from tests.support.ocpp_client import library_charge_point
from tests.support.real_fluentd import FluentdProcess, require_fluentd


async def session_201(url):
    async with library_charging_station(url, "CS-REAL-201") as cs:
        assert (await cs.call(BOOT)).status == "Accepted"
        await cs.call(call.StatusNotification(timestamp="2024-01-15T10:00:00Z", connector_status="Occupied",
                                              evse_id=1, connector_id=1))
        auth = await cs.call(call.Authorize(id_token={"id_token": "USER-201", "type": "ISO14443"}))
        assert auth.id_token_info["status"] == "Accepted"
        await cs.call(transaction_event("Started", "real-1", 0, timestamp="2024-01-15T10:10:00Z",
                                        trigger_reason="Authorized", id_token="USER-201",
                                        evse={"id": 1, "connector_id": 1},
                                        meter_value=energy(1.5, "kWh", context="Transaction.Begin")))
        await cs.call(transaction_event("Updated", "real-1", 1, timestamp="2024-01-15T10:30:00Z",
                                        trigger_reason="MeterValuePeriodic", charging_state="Charging",
                                        meter_value=energy(8, "kWh", timestamp="2024-01-15T10:30:00Z")))
        await cs.call(call.Heartbeat())
        await cs.call(transaction_event("Ended", "real-1", 2, timestamp="2024-01-15T11:00:00Z",
                                        trigger_reason="EVDeparted", stopped_reason="EVDisconnected",
                                        meter_value=energy(155, "Wh", 2, "2024-01-15T11:00:00Z", "Transaction.End")))


async def session_16(url):
    async with library_charge_point(url, "CP-REAL-16") as cp:
        assert (await cp.call(BOOT16)).status == "Accepted"
        await cp.call(call16.StatusNotification(connector_id=1, error_code="NoError", status="Preparing"))
        assert (await cp.call(call16.Authorize(id_tag="USER-16"))).id_tag_info["status"] == "Accepted"
        started = await cp.call(call16.StartTransaction(connector_id=1, id_tag="USER-16", meter_start=1000,
                                                        timestamp="2024-01-15T10:10:00Z"))
        await cp.call(call16.MeterValues(connector_id=1, transaction_id=started.transaction_id, meter_value=[
            {"timestamp": "2024-01-15T10:30:00Z", "sampled_value": [{"value": "2500", "unit": "Wh"}]}]))
        await cp.call(call16.Heartbeat())
        await cp.call(call16.StopTransaction(meter_stop=4000, timestamp="2024-01-15T11:00:00Z",
                                             transaction_id=started.transaction_id))


async def test_201_and_16_sessions_reach_a_real_fluentd_as_the_contract_says(levity, tmp_path):
    binary = require_fluentd()
    fluentd = FluentdProcess(binary, tmp_path / "fluentd", free_port())
    await asyncio.to_thread(fluentd.start)
    try:
        server = levity({"FLUENTD_ENABLED": "true", "FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(fluentd.port)})
        await asyncio.gather(session_201(server.url), session_16(server.url))
        metrics = server.metrics
        await wait_until(lambda: metrics()["levity_audit_unacknowledged_events"] == 0, "every event acknowledged")
        emitted = metrics()['levity_audit_events_total{state="emitted"}']
        server.stop()
    finally:
        await asyncio.to_thread(fluentd.stop)  # flushes its buffer at shutdown

    records = fluentd.records()
    assert len(records) == emitted and len({r["event_id"] for r in records}) == emitted
    for record in records:
        assert conformance_errors(record) == [], record
        assert record["fluentd_tag"] == f"ocpp.{TAGS[record['event_type']]}", record
    mine = {cp_id: [r for r in records if r["charge_point_id"] == cp_id] for cp_id in ("CS-REAL-201", "CP-REAL-16")}
    session = ["websocket_connect", "boot_notification", "status_notification", "authorize", "transaction_start",
               "heartbeat", "transaction_stop", "websocket_disconnect"]
    for cp_id, version, extra in (("CS-REAL-201", "2.0.1", "transaction_update"), ("CP-REAL-16", "1.6", "meter_values")):
        assert {r["ocpp_version"] for r in mine[cp_id]} == {version}
        assert sorted(r["event_type"] for r in mine[cp_id]) == sorted(session + [extra]), cp_id
    stops = {r["charge_point_id"]: r for r in records if r["event_type"] == "transaction_stop"}
    starts = {r["charge_point_id"]: r for r in records if r["event_type"] == "transaction_start"}
    assert stops["CS-REAL-201"]["energy_delivered"] == 14000 and stops["CS-REAL-201"]["station_transaction_id"] == "real-1"
    assert stops["CP-REAL-16"]["energy_delivered"] == 3000
    assert starts["CS-REAL-201"]["transaction_id"] != starts["CP-REAL-16"]["transaction_id"]
    for cp_id in stops:
        assert stops[cp_id]["transaction_id"] == starts[cp_id]["transaction_id"]
