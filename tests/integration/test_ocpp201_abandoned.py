"""The 1.6 billing rules for transactions that never end, applied to OCPP 2.0.1 under a real
`levity serve` (docs/billing.md): a new transaction on an EVSE that still has an open one closes
that one as abandoned (`abandoned_transaction`, and `stop_after_abandoned` when its Ended comes
later), with the same fields as 1.6 and ocpp_version "2.0.1"; an anomaly about a 2.0.1
transaction says 2.0.1 whoever closed it; a start without a meter reading is no reading of 0 Wh,
in the operator API and in the audit stream."""

from __future__ import annotations

import json

from levity.audit.events import conformance_errors
from tests.integration.test_ocpp201 import audit_records, wait_for_audit
from tests.integration.test_operator_api import client, create_token
from tests.support.levity_process import api_env
from tests.support.ocpp201_client import raw_charging_station
from tests.support.ocpp_client import raw_charge_point

CALLRESULT = 3
BOOT_201 = {"chargingStation": {"vendorName": "V", "model": "M"}, "reason": "PowerUp"}
BOOT_16 = {"chargePointVendor": "V", "chargePointModel": "M"}


def transaction_event(event_type: str, station_transaction_id: str, seq_no: int, register_wh: int | None,
                      evse_id: int = 1, id_token: str = "USER-201") -> dict:
    """A TransactionEvent payload as on the wire; register_wh None sends no meter value."""
    timestamp = f"2024-01-15T1{seq_no}:00:00Z"
    payload = {"eventType": event_type, "timestamp": timestamp, "seqNo": seq_no,
               "triggerReason": "Authorized" if event_type == "Started" else "EVDeparted",
               "transactionInfo": {"transactionId": station_transaction_id},
               "evse": {"id": evse_id, "connectorId": 1}, "idToken": {"idToken": id_token, "type": "ISO14443"}}
    if register_wh is not None:
        payload["meterValue"] = [{"timestamp": timestamp, "sampledValue": [
            {"value": register_wh, "measurand": "Energy.Active.Import.Register"}]}]
    return payload


async def send(cs, unique_id: str, action: str, payload: dict) -> None:
    answer = await cs.call(unique_id, action, payload)
    assert answer[0] == CALLRESULT, answer


def of_station(server, event_type: str, station_transaction_id: str) -> list[dict]:
    return [r for r in audit_records(server)
            if r["event_type"] == event_type and r.get("station_transaction_id") == station_transaction_id]


def anomalies(server, kind: str) -> list[dict]:
    return [r for r in audit_records(server) if r["event_type"] == "anomaly" and r["kind"] == kind]


async def test_a_new_started_on_an_evse_abandons_its_open_transaction_as_startransaction_does_in_16(levity):
    server = levity()
    # The same story in 1.6 on the same server: its anomaly's fields are what 2.0.1 must carry.
    async with raw_charge_point(server.url, "CP-16") as cp:
        await send(cp, "b", "BootNotification", BOOT_16)
        first16 = await cp.call("s1", "StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 100,
                                                           "timestamp": "2024-01-15T10:00:00Z"})
        await send(cp, "s2", "StartTransaction", {"connectorId": 1, "idTag": "B", "meterStart": 300,
                                                  "timestamp": "2024-01-15T11:00:00Z"})
        await send(cp, "e1", "StopTransaction", {"transactionId": first16[2]["transactionId"], "meterStop": 250,
                                                 "timestamp": "2024-01-15T12:00:00Z"})
    async with raw_charging_station(server.url, "CS-201") as cs:
        await send(cs, "b", "BootNotification", BOOT_201)
        await send(cs, "s1", "TransactionEvent", transaction_event("Started", "old", 0, 1000))
        await send(cs, "s2", "TransactionEvent", transaction_event("Started", "other-evse", 0, 50, evse_id=2))
        await send(cs, "s3", "TransactionEvent", transaction_event("Started", "new", 1, 3000, id_token="USER-2"))
        # The station's Ended for the old one comes later (an offline queue): its figures count.
        await send(cs, "e1", "TransactionEvent", transaction_event("Ended", "old", 2, 2500))

    [late] = await wait_for_audit(server, lambda r: r.get("kind") == "stop_after_abandoned"
                                  and r["ocpp_version"] == "2.0.1")
    [old] = of_station(server, "transaction_start", "old")
    [new] = of_station(server, "transaction_start", "new")
    [abandoned] = [a for a in anomalies(server, "abandoned_transaction") if a["ocpp_version"] == "2.0.1"]
    assert (abandoned["transaction_id"], abandoned["first_event_id"], abandoned["superseded_by"]) == (
        old["transaction_id"], old["event_id"], new["transaction_id"])
    assert (abandoned["charge_point_id"], abandoned["station_transaction_id"], abandoned["evse_id"],
            abandoned["connector_id"]) == ("CS-201", "old", 1, 1)
    assert abandoned["detail"].startswith(f"EVSE 1 started transaction {new['transaction_id']} while this one")
    assert "idTag USER-2" in abandoned["detail"] and "meterStart 3000" in abandoned["detail"]
    # EVSE 2's transaction is untouched: one abandoned 2.0.1 transaction in all.
    assert [a["transaction_id"] for a in anomalies(server, "abandoned_transaction")
            if a["ocpp_version"] == "2.0.1"] == [old["transaction_id"]]
    [stop] = of_station(server, "transaction_stop", "old")
    assert (stop["transaction_id"], stop["energy_delivered"]) == (old["transaction_id"], 1500)
    assert (late["transaction_id"], late["first_event_id"], late["station_transaction_id"]) == (
        old["transaction_id"], abandoned["event_id"], "old")

    [abandoned16] = [a for a in anomalies(server, "abandoned_transaction") if a["ocpp_version"] == "1.6"]
    [late16] = [a for a in anomalies(server, "stop_after_abandoned") if a["ocpp_version"] == "1.6"]
    for record, in_16 in ((abandoned, abandoned16), (late, late16)):
        assert conformance_errors(record) == [], record
        assert set(in_16) <= set(record), set(in_16) - set(record)
        # The 2.0.1 additions are the station's id for the transaction and its EVSE; 1.6 keeps its fields.
        assert set(record) - set(in_16) == {"station_transaction_id", "evse_id"}


async def test_an_ended_for_a_transaction_never_seen_abandons_the_open_one_on_its_evse(levity):
    server = levity()
    async with raw_charging_station(server.url, "CS-LOST") as cs:
        await send(cs, "b", "BootNotification", BOOT_201)
        await send(cs, "s1", "TransactionEvent", transaction_event("Started", "open", 0, 1000))
        # The Started of "lost" never reached Levity; its Ended did, on the same EVSE.
        await send(cs, "e1", "TransactionEvent", transaction_event("Ended", "lost", 2, 9000))
    [abandoned] = await wait_for_audit(server, lambda r: r.get("kind") == "abandoned_transaction")
    [open_one] = of_station(server, "transaction_start", "open")
    [lost] = of_station(server, "transaction_stop", "lost")
    assert lost["unknown_transaction"] is True and lost["energy_delivered"] is None
    assert (abandoned["transaction_id"], abandoned["superseded_by"], abandoned["ocpp_version"]) == (
        open_one["transaction_id"], lost["transaction_id"], "2.0.1")


async def test_an_operator_closing_a_201_transaction_sends_an_anomaly_that_says_201(levity):
    server = levity()
    async with raw_charging_station(server.url, "CS-CLOSE") as cs:
        await send(cs, "b", "BootNotification", BOOT_201)
        await send(cs, "s", "TransactionEvent", transaction_event("Started", "stuck", 0, 100))
    [start] = of_station(server, "transaction_start", "stuck")
    closed = server.levity_command("transactions", "close", str(start["transaction_id"]), "--reason", "cable cut")
    assert closed.returncode == 0, closed.stderr
    [abandoned] = await wait_for_audit(server, lambda r: r.get("kind") == "abandoned_transaction")
    assert (abandoned["transaction_id"], abandoned["ocpp_version"], abandoned["station_transaction_id"]) == (
        start["transaction_id"], "2.0.1", "stuck")
    assert abandoned["detail"] == "closed by an operator: cable cut"
    assert conformance_errors(abandoned) == []


async def test_a_start_without_a_meter_reading_is_listed_with_no_meter_start_and_no_energy(levity):
    server = levity(api_env())
    token = create_token(server, "reader", "read")
    async with raw_charging_station(server.url, "CS-NOREAD") as cs:
        await send(cs, "b", "BootNotification", BOOT_201)
        await send(cs, "s1", "TransactionEvent", transaction_event("Started", "unread", 0, None))
        await send(cs, "s2", "TransactionEvent", transaction_event("Started", "read", 0, 400, evse_id=2))
        await send(cs, "e1", "TransactionEvent", transaction_event("Ended", "unread", 1, 7000))
        await send(cs, "e2", "TransactionEvent", transaction_event("Ended", "read", 1, 900, evse_id=2))
    async with client(server, token) as api:
        listed = (await api.get("/transactions", params={"charge_point_id": "CS-NOREAD"})).json()
    by_station = {row["station_transaction_id"]: row for row in listed}
    unread, read = by_station["unread"], by_station["read"]
    # 7000 Wh is the meter's register at the stop, not the energy of the session.
    assert (unread["meter_start"], unread["meter_stop"], unread["energy_delivered"]) == (None, 7000, None)
    assert (read["meter_start"], read["meter_stop"], read["energy_delivered"]) == (400, 900, 500)
    assert {row["ocpp_version"] for row in listed} == {"2.0.1"} and unread["evse_id"] == 1
    [stop] = of_station(server, "transaction_stop", "unread")
    assert (stop["meter_stop"], stop["energy_delivered"]) == (7000, None)
    assert conformance_errors(stop) == []
    # The energy counter counts the session whose figures exist, only.
    assert server.metrics()["levity_energy_delivered_wh_total"] == 500


async def test_a_16_stop_naming_a_201_transaction_is_for_an_unknown_transaction_not_a_crash(levity):
    """A station that went back to 1.6 firmware never learnt Levity's ids of its 2.0.1
    transactions: a StopTransaction naming one is answered as for any unknown id, and the 2.0.1
    transaction (whose start had no reading to subtract) is left as it was."""
    server = levity()
    async with raw_charging_station(server.url, "CS-DOWN") as cs:
        await send(cs, "b", "BootNotification", BOOT_201)
        await send(cs, "s", "TransactionEvent", transaction_event("Started", "no-reading", 0, None))
    [start] = of_station(server, "transaction_start", "no-reading")
    async with raw_charge_point(server.url, "CS-DOWN") as cp:
        await send(cp, "b", "BootNotification", BOOT_16)
        await send(cp, "e", "StopTransaction", {"transactionId": start["transaction_id"], "meterStop": 500,
                                                "timestamp": "2024-01-15T12:00:00Z"})
    [stop] = await wait_for_audit(server, lambda r: r["event_type"] == "transaction_stop")
    assert (stop["transaction_id"], stop["unknown_transaction"], stop["ocpp_version"]) == (
        start["transaction_id"], True, "1.6")
    listed = server.levity_command("transactions", "list", "--open", "--json")
    assert listed.returncode == 0, listed.stderr
    assert start["transaction_id"] in [json.loads(line)["transaction_id"] for line in listed.stdout.splitlines()]
