"""A stop is written only over the state it was decided on. Another process (`levity transactions
close`, an operator API request on another instance) may close the transaction as abandoned
after the stop read it, or, on PostgreSQL, at any time before a stop answered from memory. The
stop is then not written over the close: its charger is answered with the retry CALLERROR, and
the resend is decided on the new state (stop_after_abandoned), as levity/store.py's
stop_transaction says."""

from __future__ import annotations

import subprocess
import sys

import pytest

from levity.store import StorageError, Store
from levity.store_pg import PostgresStore
from tests.integration.test_ocpp201 import audit_records, wait_for_audit
from tests.support.ocpp_client import BOOT, raw_charge_point

NOW = "2024-01-15T10:00:00Z"
LATER = "2024-01-15T11:00:00Z"


def close_from_the_command_line(database: str, transaction_id: int) -> None:
    closed = subprocess.run([sys.executable, "-m", "levity.cli", "transactions", "close", str(transaction_id),
                             "--reason", "stuck"], env={"PATH": "/usr/bin:/bin", "LEVITY_DATABASE": database},
                            capture_output=True, text=True, timeout=60)
    assert closed.returncode == 0, closed.stderr


async def stop_closed_meanwhile(store, database: str) -> dict:
    """A stop decided on an open transaction, a close from another process, the stop's commit,
    then the resend: what each step left."""
    claim = getattr(store, "claim_connection", None)
    if claim is not None:
        claim("CP1", "this-instance")  # as levity/cluster.py does when the charger connects
    started = store.start_transaction("CP1", 1, "TAG", 100, NOW, None, NOW, event_id="e1")
    await store.commit_durable(started)
    seen = await store.load_transaction(started)
    close_from_the_command_line(database, started)
    store.stop_transaction(started, 700, LATER, "Local", None, LATER, event_id="e2",
                           was_abandoned=seen.abandoned_at is not None)
    with pytest.raises(StorageError) as failed:
        await store.commit_durable(started)
    left = store.transaction(started)
    resent = await store.load_transaction(started)  # the charger's resend reads the row
    store.stop_transaction(started, 700, LATER, "Local", None, LATER, event_id="e3",
                           was_abandoned=resent.abandoned_at is not None)
    await store.commit_durable(started)
    final = store.transaction(started)
    return {"seen_open": seen.open, "refused": failed.value.refused, "left": (left.stopped, left.abandon_reason),
            "resend_sees": (resent.stopped, resent.abandon_reason),
            "final": (final.stopped, final.abandon_reason, final.stop_event_id, final.energy_delivered)}


async def test_a_stop_is_not_written_over_a_close_from_another_process(tmp_path, postgres_server):
    from tests.support.postgres import levity_command

    url = postgres_server.new_database()
    assert levity_command("db", "upgrade", database=url).returncode == 0
    path = str(tmp_path / "levity.db")
    sqlite, pg = Store(path), PostgresStore(url)
    try:
        results = await stop_closed_meanwhile(pg, url)
        assert results == await stop_closed_meanwhile(sqlite, path)
        assert results == {"seen_open": True, "refused": True, "left": (False, "stuck"),
                           "resend_sees": (False, "stuck"), "final": (True, "stuck", "e3", 600)}
    finally:
        await pg.drain()
        pg.close()
        sqlite.close()


async def test_on_postgresql_a_stop_from_memory_after_a_close_elsewhere_is_flagged_on_its_resend(instances):
    """On PostgreSQL a stop of a transaction started on this instance is decided from memory
    (no read): the close by the command line is found by the stop's write, and the resend
    reads the row."""
    [server] = instances(1)
    async with raw_charge_point(server.url, "CP-CLOSED") as cp:
        boot = await cp.call("b", "BootNotification", {"chargePointVendor": BOOT.charge_point_vendor,
                                                       "chargePointModel": BOOT.charge_point_model})
        assert boot[0] == 3
        start = await cp.call("s", "StartTransaction", {"connectorId": 1, "idTag": "U1", "meterStart": 100,
                                                        "timestamp": NOW})
        transaction_id = start[2]["transactionId"]
        closed = server.levity_command("transactions", "close", str(transaction_id), "--reason", "stuck")
        assert closed.returncode == 0, closed.stderr
        stop = {"meterStop": 700, "timestamp": LATER, "transactionId": transaction_id}
        first = await cp.call("t1", "StopTransaction", stop)
        assert first[0] == 4 and first[2] == "InternalError", first  # not stored: the charger resends
        assert (await cp.call("t2", "StopTransaction", stop))[0] == 3
    [late] = await wait_for_audit(server, lambda r: r.get("kind") == "stop_after_abandoned")
    stops = [r for r in audit_records(server) if r["event_type"] == "transaction_stop"]
    assert [(s["transaction_id"], s["energy_delivered"]) for s in stops] == [(transaction_id, 600)]
    assert late["transaction_id"] == transaction_id
    assert "closed or stopped by another process" in server.log()
