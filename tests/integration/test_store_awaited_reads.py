"""The reads a transaction call decides on are awaited (Store.start_lookup, load_transaction,
load_station_transaction, load_open_on_evse): both engines give the same answers, and on
PostgreSQL they run on reader threads, never on the event loop's connection (levity/store_pg.py)."""

from __future__ import annotations

import time

from levity.store import Store
from levity.store_pg import PostgresStore
from tests.support.postgres import levity_command

NOW = "2024-01-15T10:00:00Z"
LATER = "2024-01-15T11:00:00Z"


async def decide(store) -> dict:
    """A StartTransaction, its repeat, a second start on the same connector, a stop, and a 2.0.1
    start as the handlers make them: what each awaited read answers."""
    claim = getattr(store, "claim_connection", None)
    if claim is not None:
        claim("CP1", "test-instance")  # as levity/cluster.py does when the charger connects
    first, still_open = await store.start_lookup("CP1", 1, "TAG", 100, NOW)
    started = store.start_transaction("CP1", 1, "TAG", 100, NOW, None, NOW, event_id="e1")
    await store.commit_durable(started)
    repeat, repeat_open = await store.start_lookup("CP1", 1, "TAG", 100, NOW)
    other, other_open = await store.start_lookup("CP1", 1, "TAG", 200, LATER)
    loaded = await store.load_transaction(started)
    store.stop_transaction(started, 700, LATER, "Local", None, LATER, event_id="e2")
    await store.commit_durable(started)
    stopped = await store.load_transaction(started)
    unseen = await store.load_station_transaction("CP1", "st-1", may_start=True)
    station = store.start_station_transaction("CP1", "st-1", 2, 5, "TAG", 1500, NOW, NOW, event_id="e3")
    await store.commit_durable(station)
    return {
        "first": (first, still_open), "repeat": (repeat.id == started, repeat_open),
        "other": (other, [t.id == started for t in other_open]),
        "loaded": (loaded.id == started, loaded.open, loaded.meter_start),
        "stopped": (stopped.stopped, stopped.energy_delivered), "unknown": await store.load_transaction(10**6),
        "unseen": unseen, "station": (await store.load_station_transaction("CP1", "st-1")).transaction.id == station,
        "station_meter_start": (await store.load_station_transaction("CP1", "st-1")).meter_start,
        "open_on_evse": [t.id == station for t in await store.load_open_on_evse("CP1", 5)],
        "energy_registers": store.energy_registers("CP1", started),
    }


async def test_awaited_reads_answer_as_on_sqlite(tmp_path, postgres_server):
    url = postgres_server.new_database()
    assert levity_command("db", "upgrade", database=url).returncode == 0
    sqlite, pg = Store(str(tmp_path / "levity.db")), PostgresStore(url)
    try:
        results = await decide(pg)
        assert results == await decide(sqlite)
        assert results["first"] == (None, []) and results["repeat"] == (True, [])
        assert results["other"] == (None, [True])  # the open one a new start on the connector abandons
        assert results["loaded"] == (True, True, 100) and results["stopped"] == (True, 600)
        assert results["unknown"] is None and results["unseen"] is None
        assert results["station"] and results["station_meter_start"] == 1500 and results["open_on_evse"] == [True]
    finally:
        await pg.drain()
        sqlite.close()
        pg.close()


async def test_a_transaction_call_never_reads_on_the_event_loop_connection(postgres_server):
    """With the event loop's own connection gone (and reconnecting refused), a start, its repeat,
    a stop and a 2.0.1 start still decide, get their ids and commit: every read they wait for ran
    on a reader thread, and the start's id came with its lookup."""
    url = postgres_server.new_database()
    assert levity_command("db", "upgrade", database=url).returncode == 0
    store = PostgresStore(url)
    try:
        store.claim_connection("CP1", "test-instance")
        store.connection().close()
        store._down_until = time.monotonic() + 3600  # connection() refuses: a read on the loop would fail
        ids = set()
        for timestamp in (NOW, LATER):
            first, _ = await store.start_lookup("CP1", 1, "TAG", 100, timestamp)
            assert first is None
            started = store.start_transaction("CP1", 1, "TAG", 100, timestamp, None, NOW, event_id=f"s-{timestamp}")
            await store.commit_durable(started)
            repeat, _ = await store.start_lookup("CP1", 1, "TAG", 100, timestamp)
            assert repeat.id == started  # and the id fetched with the repeat waits for the next start
            known = await store.load_transaction(started)
            assert known.open and store.energy_registers("CP1", started) == []  # from memory
            store.stop_transaction(started, 400, timestamp, "Local", None, NOW, event_id=f"t-{timestamp}")
            await store.commit_durable(started)
            assert (await store.load_transaction(started)).energy_delivered == 300
            ids.add(started)
        assert await store.load_station_transaction("CP1", "st-9", may_start=True) is None
        station = store.start_station_transaction("CP1", "st-9", 1, 2, "TAG", 0, NOW, NOW)
        await store.commit_durable(station)
        assert [t.id for t in await store.load_open_on_evse("CP1", 2)] == [station]
        ids.add(station)
        assert len(ids) == 3
    finally:
        await store.drain()
        store._down_until = 0.0
        store.close()
