"""The store's commits: only those that carry a transaction row wait for the WAL's fsync (before
the charger gets the id), a failed fsync fails them, and transaction ids are never handed out
twice. The fsync is watched (and made to fail) at os.fdatasync, the store's seam to the disk."""

import asyncio
import errno
import logging
import os
import threading

import pytest

import levity.store as store_module
from levity.store import StorageError, Store


async def committed(store: Store, count: int) -> None:
    while store.commits < count:
        await asyncio.sleep(0.01)


@pytest.fixture
def fsyncs(monkeypatch):
    """The files os.fdatasync is called on, in order (the call still happens)."""
    calls: list[str] = []
    real = os.fdatasync

    def watched(fd: int) -> None:
        calls.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(store_module.os, "fdatasync", watched)
    return calls


async def test_only_commits_with_transaction_rows_wait_for_the_wal_fsync(tmp_path, fsyncs):
    path = str(tmp_path / "levity.db")
    store = Store(path)
    store.record_heartbeat("CP", "t0")
    store.add_meter_values("CP", 1, None, [{"timestamp": "t1", "sampled_value": [{"value": "1"}]}])
    await committed(store, 1)
    assert fsyncs == []  # committed into the WAL, no fsync of its own

    transaction_id = store.start_transaction("CP", 1, "TAG", 0, "t2", None, "now")
    await store.commit_durable(transaction_id)
    assert fsyncs == [path + "-wal"]  # before commit_durable returned
    other = Store(path)  # another process's view: the row is committed
    assert other.transaction(transaction_id) is not None
    other.close()

    store.record_heartbeat("CP", "t3")
    await committed(store, 3)
    assert fsyncs == [path + "-wal"]
    await store.drain()
    store.close()


async def test_a_database_reached_through_a_symbolic_link_fsyncs_its_real_wal(tmp_path, fsyncs):
    (tmp_path / "data").mkdir()
    (tmp_path / "levity.db").symlink_to(tmp_path / "data" / "levity.db")
    store = Store(str(tmp_path / "levity.db"))
    transaction_id = store.start_transaction("CP", 1, "TAG", 0, "t1", None, "now")
    await store.commit_durable(transaction_id)
    assert fsyncs == [str(tmp_path / "data" / "levity.db-wal")]  # where SQLite keeps it
    await store.drain()
    store.close()


async def test_a_failed_wal_fsync_fails_the_durable_caller_until_it_works_again(tmp_path, monkeypatch, caplog):
    store = Store(str(tmp_path / "levity.db"))
    store.record_heartbeat("CP", "t0")
    await committed(store, 1)

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(store_module.os, "fdatasync", failing)
    caplog.set_level(logging.ERROR, logger="levity.store")
    for _ in range(2):
        transaction_id = store.start_transaction("CP", 1, "TAG", 0, "t1", None, "now")
        with pytest.raises(StorageError) as failure:
            await store.commit_durable(transaction_id)
        # Refused: the caller undoes what its call changed, so the charger's resend decides again.
        assert failure.value.refused
    assert store.commit_failures == 2
    assert [r.getMessage() for r in caplog.records if "fsync of the WAL failed" in r.getMessage()] != []
    assert len([r for r in caplog.records if r.levelno >= logging.ERROR]) == 1  # one line per episode

    monkeypatch.undo()
    transaction_id = store.start_transaction("CP", 1, "TAG", 0, "t2", None, "now")
    await store.commit_durable(transaction_id)
    assert store.last_error is None
    await store.drain()
    store.close()


async def test_a_write_lock_held_elsewhere_moves_the_commit_to_the_writer_thread(tmp_path, fsyncs):
    path = str(tmp_path / "levity.db")
    store = Store(path)
    store.record_heartbeat("CP", "t0")
    await committed(store, 1)
    holder = store_module._connect(path, 0)
    holder.execute("BEGIN IMMEDIATE")  # what a `levity charge-points` command holds while it writes
    statements: list[str] = []
    store._writer.set_trace_callback(statements.append)
    transaction_id = store.start_transaction("CP", 1, "TAG", 0, "t1", None, "now")
    durable = asyncio.create_task(store.commit_durable(transaction_id))
    while not any(s.startswith("BEGIN") for s in statements):  # the writer thread waits for the lock
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    assert not durable.done()
    released = len(fsyncs)
    holder.execute("COMMIT")
    await durable
    assert any(s.startswith("INSERT INTO transactions") for s in statements)  # committed by the writer
    # Durable before commit_durable returned: committed there with synchronous=FULL, or (when the
    # row went with an earlier, non-durable group) the WAL fsynced behind it afterwards.
    assert "PRAGMA synchronous=FULL" in statements or fsyncs[released:] == [path + "-wal"], (statements, fsyncs)
    holder.close()
    await store.drain()
    store.close()


async def test_the_wal_is_checkpointed_off_the_loop_after_enough_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(store_module, "CHECKPOINT_ROWS", 10)
    ran: list[tuple[str, object]] = []
    real = Store._checkpoint

    def watched(self):
        ran.append((threading.current_thread().name, real(self)))

    monkeypatch.setattr(Store, "_checkpoint", watched)
    store = Store(str(tmp_path / "levity.db"))
    for n in range(12):
        store.add_meter_values("CP", 1, None, [{"timestamp": f"t{n}", "sampled_value": [{"value": str(n)}]}])
        await committed(store, n + 1)
        if n < 8:
            assert ran == []  # fewer rows than CHECKPOINT_ROWS: the WAL just grows
    while not ran:
        await asyncio.sleep(0.01)
    [(thread, error)] = ran
    assert thread.startswith("levity-db-checkpoint") and error is None
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
