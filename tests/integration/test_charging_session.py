"""A whole charging session against a real `levity serve`, with a library OCPP client,
audited to the suite's Forward Protocol receiver and compared field by field with the spec."""

import re
from datetime import datetime, timezone

from ocpp.v16 import call

from levity.audit.events import conformance_errors
from tests.conftest import read_audit_file
from tests.support.forward_receiver import ForwardReceiver
from tests.support.ocpp_client import BOOT, library_charge_point

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
METER = [{"timestamp": "2024-01-15T10:30:00Z", "sampledValue": [
    {"value": "5000"},
    {"value": "230.1", "measurand": "Voltage", "unit": "V", "phase": "L1"},
    {"value": "16", "measurand": "Current.Import", "unit": "A", "phase": "L1"},
]}, {"timestamp": "2024-01-15T10:31:00Z", "sampledValue": [
    {"value": "231.0", "measurand": "Voltage", "unit": "V", "phase": "L2"},
]}]


def fluentd_env(receiver: ForwardReceiver) -> dict[str, str]:
    return {"FLUENTD_ENABLED": "true", "FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(receiver.port)}


def parse_iso(value: str) -> int:
    return int(datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp() * 1000)


async def test_whole_session_produces_exactly_the_spec_events(levity):
    with ForwardReceiver() as receiver:
        server = levity(fluentd_env(receiver))
        async with library_charge_point(server.url, "CP001") as cp:
            boot = await cp.call(BOOT)
            await cp.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Preparing"))
            auth = await cp.call(call.Authorize(id_tag="USER-123"))
            start = await cp.call(call.StartTransaction(connector_id=1, id_tag="USER-123", meter_start=1000,
                                                        timestamp="2024-01-15T10:10:00Z"))
            await cp.call(call.MeterValues(connector_id=1, transaction_id=start.transaction_id, meter_value=METER))
            await cp.call(call.Heartbeat())
            stop = await cp.call(call.StopTransaction(meter_stop=15000, timestamp="2024-01-15T11:00:00Z",
                                                      transaction_id=start.transaction_id))
        # Batches are per tag, so arrival order across tags is not emission order; event ids
        # of one Levity process sort in emission order.
        events = sorted(await receiver.wait_for_async(9), key=lambda e: e.record["event_id"])

    assert boot.status == "Accepted" and boot.interval > 0 and ISO_Z.match(boot.current_time)
    assert auth.id_tag_info["status"] == "Accepted"
    assert isinstance(start.transaction_id, int) and start.id_tag_info["status"] == "Accepted"
    assert stop.id_tag_info is None

    tx = start.transaction_id
    expected = [
        ("ocpp.websocket", {"event_type": "websocket_connect"}),
        ("ocpp.boot", {"event_type": "boot_notification", "vendor": "TestVendor", "model": "TestModel",
                       "serial_number": "SN-123", "firmware_version": "1.0.0", "status": "Accepted"}),
        ("ocpp.status", {"event_type": "status_notification", "connector_id": 1, "status": "Preparing",
                         "error_code": "NoError"}),
        ("ocpp.authorize", {"event_type": "authorize", "id_tag": "USER-123", "status": "Accepted"}),
        ("ocpp.transaction.start", {"event_type": "transaction_start", "connector_id": 1, "id_tag": "USER-123",
                                    "meter_start": 1000, "transaction_id": tx,
                                    "transaction_timestamp": "2024-01-15T10:10:00Z"}),
        ("ocpp.meter", {"event_type": "meter_values", "connector_id": 1, "transaction_id": tx, "samples_count": 4,
                        "measurands": ["Energy.Active.Import.Register", "Voltage", "Current.Import"]}),
        ("ocpp.heartbeat", {"event_type": "heartbeat"}),
        ("ocpp.transaction.stop", {"event_type": "transaction_stop", "transaction_id": tx, "meter_stop": 15000,
                                   "energy_delivered": 14000, "reason": "Local",
                                   "transaction_timestamp": "2024-01-15T11:00:00Z"}),
        ("ocpp.websocket", {"event_type": "websocket_disconnect"}),
    ]
    assert len(events) == len(expected), [e.record["event_type"] for e in events]
    for event, (tag, fields) in zip(events, expected):
        assert event.tag == tag
        assert conformance_errors(event.record) == [], event.record
        for name, value in fields.items():
            assert event.record[name] == value, (tag, name, event.record)
        assert type(event.record.get("connector_id", 0)) is int
        assert event.record["charge_point_id"] == "CP001"
        assert ISO_Z.match(event.record["timestamp"]), event.record["timestamp"]
        # The Fluentd event time is the same instant as `timestamp`.
        assert event.time_ns // 1_000_000 == parse_iso(event.record["timestamp"])
    assert len({e.record["event_id"] for e in events}) == len(events)
    connect, disconnect = events[0].record, events[-1].record
    assert re.match(r"^127\.0\.0\.1:\d+$", connect["remote_address"])
    assert disconnect["remote_address"] == connect["remote_address"]
    assert disconnect["close_code"] == 1000 and disconnect["duration_seconds"] >= 0


async def test_stop_reason_and_id_tag_are_reported_when_sent(levity):
    server = levity()
    async with library_charge_point(server.url, "CP002") as cp:
        await cp.call(BOOT)
        start = await cp.call(call.StartTransaction(connector_id=2, id_tag="TAG-9", meter_start=0,
                                                    timestamp="2024-01-15T10:10:00Z"))
        stop = await cp.call(call.StopTransaction(meter_stop=7, timestamp="2024-01-15T10:20:00Z",
                                                  transaction_id=start.transaction_id, reason="EVDisconnected",
                                                  id_tag="TAG-9"))
    assert stop.id_tag_info["status"] == "Accepted"
    server.stop()
    records = [line["record"] for line in read_audit_file(server.workdir / "audit.jsonl")]
    stops = [r for r in records if r["event_type"] == "transaction_stop"]
    assert stops == [{**stops[0], "reason": "EVDisconnected", "energy_delivered": 7, "meter_stop": 7,
                      "transaction_id": start.transaction_id}]
    assert all(conformance_errors(r) == [] for r in records)
