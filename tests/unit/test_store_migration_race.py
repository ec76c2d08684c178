"""Two processes opening a database that lacks a column (a worker and `levity charge-points`
on a new shard file) must not both add it: the second used to fail with "duplicate column"."""

import sqlite3
import threading
import time

from levity.store import Store


def test_a_column_added_meanwhile_by_another_connection_is_not_added_again(tmp_path):
    path = str(tmp_path / "levity.db")
    Store(path).close()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("ALTER TABLE transactions DROP COLUMN abandon_reason")  # a file from before that column
    other.execute("BEGIN IMMEDIATE")  # the other process holds the write lock while it migrates
    outcome = []

    def open_store():
        try:
            Store(path).close()
            outcome.append("opened")
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            outcome.append(repr(exc))

    opener = threading.Thread(target=open_store)
    opener.start()
    time.sleep(0.5)  # premise: the opener is now waiting for the write lock (its busy timeout is 5 s)
    assert opener.is_alive(), outcome
    other.execute("ALTER TABLE transactions ADD COLUMN abandon_reason TEXT")
    other.execute("COMMIT")
    opener.join(10)
    assert outcome == ["opened"]
    other.close()
