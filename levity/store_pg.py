"""Levity's state in a shared PostgreSQL database: the public interface of levity/store.py's
Store, for several instances behind a balancer (docs/scaling.md).

Driver: psycopg 3, the one well-kept driver with the same types in a blocking and an asyncio
API. The Store interface is synchronous (the command line, the operator API's reads); the reads
a transaction call decides on are awaited instead (start_lookup, load_transaction,
load_station_transaction): reader threads with their own connections run them, so the event
loop serves other chargers during the round trip. The handler holds its charge point's
transaction lock from that read until its writes are committed, so nothing it decides on
changes in between. levity/cluster.py uses psycopg's asyncio connection for LISTEN/NOTIFY.

Writes never block the event loop, as on SQLite: they are queued, and what was queued during a
turn of the loop is committed by one database transaction sent in pipeline mode (one round trip
for hundreds of calls) on a writer thread with its own connection, each kind of write (status
upserts, transaction starts, stops, meter rows, heartbeats ...) as one statement over all its
rows (levity/store_rows.py): much of the driver's and the server's work is per statement. A
transaction start or stop is committed before the charger gets its answer (the handler awaits
commit_durable()). Reads see the committed state; energy_registers() adds the meter values still
queued, as the SQLite store does.
When the database cannot take a commit, its writes go back in front of the queue, in order, and
are tried again (StorageError to a caller that waits for it): a write is never silently dropped.
A write the database refuses for good (a value out of its range) is applied alone (each row of
a combined statement that fails alone too), logged and counted, so it cannot hold back the
others. An outage (writes failing, then working again) is reported once each way
(levity/store_outage.py).

Round trips on the hot path are few and none blocks the event loop: a StartTransaction's repeat
check, its connector's open transactions and a transaction id come in one awaited round trip, a
StopTransaction's row in one unless this instance started the transaction; MeterValues, those
stops and a stop's meter checks are answered from what this instance knows of the chargers
connected to it (levity/owned_transactions.py). A stop is written only over the state it was
decided on (STOP_ROWS), so an operator's close from another process is never written over.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Iterable, NamedTuple

import psycopg

from levity.database import DatabaseStartupError, redact
from levity.handoff import hand_off
from levity.schema_pg import SchemaError, check
from levity.store import (TRANSACTION_SELECT, ChangedMeanwhile, StationTransaction, StorageError, Transaction,
                          _loop_running, _operator_view)
from levity.owned_transactions import Known, OwnedTransactions
from levity.store_outage import OutageTracker
from levity.store_rows import Combined, Rows, Write, combine, one_statement

log = logging.getLogger("levity.store")

RETRY_SECONDS = 1.0  # wait before a queued batch the database refused is tried again
CONNECT_TIMEOUT_SECONDS = 5
READER_THREADS = 2  # awaited reads in flight at once (each thread has its own connection)

# The writes of the hot path, each kind one statement per batch (levity/store_rows.py).
METER_VALUE_ROWS = Rows(
    "INSERT INTO meter_values (charge_point_id, connector_id, transaction_id, timestamp, measurand, value, unit, "
    "phase, context, location, format) SELECT * FROM {rows}",
    (("charge_point_id", "text"), ("connector_id", "integer"), ("transaction_id", "bigint"), ("timestamp", "text"),
     ("measurand", "text"), ("value", "text"), ("unit", "text"), ("phase", "text"), ("context", "text"),
     ("location", "text"), ("format", "text")), key=())
HEARTBEAT_ROWS = Rows("UPDATE charge_points c SET last_heartbeat = v.now FROM {rows} WHERE c.id = v.id",
                      (("id", "text"), ("now", "text")), key=("id",))
STATUS_ROWS = Rows(
    "INSERT INTO connectors SELECT * FROM {rows} ON CONFLICT (charge_point_id, connector_id) "
    "DO UPDATE SET status = excluded.status, error_code = excluded.error_code, info = excluded.info, "
    "vendor_error_code = excluded.vendor_error_code, status_timestamp = excluded.status_timestamp, "
    "updated_at = excluded.updated_at",
    (("charge_point_id", "text"), ("connector_id", "integer"), ("status", "text"), ("error_code", "text"),
     ("info", "text"), ("vendor_error_code", "text"), ("status_timestamp", "text"), ("updated_at", "text")),
    key=("charge_point_id", "connector_id"), last_wins=True)
BOOT_ROWS = Rows(  # not last_wins: `registered` only grows, and first_seen stays the first
    "INSERT INTO charge_points (id, registered, vendor, model, serial_number, firmware_version, "
    "registration_status, first_seen, last_boot) SELECT id, registered, vendor, model, serial_number, "
    "firmware_version, registration_status, now, now FROM {rows} ON CONFLICT (id) DO UPDATE SET "
    "registered = greatest(charge_points.registered, excluded.registered), vendor = excluded.vendor, "
    "model = excluded.model, serial_number = excluded.serial_number, "
    "firmware_version = excluded.firmware_version, registration_status = excluded.registration_status, "
    "last_boot = excluded.last_boot",
    (("id", "text"), ("registered", "integer"), ("vendor", "text"), ("model", "text"), ("serial_number", "text"),
     ("firmware_version", "text"), ("registration_status", "text"), ("now", "text")), key=("id",))
START_ROWS = Rows(
    "INSERT INTO transactions (id, charge_point_id, connector_id, id_tag, meter_start, start_timestamp, "
    "reservation_id, created_at, start_event_id) SELECT * FROM {rows}",
    (("id", "bigint"), ("charge_point_id", "text"), ("connector_id", "integer"), ("id_tag", "text"),
     ("meter_start", "bigint"), ("start_timestamp", "text"), ("reservation_id", "integer"), ("created_at", "text"),
     ("start_event_id", "text")), key=("id",))
# Written only where the row is as the stop was decided on (open, or closed as abandoned);
# RETURNING names those written: another process may have closed or stopped one meanwhile
# (ChangedMeanwhile), as levity.store's stop_transaction says.
STOP_ROWS = Rows(
    "UPDATE transactions t SET meter_stop = v.meter_stop, stop_timestamp = v.stop_timestamp, "
    "stop_reason = v.stop_reason, stop_id_tag = v.stop_id_tag, stopped_at = v.stopped_at, "
    "stop_event_id = v.stop_event_id, stop_request = v.stop_request FROM {rows} WHERE t.id = v.id "
    "AND t.stopped_at IS NULL AND (t.abandoned_at IS NOT NULL) = v.was_abandoned RETURNING t.id",
    (("meter_stop", "bigint"), ("stop_timestamp", "text"), ("stop_reason", "text"), ("stop_id_tag", "text"),
     ("stopped_at", "text"), ("stop_event_id", "text"), ("stop_request", "text"), ("id", "bigint"),
     ("was_abandoned", "boolean")), key=("id",))
SELECT = TRANSACTION_SELECT  # no placeholders: the same text serves both engines
ENERGY_REGISTER = "Energy.Active.Import.Register"
IDENTICAL_START = (f"{SELECT} WHERE charge_point_id = %s AND connector_id = %s AND start_timestamp = %s "
                   "AND id_tag = %s AND meter_start = %s ORDER BY id LIMIT 1")
OPEN_ON_CONNECTOR = (f"{SELECT} WHERE charge_point_id = %s AND connector_id = %s AND stopped_at IS NULL "
                     "AND abandoned_at IS NULL ORDER BY id")
OPEN_ON_EVSE = (f"{SELECT} WHERE charge_point_id = %s AND evse_id = %s AND stopped_at IS NULL "
                "AND abandoned_at IS NULL ORDER BY id")
BY_ID = f"{SELECT} WHERE id = %s"
BY_STATION_ID = f"{SELECT} WHERE charge_point_id = %s AND station_transaction_id = %s ORDER BY id LIMIT 1"
NEXT_ID = "SELECT nextval('transaction_ids')"
# A StartTransaction's decision in one statement (each statement costs the driver about 40 us of
# CPU): the next transaction id (or NULL when one is kept), then the connector's transactions that
# are identical to this start or still open, each flagged whether identical, in id order.
TRANSACTION_COLUMNS = TRANSACTION_SELECT.removeprefix("SELECT ").removesuffix(" FROM transactions")
IDENTICAL = "start_timestamp = %(timestamp)s AND id_tag = %(id_tag)s AND meter_start = %(meter_start)s"
START_LOOKUP = (
    "WITH next_id AS (SELECT {next_id} AS id) SELECT next_id.id, found.* FROM next_id LEFT JOIN ("
    f"SELECT coalesce({IDENTICAL}, false) AS identical, {TRANSACTION_COLUMNS} FROM transactions "
    f"WHERE charge_point_id = %(charge_point_id)s AND connector_id = %(connector_id)s AND ({IDENTICAL} "
    "OR stopped_at IS NULL AND abandoned_at IS NULL)) found ON true ORDER BY found.id")
START_LOOKUP_WITH_ID = START_LOOKUP.format(next_id="nextval('transaction_ids')")
START_LOOKUP_ID_KEPT = START_LOOKUP.format(next_id="NULL::bigint")


class _Batch:
    """Writes queued together and committed by one database transaction, and who waits for it."""

    __slots__ = ("writes", "meter_rows", "heartbeats", "waiters")

    def __init__(self):
        self.writes: list[Write] = []
        self.meter_rows: list[tuple] = []
        self.heartbeats: dict[str, str] = {}
        # (future, transaction id or None, then)
        self.waiters: list[tuple[asyncio.Future, int | None, Callable[[], None] | None]] = []

    def __bool__(self) -> bool:
        return bool(self.writes or self.meter_rows or self.heartbeats or self.waiters)

    def size(self) -> int:
        return len(self.writes) + len(self.meter_rows) + len(self.heartbeats)

    def statements(self) -> list[Write | Combined]:
        """The batch as statements, in order: the writes, then the meter rows, then the
        heartbeats; the rows of one kind (levity/store_rows.py) combined into one statement."""
        statements = combine(self.writes)
        for kind, rows in ((METER_VALUE_ROWS, self.meter_rows), (HEARTBEAT_ROWS, list(self.heartbeats.items()))):
            if rows:
                statements.append(Combined(kind, [Write(kind, row) for row in rows]))
        return statements


class _Outcome(NamedTuple):
    error: psycopg.Error | None  # the batch was rolled back (it is tried again)
    refused: list[str]  # writes the database refused, dropped alone (what it said)
    refused_keys: set[int]  # the transactions those belonged to
    reconnected: bool
    changed_keys: frozenset[int] = frozenset()  # stops not written: their row changed meanwhile (ChangedMeanwhile)


def _is_stop(statement: Write | Combined) -> bool:
    return (statement.rows if isinstance(statement, Combined) else statement.sql) is STOP_ROWS


class PostgresStore:
    def __init__(self, url: str, password: bytes | None = None, check_schema: bool = True):
        self.name = redact(url)
        self._url = url
        self._password = password.decode() if password else None
        self._pending = _Batch()  # written, not yet handed to the writer thread
        self._inflight: _Batch | None = None  # the batch the writer thread commits now
        self._scheduled = False  # a commit is scheduled or running
        self._retry: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None  # set by the first write under a loop
        self._io: ThreadPoolExecutor | None = None
        self._writer: psycopg.Connection | None = None  # the writer thread's own connection
        self._down_until = 0.0  # after a failed connect: fail fast instead of blocking the loop again
        self.commits = 0
        self.commit_failures = 0  # commits the database could not take (their writes are retried)
        self.writes_refused = 0  # writes the database refuses for good (logged, then dropped)
        self.reconnects = 0
        self.outage = OutageTracker("postgresql", self.name)  # the `ocpp.store` down/up events
        # Fewer round trips on the hot path: what this instance knows of its chargers'
        # transactions, and per charge point the id of its next transaction, fetched with the
        # reads its start decides on (start_lookup) and used by start_transaction().
        self.owned = OwnedTransactions()
        self._next_ids: dict[str, int] = {}
        self._reads: ThreadPoolExecutor | None = None  # the awaited reads' threads
        self._reader = threading.local()  # each reader thread's connection
        self._readers: list[psycopg.Connection] = []  # all of them, closed by close()
        try:
            self._db = self._connect()
            if check_schema:
                check(self._db.cursor(), self.name)
        except psycopg.Error as exc:
            raise DatabaseStartupError(f"cannot open the database {self.name}: {describe(exc)}") from None
        except SchemaError as exc:
            raise DatabaseStartupError(str(exc)) from None

    def _connect(self) -> psycopg.Connection:
        kwargs = {"password": self._password} if self._password else {}
        return psycopg.connect(self._url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS,
                               application_name="levity", **kwargs)

    def connection(self) -> psycopg.Connection:
        """The reads' connection (the event loop's), opened again after a loss
        (psycopg.OperationalError when it cannot be: at most one attempt per RETRY_SECONDS, as a
        connect blocks the event loop)."""
        if self._db.closed or self._db.broken:
            if time.monotonic() < self._down_until:
                raise psycopg.OperationalError("the database was unreachable moments ago")
            try:
                self._db = self._connect()
            except psycopg.Error:
                self._down_until = time.monotonic() + RETRY_SECONDS
                raise
            self.reconnects += 1
            log.warning("database %s: connected again", self.name)
        return self._db

    def _writer_connection(self) -> psycopg.Connection:
        """The commits' connection (the writer thread's, or the caller's without a loop)."""
        if self._writer is None or self._writer.closed or self._writer.broken:
            self._writer = self._connect()
        return self._writer

    def close(self) -> None:
        """Commit what is queued (on the calling thread) and close. Called once the loop's work is done."""
        if self._retry is not None:
            self._retry.cancel()
        if self._io is not None:
            self._io.shutdown(wait=True)  # a commit still running finishes first
            self._io = None
        if self._reads is not None:
            self._reads.shutdown(wait=True)
            self._reads = None
        for reader in self._readers:
            reader.close()
        self._loop = None
        try:
            self._commit_now()
        finally:
            self._db.close()
            if self._writer is not None:
                self._writer.close()

    # Queued writes ----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """As Store.stats(), for /metrics."""
        return {"commits": self.commits, "commit_failures": self.commit_failures,
                "writes_refused": self.writes_refused, "writes_dropped": 0,
                "pending_writes": self._pending.size(), "reconnects": self.reconnects,
                "outages": self.outage.outages, "down": int(self.outage.down), "owned_hits": self.owned.hits}

    def _write(self, sql: "str | Rows", params=(), key: int | None = None) -> None:
        """Queue a statement, or a row of a kind combined with the batch's others (Rows)."""
        self._pending.writes.append(Write(sql, params, False, key))
        self._schedule()

    def _write_many(self, sql: str, rows) -> None:
        rows = list(rows)
        if rows:
            self._pending.writes.append(Write(sql, rows, True, None))
            self._schedule()

    def _schedule(self) -> None:
        """A commit at the end of this loop turn, unless one is scheduled, running, or waits to be
        retried. Without an event loop (command line tools) the caller commits."""
        if self._scheduled:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._scheduled = True
        self._loop = loop
        loop.call_soon(self._commit_batch)

    def _commit_batch(self) -> None:
        """Hand what is queued to the writer thread: the event loop never waits for a commit."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._inflight is not None:
            return  # _committed() starts the next one
        batch, self._pending = self._pending, _Batch()
        if not batch:
            self._scheduled = False
            return
        self._inflight = batch
        if self._io is None:
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="levity-pg")
        hand_off(self._loop, self._io, self._apply, batch, then=lambda outcome: self._committed(batch, outcome))

    def _committed(self, batch: "_Batch", outcome: "_Outcome") -> None:
        self._inflight = None
        self._scheduled = False
        if outcome.reconnected:
            self.reconnects += 1
        self._count_refused(outcome)
        if outcome.error is None:
            self.commits += 1
            self.outage.recovered(batch.size())
            for future, key, then in batch.waiters:
                if future.done():
                    continue
                if key is not None and key in outcome.refused_keys:  # _count_refused() dropped it from owned
                    future.set_exception(StorageError(f"the database refused the write for transaction {key}",
                                                      refused=True))
                elif key is not None and key in outcome.changed_keys:
                    changed = ChangedMeanwhile(key)
                    self.owned.forget(key)
                    log.warning("database %s: %s: answered with a CALLERROR, its resend is decided again",
                                self.name, changed)
                    future.set_exception(StorageError(f"the write for transaction {key} was not stored: {changed}",
                                                      refused=True))
                else:
                    if then is not None:
                        then()
                    future.set_result(None)
        else:
            self.commit_failures += 1
            error = StorageError(f"database {self.name}: {describe(outcome.error)}")
            log.error("%s: the writes stay queued and are tried again in %.0fs", error, RETRY_SECONDS)
            failed_keys = {key for _, key, _ in batch.waiters if key is not None}
            for future, _, _ in batch.waiters:
                if not future.done():
                    future.set_exception(error)
            for key in failed_keys:  # their chargers are told to retry: their writes go
                self.owned.forget(key)
            self._requeue(batch, failed_keys)
            if isinstance(outcome.error, psycopg.OperationalError):
                self.outage.failed(describe(outcome.error), self._pending.size())
            if not self._pending.waiters:
                # Nobody waits for an answer: try again in a while, not on every new write.
                self._scheduled = True
                self._retry = self._loop.call_later(RETRY_SECONDS, self._commit_batch)
                return
        if self._pending:  # what queued up during this commit goes now, not one loop iteration later
            self._scheduled = True
            self._commit_batch()

    def _requeue(self, failed: "_Batch", failed_keys: set[int]) -> None:
        """A rolled-back batch's writes go back in front of those queued since, in order."""
        newer = self._pending
        batch = _Batch()
        batch.writes = [w for w in failed.writes if w.key is None or w.key not in failed_keys] + newer.writes
        batch.meter_rows = failed.meter_rows + newer.meter_rows
        batch.heartbeats = {**failed.heartbeats, **newer.heartbeats}
        batch.waiters = newer.waiters
        self._pending = batch

    def _count_refused(self, outcome: "_Outcome") -> None:
        for message in outcome.refused:
            self.writes_refused += 1
            self.owned.forget_all()  # what it knew may include the refused write
            log.error("database %s refused a write, which is dropped: %s", self.name, message)

    def commit(self) -> None:
        """Under the event loop: commit soon (commit_durable() waits for it). Without one (the
        command line): commit what is queued now; StorageError when the database cannot take it
        (the writes stay queued)."""
        if _loop_running():
            self._schedule()
            return
        self._commit_now()

    def _commit_now(self) -> None:
        batch, self._pending = self._pending, _Batch()
        if not batch:
            return
        outcome = self._apply(batch)
        self._count_refused(outcome)
        if outcome.error is not None:
            self._requeue(batch, set())
            raise StorageError(f"database {self.name}: {describe(outcome.error)}") from outcome.error
        self.commits += 1
        if outcome.refused_keys:
            raise StorageError(f"the database refused a write: {outcome.refused[0]}", refused=True)
        if outcome.changed_keys:
            raise StorageError(f"transaction {min(outcome.changed_keys)} was closed or stopped by another process "
                               "meanwhile: its stop was not written", refused=True)

    async def commit_durable(self, key: int | None = None, then: Callable[[], None] | None = None) -> None:
        """Awaited by the transaction handlers before they answer: everything written so far is
        committed. StorageError when it could not be, or the write for transaction `key` was
        refused; then that transaction's own writes are dropped (its charger sends them again),
        as the SQLite store does, and the others stay queued. then: as in the SQLite store."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.waiters.append((future, key, then))
        # A commit in flight: its report starts the next batch, this one. Else commit now (a
        # retry that waits is cancelled); what arrives meanwhile forms the next batch.
        if self._inflight is None:
            self._loop, self._scheduled = loop, True
            self._commit_batch()
        await future

    async def drain(self, timeout: float = 5.0) -> None:
        """Before close(): wait (at most `timeout`) until what is queued is committed or has failed."""
        if self._loop is None or not (self._pending or self._inflight is not None):
            return
        try:
            await asyncio.wait_for(self.commit_durable(), timeout)
        except (StorageError, asyncio.TimeoutError) as exc:
            log.error("%s", exc or "database: the queued writes were not committed in time")

    def _apply(self, batch: "_Batch") -> "_Outcome":
        """One database transaction for the batch, in one round trip (pipeline mode); on the
        writer thread. Never raises. A write the database refuses (a value out of its range)
        must not hold back the others forever: then each statement is committed alone, the
        rows of a combined one that fails each alone too, and one refused is reported and dropped."""
        reconnected = False
        statements = batch.statements()
        # The stops last in a merged statement: its result is their RETURNING (the statements
        # of one merge change a table each, so their order there does not matter).
        stops = [statement for statement in statements if _is_stop(statement)]
        stopped_keys = {write.key for statement in stops for write in statement.writes}
        written: set[int] = set()  # the stops written (RETURNING)
        try:
            if self._writer is not None and (self._writer.closed or self._writer.broken):
                reconnected = True
            db = self._writer_connection()
            merged = one_statement([s for s in statements if not _is_stop(s)] + stops) if statements else None
            if merged is not None:
                # One statement is a transaction of its own (autocommit): without BEGIN and COMMIT
                # in pipeline mode it costs the driver and the server a third as much.
                cursor = db.execute(*merged)
                if stops:
                    written.update(row[0] for row in cursor.fetchall())
            else:
                with db.pipeline():
                    db.execute("BEGIN")
                    cursors = [statement.send(db) for statement in statements]
                    db.execute("COMMIT")
                for statement, cursor in zip(statements, cursors):
                    if _is_stop(statement):
                        written.update(row[0] for row in cursor.fetchall())
            return _Outcome(None, [], set(), reconnected, frozenset(stopped_keys - written))
        except psycopg.OperationalError as exc:
            self._rollback()
            return _Outcome(exc, [], set(), reconnected)
        except psycopg.Error:
            self._rollback()
        refused, refused_keys = [], set()
        for statement in statements:
            error = self._alone(statement, written)
            if error is None:
                continue
            if len(statement.writes) == 1:
                failed = [(statement.writes[0], error)]
            else:  # which rows of the combined statement: each alone
                failed = [(write, self._alone(write, written)) for write in statement.writes]
            for write, error in failed:
                if isinstance(error, psycopg.OperationalError):  # the database went away: the batch is retried
                    return _Outcome(error, refused, refused_keys, reconnected)
                if error is not None:
                    refused.append(f"{describe(error)} ({write.describe()})")
                    if write.key is not None:
                        refused_keys.add(write.key)
        return _Outcome(None, refused, refused_keys, reconnected, frozenset(stopped_keys - written - refused_keys))

    def _alone(self, statement: Write | Combined, written: set[int]) -> psycopg.Error | None:
        """One statement in a database transaction of its own; what the database said if it
        failed. The ids of the stops it wrote go into `written`."""
        try:
            with self._writer.transaction():
                cursor = statement.send(self._writer)
                if _is_stop(statement):
                    written.update(row[0] for row in cursor.fetchall())
        except psycopg.Error as exc:
            return exc
        return None

    def _rollback(self) -> None:
        writer = self._writer
        if writer is not None and not (writer.closed or writer.broken):
            try:
                writer.execute("ROLLBACK")
            except psycopg.Error:
                pass

    def _read(self, sql: str, params=()) -> psycopg.Cursor:
        """A query on the committed state on the event loop's connection (the command line and
        the operator API; a transaction start or stop is committed before its answer, so a
        charger's next call sees it)."""
        try:
            cursor = self.connection().execute(sql, params)
        except psycopg.Error as exc:
            raise self._read_failed(exc) from exc
        self._read_worked()
        return cursor

    def _read_failed(self, exc: psycopg.Error) -> StorageError:
        if isinstance(exc, psycopg.OperationalError):
            self.outage.failed(describe(exc), self._pending.size())
        return StorageError(f"database {self.name}: {describe(exc)}")

    def _read_worked(self) -> None:
        if self.outage.down and not self._pending and self._inflight is None:  # nothing waits: back
            self.outage.recovered(0)

    async def _read_async(self, *queries: tuple[str, Any]) -> list[list[tuple]]:
        """Several queries in one round trip on a reader thread, awaited: the event loop serves
        other chargers meanwhile. Their rows; StorageError when the database cannot answer."""
        if self._reads is None:
            self._reads = ThreadPoolExecutor(max_workers=READER_THREADS, thread_name_prefix="levity-pg-read")
        loop = asyncio.get_running_loop()
        answered = loop.create_future()
        hand_off(loop, self._reads, self._fetch, queries,
                 then=lambda outcome: answered.done() or answered.set_result(outcome))  # done: the caller left
        outcome = await answered
        if isinstance(outcome, psycopg.Error):
            raise self._read_failed(outcome) from outcome
        if isinstance(outcome, BaseException):
            raise outcome
        rows, reconnected = outcome
        if reconnected:
            self.reconnects += 1
            log.warning("database %s: a reader connected again", self.name)
        self._read_worked()
        return rows

    def _fetch(self, queries) -> tuple[list[list[tuple]], bool] | psycopg.Error:
        """On a reader thread: the rows of each query (pipelined when several), and whether
        this thread had to connect again; or what the database said."""
        try:
            return self._fetch_rows(queries)
        except psycopg.Error as exc:
            return exc

    def _fetch_rows(self, queries) -> tuple[list[list[tuple]], bool]:
        db: psycopg.Connection | None = getattr(self._reader, "db", None)
        reconnected = db is not None and (db.closed or db.broken)
        if db is None or reconnected:
            if reconnected and time.monotonic() < self._down_until:
                raise psycopg.OperationalError("the database was unreachable moments ago")
            try:
                new = self._connect()
            except psycopg.Error:
                self._down_until = time.monotonic() + RETRY_SECONDS  # one failed connect per second
                raise
            if db is not None:
                self._readers.remove(db)
            db = self._reader.db = new
            self._readers.append(db)
        if len(queries) == 1:
            return [db.execute(*queries[0]).fetchall()], reconnected
        with db.pipeline():
            cursors = [db.execute(sql, params) for sql, params in queries]
        return [cursor.fetchall() for cursor in cursors], reconnected

    # Charge points -------------------------------------------------------------------------

    def register(self, charge_point_ids: Iterable[str], now: str) -> None:
        self._write_many(
            "INSERT INTO charge_points (id, registered, first_seen) VALUES (%s, 1, %s) "
            "ON CONFLICT (id) DO UPDATE SET registered = 1", [(cp, now) for cp in charge_point_ids])

    def unregister(self, charge_point_ids: Iterable[str]) -> None:
        self._write_many("UPDATE charge_points SET registered = 0 WHERE id = %s", [(cp,) for cp in charge_point_ids])

    def set_password_hash(self, charge_point_id: str, password_hash: str | None, now: str) -> None:
        self._write(
            "INSERT INTO charge_points (id, registered, first_seen, password_hash) VALUES (%s, 1, %s, %s) "
            "ON CONFLICT (id) DO UPDATE SET password_hash = excluded.password_hash, registered = 1",
            (charge_point_id, now, password_hash))

    def password_hash(self, charge_point_id: str) -> str | None:
        row = self._read("SELECT password_hash FROM charge_points WHERE id = %s", (charge_point_id,)).fetchone()
        return row[0] if row else None

    def registered_ids(self) -> list[str]:
        return [r[0] for r in self._read("SELECT id FROM charge_points WHERE registered = 1 ORDER BY id")]

    def is_registered(self, charge_point_id: str) -> bool:
        row = self._read("SELECT registered FROM charge_points WHERE id = %s", (charge_point_id,)).fetchone()
        return bool(row and row[0])

    def record_boot(self, charge_point_id: str, info: dict[str, Any], status: str, registered: bool, now: str) -> None:
        self._write(BOOT_ROWS, (charge_point_id, int(registered), info.get("vendor"), info.get("model"),
                                info.get("serial_number"), info.get("firmware_version"), status, now))

    def record_ocpp_version(self, charge_point_id: str, version: str) -> None:
        """As Store.record_ocpp_version: the version of a known charge point's latest connection."""
        self._write("UPDATE charge_points SET ocpp_version = %s WHERE id = %s", (version, charge_point_id))

    def record_heartbeat(self, charge_point_id: str, now: str) -> None:
        self._pending.heartbeats[charge_point_id] = now
        self._schedule()

    def record_cp_status(self, charge_point_id: str, column: str, status: str) -> None:
        assert column in ("firmware_status", "diagnostics_status")
        self._write(f"UPDATE charge_points SET {column} = %s WHERE id = %s", (status, charge_point_id))

    def charge_point(self, charge_point_id: str) -> dict[str, Any] | None:
        cursor = self._read("SELECT * FROM charge_points WHERE id = %s", (charge_point_id,))
        row = cursor.fetchone()
        return dict(zip([c.name for c in cursor.description], row)) if row else None

    # Connectors ----------------------------------------------------------------------------

    def record_status(self, charge_point_id: str, connector_id: int, status: str, error_code: str,
                      info: str | None, vendor_error_code: str | None, status_timestamp: str | None,
                      now: str) -> None:
        self._write(STATUS_ROWS, (charge_point_id, connector_id, status, error_code, info, vendor_error_code,
                                  status_timestamp, now))

    def connector_status(self, charge_point_id: str, connector_id: int) -> tuple[str, str] | None:
        return self._read("SELECT status, error_code FROM connectors WHERE charge_point_id = %s "
                          "AND connector_id = %s", (charge_point_id, connector_id)).fetchone()

    # Transactions --------------------------------------------------------------------------

    def start_transaction(self, charge_point_id: str, connector_id: int, id_tag: str, meter_start: int,
                          start_timestamp: str, reservation_id: int | None, now: str,
                          event_id: str | None = None) -> int:
        # The id from the shared sequence (unique across instances); the row goes with the
        # batch, which the caller commits before it answers.
        transaction_id = self._next_ids.pop(charge_point_id, None)  # fetched by start_lookup()
        if transaction_id is None:
            transaction_id = self._read(NEXT_ID).fetchone()[0]
        self.owned.started(charge_point_id, transaction_id, Transaction(
            transaction_id, charge_point_id, connector_id, id_tag, meter_start, None, False, start_timestamp,
            created_at=now, start_event_id=event_id))
        self._write(
            START_ROWS, (transaction_id, charge_point_id, connector_id, id_tag, meter_start, start_timestamp,
             reservation_id, now, event_id), key=transaction_id)
        return transaction_id

    def forget_transaction(self, transaction_id: int) -> None:
        """As Store.forget_transaction: a start whose answer could not be given."""
        self.owned.forget(transaction_id)
        self._write("DELETE FROM transactions WHERE id = %s AND stopped_at IS NULL", (transaction_id,))

    def forget_stop(self, transaction_id: int, event_id: str) -> None:
        """As Store.forget_stop: a stop whose answer could not be given is open again."""
        self.owned.stopped(transaction_id, None)
        self._write("UPDATE transactions SET meter_stop = NULL, stop_timestamp = NULL, stop_reason = NULL, "
                    "stop_id_tag = NULL, stopped_at = NULL, stop_event_id = NULL, stop_request = NULL "
                    "WHERE id = %s AND stop_event_id = %s", (transaction_id, event_id))

    def reopen_abandoned(self, transaction_id: int, event_id: str) -> None:
        """As Store.reopen_abandoned: undo a close whose anomaly could not be sent."""
        self._write("UPDATE transactions SET abandoned_at = NULL, abandon_reason = NULL, abandon_event_id = NULL, "
                    "abandon_event_sent = 1 WHERE id = %s AND abandon_event_id = %s", (transaction_id, event_id))

    def transaction(self, transaction_id: int) -> Transaction | None:
        if not -2**63 <= transaction_id < 2**63:  # not a BIGINT: no such transaction
            return None
        row = self._read(BY_ID, (transaction_id,)).fetchone()
        return Transaction.from_row(row) if row else None

    def identical_start(self, charge_point_id: str, connector_id: int, id_tag: str, meter_start: int,
                        start_timestamp: str) -> Transaction | None:
        row = self._read(IDENTICAL_START, (charge_point_id, connector_id, start_timestamp, id_tag,
                                           meter_start)).fetchone()
        return Transaction.from_row(row) if row else None

    def open_on_connector(self, charge_point_id: str, connector_id: int) -> list[Transaction]:
        return [Transaction.from_row(row) for row in self._read(OPEN_ON_CONNECTOR, (charge_point_id, connector_id))]

    # The reads a transaction handler awaits (as in Store), each one round trip off the loop.

    async def start_lookup(self, charge_point_id: str, connector_id: int, id_tag: str, meter_start: int,
                           start_timestamp: str) -> tuple[Transaction | None, list[Transaction]]:
        """As Store.start_lookup, with the id of the charger's next transaction in the same
        statement (kept for its next start when this one is a repeat)."""
        sql = START_LOOKUP_ID_KEPT if charge_point_id in self._next_ids else START_LOOKUP_WITH_ID
        rows, = await self._read_async((sql, {
            "charge_point_id": charge_point_id, "connector_id": connector_id, "timestamp": start_timestamp,
            "id_tag": id_tag, "meter_start": meter_start}))
        self._keep_next_id(charge_point_id, rows[0][0])
        found = [(row[1], Transaction.from_row(row[2:])) for row in rows if row[2] is not None]
        identical = [transaction for same, transaction in found if same]
        if identical:
            return identical[0], []
        return None, [transaction for _, transaction in found]

    async def load_transaction(self, transaction_id: int) -> Transaction | None:
        """A transaction started here by a charger still connected here comes from memory (a
        StopTransaction then costs no round trip); its stop is written only if no other process
        closed it meanwhile (stop_transaction, ChangedMeanwhile)."""
        if not -2**63 <= transaction_id < 2**63:  # not a BIGINT: no such transaction
            return None
        row = self.owned.open_row(transaction_id)
        if row is not None:
            return row
        rows, = await self._read_async((BY_ID, (transaction_id,)))
        return Transaction.from_row(rows[0]) if rows else None

    async def load_station_transaction(self, charge_point_id: str, station_transaction_id: str,
                                       may_start: bool = False) -> StationTransaction | None:
        extra = self._next_id_query(charge_point_id) if may_start else ()
        rows, *next_id = await self._read_async((BY_STATION_ID, (charge_point_id, station_transaction_id)), *extra)
        self._keep_next_id(charge_point_id, next_id[0][0][0] if next_id else None)
        if not rows:
            return None
        transaction = Transaction.from_row(rows[0])
        return StationTransaction(transaction, station_transaction_id, transaction.meter_start_known)

    async def load_open_on_evse(self, charge_point_id: str, evse_id: int) -> list[Transaction]:
        rows, = await self._read_async((OPEN_ON_EVSE, (charge_point_id, evse_id)))
        return [Transaction.from_row(row) for row in rows]

    def _next_id_query(self, charge_point_id: str) -> tuple[tuple[str, tuple], ...]:
        return () if charge_point_id in self._next_ids else ((NEXT_ID, ()),)

    def _keep_next_id(self, charge_point_id: str, transaction_id: int | None) -> None:
        """Only while the charger is connected here (claim_connection() and
        release_connection() drop it: an id never used is a gap, never a duplicate)."""
        if transaction_id is not None and self.owned.connected(charge_point_id):
            self._next_ids.setdefault(charge_point_id, transaction_id)

    def open_on_evse(self, charge_point_id: str, evse_id: int) -> list[Transaction]:
        return [Transaction.from_row(row) for row in self._read(OPEN_ON_EVSE, (charge_point_id, evse_id))]

    def stop_transaction(self, transaction_id: int, meter_stop: int, stop_timestamp: str, reason: str,
                         id_tag: str | None, now: str, event_id: str | None = None,
                         request: dict | None = None, was_abandoned: bool = False) -> None:
        """As Store.stop_transaction (written only if the row is still as the stop saw it)."""
        self.owned.stopped(transaction_id, meter_stop)
        self._write(
            STOP_ROWS, (meter_stop, stop_timestamp, reason, id_tag, now, event_id,
             json.dumps(request, sort_keys=True) if request is not None else None, transaction_id, was_abandoned),
            key=transaction_id)

    def close_abandoned(self, transaction_id: int, reason: str, now: str, event_id: str,
                        event_sent: bool = True, key: int | None = None) -> Transaction:
        """As Store.close_abandoned: LookupError unknown, ValueError already closed. Under the
        event loop decided from the committed state (the caller holds the charge point's
        transaction lock and awaits commit_durable(key): key is the transaction whose durable
        commit carries the close); on the command line committed at once and read back."""
        if not reason or not reason.strip():
            raise ValueError("a reason is required to close a transaction")
        sql = ("UPDATE transactions SET abandoned_at = %s, abandon_reason = %s, abandon_event_id = %s, "
               "abandon_event_sent = %s WHERE id = %s AND stopped_at IS NULL AND abandoned_at IS NULL")
        params = (now, reason.strip(), event_id, int(event_sent), transaction_id)
        if _loop_running():
            closed = self.transaction(transaction_id)
            if closed is not None and closed.open:
                self._write(sql, params, key=transaction_id if key is None else key)
                self.owned.closed(transaction_id)
                closed = replace(closed, abandoned_at=now, abandon_reason=reason.strip(), abandon_event_id=event_id)
        else:
            self._write(sql, params, key=transaction_id if key is None else key)
            self.commit()
            closed = self.transaction(transaction_id)
        if closed is None:
            raise LookupError(f"no transaction {transaction_id}")
        if closed.abandon_event_id != event_id:
            state = "stopped" if closed.stopped else "closed as abandoned"
            raise ValueError(f"transaction {transaction_id} is already {state}")
        return closed

    def pending_closes(self) -> list[Transaction]:
        return [Transaction.from_row(row) for row in self._read(f"{SELECT} WHERE abandon_event_sent = 0 ORDER BY id")]

    def mark_close_sent(self, transaction_id: int) -> None:
        self._write("UPDATE transactions SET abandon_event_sent = 1 WHERE id = %s", (transaction_id,))

    def open_transactions(self, charge_point_id: str | None = None) -> list[dict[str, Any]]:
        return self.transactions(charge_point_id, open_only=True)

    def transactions(self, charge_point_id: str | None = None, open_only: bool | None = None,
                     limit: int | None = None, transaction_id: int | None = None,
                     newest_first: bool = False) -> list[dict[str, Any]]:
        """As Store.transactions."""
        where, params = [], []
        if charge_point_id is not None:
            where.append("charge_point_id = %s")
            params.append(charge_point_id)
        if transaction_id is not None:
            where.append("id = %s")
            params.append(transaction_id)
        if open_only is not None:
            where.append("stopped_at IS NULL AND abandoned_at IS NULL" if open_only
                         else "(stopped_at IS NOT NULL OR abandoned_at IS NOT NULL)")
        sql = SELECT + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY id"
        if newest_first:
            sql += " DESC"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        now = time.time()
        return [_operator_view(Transaction.from_row(row), now) for row in self._read(sql, params)]

    def meter_stop(self, charge_point_id: str, transaction_id: int) -> int | None:
        """As Store.meter_stop; from memory for a charger connected here once known."""
        known = self.owned.get(charge_point_id, transaction_id)
        if known is not None:
            return known.meter_stop
        if not -2**63 <= transaction_id < 2**63:  # not a BIGINT: no such transaction
            return None
        row = self._read("SELECT meter_stop FROM transactions WHERE id = %s AND charge_point_id = %s "
                         "AND stopped_at IS NOT NULL", (transaction_id, charge_point_id)).fetchone()
        meter_stop = row[0] if row else None
        self.owned.remember(charge_point_id, transaction_id, Known(meter_stop=meter_stop))
        return meter_stop

    def energy_registers(self, charge_point_id: str, transaction_id: int) -> list[tuple[str, str | None]]:
        """As Store.energy_registers; from memory for a transaction started here by a charger
        still connected here."""
        known = self.owned.get(charge_point_id, transaction_id)
        if known is not None and known.registers is not None:
            return list(known.registers)
        committed = self._read(
            "SELECT value, unit FROM meter_values WHERE transaction_id = %s AND charge_point_id = %s "
            "AND measurand = %s", (transaction_id, charge_point_id, ENERGY_REGISTER)).fetchall()
        # and those not yet committed (queued, or in the commit running now): a row whose commit
        # completes during this call may be listed twice; callers look at the highest value only
        return committed + [(row[5], row[6]) for batch in (self._inflight, self._pending) if batch is not None
                            for row in batch.meter_rows
                            if row[2] == transaction_id and row[0] == charge_point_id and row[4] == ENERGY_REGISTER]

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
            self._pending.meter_rows += rows
            self._schedule()
            if transaction_id is not None:
                self.owned.add_registers(charge_point_id, transaction_id,
                                         [(row[5], row[6]) for row in rows if row[4] == ENERGY_REGISTER])

    # Operator API: read queries --------------------------------------------------------------

    def charge_point_rows(self, charge_point_id: str | None = None) -> list[dict[str, Any]]:
        where = "WHERE cp.id = %s" if charge_point_id is not None else ""
        cursor = self._read(
            "SELECT cp.id, cp.registered, cp.vendor, cp.model, cp.serial_number, cp.firmware_version, "
            "cp.registration_status, cp.first_seen, cp.last_boot, cp.last_heartbeat, cp.ocpp_version, "
            "(SELECT max(updated_at) FROM connectors c WHERE c.charge_point_id = cp.id) AS last_status "
            f"FROM charge_points cp {where} ORDER BY cp.id", () if charge_point_id is None else (charge_point_id,))
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    def connectors(self, charge_point_id: str) -> list[dict[str, Any]]:
        cursor = self._read(
            "SELECT connector_id, status, error_code, info, vendor_error_code, status_timestamp, updated_at "
            "FROM connectors WHERE charge_point_id = %s ORDER BY connector_id", (charge_point_id,))
        names = [c.name for c in cursor.description]
        return [dict(zip(names, row)) for row in cursor]

    # OCPP 2.0.1 transactions (as in Store): Levity's integer id for the station's string id.

    def start_station_transaction(self, charge_point_id: str, station_transaction_id: str, connector_id: int | None,
                                  evse_id: int | None, id_tag: str | None, meter_start: int | None,
                                  start_timestamp: str, now: str, event_id: str | None = None) -> int:
        transaction_id = self.start_transaction(charge_point_id, connector_id or 0, id_tag or "", meter_start or 0,
                                                start_timestamp, None, now, event_id=event_id)
        self._write("UPDATE transactions SET ocpp_version = '2.0.1', station_transaction_id = %s, evse_id = %s, "
                    "meter_start_known = %s WHERE id = %s",
                    (station_transaction_id, evse_id, int(meter_start is not None), transaction_id),
                    key=transaction_id)  # dropped with the start when its commit fails
        return transaction_id

    def station_transaction(self, charge_point_id: str, station_transaction_id: str) -> StationTransaction | None:
        """As Store.station_transaction."""
        row = self._read(BY_STATION_ID, (charge_point_id, station_transaction_id)).fetchone()
        if row is None:
            return None
        transaction = Transaction.from_row(row)
        return StationTransaction(transaction, station_transaction_id, transaction.meter_start_known)

    # Operator API tokens (only their hashes) ----------------------------------------------------

    def add_api_token(self, name: str, role: str, token_hash: str, now: str) -> None:
        """KeyError when the name is taken (nothing stays queued)."""
        self.commit()
        try:
            with self.connection().transaction():
                self._db.execute("INSERT INTO api_tokens (name, role, token_hash, created_at) "
                                 "VALUES (%s, %s, %s, %s)", (name, role, token_hash, now))
        except psycopg.errors.UniqueViolation:
            raise KeyError(name) from None

    def revoke_api_token(self, name: str) -> bool:
        self.commit()
        return self.connection().execute("DELETE FROM api_tokens WHERE name = %s", (name,)).rowcount > 0

    def api_tokens(self) -> list[tuple[str, str, str]]:
        return [tuple(r) for r in self._read("SELECT name, role, created_at FROM api_tokens ORDER BY name")]

    def api_token(self, token_hash: str) -> tuple[str, str] | None:
        row = self._read("SELECT name, role FROM api_tokens WHERE token_hash = %s", (token_hash,)).fetchone()
        return tuple(row) if row else None

    def open_transaction_count(self) -> int:
        return self._read("SELECT count(*) FROM transactions WHERE stopped_at IS NULL").fetchone()[0]

    def count(self, table: str) -> int:
        assert table in ("charge_points", "connectors", "transactions", "meter_values")
        return self._read(f"SELECT count(*) FROM {table}").fetchone()[0]

    # Several instances (levity/cluster.py) --------------------------------------------------

    def claim_connection(self, charge_point_id: str, instance_id: str) -> int:
        """Record that this instance now holds the charger's connection; the new generation.
        The notification tells the instance that held it before to close its stale one."""
        self.owned.release(charge_point_id)
        self._next_ids.pop(charge_point_id, None)
        # One statement, one round trip on the event loop (a reconnect storm makes thousands):
        # the notification leaves when the claim commits, as levity/cluster.py reads it.
        generation = self._read(
            "WITH claimed AS (INSERT INTO connection_owners (charge_point_id, instance_id, generation) "
            "VALUES (%(cp)s, %(instance)s, nextval('connection_generations')) ON CONFLICT (charge_point_id) "
            "DO UPDATE SET instance_id = excluded.instance_id, generation = excluded.generation, "
            "connected_at = now() RETURNING generation) "
            "SELECT generation, pg_notify('levity_connections', json_build_array(%(cp)s::text, %(instance)s::text, "
            "generation)::text) FROM claimed", {"cp": charge_point_id, "instance": instance_id}).fetchone()[0]
        self.owned.claim(charge_point_id)  # from now on its transactions change only here
        return generation

    def release_connection(self, charge_point_id: str) -> None:
        """This instance no longer holds the charger's connection: forget what it knew."""
        self.owned.release(charge_point_id)
        self._next_ids.pop(charge_point_id, None)


def describe(exc: psycopg.Error) -> str:
    """libpq's first line (e.g. 'password authentication failed for user "levity"'), which
    never carries the password."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
