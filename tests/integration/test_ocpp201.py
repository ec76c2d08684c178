"""OCPP 2.0.1 beside 1.6 on one port, on the same audit tags: real `levity serve`, the `ocpp`
library's v201 ChargePoint (it checks Levity's answers against the OCA schemas) and raw frames,
audited to the suite's Forward receiver."""

import asyncio

import pytest
import websockets
from ocpp.v16 import call as call16
from ocpp.v201 import call

from levity.audit.events import conformance_errors
from tests.conftest import read_audit_file
from tests.integration.test_charging_session import fluentd_env
from tests.support.forward_receiver import ForwardReceiver
from tests.support.ocpp201_client import (BOOT, energy, library_charging_station, raw_charging_station,
                                          transaction_event)
from tests.support.ocpp_client import BOOT as BOOT16
from tests.support.ocpp_client import library_charge_point, raw_charge_point


def audit_records(server) -> list[dict]:
    return [line["record"] for line in read_audit_file(server.workdir / "audit.jsonl")]


async def wait_for_audit(server, predicate, count: int = 1, timeout: float = 10.0) -> list[dict]:
    """The audit records matching `predicate`, once there are `count` of them (the file sink
    writes as events come)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        matching = [r for r in audit_records(server) if predicate(r)]
        if len(matching) >= count:
            return matching
        assert asyncio.get_running_loop().time() < deadline, audit_records(server)
        await asyncio.sleep(0.05)


def by_emission(events):
    # Batches are per tag; the event ids of one Levity process sort in emission order.
    return sorted(events, key=lambda e: e.record["event_id"])


def check(events, expected, station_id):
    assert [e.tag for e in events] == [tag for tag, _ in expected], [e.record["event_type"] for e in events]
    for event, (tag, fields) in zip(events, expected):
        assert conformance_errors(event.record) == [], event.record
        assert event.record["charge_point_id"] == station_id
        for name, value in fields.items():
            assert event.record[name] == value, (tag, name, event.record)


async def test_whole_201_session_produces_the_spec_events_field_by_field(levity):
    with ForwardReceiver() as receiver:
        server = levity(fluentd_env(receiver))
        async with library_charging_station(server.url, "CS-201") as cs:
            boot = await cs.call(BOOT)
            await cs.call(call.StatusNotification(timestamp="2024-01-15T10:00:00Z", connector_status="Occupied",
                                                  evse_id=1, connector_id=1))
            auth = await cs.call(call.Authorize(id_token={"id_token": "USER-201", "type": "ISO14443"}))
            started = await cs.call(transaction_event(
                "Started", "st-1", 0, timestamp="2024-01-15T10:10:00Z", trigger_reason="Authorized",
                id_token="USER-201", evse={"id": 1, "connector_id": 1},
                meter_value=energy(1.5, "kWh", context="Transaction.Begin")))
            await cs.call(transaction_event(
                "Updated", "st-1", 1, timestamp="2024-01-15T10:30:00Z", trigger_reason="MeterValuePeriodic",
                charging_state="Charging", meter_value=[{"timestamp": "2024-01-15T10:30:00Z", "sampled_value": [
                    {"value": 8, "unit_of_measure": {"unit": "kWh"}},
                    {"value": 230.1, "measurand": "Voltage", "unit_of_measure": {"unit": "V"}}]}]))
            await cs.call(call.MeterValues(evse_id=1, meter_value=energy(9000, timestamp="2024-01-15T10:40:00Z")))
            await cs.call(call.Heartbeat())
            # 15.5 kWh as 155 * 10^2 Wh: unit and multiplier both count.
            ended = await cs.call(transaction_event(
                "Ended", "st-1", 2, timestamp="2024-01-15T11:00:00Z", trigger_reason="EVDeparted",
                stopped_reason="EVDisconnected", meter_value=energy(155, "Wh", 2, "2024-01-15T11:00:00Z",
                                                                   "Transaction.End")))
        events = by_emission(await receiver.wait_for_async(10))

    assert boot.status == "Accepted" and boot.interval > 0
    assert auth.id_token_info["status"] == "Accepted"
    assert started.id_token_info["status"] == "Accepted" and ended.id_token_info is None
    tx = events[4].record["transaction_id"]
    assert isinstance(tx, int)
    check(events, [
        ("ocpp.websocket", {"event_type": "websocket_connect"}),
        ("ocpp.boot", {"event_type": "boot_notification", "vendor": "TestVendor", "model": "TestModel",
                       "serial_number": "SN-201", "firmware_version": "2.0.0", "status": "Accepted",
                       "reason": "PowerUp"}),
        ("ocpp.status", {"event_type": "status_notification", "connector_id": 1, "status": "Occupied",
                         "error_code": None, "evse_id": 1}),
        ("ocpp.authorize", {"event_type": "authorize", "id_tag": "USER-201", "status": "Accepted",
                            "id_token_type": "ISO14443"}),
        ("ocpp.transaction.start", {"event_type": "transaction_start", "connector_id": 1, "id_tag": "USER-201",
                                    "meter_start": 1500, "transaction_timestamp": "2024-01-15T10:10:00Z",
                                    "evse_id": 1, "station_transaction_id": "st-1", "trigger_reason": "Authorized"}),
        ("ocpp.transaction.update", {"event_type": "transaction_update", "transaction_id": tx,
                                     "station_transaction_id": "st-1", "trigger_reason": "MeterValuePeriodic",
                                     "charging_state": "Charging", "samples_count": 2,
                                     "measurands": ["Energy.Active.Import.Register", "Voltage"]}),
        ("ocpp.meter", {"event_type": "meter_values", "connector_id": 1, "transaction_id": None, "samples_count": 1,
                        "measurands": ["Energy.Active.Import.Register"]}),
        ("ocpp.heartbeat", {"event_type": "heartbeat"}),
        ("ocpp.transaction.stop", {"event_type": "transaction_stop", "transaction_id": tx, "meter_stop": 15500,
                                   "energy_delivered": 14000, "reason": "EVDisconnected",
                                   "transaction_timestamp": "2024-01-15T11:00:00Z", "station_transaction_id": "st-1",
                                   "trigger_reason": "EVDeparted"}),
        ("ocpp.websocket", {"event_type": "websocket_disconnect"}),
    ], "CS-201")
    assert {e.record["ocpp_version"] for e in events} == {"2.0.1"}
    assert "unknown_transaction" not in events[8].record


async def test_ended_without_meter_values_uses_the_last_register_seen(levity):
    server = levity()
    async with library_charging_station(server.url, "CS-LAST") as cs:
        await cs.call(BOOT)
        await cs.call(transaction_event("Started", "t", 0, timestamp="2024-01-15T10:00:00Z",
                                        trigger_reason="CablePluggedIn", evse={"id": 2}))
        await cs.call(transaction_event("Updated", "t", 1, timestamp="2024-01-15T10:30:00Z",
                                        trigger_reason="MeterValuePeriodic", meter_value=energy(2, "kWh")))
        await cs.call(transaction_event("Ended", "t", 2, timestamp="2024-01-15T11:00:00Z",
                                        trigger_reason="StopAuthorized"))
    records = await wait_for_audit(server, lambda r: r["event_type"] == "transaction_stop")
    start = next(r for r in audit_records(server) if r["event_type"] == "transaction_start")
    stop = records[-1]
    # No reading at the start: meter_start null, so energy_delivered is null rather than invented.
    assert start["meter_start"] is None and start["connector_id"] is None and start["evse_id"] == 2
    assert stop["meter_stop"] == 2000 and stop["energy_delivered"] is None and stop["reason"] == "Local"
    assert conformance_errors(start) == [] and conformance_errors(stop) == []


async def test_one_session_rules_and_unknown_transactions(levity):
    server = levity()
    async with library_charging_station(server.url, "CS-REPEAT") as cs:
        await cs.call(BOOT)
        started = transaction_event("Started", "dup", 0, timestamp="2024-01-15T10:00:00Z",
                                    trigger_reason="Authorized", evse={"id": 1, "connector_id": 1},
                                    meter_value=energy(100))
        await cs.call(started)
        await cs.call(started)  # resent from an offline queue
        ended = transaction_event("Ended", "dup", 1, timestamp="2024-01-15T11:00:00Z", trigger_reason="EVDeparted",
                                  meter_value=energy(600))
        await cs.call(ended)
        await cs.call(ended)
        # An Ended for a transaction Levity never saw: a normal answer, marked in its event.
        await cs.call(transaction_event("Ended", "never-seen", 5, timestamp="2024-01-15T12:00:00Z",
                                        trigger_reason="EVDeparted", meter_value=energy(42)))
    await wait_for_audit(server, lambda r: r.get("station_transaction_id") == "never-seen")
    records = audit_records(server)
    starts = [r for r in records if r["event_type"] == "transaction_start"]
    stops = [r for r in records if r["event_type"] == "transaction_stop"]
    anomalies = [r for r in records if r["event_type"] == "anomaly"]
    assert len(starts) == 1 and starts[0]["station_transaction_id"] == "dup"
    assert [s["station_transaction_id"] for s in stops] == ["dup", "never-seen"]
    assert stops[0]["energy_delivered"] == 500 and "unknown_transaction" not in stops[0]
    assert stops[1]["unknown_transaction"] is True and stops[1]["energy_delivered"] is None
    assert stops[1]["transaction_id"] != starts[0]["transaction_id"]
    assert [(a["kind"], a["transaction_id"], a["first_event_id"]) for a in anomalies] == [
        ("repeated_start", starts[0]["transaction_id"], starts[0]["event_id"]),
        ("repeated_stop", starts[0]["transaction_id"], stops[0]["event_id"])]
    assert all(a["ocpp_version"] == "2.0.1" and conformance_errors(a) == [] for a in anomalies)


async def test_transaction_survives_a_restart(levity):
    server = levity()
    async with library_charging_station(server.url, "CS-RESTART") as cs:
        await cs.call(BOOT)
        await cs.call(transaction_event("Started", "r-1", 0, timestamp="2024-01-15T10:00:00Z",
                                        trigger_reason="Authorized", evse={"id": 1, "connector_id": 1},
                                        meter_value=energy(1000)))
        await cs.call(transaction_event("Started", "r-2", 0, timestamp="2024-01-15T10:00:00Z",
                                        trigger_reason="Authorized", evse={"id": 2, "connector_id": 1},
                                        meter_value=energy(50)))
        await cs.call(transaction_event("Updated", "r-2", 1, timestamp="2024-01-15T10:30:00Z",
                                        trigger_reason="MeterValuePeriodic", meter_value=energy(2.5, "kWh")))
    server.restart()
    async with library_charging_station(server.url, "CS-RESTART") as cs:
        await cs.call(BOOT)
        await cs.call(transaction_event("Ended", "r-1", 1, timestamp="2024-01-15T11:00:00Z",
                                        trigger_reason="EVDeparted", meter_value=energy(4000)))
        # No reading in the Ended: the last register stored before the restart counts.
        await cs.call(transaction_event("Ended", "r-2", 2, timestamp="2024-01-15T11:00:00Z",
                                        trigger_reason="EVDeparted"))
    stops = await wait_for_audit(server, lambda r: r["event_type"] == "transaction_stop", count=2)
    starts = {r["station_transaction_id"]: r for r in audit_records(server) if r["event_type"] == "transaction_start"}
    stops = {r["station_transaction_id"]: r for r in stops}
    assert stops["r-1"]["transaction_id"] == starts["r-1"]["transaction_id"]
    assert stops["r-1"]["energy_delivered"] == 3000
    assert stops["r-2"]["transaction_id"] == starts["r-2"]["transaction_id"]
    assert stops["r-2"]["meter_stop"] == 2500 and stops["r-2"]["energy_delivered"] == 2450
    assert not any("unknown_transaction" in stop for stop in stops.values())


async def test_subprotocol_negotiation_and_preference(levity):
    default, prefers_16 = levity(), levity({"LEVITY_PREFERRED_OCPP_VERSION": "1.6"})
    offers = {("ocpp1.6", "ocpp2.0.1"): ("ocpp2.0.1", "ocpp1.6"), ("ocpp2.0.1",): ("ocpp2.0.1", "ocpp2.0.1"),
              ("ocpp1.6",): ("ocpp1.6", "ocpp1.6")}
    for offered, (chosen_default, chosen_16) in offers.items():
        for server, chosen in ((default, chosen_default), (prefers_16, chosen_16)):
            async with websockets.connect(f"{server.url}/CS-NEG", subprotocols=list(offered)) as ws:
                assert ws.subprotocol == chosen
                # The connection speaks the chosen version: a Heartbeat is answered either way.
                await ws.send('[2, "h", "Heartbeat", {}]')
                assert (await asyncio.wait_for(ws.recv(), 5)).startswith('[3,"h"')
    # Neither offered: today's answer (handshake without a subprotocol, then close 1002).
    async with websockets.connect(f"{default.url}/CS-NEG", subprotocols=["ocpp2.0"]) as ws:
        assert ws.subprotocol is None
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1002
    versions = [r["ocpp_version"] for r in audit_records(default) if r["event_type"] == "websocket_connect"]
    assert versions == ["2.0.1", "2.0.1", "1.6"]


async def test_version_mismatches_and_201_error_codes(levity):
    server = levity()
    async with raw_charging_station(server.url, "CS-RAW") as cs:
        # A 1.6 action on a 2.0.1 connection, and 2.0.1 spellings of the framing errors.
        assert (await cs.call("1", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                                        "timestamp": "2024-01-15T10:00:00Z"}))[2] == "NotImplemented"
        assert (await cs.call("2", "Reset", {"type": "Immediate"}))[2] == "NotSupported"
        assert (await cs.send_raw("[2, broken"))[2] == "FormatViolation"
        assert (await cs.call("3", "BootNotification", {"reason": "PowerUp"}))[2] == "OccurrenceConstraintViolation"
        assert (await cs.call("4", "Heartbeat", {"extra": 1}))[2] == "OccurrenceConstraintViolation"
        assert (await cs.call("5", "StatusNotification", {"timestamp": "2024-01-15T10:00:00Z",
                                                          "connectorStatus": "Sleeping", "evseId": 1,
                                                          "connectorId": 1}))[2] == "PropertyConstraintViolation"
        assert (await cs.call("6", "MeterValues", {"evseId": "1", "meterValue": []}))[2] == "TypeConstraintViolation"
        assert (await cs.call("7", "Heartbeat", {}))[0] == 3  # still served
    async with raw_charge_point(server.url, "CP-RAW16") as cp:
        answer = await cp.call("1", "TransactionEvent", {"eventType": "Started"})
        assert answer[2] == "NotImplemented"
        assert (await cp.send_raw("[2, broken"))[2] == "FormationViolation"  # 1.6 keeps its spelling
    errors = [r for r in audit_records(server) if r["event_type"] == "call_error"]
    assert [(r["ocpp_version"], r["error_code"]) for r in errors][:2] == [("2.0.1", "NotImplemented"),
                                                                           ("2.0.1", "NotSupported")]


async def test_other_station_messages_are_answered_per_the_spec(levity):
    server = levity()
    async with library_charging_station(server.url, "CS-OTHER") as cs:
        await cs.call(BOOT)
        await cs.call(call.NotifyEvent(generated_at="2024-01-15T10:00:00Z", seq_no=0, event_data=[{
            "event_id": 1, "timestamp": "2024-01-15T10:00:00Z", "trigger": "Delta", "actual_value": "Faulted",
            "event_notification_type": "HardWiredNotification", "component": {"name": "Connector"},
            "variable": {"name": "AvailabilityState"}}]))
        await cs.call(call.NotifyReport(request_id=7, generated_at="2024-01-15T10:00:00Z", seq_no=0))
        await cs.call(call.SecurityEventNotification(type="FirmwareUpdated", timestamp="2024-01-15T10:00:00Z"))
        await cs.call(call.FirmwareStatusNotification(status="Installed"))
        await cs.call(call.LogStatusNotification(status="Uploaded", request_id=3))
        data = await cs.call(call.DataTransfer(vendor_id="com.example", data={"secret": "x"}))
        await cs.call(call.ClearedChargingLimit(charging_limit_source="EMS", evse_id=1))
        await cs.call(call.NotifyChargingLimit(charging_limit={"charging_limit_source": "SO"}))
        await cs.call(call.ReportChargingProfiles(request_id=1, charging_limit_source="CSO", evse_id=1,
                                                  charging_profile=[{
                                                      "id": 1, "stack_level": 0,
                                                      "charging_profile_purpose": "TxDefaultProfile",
                                                      "charging_profile_kind": "Absolute",
                                                      "charging_schedule": [{
                                                          "id": 1, "charging_rate_unit": "W",
                                                          "charging_schedule_period": [
                                                              {"start_period": 0, "limit": 11000}]}]}]))
        needs = await cs.call(call.NotifyEVChargingNeeds(evse_id=1, charging_needs={
            "requested_energy_transfer": "AC_three_phase"}))
    assert data.status == "UnknownVendorId" and needs.status == "Rejected"
    records = await wait_for_audit(server, lambda r: r["event_type"] == "ev_charging_needs")
    types = [r["event_type"] for r in audit_records(server)]
    for event_type in ("notify_event", "notify_report", "security_event", "firmware_status", "log_status",
                       "data_transfer", "charging_limit", "charging_profiles_report", "ev_charging_needs"):
        assert event_type in types, event_type
    assert all(conformance_errors(r) == [] and r["ocpp_version"] == "2.0.1" for r in audit_records(server))
    assert "secret" not in str(audit_records(server)) and records[-1]["status"] == "Rejected"


async def test_mixed_fleet_one_port_one_stream(levity):
    """1.6 and 2.0.1 on one port: ids unique across versions, and the guide's queries ("all
    transactions of a charge point", "total energy delivered") right over both."""
    with ForwardReceiver() as receiver:
        server = levity(fluentd_env(receiver))
        async with library_charge_point(server.url, "CP-16") as cp, \
                library_charging_station(server.url, "CS-201") as cs:
            await cp.call(BOOT16)
            await cs.call(BOOT)
            start16 = await cp.call(call16.StartTransaction(connector_id=1, id_tag="A", meter_start=1000,
                                                            timestamp="2024-01-15T10:00:00Z"))
            await cs.call(transaction_event("Started", "x", 0, timestamp="2024-01-15T10:00:00Z",
                                            trigger_reason="Authorized", evse={"id": 1, "connector_id": 1},
                                            meter_value=energy(2, "kWh")))
            await cp.call(call16.StopTransaction(meter_stop=4000, timestamp="2024-01-15T11:00:00Z",
                                                 transaction_id=start16.transaction_id))
            await cs.call(transaction_event("Ended", "x", 1, timestamp="2024-01-15T11:00:00Z",
                                            trigger_reason="EVDeparted", meter_value=energy(7, "kWh")))
        events = await receiver.wait_for_async(10)
    records = [e.record for e in events]
    assert all(conformance_errors(r) == [] for r in records)
    versions = {r["charge_point_id"]: r["ocpp_version"] for r in records}
    assert versions == {"CP-16": "1.6", "CS-201": "2.0.1"}
    starts = [r for r in records if r["event_type"] == "transaction_start"]
    assert len({r["transaction_id"] for r in starts}) == 2  # unique across versions
    # "All transactions of a charge point": a term on charge_point_id over ocpp.transaction.*.
    for cp_id in ("CP-16", "CS-201"):
        mine = [r for r in records if r["event_type"].startswith("transaction_") and r["charge_point_id"] == cp_id]
        assert [r["event_type"] for r in mine] == ["transaction_start", "transaction_stop"]
        assert mine[0]["transaction_id"] == mine[1]["transaction_id"]
    # "Total energy delivered" (docs/billing.md): the max per transaction of the stops, summed per charge point.
    per_cp: dict[str, dict[int, int]] = {}
    for r in records:
        if r["event_type"] == "transaction_stop" and not r.get("unknown_transaction"):
            bucket = per_cp.setdefault(r["charge_point_id"], {})
            bucket[r["transaction_id"]] = max(bucket.get(r["transaction_id"], r["energy_delivered"]),
                                              r["energy_delivered"])
    assert {cp_id: sum(tx.values()) for cp_id, tx in per_cp.items()} == {"CP-16": 3000, "CS-201": 5000}
    # The plain sum of examples/fluentd/README.md (a sum skips nulls, as Elasticsearch's does).
    assert sum(r["energy_delivered"] or 0 for r in records if r["event_type"] == "transaction_stop") == 8000


async def test_security_profile_and_workers_apply_to_201_alike(levity, tmp_path):
    from tests.integration.test_security_and_limits import KEY, basic

    server = levity({"LEVITY_SECURITY_PROFILE": "1", "LEVITY_WORKERS": "2"})
    ids = [f"CS-W{n}" for n in range(6)]
    key_file = tmp_path / "station.key"
    key_file.write_text(KEY)
    for station_id in ids:  # into the database of the worker that owns the id
        done = server.levity_command("charge-points", "set-password", station_id, "--password-file", str(key_file))
        assert done.returncode == 0, done.stderr
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with raw_charging_station(server.url, ids[0]):
            pass
    assert refused.value.response.status_code == 401
    transaction_ids = []
    for n, station_id in enumerate(ids):
        # Alternating versions: the workers own ids by hash, whatever the version.
        if n % 2:
            async with raw_charge_point(server.url, station_id, **basic(station_id, KEY)) as cp:
                answer = await cp.call("s", "StartTransaction", {"connectorId": 1, "idTag": "T", "meterStart": 0,
                                                                 "timestamp": "2024-01-15T10:00:00Z"})
                transaction_ids.append(answer[2]["transactionId"])
        else:
            async with raw_charging_station(server.url, station_id, **basic(station_id, KEY)) as cs:
                assert cs.ws.subprotocol == "ocpp2.0.1"
                answer = await cs.call("s", "TransactionEvent", {
                    "eventType": "Started", "timestamp": "2024-01-15T10:00:00Z", "triggerReason": "Authorized",
                    "seqNo": 0, "transactionInfo": {"transactionId": f"{station_id}-1"}})
                assert answer[0] == 3
    starts = await wait_for_audit(server, lambda r: r["event_type"] == "transaction_start", count=len(ids))
    assert sorted(r["ocpp_version"] for r in starts) == ["1.6"] * 3 + ["2.0.1"] * 3
    all_ids = [r["transaction_id"] for r in starts]
    assert len(set(all_ids)) == len(ids) and set(transaction_ids) <= set(all_ids)
