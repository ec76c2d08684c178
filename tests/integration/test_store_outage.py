"""The database going away while a real `levity serve` runs, on both engines: chargers keep
their heartbeat answers, transaction calls get a CALLERROR and succeed when resent after, and the
audit stream (a real Forward receiver) carries one `ocpp.store` event when writes start failing
and one when they work again. No transaction is lost or counted twice."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from levity.audit.events import conformance_errors
from levity.database import redact
from tests.integration.test_storage_failures import eventually, fluentd_env
from tests.support import postgres
from tests.support.forward_receiver import ForwardReceiver
from tests.support.ocpp_client import raw_charge_point
from tests.support.postgres import levity_command

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}
CALLRESULT, CALLERROR = 3, 4


def start_payload(connector: int, meter: int) -> dict:
    return {"connectorId": connector, "idTag": "U1", "meterStart": meter, "timestamp": "2024-01-15T10:10:00Z"}


def stop_payload(transaction_id: int, meter: int) -> dict:
    return {"transactionId": transaction_id, "meterStop": meter, "timestamp": "2024-01-15T11:00:00Z"}


def records(receiver, event_type: str) -> list[dict]:
    return [e.record for e in receiver.events if e.record["event_type"] == event_type]


async def resend_until_answered(cp, name: str, action: str, payload: dict, attempts: int = 200) -> dict:
    """As a charger does after a CALLERROR: the same call again until it gets a result."""
    for attempt in range(attempts):
        answer = await cp.call(f"{name}-{attempt}", action, payload, timeout=15)
        if answer[0] == CALLRESULT:
            return answer[2]
        assert answer[0] == CALLERROR and answer[2] == "InternalError", answer
        await asyncio.sleep(0.1)
    raise AssertionError(f"{action} never answered")


def assert_one_outage(receiver, engine: str, database: str) -> tuple[dict, dict]:
    store_events = [e for e in receiver.events if e.record["event_type"] == "store_state"]
    assert [e.record["state"] for e in store_events] == ["down", "up"], [e.record for e in store_events]
    down, up = (e.record for e in store_events)
    for event in store_events:
        assert event.tag == "ocpp.store"
        assert conformance_errors(event.record) == []
        assert event.record["engine"] == engine and event.record["database"] == database
        assert event.record["charge_point_id"] == ""
    assert down["since"] == up["since"]
    assert down["duration_seconds"] is None and down["error"]
    assert up["duration_seconds"] > 0 and up["error"] is None
    assert up["writes_waiting"] >= 1  # at least the heartbeat written during the outage
    return down, up


async def test_postgresql_outage_is_in_the_audit_stream_and_no_transaction_is_lost(levity, own_postgres_server):
    psycopg = pytest.importorskip("psycopg", reason="the postgresql extra is not installed")
    url = own_postgres_server.new_database()
    assert levity_command("db", "upgrade", database=url).returncode == 0
    with ForwardReceiver() as receiver:
        server = levity({"LEVITY_DATABASE": url, **fluentd_env(receiver.port)})
        async with raw_charge_point(server.url, "CP-OA") as a, raw_charge_point(server.url, "CP-OB") as b:
            for cp in (a, b):
                assert (await cp.call("boot", "BootNotification", BOOT))[0] == CALLRESULT
            first_a = await resend_until_answered(a, "sa", "StartTransaction", start_payload(1, 100))
            first_b = await resend_until_answered(b, "sb", "StartTransaction", start_payload(1, 500))

            own_postgres_server.pause()
            for cp in (a, b):
                heartbeat = await cp.call("hb", "Heartbeat", {})
                assert heartbeat[0] == CALLRESULT and "currentTime" in heartbeat[2]
            refused = await a.call("sa2", "StartTransaction", start_payload(2, 200), timeout=15)
            assert refused[0] == CALLERROR and refused[2] == "InternalError", refused
            refused_stop = await b.call("tb", "StopTransaction", stop_payload(first_b["transactionId"], 900),
                                        timeout=15)
            assert refused_stop[0] == CALLERROR, refused_stop
            await eventually(lambda: records(receiver, "store_state"), what="the outage event")
            assert server.metrics()["levity_store_down"] == 1

            own_postgres_server.resume()
            second_a = await resend_until_answered(a, "sa2", "StartTransaction", start_payload(2, 200))
            await resend_until_answered(b, "tb", "StopTransaction", stop_payload(first_b["transactionId"], 900))
            await resend_until_answered(a, "ta", "StopTransaction", stop_payload(first_a["transactionId"], 700))
            await eventually(lambda: len(records(receiver, "store_state")) == 2, what="the recovery event")
            await eventually(lambda: len(records(receiver, "transaction_stop")) == 2, what="both stops delivered")
        server.stop()

    assert_one_outage(receiver, "postgresql", redact(url))
    assert all(postgres.PASSWORD not in str(e.record) for e in receiver.events)
    assert postgres.PASSWORD not in server.log()
    ids = {first_a["transactionId"], first_b["transactionId"], second_a["transactionId"]}
    assert len(ids) == 3
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT id, meter_stop FROM transactions ORDER BY id").fetchall()
        heartbeats = connection.execute("SELECT count(*) FROM charge_points WHERE last_heartbeat IS NOT NULL").fetchone()
    assert {row[0] for row in rows} == ids and len(rows) == 3  # none lost, none twice
    assert dict(rows) == {first_a["transactionId"]: 700, first_b["transactionId"]: 900,
                          second_a["transactionId"]: None}
    assert heartbeats == (2,)  # the heartbeats answered during the outage were stored after it
    starts = sorted(r["transaction_id"] for r in records(receiver, "transaction_start"))
    stops = sorted(r["transaction_id"] for r in records(receiver, "transaction_stop"))
    assert starts == sorted(ids)
    assert stops == sorted([first_a["transactionId"], first_b["transactionId"]])


async def test_sqlite_outage_is_in_the_audit_stream_and_no_transaction_is_lost(levity):
    with ForwardReceiver() as receiver:
        server = levity(fluentd_env(receiver.port))
        database = server.env["LEVITY_DATABASE"]
        async with raw_charge_point(server.url, "CP-SQ") as cp:
            assert (await cp.call("boot", "BootNotification", BOOT))[0] == CALLRESULT
            first = await resend_until_answered(cp, "s1", "StartTransaction", start_payload(1, 100))
            holder = sqlite3.connect(database, isolation_level=None)
            holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock: commits fail
            try:
                heartbeat = await cp.call("hb", "Heartbeat", {})
                assert heartbeat[0] == CALLRESULT
                refused = await cp.call("s2", "StartTransaction", start_payload(2, 200), timeout=30)
                assert refused[0] == CALLERROR and refused[2] == "InternalError", refused
                await eventually(lambda: records(receiver, "store_state"), timeout=30, what="the outage event")
            finally:
                holder.execute("COMMIT")
                holder.close()
            second = await resend_until_answered(cp, "s2", "StartTransaction", start_payload(2, 200))
            await eventually(lambda: len(records(receiver, "store_state")) == 2, timeout=30,
                             what="the recovery event")
            await eventually(lambda: len(records(receiver, "transaction_start")) == 2, what="both starts delivered")
        server.stop()

    down, _ = assert_one_outage(receiver, "sqlite", database)
    assert "locked" in down["error"]
    with sqlite3.connect(database) as db:
        assert [r[0] for r in db.execute("SELECT id FROM transactions ORDER BY id")] == \
            [first["transactionId"], second["transactionId"]]
        assert db.execute("SELECT last_heartbeat FROM charge_points WHERE id = 'CP-SQ'").fetchone()[0]
    assert sorted(r["transaction_id"] for r in records(receiver, "transaction_start")) == \
        [first["transactionId"], second["transactionId"]]


async def test_a_write_postgresql_refuses_is_dropped_alone_and_is_no_outage(levity, database):
    psycopg = pytest.importorskip("psycopg", reason="the postgresql extra is not installed")
    with ForwardReceiver() as receiver:
        server = levity({"LEVITY_DATABASE": database, **fluentd_env(receiver.port)})
        async with raw_charge_point(server.url, "CP-RF") as cp:
            assert (await cp.call("boot", "BootNotification", BOOT))[0] == CALLRESULT
            too_big = 3_000_000_000  # valid JSON integer, out of range for the INTEGER column
            status = {"connectorId": too_big, "errorCode": "NoError", "status": "Available"}
            assert (await cp.call("st", "StatusNotification", status))[0] == CALLRESULT
            refused = await cp.call("s0", "StartTransaction", start_payload(too_big, 1), timeout=15)
            assert refused[0] == CALLERROR and refused[2] == "InternalError", refused
            started = await resend_until_answered(cp, "s1", "StartTransaction", start_payload(1, 2))
            assert (await cp.call("hb", "Heartbeat", {}))[0] == CALLRESULT
        await eventually(lambda: server.metrics()["levity_store_writes_refused"] == 2, what="both refusals counted")
        server.stop()
    with psycopg.connect(database) as connection:
        assert connection.execute("SELECT id FROM transactions").fetchall() == [(started["transactionId"],)]
        assert connection.execute("SELECT last_heartbeat FROM charge_points").fetchone()[0] is not None
    assert records(receiver, "store_state") == []  # the database was there all along
    assert [r["transaction_id"] for r in records(receiver, "transaction_start")] == [started["transactionId"]]
