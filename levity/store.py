"""Levity's state in an embedded SQLite database: charge points, connectors, transactions,
meter values.

A handler's write is queued in memory; everything queued while the loop handles one batch of
ready connections is written by one commit (group commit: under load one commit serves
hundreds of calls). The commit itself runs on the event loop's connection and only ever
writes into the WAL (synchronous=NORMAL, no fsync): tens of microseconds, and the connection
that reads the state next keeps its page cache (SQLite drops a connection's cache whenever
another connection changed the file, and a read then costs about four times as much). What
may wait never runs on the loop: the fsync (on the writer thread, below), another process
holding the database's write lock (a `levity charge-points` command, another worker: the
loop's connection has busy timeout 0, and the group is committed on the writer thread, which
may wait), and checkpoints (on a thread of their own, as often as SQLite's default would). So a
slow disk or a held lock delays commits, never the chargers' answers.

Durability. A crash of Levity loses nothing committed (WAL); a power loss can lose the last
commits, except a commit that carries a transaction start or stop: its transaction id goes to
the charger and into billing and must never be issued twice, not even after a power loss. A
handler that answers with such an id awaits commit_durable(): it returns once the WAL is
fsynced behind the commit (the writer thread calls fdatasync on the WAL file: what
synchronous=FULL does inside COMMIT, without holding the loop). When that fails the caller
gets StorageError and the charger is told to retry (levity.handling.store_then_audit).

Failures. A statement the database refuses (a constraint, a trigger) is dropped alone: it is
counted and logged, its durable caller gets StorageError, the rest of the group commits. A
failure of the database itself (disk full, I/O error, locked for too long) rolls the whole
group back: durable callers get StorageError, the other writes are kept in order and tried
again with the next commit (bounded by MAX_PENDING_WRITES; beyond it the oldest are dropped
and counted). One log line when writes start failing and one when they work again.

A transaction id is chosen by the store (the last one + 1, or with several workers the next
one of this worker's residue: worker k of N issues only ids congruent to k+1 modulo N) and
never reused: the table is AUTOINCREMENT and the store is the only writer of its ids. Without
a running event loop (the command line tools) writes run on the caller's thread and commit()
commits them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from levity.handoff import hand_off
from levity.owned_transactions import Known, OwnedTransactions
from levity.store_outage import OutageTracker

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS charge_points (
    id TEXT PRIMARY KEY,
    registered INTEGER NOT NULL DEFAULT 0,
    vendor TEXT, model TEXT, serial_number TEXT, firmware_version TEXT,
    registration_status TEXT,
    firmware_status TEXT, diagnostics_status TEXT,
    first_seen TEXT, last_boot TEXT, last_heartbeat TEXT
);
CREATE TABLE IF NOT EXISTS connectors (
    charge_point_id TEXT NOT NULL,
    connector_id INTEGER NOT NULL,
    status TEXT NOT NULL, error_code TEXT NOT NULL,
    info TEXT, vendor_error_code TEXT, status_timestamp TEXT, updated_at TEXT NOT NULL,
    PRIMARY KEY (charge_point_id, connector_id)
);
CREATE TABLE IF NOT EXISTS transactions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    charge_point_id TEXT NOT NULL,
    connector_id INTEGER NOT NULL,
    id_tag TEXT NOT NULL,
    meter_start INTEGER NOT NULL,
    start_timestamp TEXT NOT NULL,
    reservation_id INTEGER,
    meter_stop INTEGER, stop_timestamp TEXT, stop_reason TEXT, stop_id_tag TEXT,
    created_at TEXT NOT NULL, stopped_at TEXT
);
CREATE INDEX IF NOT EXISTS transactions_open ON transactions (charge_point_id, connector_id) WHERE stopped_at IS NULL;
CREATE TABLE IF NOT EXISTS meter_values (
    id INTEGER PRIMARY KEY,
    charge_point_id TEXT NOT NULL,
    connector_id INTEGER NOT NULL,
    transaction_id INTEGER,
    timestamp TEXT NOT NULL,
    measurand TEXT NOT NULL, value TEXT NOT NULL,
    unit TEXT, phase TEXT, context TEXT, location TEXT, format TEXT
);
CREATE INDEX IF NOT EXISTS meter_values_tx ON meter_values (transaction_id);
CREATE TABLE IF NOT EXISTS api_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
"""


ENERGY_REGISTER = "Energy.Active.Import.Register"  # the OCPP 1.6 default measurand
INSERT_METER_VALUE = (
    "INSERT INTO meter_values (charge_point_id, connector_id, transaction_id, timestamp, measurand, value, unit, "
    "phase, context, location, format) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


# Columns that keep "one session, one start and one stop" across restarts (levity/billing.py):
# the event ids billing deduplicates by, the first stop as the charger sent it, and how a
# transaction closed without a stop (abandoned). Added to existing databases on open.
TRANSACTION_COLUMNS = {
    "start_event_id": "TEXT",
    "stop_event_id": "TEXT",
    "stop_request": "TEXT",  # JSON: the first StopTransaction's fields as sent (reason null when absent)
    "abandoned_at": "TEXT",
    "abandon_reason": "TEXT",
    "abandon_event_id": "TEXT",
    "abandon_event_sent": "INTEGER NOT NULL DEFAULT 1",  # 0: closed by the CLI, its anomaly not yet sent
    # OCPP 2.0.1 (levity/ocpp201/): the station's own transaction id (a string) beside Levity's
    # integer one, the EVSE, and whether the start had a meter reading (without one meter_start
    # holds 0 and meter_start_known 0).
    "ocpp_version": "TEXT",
    "station_transaction_id": "TEXT",
    "evse_id": "INTEGER",
    "meter_start_known": "INTEGER NOT NULL DEFAULT 1",
}
TRANSACTION_INDEXES = """
CREATE INDEX IF NOT EXISTS transactions_start ON transactions (charge_point_id, connector_id, start_timestamp);
CREATE INDEX IF NOT EXISTS transactions_unclosed ON transactions (charge_point_id, connector_id)
    WHERE stopped_at IS NULL AND abandoned_at IS NULL;
CREATE INDEX IF NOT EXISTS transactions_close_pending ON transactions (id) WHERE abandon_event_sent = 0;
CREATE INDEX IF NOT EXISTS transactions_station ON transactions (charge_point_id, station_transaction_id)
    WHERE station_transaction_id IS NOT NULL;
"""
TRANSACTION_SELECT = (
    "SELECT id, charge_point_id, connector_id, id_tag, meter_start, meter_stop, stopped_at IS NOT NULL, "
    "start_timestamp, stop_timestamp, created_at, stopped_at, start_event_id, stop_event_id, stop_request, "
    "abandoned_at, abandon_reason, abandon_event_id, COALESCE(ocpp_version, '1.6'), meter_start_known, "
    "station_transaction_id, evse_id FROM transactions")


@dataclass(frozen=True)
class Transaction:
    id: int
    charge_point_id: str
    connector_id: int
    id_tag: str
    meter_start: int | None
    meter_stop: int | None
    stopped: bool
    start_timestamp: str | None = None
    stop_timestamp: str | None = None
    created_at: str | None = None
    stopped_at: str | None = None
    start_event_id: str | None = None
    stop_event_id: str | None = None
    stop_request: dict | None = None
    abandoned_at: str | None = None
    abandon_reason: str | None = None
    abandon_event_id: str | None = None
    ocpp_version: str = "1.6"  # the version the transaction was started in (its anomalies say it)
    meter_start_known: bool = True  # False: a 2.0.1 start without a reading (meter_start is None)
    station_transaction_id: str | None = None  # 2.0.1: the station's own id
    evse_id: int | None = None  # 2.0.1

    @classmethod
    def from_row(cls, row) -> "Transaction":
        values = list(row)
        values[6] = bool(values[6])
        values[13] = json.loads(values[13]) if values[13] else None
        values[18] = bool(values[18])
        if not values[18]:  # the column holds 0: no reading was sent, there is no figure
            values[4] = None
        return cls(*values)

    @property
    def open(self) -> bool:
        return not self.stopped and self.abandoned_at is None

    @property
    def energy_delivered(self) -> int | None:
        """None while open, and when either reading is unknown (a 2.0.1 start or stop without one)."""
        if self.meter_stop is None or self.meter_start is None:
            return None
        return self.meter_stop - self.meter_start


class StorageError(Exception):
    """A write could not be committed: the caller must not report it as stored. `refused`: the
    database refused the caller's write alone; the rest of its commit was committed."""

    def __init__(self, message: str, refused: bool = False):
        super().__init__(message)
        self.refused = refused


class ChangedMeanwhile(Exception):
    """A stop whose transaction another process (the command line, an operator API request on
    another instance) closed or stopped after the stop's handler decided on it: not written.
    Its caller is failed as refused, so the charger's resend is decided again on the new state
    (e.g. stop_after_abandoned) instead of the stop being written over the close."""

    def __init__(self, transaction_id: int | None):
        super().__init__(f"transaction {transaction_id} was closed or stopped by another process after this stop "
                         "was decided")


# SQLite primary result codes that are the database's trouble, not the statement's: the
# group is rolled back and tried again (https://www.sqlite.org/rescode.html).
ENVIRONMENT_ERRORS = {5: "BUSY", 6: "LOCKED", 7: "NOMEM", 8: "READONLY", 10: "IOERR", 11: "CORRUPT",
                      13: "FULL", 14: "CANTOPEN", 15: "PROTOCOL", 26: "NOTADB"}
MAX_PENDING_WRITES = 100_000  # statements kept for the next attempt while the database fails
RETRY_SECONDS = 1.0  # next attempt after a failed commit when nothing new is written
WRITER_BUSY_TIMEOUT_MS = 5000  # the writer thread may wait for another process's write lock
REFUSED_LOG_SECONDS = 60.0
# A passive WAL checkpoint on its own thread after this many rows written on the loop: about
# SQLite's own 1,000-page default (wal_autocheckpoint), which would run it inside COMMIT.
CHECKPOINT_ROWS = 2000


class _Write:
    """One queued statement: `many` runs it with executemany; `key` is the transaction id a
    durable caller waits for (its failure fails that caller); `must_change`: a statement that
    changes no row was decided on a state that changed meanwhile (ChangedMeanwhile)."""

    __slots__ = ("sql", "params", "many", "key", "must_change")

    def __init__(self, sql: str, params, many: bool = False, key: int | None = None, must_change: bool = False):
        self.sql, self.params, self.many, self.key, self.must_change = sql, params, many, key, must_change


class _Group:
    """What one commit writes, and who waits for it."""

    __slots__ = ("writes", "meter_rows", "registers", "heartbeats", "waiters", "durable")

    def __init__(self):
        self.writes: list[_Write] = []
        self.meter_rows: list[tuple] = []
        # (charge point, transaction) -> [(value, unit)] of the energy registers in meter_rows:
        # a stop looks up its own instead of scanning every charger's queued rows.
        self.registers: dict[tuple[str, int], list[tuple[str, str | None]]] = {}
        self.heartbeats: dict[str, str] = {}
        self.waiters: list[tuple[asyncio.Future, int | None, Callable[[], None] | None]] = []  # (future, key, then)
        self.durable = False

    def __bool__(self) -> bool:
        return bool(self.writes or self.meter_rows or self.heartbeats or self.waiters)

    def add_meter_rows(self, rows: list[tuple]) -> None:
        self.meter_rows += rows
        for row in rows:
            if row[2] is not None and row[4] == ENERGY_REGISTER:
                self.registers.setdefault((row[0], row[2]), []).append((row[5], row[6]))

    def reindex_registers(self) -> None:
        self.registers = {}
        rows, self.meter_rows = self.meter_rows, []
        self.add_meter_rows(rows)

    def size(self) -> int:
        """Statements and meter rows waiting in it."""
        return len(self.writes) + len(self.meter_rows) + len(self.heartbeats)


class _Outcome(NamedTuple):
    error: BaseException | None  # the whole group failed (rolled back)
    refused: list[tuple[_Write, BaseException]]  # statements dropped alone


def _environment_error(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and (code & 0xFF) in ENVIRONMENT_ERRORS


def _execute(db: sqlite3.Connection, write: _Write, refused: list) -> None:
    """Run one statement; one the database refuses is noted in `refused` (SQLite undid it alone),
    as is one that had to change a row and changed none (ChangedMeanwhile)."""
    try:
        changed = db.execute(write.sql, write.params).rowcount
    except sqlite3.Error as exc:
        if _environment_error(exc) or not db.in_transaction:
            raise
        refused.append((write, exc))
        return
    if write.must_change and changed == 0:
        refused.append((write, ChangedMeanwhile(write.key)))


def _execute_many(db: sqlite3.Connection, write: _Write, refused: list) -> None:
    """executemany; if the database refuses a row, undo the rows done and go row by row, so
    only the refused rows are dropped."""
    db.execute("SAVEPOINT many")
    try:
        db.executemany(write.sql, write.params)
    except sqlite3.Error as exc:
        if _environment_error(exc) or not db.in_transaction:
            raise
        db.execute("ROLLBACK TO many")
        for row in write.params:
            _execute(db, _Write(write.sql, row, key=write.key), refused)
    db.execute("RELEASE many")


def _busy(exc: BaseException | None) -> bool:
    """The write lock is held elsewhere (another process or worker): SQLITE_BUSY."""
    return isinstance(exc, sqlite3.Error) and (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF == 5


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _connect(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
    db.execute("PRAGMA synchronous=NORMAL")  # SQLite's default is FULL; _apply() raises it per commit
    return db


@dataclass(frozen=True)
class StationTransaction:
    """A 2.0.1 transaction: the row, the station's id for it, and what the station left unknown."""

    transaction: Transaction
    station_transaction_id: str
    meter_start_known: bool

    @property
    def meter_start(self) -> int | None:
        return self.transaction.meter_start if self.meter_start_known else None


class Store:
    def __init__(self, path: str = "levity.db", transaction_ids: tuple[int, int] = (1, 1)):
        # (residue, modulus): the transaction ids this store may issue (see the module doc).
        self._id_residue, self._id_modulus = transaction_ids
        self._path = path
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Reads (on the event loop, or the command line's thread); without a writer thread
        # also the writes.
        self._db = _connect(path, WRITER_BUSY_TIMEOUT_MS)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        # Columns are added under the write lock: a worker and `levity charge-points` may open a
        # new file at the same moment, and both would otherwise add the same column.
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._migrate()
            self._migrate_transactions()
        self._db.executescript(TRANSACTION_INDEXES)
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'transactions'").fetchone()
        self._last_transaction_id = row[0] if row else 0  # this store is the only writer of its ids
        self._group = _Group()
        # The writer thread and its connection, from the first write made under a running loop
        # (an in-memory database has one connection: it commits on the loop).
        self._writer: sqlite3.Connection | None = None
        self._io: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False  # a commit is scheduled or running
        self._running = False
        self._inflight: _Group | None = None  # the group being committed (or its WAL fsynced) now
        self._wal_fd: int | None = None  # the WAL file, fsynced by the writer thread (_sync_wal)
        self._wal_path = ""  # set with the writer thread
        self._checkpointer: ThreadPoolExecutor | None = None
        self._checkpoint_db: sqlite3.Connection | None = None
        self._checkpoint_after = CHECKPOINT_ROWS  # the loop connection's total_changes
        self._checkpointing = False
        self._retry: asyncio.TimerHandle | None = None
        self._failing_since: float | None = None
        self._synchronous_full = False
        self._refused_logged_at = -REFUSED_LOG_SECONDS
        # counters (levity_store_<name> on /metrics)
        self.commits = 0
        self.commit_failures = 0
        self.writes_refused = 0  # statements the database refused (dropped alone)
        self.writes_dropped = 0  # statements dropped because too many waited while commits failed
        self.last_error: str | None = None
        self.outage = OutageTracker("sqlite", path)  # the `ocpp.store` down/up events
        # The transactions of the chargers connected to this process, for the reads the hot
        # path makes per MeterValues and stop: a read right after another connection's commit
        # (another worker, the command line, the writer thread when the lock was taken) costs
        # about four times a cached one (SQLite drops the connection's page cache when another
        # connection changed the file).
        self.owned = OwnedTransactions()

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(charge_points)")}
        if "password_hash" not in columns:  # added with security profiles
            self._db.execute("ALTER TABLE charge_points ADD COLUMN password_hash TEXT")
        if "ocpp_version" not in columns:  # added with OCPP 2.0.1
            self._db.execute("ALTER TABLE charge_points ADD COLUMN ocpp_version TEXT")

    def _migrate_transactions(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(transactions)")}
        for name, declaration in TRANSACTION_COLUMNS.items():
            if name not in columns:
                self._db.execute(f"ALTER TABLE transactions ADD COLUMN {name} {declaration}")

    def close(self) -> None:
        """Commit what is queued (on the calling thread) and close. Called once the loop's work is done."""
        if self._retry is not None:
            self._retry.cancel()
        if self._io is not None:
            self._io.shutdown(wait=True)  # a commit still running finishes first
        if self._checkpointer is not None:
            self._checkpointer.shutdown(wait=True)
        group, self._group = self._group, _Group()
        if group:
            outcome = self._apply(self._writer or self._db, group)
            if outcome.error is not None:
                log.error("database: %d queued write(s) could not be committed at shutdown: %s",
                          group.size(), outcome.error)
        for connection in (self._writer, self._checkpoint_db):
            if connection is not None:
                connection.close()
        if self._wal_fd is not None:
            os.close(self._wal_fd)
        self._db.close()

    def stats(self) -> dict[str, int]:
        group = self._group
        return {"commits": self.commits, "commit_failures": self.commit_failures,
                "writes_refused": self.writes_refused, "writes_dropped": self.writes_dropped,
                "pending_writes": group.size(), "outages": self.outage.outages, "down": int(self.outage.down),
                "owned_hits": self.owned.hits}

    # Queueing ------------------------------------------------------------------------------

    def _write(self, sql: str, params=(), key: int | None = None, must_change: bool = False) -> None:
        self._group.writes.append(_Write(sql, params, key=key, must_change=must_change))
        self._schedule()

    def _write_many(self, sql: str, rows) -> None:
        self._group.writes.append(_Write(sql, list(rows), many=True))
        self._schedule()

    def _schedule(self) -> None:
        if self._scheduled:  # a commit is scheduled, running, or waits to be retried
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (command line tools): the caller commits
            return
        self._scheduled = True
        self._loop = loop
        loop.call_soon(self._commit_group)

    def commit(self) -> None:
        """Without an event loop: commit what is queued now (raises StorageError if it fails)."""
        if self._loop is not None:
            self._schedule()
            return
        group, self._group = self._group, _Group()
        outcome = self._apply(self._db, group)
        for write, exc in outcome.refused:
            raise StorageError(f"the database refused a write: {exc}") from exc
        if outcome.error is not None:
            raise StorageError(f"database commit failed: {outcome.error}") from outcome.error

    def _write_now(self, sql: str, params=()) -> int:
        """Command line only: commit what is queued, then this statement in its own transaction;
        its rowcount. The database's errors are raised as they are (sqlite3.IntegrityError...)."""
        assert self._loop is None, "the event loop's writes go through the writer thread"
        self.commit()
        with self._db:  # BEGIN ... COMMIT, or ROLLBACK on an error
            self._db.execute("BEGIN IMMEDIATE")
            return self._db.execute(sql, params).rowcount

    async def commit_durable(self, key: int | None = None, then: Callable[[], None] | None = None) -> None:
        """Return once everything written so far is committed with synchronous=FULL.
        StorageError if that commit failed, or if the write for transaction `key` was refused.
        then: called on the loop as the commit is reported, before the caller wakes (it must
        not raise): the next step starts one loop iteration sooner."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._group.waiters.append((future, key, then))
        self._group.durable = True
        # A commit in flight: its report starts the next group, this one. Else commit now (a
        # retry that waits is cancelled); what arrives meanwhile forms the next group.
        if not self._running:
            self._loop, self._scheduled = loop, True
            self._commit_group()
        await future

    async def drain(self, timeout: float = 5.0) -> None:
        """Wait (at most `timeout`) until what is queued is committed or has failed: before close()."""
        if self._loop is None or not (self._group or self._running):
            return
        try:
            await asyncio.wait_for(self.commit_durable(), timeout)
        except (StorageError, asyncio.TimeoutError):
            pass  # logged by the commit; close() tries once more

    # Committing (on the loop; the fsync, a held lock and checkpoints on threads) -----------

    def _commit_group(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._running:
            return  # _committed() starts the next one
        group, self._group = self._group, _Group()
        if not group:
            self._scheduled = False
            return
        self._running = True
        self._inflight = group
        if self._path == ":memory:":  # one connection: commit here
            self._committed(group, self._apply(self._db, group))
            return
        if self._io is None:
            self._writer = _connect(self._path, WRITER_BUSY_TIMEOUT_MS)
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="levity-db")
            # The loop never waits for a lock: its reads take none (WAL), and its commits go to
            # the writer thread when another connection holds the write lock (SQLITE_BUSY).
            self._db.execute("PRAGMA busy_timeout=0")
            self._db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on their own thread
            # SQLite names the WAL after the database file as it resolved it (symbolic links followed).
            self._wal_path = self._db.execute("PRAGMA database_list").fetchone()[2] + "-wal"
        outcome = self._apply(self._db, group)
        if _busy(outcome.error):  # the write lock is held elsewhere: the writer thread waits for it
            hand_off(self._loop, self._io, self._apply_on_writer, group,
                     then=lambda outcome: self._committed(group, outcome))
            return
        if outcome.error is None and group.durable:
            hand_off(self._loop, self._io, self._sync_wal,
                     then=lambda error: self._committed(group, outcome, sync_error=error))
        else:
            self._committed(group, outcome)
        self._checkpoint_when_due()

    def _apply_on_writer(self, group: _Group) -> _Outcome:
        """On the writer thread, after the loop found the write lock taken: it waits for the
        lock (WRITER_BUSY_TIMEOUT_MS) and commits with synchronous=FULL when the group is durable."""
        try:
            full = group.durable
            if full != self._synchronous_full:  # only outside a transaction
                self._writer.execute(f"PRAGMA synchronous={'FULL' if full else 'NORMAL'}")
                self._synchronous_full = full
        except Exception as exc:  # noqa: BLE001 - reported like a failed commit
            return _Outcome(exc, [])
        return self._apply(self._writer, group)

    def _sync_wal(self) -> OSError | None:
        """On the writer thread: fdatasync the WAL file, making every commit so far durable (what
        synchronous=FULL does at each COMMIT). Written by hand because SQLite offers no "sync
        now" call besides committing with FULL, which would hold the loop for the fsync. Never
        raises."""
        try:
            if self._wal_fd is None or os.fstat(self._wal_fd).st_nlink == 0:  # first use, or replaced
                if self._wal_fd is not None:
                    os.close(self._wal_fd)
                    self._wal_fd = None
                self._wal_fd = os.open(self._wal_path, os.O_RDONLY | os.O_CLOEXEC)
                directory = os.open(os.path.dirname(self._wal_path), os.O_RDONLY)
                try:
                    os.fsync(directory)  # the WAL file's own entry, as SQLite syncs a new WAL's directory
                finally:
                    os.close(directory)
            os.fdatasync(self._wal_fd)
            return None
        except OSError as exc:
            return exc

    def _checkpoint_when_due(self) -> None:
        """A passive checkpoint (the WAL's pages copied into the database file, then fsynced)
        on a thread of its own every CHECKPOINT_ROWS rows: inside a COMMIT on the loop it would
        hold every charger for the copy and its fsync; on the writer thread the next durable
        commit would wait for it."""
        if self._checkpointing or self._db.total_changes < self._checkpoint_after:
            return
        self._checkpoint_after = self._db.total_changes + CHECKPOINT_ROWS
        if self._checkpointer is None:
            self._checkpoint_db = _connect(self._path, WRITER_BUSY_TIMEOUT_MS)
            self._checkpointer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="levity-db-checkpoint")
        self._checkpointing = True
        hand_off(self._loop, self._checkpointer, self._checkpoint, then=self._checkpointed)

    def _checkpoint(self) -> BaseException | None:
        try:
            self._checkpoint_db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            return None
        except Exception as exc:  # noqa: BLE001 - logged on the loop; the next one tries again
            return exc

    def _checkpointed(self, error: BaseException | None) -> None:
        self._checkpointing = False
        if error is not None:
            log.warning("database: WAL checkpoint failed (tried again after %d more rows): %s", CHECKPOINT_ROWS, error)

    def _committed(self, group: _Group, outcome: _Outcome, sync_error: BaseException | None = None) -> None:
        """sync_error: the group committed (readers see it), but the fsync of the WAL behind it
        failed (_sync_wal), so it may not be on disk."""
        self._running = False
        self._inflight = None
        self._scheduled = False
        refused_keys = {w.key: exc for w, exc in outcome.refused if w.key is not None}
        if outcome.refused:
            self.owned.forget_all()  # what it knew may include a refused write
        for write, exc in outcome.refused:
            if isinstance(exc, ChangedMeanwhile):  # not the database's doing: the charger resends
                log.warning("database: %s: answered with a CALLERROR, its resend is decided again", exc)
                continue
            self.writes_refused += 1
            now = time.monotonic()
            if now - self._refused_logged_at >= REFUSED_LOG_SECONDS:  # not one line per event
                self._refused_logged_at = now
                log.error("database refused a write, dropped (%d so far, counted as levity_store_writes_refused; "
                          "logged at most once a minute): %s: %s", self.writes_refused, exc,
                          write.sql.split("(")[0].strip()[:80])
        if outcome.error is None and sync_error is None:
            self.commits += 1
            self.outage.recovered(group.size())
            if self._failing_since is not None:
                log.info("database: commits work again (after %.1fs)", time.monotonic() - self._failing_since)
                self._failing_since = None
                self.last_error = None
            for future, key, then in group.waiters:
                if future.done():
                    continue
                if key is not None and key in refused_keys:  # owned.forget_all() above dropped it
                    future.set_exception(StorageError(f"the write for transaction {key} was not stored: "
                                                      f"{refused_keys[key]}", refused=True))
                else:
                    if then is not None:
                        then()
                    future.set_result(None)
        elif outcome.error is None:
            # A durable caller is failed as refused: it undoes what its call changed before
            # releasing its charge point's transaction lock (levity.handling.store_then_audit), so
            # the charger's resend is decided again. The group's other writes stay committed.
            self._commit_failed(f"fsync of the WAL failed: {sync_error}", group.waiters, refused=True)
            self.outage.failed(self.last_error, self._group.size())
        else:
            self._commit_failed(f"commit failed: {outcome.error}", group.waiters)
            self._requeue(group)  # other writes are kept and tried again
            self.outage.failed(str(outcome.error), self._group.size())
            if not self._group.waiters:
                # Nobody waits for an answer: try again in a while, not on every new write.
                self._scheduled = True
                self._retry = self._loop.call_later(RETRY_SECONDS, self._commit_group)
                return
        if self._group:  # what queued up during this commit goes now, not one loop iteration later
            self._scheduled = True
            self._commit_group()

    def _commit_failed(self, error: str, waiters: list, refused: bool = False) -> None:
        """Counted, logged once per failure episode, and every durable caller of the group failed
        (its charger is told to retry, so its writes go from memory)."""
        self.commit_failures += 1
        self.last_error = error
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.error("database: %s. Transaction starts and stops are answered with a CALLERROR (the charger "
                      "retries); logged again when commits work", error)
        for future, key, _ in waiters:
            if key is not None:
                self.owned.forget(key)
            if not future.done():
                future.set_exception(StorageError(f"database: {error}", refused=refused))

    def _requeue(self, failed: _Group) -> None:
        """Put a rolled-back group's writes back in front of what was queued since (order kept).
        Durable callers were failed, so their own writes go (their chargers send them again)."""
        newer = self._group
        failed_keys = {key for _, key, _ in failed.waiters if key is not None}
        group = _Group()
        group.writes = [w for w in failed.writes if w.key is None or w.key not in failed_keys] + newer.writes
        group.meter_rows = failed.meter_rows + newer.meter_rows
        group.reindex_registers()
        group.heartbeats = {**failed.heartbeats, **newer.heartbeats}
        group.waiters, group.durable = newer.waiters, newer.durable
        excess = len(group.writes) + len(group.meter_rows) - MAX_PENDING_WRITES
        if excess > 0:
            from_writes = min(excess, len(group.writes))
            del group.writes[:from_writes]
            del group.meter_rows[:excess - from_writes]
            group.reindex_registers()
            self.owned.forget_all()  # it may know of dropped meter values
            if not self.writes_dropped:
                log.error("database: more than %d writes wait for a commit; dropping the oldest (counted as "
                          "levity_store_writes_dropped)", MAX_PENDING_WRITES)
            self.writes_dropped += excess
        self._group = group

    def _apply(self, db: sqlite3.Connection, group: _Group) -> _Outcome:
        """One transaction for the group (on the writer thread). Never raises."""
        refused: list[tuple[_Write, BaseException]] = []
        try:
            db.execute("BEGIN IMMEDIATE")
            writes = list(group.writes)
            if group.meter_rows:
                writes.append(_Write(INSERT_METER_VALUE, group.meter_rows, many=True))
            if group.heartbeats:
                writes.append(_Write("UPDATE charge_points SET last_heartbeat = ? WHERE id = ?",
                                     [(now, cp) for cp, now in group.heartbeats.items()], many=True))
            for write in writes:
                if write.many:
                    _execute_many(db, write, refused)
                else:
                    _execute(db, write, refused)
            db.execute("COMMIT")
            return _Outcome(None, refused)
        except Exception as exc:  # noqa: BLE001 - reported to the waiters and the log
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            return _Outcome(exc, [])

    # Charge points -------------------------------------------------------------------------

    def register(self, charge_point_ids: Iterable[str], now: str) -> None:
        self._write_many(
            "INSERT INTO charge_points (id, registered, first_seen) VALUES (?, 1, ?) "
            "ON CONFLICT(id) DO UPDATE SET registered = 1",
            [(cp, now) for cp in charge_point_ids],
        )

    def unregister(self, charge_point_ids: Iterable[str]) -> None:
        self._write_many("UPDATE charge_points SET registered = 0 WHERE id = ?", [(cp,) for cp in charge_point_ids])

    def set_password_hash(self, charge_point_id: str, password_hash: str | None, now: str) -> None:
        self._write(
            "INSERT INTO charge_points (id, registered, first_seen, password_hash) VALUES (?, 1, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET password_hash = excluded.password_hash, registered = 1",
            (charge_point_id, now, password_hash),
        )

    def password_hash(self, charge_point_id: str) -> str | None:
        row = self._db.execute("SELECT password_hash FROM charge_points WHERE id = ?", (charge_point_id,)).fetchone()
        return row[0] if row else None

    def registered_ids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM charge_points WHERE registered = 1 ORDER BY id")]

    def is_registered(self, charge_point_id: str) -> bool:
        row = self._db.execute("SELECT registered FROM charge_points WHERE id = ?", (charge_point_id,)).fetchone()
        return bool(row and row[0])

    def record_boot(self, charge_point_id: str, info: dict[str, Any], status: str, registered: bool, now: str) -> None:
        self._write(
            "INSERT INTO charge_points (id, registered, vendor, model, serial_number, firmware_version, "
            "registration_status, first_seen, last_boot) VALUES (:id, :registered, :vendor, :model, :serial, "
            ":firmware, :status, :now, :now) ON CONFLICT(id) DO UPDATE SET registered = max(registered, :registered), "
            "vendor = :vendor, model = :model, serial_number = :serial, firmware_version = :firmware, "
            "registration_status = :status, last_boot = :now",
            {"id": charge_point_id, "registered": int(registered), "vendor": info.get("vendor"),
             "model": info.get("model"), "serial": info.get("serial_number"),
             "firmware": info.get("firmware_version"), "status": status, "now": now},
        )

    def record_ocpp_version(self, charge_point_id: str, version: str) -> None:
        """The OCPP version of a known charge point's latest connection (operator API: ocpp_version);
        rows from before 2.0.1 hold null, which means 1.6."""
        self._write("UPDATE charge_points SET ocpp_version = ? WHERE id = ?", (version, charge_point_id))

    def record_heartbeat(self, charge_point_id: str, now: str) -> None:
        # The hottest write: nobody reads it back at once; one executemany per commit.
        self._group.heartbeats[charge_point_id] = now
        self._schedule()

    def record_cp_status(self, charge_point_id: str, column: str, status: str) -> None:
        assert column in ("firmware_status", "diagnostics_status")
        self._write(f"UPDATE charge_points SET {column} = ? WHERE id = ?", (status, charge_point_id))

    def charge_point(self, charge_point_id: str) -> dict[str, Any] | None:
        """Committed state (the command line commits before it reads)."""
        cursor = self._db.execute("SELECT * FROM charge_points WHERE id = ?", (charge_point_id,))
        row = cursor.fetchone()
        return dict(zip([c[0] for c in cursor.description], row)) if row else None

    # Connectors ----------------------------------------------------------------------------

    def record_status(self, charge_point_id: str, connector_id: int, status: str, error_code: str,
                      info: str | None, vendor_error_code: str | None, status_timestamp: str | None,
                      now: str) -> None:
        self._write(
            "INSERT INTO connectors VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(charge_point_id, connector_id) "
            "DO UPDATE SET status = excluded.status, error_code = excluded.error_code, info = excluded.info, "
            "vendor_error_code = excluded.vendor_error_code, status_timestamp = excluded.status_timestamp, "
            "updated_at = excluded.updated_at",
            (charge_point_id, connector_id, status, error_code, info, vendor_error_code, status_timestamp, now),
        )

    def connector_status(self, charge_point_id: str, connector_id: int) -> tuple[str, str] | None:
        return self._db.execute(
            "SELECT status, error_code FROM connectors WHERE charge_point_id = ? AND connector_id = ?",
            (charge_point_id, connector_id),
        ).fetchone()

    # Transactions --------------------------------------------------------------------------
    # The decisions about repeats (levity/transactions.py) read the committed state: the
    # handlers make them holding their charge point's transaction lock (levity.handling) and
    # release it only once what they wrote is committed, so the next decision for that charge
    # point (same connection or a new one after a reconnect) sees it.

    def start_transaction(self, charge_point_id: str, connector_id: int, id_tag: str, meter_start: int,
                          start_timestamp: str, reservation_id: int | None, now: str,
                          event_id: str | None = None) -> int:
        """Queue the start and return its id; the caller awaits commit_durable(id) before answering."""
        transaction_id = self._next_transaction_id()
        self._last_transaction_id = transaction_id  # never handed out again, even if this write fails
        self.owned.started(charge_point_id, transaction_id)
        self._write(
            "INSERT INTO transactions (id, charge_point_id, connector_id, id_tag, meter_start, start_timestamp, "
            "reservation_id, created_at, start_event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (transaction_id, charge_point_id, connector_id, id_tag, meter_start, start_timestamp,
             reservation_id, now, event_id), key=transaction_id,
        )
        return transaction_id

    def forget_transaction(self, transaction_id: int) -> None:
        """A committed start whose answer could not be given (its audit event failed): the
        charger sends it again and gets another id; this one is never issued."""
        self.owned.forget(transaction_id)
        self._write("DELETE FROM transactions WHERE id = ? AND stopped_at IS NULL", (transaction_id,))

    def forget_stop(self, transaction_id: int, event_id: str) -> None:
        """A committed stop whose answer could not be given (its audit event failed): open again,
        so the charger's resend is its first stop (with its transaction_stop), not a repeat."""
        self.owned.stopped(transaction_id, None)
        self._write("UPDATE transactions SET meter_stop = NULL, stop_timestamp = NULL, stop_reason = NULL, "
                    "stop_id_tag = NULL, stopped_at = NULL, stop_event_id = NULL, stop_request = NULL "
                    "WHERE id = ? AND stop_event_id = ?", (transaction_id, event_id))

    def reopen_abandoned(self, transaction_id: int, event_id: str) -> None:
        """Undo close_abandoned() whose anomaly `event_id` could not be sent (the start that
        superseded it was not answered): the charger's resend decides again."""
        self._write("UPDATE transactions SET abandoned_at = NULL, abandon_reason = NULL, abandon_event_id = NULL, "
                    "abandon_event_sent = 1 WHERE id = ? AND abandon_event_id = ?", (transaction_id, event_id))

    def _next_transaction_id(self) -> int:
        """The last id + 1; with several workers, the next id of this one's residue."""
        last = self._last_transaction_id
        if self._id_modulus == 1:
            return last + 1
        return last + 1 + (self._id_residue - last - 1) % self._id_modulus

    def transaction(self, transaction_id: int) -> Transaction | None:
        row = self._db.execute(f"{TRANSACTION_SELECT} WHERE id = ?", (transaction_id,)).fetchone()
        return Transaction.from_row(row) if row else None

    def identical_start(self, charge_point_id: str, connector_id: int, id_tag: str, meter_start: int,
                        start_timestamp: str) -> Transaction | None:
        """The transaction a StartTransaction with exactly these fields already started, if any."""
        row = self._db.execute(
            f"{TRANSACTION_SELECT} WHERE charge_point_id = ? AND connector_id = ? AND start_timestamp = ? "
            "AND id_tag = ? AND meter_start = ? ORDER BY id LIMIT 1",
            (charge_point_id, connector_id, start_timestamp, id_tag, meter_start)).fetchone()
        return Transaction.from_row(row) if row else None

    def open_on_connector(self, charge_point_id: str, connector_id: int) -> list[Transaction]:
        return [Transaction.from_row(row) for row in self._db.execute(
            f"{TRANSACTION_SELECT} WHERE charge_point_id = ? AND connector_id = ? AND stopped_at IS NULL "
            "AND abandoned_at IS NULL ORDER BY id", (charge_point_id, connector_id))]

    # The reads a transaction handler awaits: levity/store_pg.py answers them off the event
    # loop's thread in one round trip; here a local page lookup costs less than any hand-off.

    async def start_lookup(self, charge_point_id: str, connector_id: int, id_tag: str, meter_start: int,
                           start_timestamp: str) -> tuple[Transaction | None, list[Transaction]]:
        """What a StartTransaction decides on: the transaction an identical start already
        started (identical_start), else the connector's open ones (open_on_connector)."""
        first = self.identical_start(charge_point_id, connector_id, id_tag, meter_start, start_timestamp)
        return first, [] if first is not None else self.open_on_connector(charge_point_id, connector_id)

    async def load_transaction(self, transaction_id: int) -> Transaction | None:
        """transaction(), awaited by a StopTransaction."""
        return self.transaction(transaction_id)

    async def load_station_transaction(self, charge_point_id: str, station_transaction_id: str,
                                       may_start: bool = False) -> StationTransaction | None:
        """station_transaction(), awaited by a TransactionEvent (may_start: a transaction may be
        started next; the PostgreSQL store fetches its id in the same round trip)."""
        return self.station_transaction(charge_point_id, station_transaction_id)

    async def load_open_on_evse(self, charge_point_id: str, evse_id: int) -> list[Transaction]:
        """open_on_evse(), awaited by a TransactionEvent that starts a transaction."""
        return self.open_on_evse(charge_point_id, evse_id)

    def open_on_evse(self, charge_point_id: str, evse_id: int) -> list[Transaction]:
        """The open 2.0.1 transactions of one EVSE (a station runs one transaction per EVSE)."""
        return [Transaction.from_row(row) for row in self._db.execute(
            f"{TRANSACTION_SELECT} WHERE charge_point_id = ? AND evse_id = ? AND stopped_at IS NULL "
            "AND abandoned_at IS NULL ORDER BY id", (charge_point_id, evse_id))]

    def stop_transaction(self, transaction_id: int, meter_stop: int, stop_timestamp: str, reason: str,
                         id_tag: str | None, now: str, event_id: str | None = None,
                         request: dict | None = None, was_abandoned: bool = False) -> None:
        """request: the stop's fields as the charger sent them, kept to describe a repeat.
        was_abandoned: what the stop was decided on (the transaction already closed as abandoned,
        or open). Written only if the row is still so; if another process closed or stopped it
        meanwhile, the caller's commit_durable raises StorageError (refused, ChangedMeanwhile)."""
        self.owned.stopped(transaction_id, meter_stop)
        self._write(
            "UPDATE transactions SET meter_stop = ?, stop_timestamp = ?, stop_reason = ?, stop_id_tag = ?, "
            "stopped_at = ?, stop_event_id = ?, stop_request = ? WHERE id = ? AND stopped_at IS NULL "
            "AND (abandoned_at IS NOT NULL) = ?",
            (meter_stop, stop_timestamp, reason, id_tag, now, event_id,
             json.dumps(request, sort_keys=True) if request is not None else None, transaction_id,
             was_abandoned),
            key=transaction_id, must_change=True,
        )

    def close_abandoned(self, transaction_id: int, reason: str, now: str, event_id: str,
                        event_sent: bool = True, key: int | None = None) -> Transaction:
        """Close an open transaction without a stop (no meter_stop, no stop event).

        event_id: the id of the `abandoned_transaction` anomaly that reports it. event_sent=False
        when the caller cannot send it (the command line): the server sends it (pending_closes()).
        Raises LookupError for an unknown transaction, ValueError for one already closed.

        Under the event loop the close is queued and decided from the committed state: the
        caller holds the charge point's transaction lock and awaits commit_durable(key) (key:
        the transaction id whose commit carries it; a failed commit drops the close with it).
        On the command line it commits at once, and its rowcount decides: a stop the server
        committed first wins.
        """
        if not reason or not reason.strip():
            raise ValueError("a reason is required to close a transaction")
        sql = ("UPDATE transactions SET abandoned_at = ?, abandon_reason = ?, abandon_event_id = ?, "
               "abandon_event_sent = ? WHERE id = ? AND stopped_at IS NULL AND abandoned_at IS NULL")
        params = (now, reason.strip(), event_id, int(event_sent), transaction_id)
        if not _loop_running():
            closed = self._write_now(sql, params) > 0
            current = self.transaction(transaction_id)
        else:
            current = self.transaction(transaction_id)
            closed = current is not None and current.open
            if closed:
                self._write(sql, params, key=transaction_id if key is None else key)
                current = replace(current, abandoned_at=now, abandon_reason=reason.strip(),
                                  abandon_event_id=event_id)
        if current is None:
            raise LookupError(f"no transaction {transaction_id}")
        if not closed:
            state = "stopped" if current.stopped else "closed as abandoned"
            raise ValueError(f"transaction {transaction_id} is already {state}")
        return current

    def pending_closes(self) -> list[Transaction]:
        """Transactions closed as abandoned whose anomaly event is still to be sent."""
        return [Transaction.from_row(row) for row in self._db.execute(
            f"{TRANSACTION_SELECT} WHERE abandon_event_sent = 0 ORDER BY id")]

    def mark_close_sent(self, transaction_id: int) -> None:
        self._write("UPDATE transactions SET abandon_event_sent = 1 WHERE id = ?", (transaction_id,))

    def open_transactions(self, charge_point_id: str | None = None) -> list[dict[str, Any]]:
        """Transactions neither stopped nor closed as abandoned, oldest first, as the operator API
        lists them (transactions() fields)."""
        return self.transactions(charge_point_id, open_only=True)

    def transactions(self, charge_point_id: str | None = None, open_only: bool | None = None,
                     limit: int | None = None, transaction_id: int | None = None,
                     newest_first: bool = False) -> list[dict[str, Any]]:
        """Transactions as operators see them: transaction_id, charge_point_id, connector_id, id_tag,
        meter_start (null: a 2.0.1 start without a reading), meter_stop, energy_delivered (null until
        stopped, or when a reading is unknown), started_at and stopped_at
        (the charger's timestamps), stop_reason, state (open / stopped / abandoned), closed_reason,
        age_seconds (since Levity saw the start), recorded_at and stop_recorded_at (Levity's clock),
        ocpp_version, and for 2.0.1 station_transaction_id and evse_id.
        open_only: True keeps the open ones, False the stopped or abandoned ones, None all.
        The committed state (writes commit within a turn of the event loop)."""
        where, params = [], []
        if charge_point_id is not None:
            where.append("charge_point_id = ?")
            params.append(charge_point_id)
        if transaction_id is not None:
            where.append("id = ?")
            params.append(transaction_id)
        if open_only is not None:
            where.append("stopped_at IS NULL AND abandoned_at IS NULL" if open_only
                         else "(stopped_at IS NOT NULL OR abandoned_at IS NOT NULL)")
        sql = TRANSACTION_SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
        if newest_first:
            sql += " DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        now = time.time()
        return [_operator_view(Transaction.from_row(row), now) for row in self._db.execute(sql, params)]

    def meter_stop(self, charge_point_id: str, transaction_id: int) -> int | None:
        """The meterStop of a stopped transaction of this charge point (None otherwise); one
        indexed lookup, as it runs for every MeterValues of a transaction; from memory for a
        charger connected here once known."""
        known = self.owned.get(charge_point_id, transaction_id)
        if known is not None:
            return known.meter_stop
        row = self._db.execute("SELECT meter_stop FROM transactions WHERE id = ? AND charge_point_id = ? "
                               "AND stopped_at IS NOT NULL", (transaction_id, charge_point_id)).fetchone()
        meter_stop = row[0] if row else None
        self.owned.remember(charge_point_id, transaction_id, Known(meter_stop=meter_stop))
        return meter_stop

    def energy_registers(self, charge_point_id: str, transaction_id: int) -> list[tuple[str, str | None]]:
        """(value, unit) of every Energy.Active.Import.Register sampled for the transaction,
        including the rows not yet committed (queued, or in the commit running now): a stop's
        checks must see the meter values received before it. A row whose commit completes
        during this call may be listed twice; callers look at the highest value only. From
        memory for a transaction started here by a charger still connected here."""
        known = self.owned.get(charge_point_id, transaction_id)
        if known is not None and known.registers is not None:
            return list(known.registers)
        committed = self._db.execute(
            "SELECT value, unit FROM meter_values WHERE transaction_id = ? AND charge_point_id = ? "
            "AND measurand = ?", (transaction_id, charge_point_id, ENERGY_REGISTER)).fetchall()
        for group in (self._inflight, self._group):
            if group is not None:
                committed += group.registers.get((charge_point_id, transaction_id), ())
        return committed

    def open_transaction_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM transactions WHERE stopped_at IS NULL").fetchone()[0]

    # Meter values --------------------------------------------------------------------------

    def add_meter_values(self, charge_point_id: str, connector_id: int, transaction_id: int | None,
                         meter_value: list[dict[str, Any]]) -> None:
        rows = [
            (charge_point_id, connector_id, transaction_id, entry.get("timestamp", ""),
             sample.get("measurand") or ENERGY_REGISTER, str(sample.get("value", "")),
             sample.get("unit"), sample.get("phase"), sample.get("context"), sample.get("location"),
             sample.get("format"))
            for entry in meter_value for sample in entry.get("sampled_value", ())
        ]
        if rows:
            self._group.add_meter_rows(rows)
            self._schedule()
            if transaction_id is not None:
                self.owned.add_registers(charge_point_id, transaction_id,
                                         [(row[5], row[6]) for row in rows if row[4] == ENERGY_REGISTER])

    # The chargers connected to this process ----------------------------------------------------
    # A charger's transactions change only through its own connection (and an operator's
    # close as abandoned, which the stop reads from the database), so from its connection to
    # its close this process may answer from memory what it wrote itself.

    def claim_connection(self, charge_point_id: str, instance_id: str | None = None) -> int:
        """As PostgresStore.claim_connection; one process holds a SQLite file's chargers, so
        there is no generation to record (0)."""
        self.owned.claim(charge_point_id)
        return 0

    def release_connection(self, charge_point_id: str) -> None:
        self.owned.release(charge_point_id)

    # Operator API: read queries --------------------------------------------------------------

    def charge_point_rows(self, charge_point_id: str | None = None) -> list[dict[str, Any]]:
        """Known charge points with when they were last heard of (boot, heartbeat or status):
        the committed state (writes commit within a turn of the event loop)."""
        where = "WHERE cp.id = ?" if charge_point_id is not None else ""
        cursor = self._db.execute(
            "SELECT cp.id, cp.registered, cp.vendor, cp.model, cp.serial_number, cp.firmware_version, "
            "cp.registration_status, cp.first_seen, cp.last_boot, cp.last_heartbeat, cp.ocpp_version, "
            "(SELECT max(updated_at) FROM connectors c WHERE c.charge_point_id = cp.id) AS last_status "
            f"FROM charge_points cp {where} ORDER BY cp.id", () if charge_point_id is None else (charge_point_id,))
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def connectors(self, charge_point_id: str) -> list[dict[str, Any]]:
        cursor = self._db.execute(
            "SELECT connector_id, status, error_code, info, vendor_error_code, status_timestamp, updated_at "
            "FROM connectors WHERE charge_point_id = ? ORDER BY connector_id", (charge_point_id,))
        names = [c[0] for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    # OCPP 2.0.1 transactions (levity/ocpp201/handlers.py): Levity's integer id for the station's
    # string id. Writes go through the same paths as 1.6 starts and stops; the caller commits
    # (durably) before it answers, as the 1.6 handlers do.

    def start_station_transaction(self, charge_point_id: str, station_transaction_id: str, connector_id: int | None,
                                  evse_id: int | None, id_tag: str | None, meter_start: int | None,
                                  start_timestamp: str, now: str, event_id: str | None = None) -> int:
        transaction_id = self.start_transaction(charge_point_id, connector_id or 0, id_tag or "", meter_start or 0,
                                                start_timestamp, None, now, event_id=event_id)
        self._write("UPDATE transactions SET ocpp_version = '2.0.1', station_transaction_id = ?, evse_id = ?, "
                    "meter_start_known = ? WHERE id = ?",
                    (station_transaction_id, evse_id, int(meter_start is not None), transaction_id),
                    key=transaction_id)  # dropped with the start when its commit fails
        return transaction_id

    def station_transaction(self, charge_point_id: str, station_transaction_id: str) -> StationTransaction | None:
        """The transaction of this station with that transactionInfo.transactionId, if Levity has one."""
        row = self._db.execute(
            "SELECT id, meter_start_known FROM transactions WHERE charge_point_id = ? "
            "AND station_transaction_id = ? ORDER BY id LIMIT 1", (charge_point_id, station_transaction_id)).fetchone()
        if row is None:
            return None
        return StationTransaction(self.transaction(row[0]), station_transaction_id, bool(row[1]))

    # Operator API tokens (only their hashes) ----------------------------------------------------

    def add_api_token(self, name: str, role: str, token_hash: str, now: str) -> None:
        """sqlite3.IntegrityError when the name is taken."""
        self._write_now("INSERT INTO api_tokens (name, role, token_hash, created_at) VALUES (?, ?, ?, ?)",
                        (name, role, token_hash, now))

    def revoke_api_token(self, name: str) -> bool:
        return self._write_now("DELETE FROM api_tokens WHERE name = ?", (name,)) > 0

    def api_tokens(self) -> list[tuple[str, str, str]]:
        """(name, role, created_at) of every token."""
        return self._db.execute("SELECT name, role, created_at FROM api_tokens ORDER BY name").fetchall()

    def api_token(self, token_hash: str) -> tuple[str, str] | None:
        """(name, role) of the token with this hash."""
        return self._db.execute("SELECT name, role FROM api_tokens WHERE token_hash = ?", (token_hash,)).fetchone()

    def count(self, table: str) -> int:
        assert table in ("charge_points", "connectors", "transactions", "meter_values")
        return self._db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _operator_view(transaction: Transaction, now: float) -> dict[str, Any]:
    state = "stopped" if transaction.stopped else "abandoned" if transaction.abandoned_at else "open"
    return {
        "transaction_id": transaction.id,
        "charge_point_id": transaction.charge_point_id,
        "connector_id": transaction.connector_id,
        "id_tag": transaction.id_tag,
        "meter_start": transaction.meter_start,
        "meter_stop": transaction.meter_stop,
        "energy_delivered": transaction.energy_delivered,
        "started_at": transaction.start_timestamp,
        "stopped_at": transaction.stop_timestamp,
        "stop_reason": (transaction.stop_request or {}).get("reason"),
        "state": state,
        "closed_reason": transaction.abandon_reason,
        "age_seconds": _age_seconds(transaction.created_at, now),
        "recorded_at": transaction.created_at,
        "stop_recorded_at": transaction.stopped_at,
        "ocpp_version": transaction.ocpp_version,
        "station_transaction_id": transaction.station_transaction_id,
        "evse_id": transaction.evse_id,
    }


def _age_seconds(created_at: str | None, now: float) -> int | None:
    try:
        return max(0, int(now - datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()))
    except (AttributeError, ValueError):
        return None
