"""A PostgreSQL group commit sends each kind of write as one statement over all its rows
(levity/store_rows.py): the rows it leaves are those of the writes one by one, as the SQLite
store leaves them, and a row the database refuses is dropped alone."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from levity.store import StorageError, Store
from levity.store_pg import PostgresStore
from levity.store_rows import Combined, one_statement

NOW = "2024-01-15T10:00:00Z"
LATER = "2024-01-15T10:05:00Z"
OUT_OF_RANGE = 3_000_000_000  # a valid JSON integer, too big for an INTEGER column


def one_batch(store) -> None:
    """Writes of several kinds in one loop turn, interleaved as chargers interleave them, with
    repeats of one row (two statuses of a connector, two boots of a charge point) and a
    transaction started and stopped in the same batch."""
    store.record_boot("CP1", {"vendor": "V1", "model": "M"}, "Accepted", True, NOW)
    store.record_status("CP1", 1, "Available", "NoError", None, None, NOW, NOW)
    first = store.start_transaction("CP1", 1, "TAG", 100, NOW, None, NOW, event_id="e1")
    store.record_status("CP2", 1, "Preparing", "NoError", "info", None, NOW, NOW)
    second = store.start_transaction("CP2", 1, "TAG2", 5, NOW, 7, NOW, event_id="e2")
    third = store.start_transaction("CP3", 1, "TAG", 0, NOW, None, NOW)
    store.stop_transaction(third, 20, LATER, "EVDisconnected", None, LATER,
                           request={"transaction_data": [{"sampled_value": [{"value": "20 \"Wh\""}]}]})
    store.add_meter_values("CP1", 1, first, [{"timestamp": NOW, "sampled_value": [{"value": "150", "unit": "Wh"}]}])
    store.stop_transaction(first, 400, LATER, "Local", "TAG", LATER, event_id="e3", request={"meter_stop": 400})
    store.record_status("CP1", 1, "Charging", "OtherError", None, "v-7", LATER, LATER)  # the later one stays
    store.record_boot("CP1", {"vendor": "V2", "model": "M"}, "Pending", False, LATER)  # registered stays 1
    store.record_heartbeat("CP1", NOW)
    store.record_heartbeat("CP1", LATER)
    store.forget_transaction(second)  # a plain statement between starts: the next start stays behind it
    store.start_transaction("CP2", 2, "TAG3", 0, LATER, None, LATER, event_id="e4")
    store.add_meter_values("CP2", 2, None, [{"timestamp": LATER, "sampled_value": [
        {"value": "1", "unit": "Wh"}, {"value": "2", "measurand": "Current.Import", "unit": "A"}]}])


def state(store) -> dict:
    return {
        "charge_points": [{k: v for k, v in row.items() if k != "last_status"} for row in store.charge_point_rows()],
        "connectors": store.connectors("CP1") + store.connectors("CP2"),
        "transactions": [{k: v for k, v in row.items() if k != "age_seconds"} for row in store.transactions()],
        "counts": [store.count(t) for t in ("charge_points", "connectors", "transactions", "meter_values")],
        "stop_requests": [store.transaction(row["transaction_id"]).stop_request for row in store.transactions()],
    }


async def committed(store) -> None:
    one_batch(store)
    await store.commit_durable()


def test_a_combined_batch_leaves_the_rows_sqlite_leaves(tmp_path, database):
    sqlite, pg = Store(str(tmp_path / "levity.db")), PostgresStore(database)
    try:
        async def batch_on_postgres():
            one_batch(pg)
            statements = pg._pending.statements()
            await pg.commit_durable()
            return statements

        statements = asyncio.run(batch_on_postgres())
        asyncio.run(committed(sqlite))
        # 14 writes plus 3 meter rows went as fewer statements, several of them combined.
        assert len(statements) < 10 and sum(isinstance(s, Combined) for s in statements) >= 3, statements
        assert pg.writes_refused == 0
        result = state(pg)
        assert result == state(sqlite)
        assert [(c["status"], c["error_code"], c["vendor_error_code"]) for c in result["connectors"]] == \
            [("Charging", "OtherError", "v-7"), ("Preparing", "NoError", None)]
        assert [(p["registered"], p["vendor"], p["registration_status"]) for p in result["charge_points"]][0] == \
            (1, "V2", "Pending")
        assert [(t["charge_point_id"], t["meter_stop"]) for t in result["transactions"]] == \
            [("CP1", 400), ("CP3", 20), ("CP2", None)]
        assert result["stop_requests"][1] == {"transaction_data": [{"sampled_value": [{"value": '20 "Wh"'}]}]}
    finally:
        sqlite.close()
        pg.close()


def test_a_refused_meter_row_is_dropped_alone_and_the_batch_commits(database):
    store = PostgresStore(database)
    try:
        async def batch():
            store.record_status("CP1", 1, "Available", "NoError", None, None, NOW, NOW)
            store.add_meter_values("CP1", 1, None, [{"timestamp": NOW, "sampled_value": [{"value": "1"}]}])
            store.add_meter_values("CP1", OUT_OF_RANGE, None, [{"timestamp": NOW, "sampled_value": [{"value": "2"}]}])
            store.add_meter_values("CP1", 2, None, [{"timestamp": NOW, "sampled_value": [{"value": "3"}]}])
            store.record_status("CP1", 2, "Available", "NoError", None, None, NOW, NOW)
            await store.commit_durable()

        asyncio.run(batch())
        assert store.writes_refused == 1
    finally:
        store.close()
    with psycopg.connect(database) as db:
        assert db.execute("SELECT connector_id, value FROM meter_values ORDER BY id").fetchall() == [(1, "1"), (2, "3")]
        assert db.execute("SELECT count(*) FROM connectors").fetchone()[0] == 2


def test_a_refused_start_among_combined_starts_fails_only_its_own_commit(database):
    store = PostgresStore(database)
    try:
        async def starts():
            good = store.start_transaction("CP1", 1, "TAG", 0, NOW, None, NOW)
            bad = store.start_transaction("CP2", OUT_OF_RANGE, "TAG", 0, NOW, None, NOW)
            other = store.start_transaction("CP3", 1, "TAG", 0, NOW, None, NOW)
            with pytest.raises(StorageError) as refused:
                await store.commit_durable(bad)  # the batch's commit, all three starts in it
            assert refused.value.refused
            await store.commit_durable(good)  # nothing left to commit: the others went with it
            return good, other

        good, other = asyncio.run(starts())
        assert store.writes_refused == 1
        assert [t["transaction_id"] for t in store.transactions()] == [good, other]
    finally:
        store.close()


@pytest.mark.parametrize("value", ["text with 'quotes', \"double\", {braces}, back\\slash and ünïcode", ""])
def test_values_that_json_and_array_syntax_escape_arrive_unchanged(database, value):
    store = PostgresStore(database)
    try:
        async def batch():
            for connector in (1, 2):
                store.record_status("CP1", connector, value, "NoError", value, None, NOW, NOW)
            await store.commit_durable()

        asyncio.run(batch())
        assert [(c["status"], c["info"]) for c in store.connectors("CP1")] == [(value, value)] * 2
    finally:
        store.close()


def other_tables_batch(store) -> None:
    """A batch whose kinds of write each change a table of their own: sent as one statement."""
    store.record_status("CP1", 1, "Preparing", "NoError", None, None, NOW, NOW)
    store.start_transaction("CP1", 1, "TAG", 10, NOW, None, NOW, event_id="e1")
    store.record_status("CP1", 1, "Charging", "NoError", None, None, LATER, LATER)
    store.start_transaction("CP2", 1, "TAG", 20, NOW, None, NOW, event_id="e2")
    store.add_meter_values("CP1", 1, 1, [{"timestamp": NOW, "sampled_value": [{"value": "15"}, {"value": "16"}]}])
    store.record_heartbeat("CP1", LATER)


def test_a_batch_of_one_write_kind_per_table_is_one_statement_with_the_same_rows(tmp_path, database):
    sqlite, pg = Store(str(tmp_path / "levity.db")), PostgresStore(database)
    try:
        sqlite.register(["CP1"], NOW)
        pg.register(["CP1"], NOW)
        sqlite.commit()
        pg.commit()

        async def batch(store):
            other_tables_batch(store)
            statements = store._pending.statements() if store is pg else None
            await store.commit_durable()
            return statements

        statements = asyncio.run(batch(pg))
        asyncio.run(batch(sqlite))
        merged = one_statement(statements)
        assert merged is not None and merged[0].startswith("WITH ") and pg.writes_refused == 0
        assert state(pg) == state(sqlite)
        assert pg.charge_point("CP1")["last_heartbeat"] == LATER
        assert [c["status"] for c in pg.connectors("CP1")] == ["Charging"]
        assert pg.count("meter_values") == 2 and pg.count("transactions") == 2
    finally:
        sqlite.close()
        pg.close()
