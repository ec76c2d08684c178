"""The store's commits: only those that carry a transaction row pay for synchronous=FULL (the
WAL fsynced before the charger gets the id), and transaction ids are never handed out twice."""

import asyncio

import pytest

from levity.store import StorageError, Store


async def committed(store: Store, count: int) -> None:
    while store.commits < count:
        await asyncio.sleep(0.01)


async def test_only_commits_with_transaction_rows_are_synchronous_full(tmp_path):
    store = Store(str(tmp_path / "levity.db"))
    store.record_heartbeat("CP", "t0")
    await committed(store, 1)  # the writer connection exists from the first commit
    statements: list[str] = []
    store._writer.set_trace_callback(statements.append)

    store.record_heartbeat("CP", "t1")
    store.add_meter_values("CP", 1, None, [{"timestamp": "t1", "sampled_value": [{"value": "1"}]}])
    await committed(store, 2)
    assert not any("synchronous" in s for s in statements), statements  # NORMAL, no fsync of its own

    transaction_id = store.start_transaction("CP", 1, "TAG", 0, "t2", None, "now")
    await store.commit_durable(transaction_id)
    full = statements.index("PRAGMA synchronous=FULL")
    assert statements[full + 1] == "BEGIN IMMEDIATE"
    assert any(s.startswith("INSERT INTO transactions") for s in statements[full:])

    store.record_heartbeat("CP", "t3")
    await committed(store, 4)
    assert "PRAGMA synchronous=NORMAL" in statements[full:], statements[full:]
    await store.drain()
    store.close()


async def test_ids_of_refused_starts_are_not_issued_again(tmp_path):
    path = str(tmp_path / "levity.db")
    store = Store(path)
    first = store.start_transaction("CP", 1, "TAG", 0, "t", None, "now")
    await store.commit_durable(first)
    store._db.execute("CREATE TRIGGER refuse BEFORE INSERT ON transactions WHEN NEW.id_tag = 'NO' "
                      "BEGIN SELECT RAISE(ABORT, 'refused'); END")
    refused = store.start_transaction("CP", 1, "NO", 0, "t", None, "now")
    with pytest.raises(StorageError):
        await store.commit_durable(refused)
    after = store.start_transaction("CP", 1, "TAG", 0, "t", None, "now")
    await store.commit_durable(after)
    assert first < refused < after
    await store.drain()
    store.close()
    again = Store(path)
    assert again.start_transaction("CP", 1, "TAG", 0, "t", None, "now") > after
    again.close()
