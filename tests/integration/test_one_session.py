"""One charging session, one start and one stop: a real `levity serve`, real OCPP 1.6 clients
(raw frames and the `ocpp` library), events at the suite's Forward receiver."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys

import pytest
import websockets
from ocpp.v16 import call

from levity.audit.events import conformance_errors
from levity.workers import worker_index
from tests.integration.test_lossless_delivery import fluentd_env
from tests.support.forward_receiver import ForwardReceiver
from tests.support.ocpp_client import library_charge_point, raw_charge_point

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}
START = {"connectorId": 1, "idTag": "TAG-1", "meterStart": 1000, "timestamp": "2024-01-15T10:10:00Z"}
STOP = {"meterStop": 15000, "timestamp": "2024-01-15T11:00:00Z"}


@pytest.fixture
def receiver():
    with ForwardReceiver() as receiver:
        yield receiver


def records(receiver, event_type: str, kind: str | None = None, transaction_id: int | None = None) -> list[dict]:
    """Events of a type, one per event_id, as docs/billing.md tells consumers to count them
    (after a SIGKILL, Levity resends what it was not sure was acknowledged)."""
    unique = {e.record["event_id"]: e.record for e in receiver.events if e.record.get("event_type") == event_type}
    found = list(unique.values())
    if kind is not None:
        found = [r for r in found if r["kind"] == kind]
    if transaction_id is not None:
        found = [r for r in found if r["transaction_id"] == transaction_id]
    return found


async def until(condition, what: str, server=None, seconds: float = 15.0):
    """Wait for condition() to hold (no fixed sleeps); fail naming `what` otherwise."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}" + (f":\n{server.log()[-3000:]}" if server else ""))
        await asyncio.sleep(0.02)


async def settle(receiver, server, event_type: str = "heartbeat", charge_point_id: str = "CP-PROBE"):
    """Every event a server sent before now has arrived: Levity delivers in order, so a probe
    event sent last arriving means the earlier ones have."""
    before = len(records(receiver, event_type))
    async with raw_charge_point(server.url, charge_point_id) as cp:
        await cp.call("probe", "Heartbeat", {})
    await until(lambda: len(records(receiver, event_type)) > before, "the probe heartbeat", server)


def assert_anomaly(record: dict, kind: str, transaction_id: int, first_event_id: str | None) -> None:
    assert conformance_errors(record) == []
    assert record["kind"] == kind and record["transaction_id"] == transaction_id
    assert record["first_event_id"] == first_event_id
    assert record["ocpp_version"] == "1.6" and record["detail"]


async def boot_and_start(cp, start: dict = START) -> int:
    assert (await cp.call("b", "BootNotification", BOOT))[2]["status"] == "Accepted"
    answer = await cp.call("s", "StartTransaction", start)
    assert answer[0] == 3, answer
    return answer[2]["transactionId"]


def anomaly_tags(receiver) -> set[str]:
    return {e.tag for e in receiver.events if e.record.get("event_type") == "anomaly"}


# Starts ----------------------------------------------------------------------------------------

async def test_an_identical_start_gets_the_same_transaction_id_and_one_anomaly(levity, receiver):
    server = levity(fluentd_env(receiver.port))
    async with raw_charge_point(server.url, "CP-RS") as cp:
        first = await boot_and_start(cp)
        again = await cp.call("s2", "StartTransaction", START)
        assert again[0] == 3 and again[2]["transactionId"] == first
        assert again[2]["idTagInfo"] == {"status": "Accepted"}
    await settle(receiver, server)
    starts = records(receiver, "transaction_start")
    assert [s["transaction_id"] for s in starts] == [first]
    [anomaly] = records(receiver, "anomaly")
    assert_anomaly(anomaly, "repeated_start", first, starts[0]["event_id"])
    assert anomaly_tags(receiver) == {"ocpp.anomaly"}


async def test_a_start_with_a_different_payload_is_a_new_transaction(levity, receiver):
    server = levity(fluentd_env(receiver.port))
    async with raw_charge_point(server.url, "CP-DIFF") as cp:
        first = await boot_and_start(cp)
        other = await cp.call("s2", "StartTransaction", {**START, "connectorId": 2})
        assert other[2]["transactionId"] != first
    await settle(receiver, server)
    assert len(records(receiver, "transaction_start")) == 2
    assert records(receiver, "anomaly") == [], "a different connector is another session, not a repeat"


async def test_restart_between_a_start_and_its_repeat(levity, receiver):
    server = levity(fluentd_env(receiver.port))
    async with raw_charge_point(server.url, "CP-RESTART") as cp:
        first = await boot_and_start(cp)
        assert (await cp.call("e", "StopTransaction", {**STOP, "transactionId": first}))[0] == 3
    await until(lambda: records(receiver, "transaction_stop"), "the stop", server)
    server.kill()  # no clean shutdown: what decides a repeat was committed before the answer
    server.start()
    async with raw_charge_point(server.url, "CP-RESTART") as cp:
        again = await cp.call("s2", "StartTransaction", START)
        assert again[2]["transactionId"] == first
        assert (await cp.call("e2", "StopTransaction", {**STOP, "transactionId": first, "reason": "Local"}))[0] == 3
    await settle(receiver, server)
    [start] = records(receiver, "transaction_start")
    [stop] = records(receiver, "transaction_stop")
    assert stop["energy_delivered"] == 14000
    [repeated_start] = records(receiver, "anomaly", "repeated_start")
    assert_anomaly(repeated_start, "repeated_start", first, start["event_id"])
    [repeated_stop] = records(receiver, "anomaly", "repeated_stop")
    assert_anomaly(repeated_stop, "repeated_stop", first, stop["event_id"])
    assert repeated_stop["detail"] == "differs from the first stop: reason Local (first stop: none given)"


# Stops -----------------------------------------------------------------------------------------

async def test_two_stops_back_to_back_on_one_connection_bill_once(levity, receiver):
    """The real case: a charger sends StopTransaction twice within a millisecond, once
    without a reason and once with Local, on one connection."""
    server = levity(fluentd_env(receiver.port))
    async with raw_charge_point(server.url, "CP-RACE") as cp:
        tx = await boot_and_start(cp)
        # Both frames leave before either answer is read.
        await cp.ws.send(json.dumps([2, "stop-1", "StopTransaction", {**STOP, "transactionId": tx}]))
        await cp.ws.send(json.dumps([2, "stop-2", "StopTransaction", {**STOP, "transactionId": tx, "reason": "Local"}]))
        answers = [json.loads(await asyncio.wait_for(cp.ws.recv(), 5)) for _ in range(2)]
    assert [a[:2] for a in answers] == [[3, "stop-1"], [3, "stop-2"]]
    assert answers[0][2] == answers[1][2] == {}, "both answered as a first stop is"
    await settle(receiver, server)
    [stop] = records(receiver, "transaction_stop")
    assert stop["energy_delivered"] == 14000 and stop["reason"] == "Local"
    [anomaly] = records(receiver, "anomaly")
    assert_anomaly(anomaly, "repeated_stop", tx, stop["event_id"])
    assert anomaly["detail"] == "differs from the first stop: reason Local (first stop: none given)"


async def test_two_stops_across_a_reconnect_bill_once(levity, receiver):
    """The first stop's connection is replaced by a new one that sends the stop again, before
    the first one's answer was read."""
    server = levity(fluentd_env(receiver.port))
    async with raw_charge_point(server.url, "CP-RECONNECT") as cp:
        tx = await boot_and_start(cp)
    old = await websockets.connect(f"{server.url}/CP-RECONNECT", subprotocols=["ocpp1.6"])
    await old.send(json.dumps([2, "stop-1", "StopTransaction", {**STOP, "transactionId": tx}]))
    async with raw_charge_point(server.url, "CP-RECONNECT") as cp:
        answer = await cp.call("stop-2", "StopTransaction", {**STOP, "transactionId": tx, "reason": "Local"})
        assert answer[0] == 3
    await old.close()
    await settle(receiver, server)
    [stop] = records(receiver, "transaction_stop")
    assert stop["energy_delivered"] == 14000
    [anomaly] = records(receiver, "anomaly")
    assert_anomaly(anomaly, "repeated_stop", tx, stop["event_id"])
    assert "reason" in anomaly["detail"]


async def test_an_identical_repeated_stop_from_the_ocpp_library(levity, receiver):
    server = levity(fluentd_env(receiver.port))
    async with library_charge_point(server.url, "CP-LIB") as cp:
        await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
        started = await cp.call(call.StartTransaction(connector_id=1, id_tag="TAG-1", meter_start=500,
                                                      timestamp="2024-01-15T10:10:00Z"))
        stop = call.StopTransaction(meter_stop=7500, timestamp="2024-01-15T11:00:00Z",
                                    transaction_id=started.transaction_id, reason="EVDisconnected", id_tag="TAG-1")
        first, second = await cp.call(stop), await cp.call(stop)
        assert first == second and first.id_tag_info["status"] == "Accepted"
    await settle(receiver, server)
    [stop_event] = records(receiver, "transaction_stop")
    assert stop_event["energy_delivered"] == 7000
    [anomaly] = records(receiver, "anomaly")
    assert_anomaly(anomaly, "repeated_stop", started.transaction_id, stop_event["event_id"])
    assert anomaly["detail"] == "identical to the first stop"


async def test_a_repeated_stop_with_other_figures_says_what_differs(levity, receiver):
    server = levity(fluentd_env(receiver.port))
    async with raw_charge_point(server.url, "CP-FIG") as cp:
        tx = await boot_and_start(cp)
        await cp.call("e1", "StopTransaction", {**STOP, "transactionId": tx})
        await cp.call("e2", "StopTransaction", {"transactionId": tx, "meterStop": 15020,
                                                "timestamp": "2024-01-15T11:00:01Z", "reason": "EVDisconnected"})
    await settle(receiver, server)
    [stop] = records(receiver, "transaction_stop")
    assert stop["meter_stop"] == 15000, "the first stop's figures stay"
    [anomaly] = records(receiver, "anomaly")
    assert anomaly["detail"] == ("differs from the first stop: meterStop 15020 (first stop: 15000); timestamp "
                                 "2024-01-15T11:00:01Z (first stop: 2024-01-15T11:00:00Z); reason EVDisconnected "
                                 "(first stop: none given)")


# Abandoned transactions --------------------------------------------------------------------------

async def test_a_second_start_on_a_busy_connector_abandons_the_open_one(levity, receiver):
    server = levity(fluentd_env(receiver.port))
    async with raw_charge_point(server.url, "CP-BUSY") as cp:
        old = await boot_and_start(cp)
        new = (await cp.call("s2", "StartTransaction", {**START, "idTag": "TAG-2", "meterStart": 1200,
                                                        "timestamp": "2024-01-15T10:20:00Z"}))[2]["transactionId"]
        assert new != old
        await settle(receiver, server)
        old_start = records(receiver, "transaction_start", transaction_id=old)[0]
        [abandoned] = records(receiver, "anomaly")
        assert_anomaly(abandoned, "abandoned_transaction", old, old_start["event_id"])
        assert abandoned["superseded_by"] == new
        assert abandoned["detail"] == (
            f"connector 1 started transaction {new} while this one was open; its start differs in idTag TAG-2 "
            "(this one: TAG-1); meterStart 1200 (this one: 1000); timestamp 2024-01-15T10:20:00Z "
            "(this one: 2024-01-15T10:10:00Z)")
        assert records(receiver, "transaction_stop") == [], "no stop with invented figures"
        # The operator sees only the new one open.
        listed = transactions_cli(server, "list", "--open", "--json")
        assert [json.loads(line)["transaction_id"] for line in listed.stdout.splitlines()] == [new]

        # The charger's real stop of the old one arrives late: it counts, with its own figures.
        await cp.call("e", "StopTransaction", {"transactionId": old, "meterStop": 1150,
                                               "timestamp": "2024-01-15T10:19:00Z"})
    await settle(receiver, server)
    [stop] = records(receiver, "transaction_stop")
    assert stop["transaction_id"] == old and stop["energy_delivered"] == 150
    [late] = records(receiver, "anomaly", "stop_after_abandoned")
    assert_anomaly(late, "stop_after_abandoned", old, abandoned["event_id"])


# Meter readings that contradict the stop -----------------------------------------------------------

def register(value: str, unit: str = "Wh") -> dict:
    return {"timestamp": "2024-01-15T10:30:00Z",
            "sampledValue": [{"value": value, "measurand": "Energy.Active.Import.Register", "unit": unit},
                             {"value": "230", "measurand": "Voltage", "unit": "V"}]}


async def test_meter_readings_that_contradict_the_stop_are_kept_and_flagged(levity, receiver):
    server = levity(fluentd_env(receiver.port))
    async with raw_charge_point(server.url, "CP-METER") as cp:
        tx = await boot_and_start(cp)
        await cp.call("m", "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [register("16.2", "kWh")]})
        await cp.call("e", "StopTransaction", {**STOP, "transactionId": tx})
        # Meter values from an offline queue after the stop, above it as well.
        await cp.call("m2", "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [register("15500")]})
        below = (await cp.call("s2", "StartTransaction", {**START, "meterStart": 20000,
                                                          "timestamp": "2024-01-15T12:00:00Z"}))[2]["transactionId"]
        await cp.call("e2", "StopTransaction", {"transactionId": below, "meterStop": 19900,
                                                "timestamp": "2024-01-15T12:30:00Z"})
    await settle(receiver, server)
    stops = {s["transaction_id"]: s for s in records(receiver, "transaction_stop")}
    assert stops[tx]["meter_stop"] == 15000 and stops[tx]["energy_delivered"] == 14000, "kept as sent"
    assert stops[below]["energy_delivered"] == -100, "kept as sent, not corrected"
    above = records(receiver, "anomaly", "meter_value_above_stop", tx)
    assert [a["detail"] for a in above] == [
        "Energy.Active.Import.Register 16200 Wh in the transaction's meter values is above meterStop 15000 Wh: "
        "kept as sent",
        "Energy.Active.Import.Register 15500 Wh in the transaction's meter values is above meterStop 15000 Wh: "
        "kept as sent"]
    for anomaly in above:
        assert_anomaly(anomaly, "meter_value_above_stop", tx, stops[tx]["event_id"])
    [negative] = records(receiver, "anomaly", "meter_stop_below_start")
    assert_anomaly(negative, "meter_stop_below_start", below, stops[below]["event_id"])
    with sqlite3.connect(server.workdir / "levity.db") as db:
        values = {row[0] for row in db.execute(
            "SELECT value FROM meter_values WHERE transaction_id = ? AND measurand = 'Energy.Active.Import.Register'",
            (tx,))}
    assert values == {"16.2", "15500"}, "readings are stored as sent"



async def test_late_readings_are_flagged_from_memory_while_connected_and_from_the_database_after(levity, receiver):
    """While the charger stays connected its transaction's stop and readings are known to this
    process (levity_store_owned_hits counts the answers given from memory); after a reconnect
    the same checks read the database and decide the same."""
    server = levity(fluentd_env(receiver.port))
    async with raw_charge_point(server.url, "CP-KNOWN") as cp:
        tx = await boot_and_start(cp)
        await cp.call("m", "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [register("16000")]})
        await cp.call("e", "StopTransaction", {**STOP, "transactionId": tx})
        await cp.call("m2", "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [register("15100")]})
    hits = server.metrics()["levity_store_owned_hits"]
    assert hits >= 2, "the stop's readings and the late reading's meterStop came from memory"
    async with raw_charge_point(server.url, "CP-KNOWN") as cp:
        await cp.call("m3", "MeterValues", {"connectorId": 1, "transactionId": tx, "meterValue": [register("15200")]})
    assert server.metrics()["levity_store_owned_hits"] == hits, "a new connection starts from the database"
    await settle(receiver, server)
    [stop] = records(receiver, "transaction_stop")
    above = records(receiver, "anomaly", "meter_value_above_stop", tx)
    assert sorted(a["detail"].split()[1] for a in above) == ["15100", "15200", "16000"]
    for anomaly in above:
        assert_anomaly(anomaly, "meter_value_above_stop", tx, stop["event_id"])


# Operators: open transactions, closing an abandoned one ---------------------------------------------

def transactions_cli(server, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEVITY_")}
    env.update({k: v for k, v in server.env.items() if k in ("LEVITY_DATABASE", "LEVITY_WORKERS")})
    return subprocess.run([sys.executable, "-m", "levity.cli", "transactions", *args], env=env,
                          capture_output=True, text=True, timeout=30)


async def test_an_operator_lists_and_closes_an_open_transaction_while_levity_runs(levity, receiver):
    server = levity(fluentd_env(receiver.port))
    async with raw_charge_point(server.url, "CP-OP") as cp:
        tx = await boot_and_start(cp)
        done = await boot_and_start(cp, {**START, "connectorId": 2})
        await cp.call("e", "StopTransaction", {**STOP, "transactionId": done})
    listed = transactions_cli(server, "list", "--open", "--json", "--charge-point", "CP-OP")
    assert listed.returncode == 0, listed.stderr
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["transaction_id"] == tx and row["state"] == "open" and row["meter_stop"] is None
    assert isinstance(row["age_seconds"], int) and row["age_seconds"] >= 0
    assert set(row) >= {"transaction_id", "charge_point_id", "connector_id", "id_tag", "meter_start", "meter_stop",
                        "energy_delivered", "started_at", "stopped_at", "age_seconds"}

    closed = transactions_cli(server, "close", str(tx), "--reason", "charger replaced")
    assert closed.returncode == 0, closed.stderr
    await until(lambda: records(receiver, "anomaly"), "the operator's close anomaly", server)
    [anomaly] = records(receiver, "anomaly")
    start = records(receiver, "transaction_start", transaction_id=tx)[0]
    assert_anomaly(anomaly, "abandoned_transaction", tx, start["event_id"])
    assert anomaly["detail"] == "closed by an operator: charger replaced"
    assert transactions_cli(server, "list", "--open").stdout == ""

    again = transactions_cli(server, "close", str(tx), "--reason", "again")
    assert again.returncode == 1 and "already closed as abandoned" in again.stderr
    stopped = transactions_cli(server, "close", str(done), "--reason", "no")
    assert stopped.returncode == 1 and "already stopped" in stopped.stderr
    unknown = transactions_cli(server, "close", "999999", "--reason", "no")
    assert unknown.returncode == 1 and "no transaction 999999" in unknown.stderr
    await settle(receiver, server)
    assert len(records(receiver, "anomaly")) == 1
    assert records(receiver, "transaction_stop", transaction_id=tx) == []


async def test_a_close_made_while_levity_is_stopped_is_sent_when_it_starts(levity, receiver):
    server = levity(fluentd_env(receiver.port))
    async with raw_charge_point(server.url, "CP-OFF") as cp:
        tx = await boot_and_start(cp)
    await until(lambda: records(receiver, "transaction_start"), "the start", server)
    assert server.stop() == 0
    assert transactions_cli(server, "close", str(tx), "--reason", "site closed").returncode == 0
    server.start()
    await until(lambda: records(receiver, "anomaly"), "the anomaly after the start", server)
    await settle(receiver, server)
    [anomaly] = records(receiver, "anomaly")
    assert anomaly["kind"] == "abandoned_transaction" and anomaly["detail"] == "closed by an operator: site closed"


# Workers, floods, databases made by earlier versions ------------------------------------------------

async def test_repeats_with_two_workers_and_a_restart(levity, receiver):
    server = levity({"LEVITY_WORKERS": "2", **fluentd_env(receiver.port)})
    ids = [f"CP-W{n}" for n in range(6)]
    assert {worker_index(cp, 2) for cp in ids} == {0, 1}
    started = {}
    for n, charge_point_id in enumerate(ids):
        async with raw_charge_point(server.url, charge_point_id) as cp:
            started[charge_point_id] = await boot_and_start(cp, {**START, "meterStart": 100 * n})
    server.restart()
    for n, charge_point_id in enumerate(ids):
        async with raw_charge_point(server.url, charge_point_id) as cp:
            tx = started[charge_point_id]
            assert (await cp.call("s", "StartTransaction", {**START, "meterStart": 100 * n}))[2]["transactionId"] == tx
            await cp.ws.send(json.dumps([2, "e1", "StopTransaction", {**STOP, "transactionId": tx}]))
            await cp.ws.send(json.dumps([2, "e2", "StopTransaction", {**STOP, "transactionId": tx, "reason": "Local"}]))
            assert [json.loads(await asyncio.wait_for(cp.ws.recv(), 5))[0] for _ in range(2)] == [3, 3]
    await until(lambda: len(records(receiver, "anomaly")) >= 2 * len(ids), "two anomalies per charger", server)
    await settle(receiver, server)
    assert sorted(s["transaction_id"] for s in records(receiver, "transaction_start")) == sorted(started.values())
    stops = records(receiver, "transaction_stop")
    assert sorted(s["transaction_id"] for s in stops) == sorted(started.values())
    for n, charge_point_id in enumerate(ids):
        tx = started[charge_point_id]
        assert [s["energy_delivered"] for s in stops if s["transaction_id"] == tx] == [15000 - 100 * n]
        assert len(records(receiver, "anomaly", "repeated_start", tx)) == 1
        assert len(records(receiver, "anomaly", "repeated_stop", tx)) == 1
    listed = transactions_cli(server, "list", "--json")
    assert sorted(json.loads(line)["transaction_id"] for line in listed.stdout.splitlines()) == \
        sorted(started.values())
    # The supervisor adds up its workers' anomaly counters (restarted workers start from 0).
    assert server.metrics()['levity_anomalies_total{kind="repeated_stop"}'] == len(ids)


async def test_a_flood_of_repeats_is_throttled_and_grows_no_state(levity, receiver):
    server = levity({"LEVITY_MAX_CALLS_PER_SECOND": "20", **fluentd_env(receiver.port)})
    repeats = 80
    async with raw_charge_point(server.url, "CP-FLOOD") as cp:
        tx = await boot_and_start(cp)
        await cp.call("e", "StopTransaction", {**STOP, "transactionId": tx})
        for n in range(repeats):
            await cp.ws.send(json.dumps([2, f"r{n}", "StopTransaction", {**STOP, "transactionId": tx}]))
        answers = [json.loads(await asyncio.wait_for(cp.ws.recv(), 30)) for _ in range(repeats)]
    assert all(a[0] == 3 for a in answers), "every repeat answered normally"
    metrics = server.metrics()
    assert metrics["levity_calls_throttled_total"] > 0, "the per-charger throttle applies to repeats"
    assert metrics['levity_anomalies_total{kind="repeated_stop"}'] == repeats
    await until(lambda: len(records(receiver, "anomaly")) == repeats, "one anomaly per repeat", server)
    assert len(records(receiver, "transaction_stop")) == 1
    with sqlite3.connect(server.workdir / "levity.db") as db:
        counts = [db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in ("transactions", "meter_values")]
    assert counts == [1, 0], "repeats store nothing"


OLD_SCHEMA = """
CREATE TABLE charge_points (id TEXT PRIMARY KEY, registered INTEGER NOT NULL DEFAULT 0, vendor TEXT, model TEXT,
    serial_number TEXT, firmware_version TEXT, registration_status TEXT, firmware_status TEXT,
    diagnostics_status TEXT, first_seen TEXT, last_boot TEXT, last_heartbeat TEXT, password_hash TEXT);
CREATE TABLE transactions (id INTEGER PRIMARY KEY AUTOINCREMENT, charge_point_id TEXT NOT NULL,
    connector_id INTEGER NOT NULL, id_tag TEXT NOT NULL, meter_start INTEGER NOT NULL, start_timestamp TEXT NOT NULL,
    reservation_id INTEGER, meter_stop INTEGER, stop_timestamp TEXT, stop_reason TEXT, stop_id_tag TEXT,
    created_at TEXT NOT NULL, stopped_at TEXT);
CREATE INDEX transactions_open ON transactions (charge_point_id, connector_id) WHERE stopped_at IS NULL;
INSERT INTO transactions VALUES (7, 'CP-OLD', 1, 'TAG-1', 1000, '2024-01-15T10:10:00Z', NULL, 15000,
    '2024-01-15T11:00:00Z', 'Local', NULL, '2024-01-15T10:10:00.100Z', '2024-01-15T11:00:00.100Z');
INSERT INTO transactions VALUES (8, 'CP-OLD', 2, 'TAG-2', 500, '2024-01-15T10:20:00Z', NULL, NULL, NULL, NULL, NULL,
    '2024-01-15T10:20:00.100Z', NULL);
"""


async def test_a_database_made_before_these_rules_opens_and_works(levity, receiver, tmp_path):
    workdir = tmp_path / "old"
    workdir.mkdir()
    with sqlite3.connect(workdir / "levity.db") as db:
        db.executescript(OLD_SCHEMA)
    server = levity(fluentd_env(receiver.port), workdir=workdir)
    async with raw_charge_point(server.url, "CP-OLD") as cp:
        assert (await cp.call("s", "StartTransaction", START))[2]["transactionId"] == 7
        await cp.call("e", "StopTransaction", {**STOP, "transactionId": 7, "meterStop": 15001})
        assert (await cp.call("e2", "StopTransaction", {**STOP, "transactionId": 8, "meterStop": 900}))[0] == 3
        new = (await cp.call("s2", "StartTransaction", {**START, "timestamp": "2024-01-16T08:00:00Z"}))[2]
        assert new["transactionId"] == 9, "ids continue after the old ones"
    await settle(receiver, server)
    [repeated_start] = records(receiver, "anomaly", "repeated_start")
    assert_anomaly(repeated_start, "repeated_start", 7, None)  # started before event ids were kept
    [repeated_stop] = records(receiver, "anomaly", "repeated_stop", 7)
    assert repeated_stop["detail"] == "differs from the first stop: meterStop 15001 (first stop: 15000)"
    [stop] = records(receiver, "transaction_stop")
    assert stop["transaction_id"] == 8 and stop["energy_delivered"] == 400
