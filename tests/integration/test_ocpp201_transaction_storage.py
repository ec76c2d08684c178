"""OCPP 2.0.1 TransactionEvent Started and Ended stored as the 1.6 StartTransaction and
StopTransaction are: under a real `levity serve`, a start or stop the database cannot commit is
answered with a CALLERROR InternalError (the station resends it) and leaves nothing a resend
would take for a repeat; a repeated Ended, on one connection or after a reconnect, is billed once;
an Ended after an operator closed the transaction counts and is flagged.

The full-disk test mounts a small tmpfs, which needs root; elsewhere it skips saying so."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3

from levity.audit.events import conformance_errors
from tests.integration.test_ocpp201 import audit_records, wait_for_audit
from tests.integration.test_storage_failures import eventually, fill, small_disk
from tests.support.ocpp201_client import raw_charging_station

CALLRESULT, CALLERROR = 3, 4
BOOT = {"chargingStation": {"vendorName": "V", "model": "M"}, "reason": "PowerUp"}


def transaction_event(event_type: str, station_transaction_id: str, seq_no: int, register_wh: int,
                      evse_id: int = 1) -> dict:
    """A TransactionEvent payload (camelCase, as on the wire) with one energy register reading."""
    payload = {"eventType": event_type, "timestamp": f"2024-01-15T1{seq_no}:00:00Z", "seqNo": seq_no,
               "triggerReason": "Authorized" if event_type == "Started" else "EVDeparted",
               "transactionInfo": {"transactionId": station_transaction_id},
               "meterValue": [{"timestamp": f"2024-01-15T1{seq_no}:00:00Z", "sampledValue": [
                   {"value": register_wh, "measurand": "Energy.Active.Import.Register"}]}]}
    if event_type == "Started":
        payload["evse"] = {"id": evse_id, "connectorId": 1}
        payload["idToken"] = {"idToken": "USER-201", "type": "ISO14443"}
    return payload


def of_session(server, event_type: str, station_transaction_id: str) -> list[dict]:
    return [r for r in audit_records(server)
            if r["event_type"] == event_type and r.get("station_transaction_id") == station_transaction_id]


async def test_started_and_ended_on_a_full_database_disk_answer_internal_error_then_store_once(levity, tmp_path):
    with small_disk(tmp_path / "disk", "2m") as disk:
        database = disk / "levity.db"
        server = levity({"LEVITY_DATABASE": str(database)})  # the audit file stays on the work disk
        started, ended = transaction_event("Started", "full-1", 0, 1000), transaction_event("Ended", "full-1", 1, 5000)
        async with raw_charging_station(server.url, "CS-FULL") as cs:
            assert (await cs.call("b", "BootNotification", BOOT))[0] == CALLRESULT
            filler = fill(disk)
            answer = await cs.call("start-1", "TransactionEvent", started)
            assert answer[0] == CALLERROR and answer[2] == "InternalError", answer
            filler.unlink()
            answer = await cs.call("start-2", "TransactionEvent", started)  # the station's retry
            assert answer[0] == CALLRESULT, answer

            filler = fill(disk)
            answer = await cs.call("end-1", "TransactionEvent", ended)
            assert answer[0] == CALLERROR and answer[2] == "InternalError", answer
            filler.unlink()
            answer = await cs.call("end-2", "TransactionEvent", ended)
            assert answer[0] == CALLRESULT, answer
        [stop] = await wait_for_audit(server, lambda r: r["event_type"] == "transaction_stop")
        [start] = of_session(server, "transaction_start", "full-1")
        assert stop["transaction_id"] == start["transaction_id"] and stop["energy_delivered"] == 4000
        assert "unknown_transaction" not in stop
        # The resends were first ones, not repeats.
        assert [r for r in audit_records(server) if r["event_type"] == "anomaly"] == []
        errors = [r for r in audit_records(server) if r["event_type"] == "call_error"]
        assert [(e["unique_id"], e["error_code"], e["ocpp_version"]) for e in errors] == [
            ("start-1", "InternalError", "2.0.1"), ("end-1", "InternalError", "2.0.1")]
        assert server.metrics()["levity_calls_not_stored"] == 2
        with sqlite3.connect(database) as db:
            rows = db.execute("SELECT id, meter_stop, stopped_at IS NOT NULL FROM transactions").fetchall()
        assert rows == [(start["transaction_id"], 5000, 1)]


def hold_write_lock(database: str):
    """Another process holding the database's write lock: Levity's commits wait for it, so a
    handler that answers before its commit completes reads stale data meanwhile. Returns the
    function that releases it (once; calling it again does nothing)."""
    holder = sqlite3.connect(database, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")

    held = [True]

    def release() -> None:
        if held:
            held.clear()
            holder.execute("COMMIT")
            holder.close()
    return release


async def receive(cs, count: int) -> list:
    return [json.loads(await asyncio.wait_for(cs.ws.recv(), 10)) for _ in range(count)]


def waiting_behind_a_commit(server, answers: asyncio.Task) -> bool:
    """Either the calls were answered (without waiting for their commit) or one of them is
    queued behind a call that waits for its commit."""
    return answers.done() or server.metrics()["levity_queued_frames"] >= 1


async def test_a_repeated_ended_is_billed_once_on_one_connection_and_across_a_reconnect(levity):
    server = levity()
    database = server.env["LEVITY_DATABASE"]
    async with raw_charging_station(server.url, "CS-TWICE") as cs:
        assert (await cs.call("b", "BootNotification", BOOT))[0] == CALLRESULT
        for evse_id, name in enumerate(("same-connection", "reconnect"), start=1):  # one per EVSE: none abandoned
            assert (await cs.call(f"start-{name}", "TransactionEvent",
                                  transaction_event("Started", name, 0, 100, evse_id)))[0] == CALLRESULT
        # Back to back: the second frame is on the wire before the first is answered.
        ended = transaction_event("Ended", "same-connection", 1, 900)
        release = hold_write_lock(database)
        try:
            await cs.ws.send(json.dumps([2, "end-a", "TransactionEvent", ended]))
            await cs.ws.send(json.dumps([2, "end-b", "TransactionEvent", ended]))
            answers = asyncio.create_task(receive(cs, 2))
            await eventually(lambda: waiting_behind_a_commit(server, answers), what="the Ended calls to be handled")
        finally:
            release()
        assert [(a[0], a[1]) for a in await answers] == [(CALLRESULT, "end-a"), (CALLRESULT, "end-b")]
        # An Ended not yet answered when the station gives up on its connection, reconnects
        # (Levity closes the older one) and resends it.
        ended = transaction_event("Ended", "reconnect", 1, 700)
        release = hold_write_lock(database)
        try:
            await cs.ws.send(json.dumps([2, "end-c", "TransactionEvent", ended]))
            async with raw_charging_station(server.url, "CS-TWICE") as again:
                await again.ws.send(json.dumps([2, "end-d", "TransactionEvent", ended]))
                await again.ws.send(json.dumps([2, "h", "Heartbeat", {}]))
                answers = asyncio.create_task(receive(again, 2))
                await eventually(lambda: waiting_behind_a_commit(server, answers),
                                 what="the resent Ended to be handled")
                release()
                assert [(a[0], a[1]) for a in await answers] == [(CALLRESULT, "end-d"), (CALLRESULT, "h")]
        finally:
            release()
    await wait_for_audit(server, lambda r: r["event_type"] == "anomaly", count=2)
    records = audit_records(server)
    for name, energy in (("same-connection", 800), ("reconnect", 600)):
        [start] = of_session(server, "transaction_start", name)
        [stop] = of_session(server, "transaction_stop", name)
        assert stop["transaction_id"] == start["transaction_id"] and stop["energy_delivered"] == energy
        [anomaly] = [r for r in records
                     if r["event_type"] == "anomaly" and r["transaction_id"] == start["transaction_id"]]
        assert (anomaly["kind"], anomaly["first_event_id"]) == ("repeated_stop", stop["event_id"])
    assert server.metrics()["levity_calls_not_stored"] == 0


async def test_an_ended_after_an_operator_closed_the_transaction_counts_and_is_flagged(levity):
    server = levity()
    async with raw_charging_station(server.url, "CS-CLOSED") as cs:
        assert (await cs.call("b", "BootNotification", BOOT))[0] == CALLRESULT
        assert (await cs.call("s", "TransactionEvent", transaction_event("Started", "late", 0, 100)))[0] == CALLRESULT
        [start] = of_session(server, "transaction_start", "late")
        closed = server.levity_command("transactions", "close", str(start["transaction_id"]), "--reason", "stuck")
        assert closed.returncode == 0, closed.stderr
        [abandoned] = await wait_for_audit(server, lambda r: r.get("kind") == "abandoned_transaction")
        # The station's real Ended arrives afterwards: its figures count, and it is flagged.
        assert (await cs.call("e", "TransactionEvent", transaction_event("Ended", "late", 1, 400)))[0] == CALLRESULT
    [late] = await wait_for_audit(server, lambda r: r.get("kind") == "stop_after_abandoned")
    [stop] = of_session(server, "transaction_stop", "late")
    assert stop["transaction_id"] == start["transaction_id"] and stop["energy_delivered"] == 300
    assert (late["transaction_id"], late["first_event_id"], late["ocpp_version"]) == (
        start["transaction_id"], abandoned["event_id"], "2.0.1")
    assert conformance_errors(late) == []
