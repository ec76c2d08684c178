"""Levity's state in a shared PostgreSQL database: the public interface of levity/store.py's
Store, for several instances behind a balancer (docs/scaling.md).

Driver: psycopg 3. The Store interface is synchronous on purpose (a handler decides about a
repeated StartTransaction by reading and writing without an await in between), and psycopg is
the one well-kept driver with the same types in a blocking and an asyncio API: this module uses
its blocking connection on the event loop thread, levity/cluster.py its asyncio connection for
LISTEN/NOTIFY.

Writes are queued and committed together once per event loop turn, in one database transaction
sent in pipeline mode (one round trip for hundreds of calls), as the SQLite store groups its
commits. A read sends the queued writes ahead of itself in the same round trip and the same open
transaction, so it sees what this instance wrote. A transaction start or stop is committed before
the charger gets its answer (commit() / commit_durable()). When the database cannot take a
commit, its writes go back to the queue, in order, and are tried again (StorageError to a caller
that waits for it): a write is never silently dropped. A write the database refuses for good (a
value out of its range) is applied alone, logged and counted, so it cannot hold back the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Iterable

import psycopg

from levity.database import DatabaseStartupError, redact
from levity.schema_pg import SchemaError, check
from levity.store import TRANSACTION_SELECT, StationTransaction, StorageError, Transaction, _operator_view

log = logging.getLogger("levity.store")

RETRY_SECONDS = 1.0  # wait before a queued batch the database refused is tried again
CONNECT_TIMEOUT_SECONDS = 5

INSERT_METER_VALUE = (
    "INSERT INTO meter_values (charge_point_id, connector_id, transaction_id, timestamp, measurand, value, unit, "
    "phase, context, location, format) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)")
SELECT = TRANSACTION_SELECT  # no placeholders: the same text serves both engines


class PostgresStore:
    def __init__(self, url: str, password: bytes | None = None, check_schema: bool = True):
        self.name = redact(url)
        self._url = url
        self._password = password.decode() if password else None
        self._queue: list[tuple[str, Any, bool, int | None]] = []  # (sql, params or rows, executemany, key)
        self._meter_rows: list[tuple] = []
        self._heartbeats: dict[str, str] = {}
        self._scheduled = False
        self._in_transaction = False  # this turn's writes sent but not yet committed
        self._sent: list[tuple] = []  # those writes, to queue again if the commit fails
        self._down_until = 0.0  # after a failed connect: fail fast instead of blocking the loop again
        self.commits = 0
        self.commit_failures = 0  # commits the database could not take (their writes are retried)
        self.writes_refused = 0  # writes the database refuses for good (logged, then dropped)
        self._refused_keys: set[int] = set()  # transactions whose write was refused, for commit_durable()
        self.reconnects = 0
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
        """The open connection, opened again after a loss (psycopg.OperationalError when it cannot
        be: at most one attempt per RETRY_SECONDS, as a connect blocks the event loop)."""
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

    def close(self) -> None:
        try:
            self.commit()
        finally:
            self._db.close()

    # Queued writes ----------------------------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """As Store.stats(), for /metrics."""
        return {"commits": self.commits, "commit_failures": self.commit_failures,
                "writes_refused": self.writes_refused, "writes_dropped": 0,
                "pending_writes": len(self._queue) + len(self._meter_rows) + len(self._heartbeats),
                "reconnects": self.reconnects}

    def _write(self, sql: str, params=(), key: int | None = None) -> None:
        self._queue.append((sql, params, False, key))
        self._schedule()

    def _write_many(self, sql: str, rows) -> None:
        rows = list(rows)
        if rows:
            self._queue.append((sql, rows, True, None))
            self._schedule()

    def _schedule(self) -> None:
        if self._scheduled:
            return
        try:
            asyncio.get_running_loop().call_soon(self._commit_soon)
            self._scheduled = True
        except RuntimeError:  # no event loop (command line tools): the caller commits
            pass

    def _commit_soon(self) -> None:
        self._scheduled = False
        try:
            self.commit()
        except StorageError as exc:
            log.error("%s: the writes stay queued and are tried again in %.0fs", exc, RETRY_SECONDS)
            self._scheduled = True
            asyncio.get_running_loop().call_later(RETRY_SECONDS, self._commit_soon)

    def commit(self) -> None:
        """Commit this turn's writes (those queued and those already sent by a read) in one
        round trip; StorageError when the database cannot take them (they stay queued)."""
        if not (self._in_transaction or self._queue or self._meter_rows or self._heartbeats):
            return
        try:
            db = self.connection()
            with db.pipeline():
                self._send_pending(db)
                db.execute("COMMIT")
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        self._in_transaction = False
        self._sent = []
        self.commits += 1

    async def commit_durable(self, key: int | None = None) -> None:
        """Awaited by the transaction handlers before they answer: everything written so far is
        committed. StorageError when it could not be, or the write for transaction `key` was
        refused; then that transaction's own writes are dropped (its charger sends them again),
        as the SQLite store does, and the others stay queued."""
        try:
            self.commit()
        except StorageError:
            if key is not None:
                self._queue = [entry for entry in self._queue if entry[3] != key]
            raise
        if key is not None and key in self._refused_keys:
            self._refused_keys.discard(key)
            raise StorageError(f"the database refused the write for transaction {key}", refused=True)

    async def drain(self, timeout: float = 5.0) -> None:
        """Before close(): commit what is queued (a failure is logged; close() tries once more)."""
        try:
            self.commit()
        except StorageError as exc:
            log.error("%s", exc)

    def _read(self, sql: str, params=()) -> psycopg.Cursor:
        """A query that sees this instance's writes: the queued ones go first, in the same round
        trip and the same (still open) transaction, as SQLite reads its own uncommitted writes."""
        try:
            db = self.connection()
            with db.pipeline():
                self._send_pending(db)
                cursor = db.execute(sql, params)
        except psycopg.Error as exc:
            raise self._failed(exc) from exc
        return cursor

    def _send_pending(self, db: psycopg.Connection) -> None:
        """Send the queued writes inside this turn's transaction (opened here); kept in _sent
        until the commit, to queue them again if it fails."""
        if not (self._queue or self._meter_rows or self._heartbeats):
            return
        batch = (self._queue, self._meter_rows, self._heartbeats)
        self._queue, self._meter_rows, self._heartbeats = [], [], {}
        self._sent.append(batch)
        if not self._in_transaction:
            db.execute("BEGIN")
            self._in_transaction = True
        for sql, params, many, _ in self._entries(*batch):
            if many:
                db.cursor().executemany(sql, params)
            else:
                db.execute(sql, params)

    @staticmethod
    def _entries(queue, meters, beats):
        yield from queue
        if meters:
            yield INSERT_METER_VALUE, meters, True, None
        if beats:
            yield ("UPDATE charge_points SET last_heartbeat = %s WHERE id = %s",
                   [(now, cp) for cp, now in beats.items()], True, None)

    def _failed(self, exc: psycopg.Error) -> StorageError:
        """Roll back; every write of the open transaction goes back in front of the queue, in order."""
        self.commit_failures += 1
        if self._in_transaction and not (self._db.closed or self._db.broken):
            try:
                self._db.execute("ROLLBACK")
            except psycopg.Error:
                pass
        self._in_transaction = False
        for queue, meters, beats in reversed(self._sent):
            self._queue = queue + self._queue
            self._meter_rows = meters + self._meter_rows
            beats.update(self._heartbeats)
            self._heartbeats = beats
        self._sent = []
        if not isinstance(exc, psycopg.OperationalError):
            self._apply_one_by_one()
        return StorageError(f"database {self.name}: {describe(exc)}")

    def _apply_one_by_one(self) -> None:
        """A write the database refuses (a value out of its range) must not hold back the others
        forever: each queued write is committed alone, and one refused is logged and counted."""
        entries = list(self._entries(self._queue, self._meter_rows, self._heartbeats))
        self._queue, self._meter_rows, self._heartbeats = [], [], {}
        for index, (sql, params, many, key) in enumerate(entries):
            try:
                with self._db.transaction():
                    if many:
                        self._db.cursor().executemany(sql, params)
                    else:
                        self._db.execute(sql, params)
            except psycopg.OperationalError:
                self._queue = entries[index:] + self._queue  # the database went away: keep the rest
                return
            except psycopg.Error as exc:
                self.writes_refused += 1
                if key is not None:
                    self._refused_keys.add(key)
                log.error("database %s refused a write, which is dropped: %s (%s)", self.name, describe(exc),
                          " ".join(sql.split()[:3]))

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
        self._write(
            "INSERT INTO charge_points (id, registered, vendor, model, serial_number, firmware_version, "
            "registration_status, first_seen, last_boot) VALUES (%(id)s, %(registered)s, %(vendor)s, %(model)s, "
            "%(serial)s, %(firmware)s, %(status)s, %(now)s, %(now)s) ON CONFLICT (id) DO UPDATE SET "
            "registered = greatest(charge_points.registered, excluded.registered), vendor = excluded.vendor, "
            "model = excluded.model, serial_number = excluded.serial_number, "
            "firmware_version = excluded.firmware_version, registration_status = excluded.registration_status, "
            "last_boot = excluded.last_boot",
            {"id": charge_point_id, "registered": int(registered), "vendor": info.get("vendor"),
             "model": info.get("model"), "serial": info.get("serial_number"),
             "firmware": info.get("firmware_version"), "status": status, "now": now})

    def record_ocpp_version(self, charge_point_id: str, version: str) -> None:
        """As Store.record_ocpp_version: the version of a known charge point's latest connection."""
        self._write("UPDATE charge_points SET ocpp_version = %s WHERE id = %s", (version, charge_point_id))

    def record_heartbeat(self, charge_point_id: str, now: str) -> None:
        self._heartbeats[charge_point_id] = now
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
        self._write(
            "INSERT INTO connectors VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (charge_point_id, connector_id) "
            "DO UPDATE SET status = excluded.status, error_code = excluded.error_code, info = excluded.info, "
            "vendor_error_code = excluded.vendor_error_code, status_timestamp = excluded.status_timestamp, "
            "updated_at = excluded.updated_at",
            (charge_point_id, connector_id, status, error_code, info, vendor_error_code, status_timestamp, now))

    def connector_status(self, charge_point_id: str, connector_id: int) -> tuple[str, str] | None:
        return self._read("SELECT status, error_code FROM connectors WHERE charge_point_id = %s "
                          "AND connector_id = %s", (charge_point_id, connector_id)).fetchone()

    # Transactions --------------------------------------------------------------------------

    def start_transaction(self, charge_point_id: str, connector_id: int, id_tag: str, meter_start: int,
                          start_timestamp: str, reservation_id: int | None, now: str,
                          event_id: str | None = None) -> int:
        # The id from the shared sequence (unique across instances); the row goes with the
        # batch, which the caller commits before it answers.
        transaction_id = self._read("SELECT nextval('transaction_ids')").fetchone()[0]
        self._write(
            "INSERT INTO transactions (id, charge_point_id, connector_id, id_tag, meter_start, start_timestamp, "
            "reservation_id, created_at, start_event_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (transaction_id, charge_point_id, connector_id, id_tag, meter_start, start_timestamp,
             reservation_id, now, event_id), key=transaction_id)
        return transaction_id

    def forget_transaction(self, transaction_id: int) -> None:
        """As Store.forget_transaction: a start whose answer could not be given."""
        self._write("DELETE FROM transactions WHERE id = %s AND stopped_at IS NULL", (transaction_id,))

    def forget_stop(self, transaction_id: int, event_id: str) -> None:
        """As Store.forget_stop: a stop whose answer could not be given is open again."""
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
        row = self._read(f"{SELECT} WHERE id = %s", (transaction_id,)).fetchone()
        return Transaction.from_row(row) if row else None

    def identical_start(self, charge_point_id: str, connector_id: int, id_tag: str, meter_start: int,
                        start_timestamp: str) -> Transaction | None:
        row = self._read(
            f"{SELECT} WHERE charge_point_id = %s AND connector_id = %s AND start_timestamp = %s "
            "AND id_tag = %s AND meter_start = %s ORDER BY id LIMIT 1",
            (charge_point_id, connector_id, start_timestamp, id_tag, meter_start)).fetchone()
        return Transaction.from_row(row) if row else None

    def open_on_connector(self, charge_point_id: str, connector_id: int) -> list[Transaction]:
        return [Transaction.from_row(row) for row in self._read(
            f"{SELECT} WHERE charge_point_id = %s AND connector_id = %s AND stopped_at IS NULL "
            "AND abandoned_at IS NULL ORDER BY id", (charge_point_id, connector_id))]

    def open_on_evse(self, charge_point_id: str, evse_id: int) -> list[Transaction]:
        return [Transaction.from_row(row) for row in self._read(
            f"{SELECT} WHERE charge_point_id = %s AND evse_id = %s AND stopped_at IS NULL "
            "AND abandoned_at IS NULL ORDER BY id", (charge_point_id, evse_id))]

    def stop_transaction(self, transaction_id: int, meter_stop: int, stop_timestamp: str, reason: str,
                         id_tag: str | None, now: str, event_id: str | None = None,
                         request: dict | None = None) -> None:
        self._write(
            "UPDATE transactions SET meter_stop = %s, stop_timestamp = %s, stop_reason = %s, stop_id_tag = %s, "
            "stopped_at = %s, stop_event_id = %s, stop_request = %s WHERE id = %s",
            (meter_stop, stop_timestamp, reason, id_tag, now, event_id,
             json.dumps(request, sort_keys=True) if request is not None else None, transaction_id),
            key=transaction_id)

    def close_abandoned(self, transaction_id: int, reason: str, now: str, event_id: str,
                        event_sent: bool = True, key: int | None = None) -> Transaction:
        """As Store.close_abandoned: LookupError unknown, ValueError already closed. key: the
        transaction whose durable commit carries the close."""
        if not reason or not reason.strip():
            raise ValueError("a reason is required to close a transaction")
        self._write(
            "UPDATE transactions SET abandoned_at = %s, abandon_reason = %s, abandon_event_id = %s, "
            "abandon_event_sent = %s WHERE id = %s AND stopped_at IS NULL AND abandoned_at IS NULL",
            (now, reason.strip(), event_id, int(event_sent), transaction_id),
            key=transaction_id if key is None else key)
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
        row = self._read("SELECT meter_stop FROM transactions WHERE id = %s AND charge_point_id = %s "
                         "AND stopped_at IS NOT NULL", (transaction_id, charge_point_id)).fetchone()
        return row[0] if row else None

    def energy_registers(self, charge_point_id: str, transaction_id: int) -> list[tuple[str, str | None]]:
        return self._read(
            "SELECT value, unit FROM meter_values WHERE transaction_id = %s AND charge_point_id = %s "
            "AND measurand = 'Energy.Active.Import.Register'", (transaction_id, charge_point_id)).fetchall()

    # Meter values --------------------------------------------------------------------------

    def add_meter_values(self, charge_point_id: str, connector_id: int, transaction_id: int | None,
                         meter_value: list[dict[str, Any]]) -> None:
        rows = [
            (charge_point_id, connector_id, transaction_id, entry.get("timestamp", ""),
             sample.get("measurand") or "Energy.Active.Import.Register", str(sample.get("value", "")),
             sample.get("unit"), sample.get("phase"), sample.get("context"), sample.get("location"),
             sample.get("format"))
            for entry in meter_value for sample in entry.get("sampled_value", ())
        ]
        if rows:
            self._meter_rows += rows
            self._schedule()

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
        row = self._read(
            "SELECT id, meter_start_known FROM transactions WHERE charge_point_id = %s "
            "AND station_transaction_id = %s ORDER BY id LIMIT 1", (charge_point_id, station_transaction_id)).fetchone()
        if row is None:
            return None
        return StationTransaction(self.transaction(row[0]), station_transaction_id, bool(row[1]))

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
        self.commit()
        db = self.connection()
        with db.transaction():
            generation = db.execute(
                "INSERT INTO connection_owners (charge_point_id, instance_id, generation) "
                "VALUES (%s, %s, nextval('connection_generations')) ON CONFLICT (charge_point_id) DO UPDATE SET "
                "instance_id = excluded.instance_id, generation = excluded.generation, connected_at = now() "
                "RETURNING generation", (charge_point_id, instance_id)).fetchone()[0]
            db.execute("SELECT pg_notify('levity_connections', %s)",
                       (json.dumps([charge_point_id, instance_id, generation]),))
        return generation


def describe(exc: psycopg.Error) -> str:
    """libpq's first line (e.g. 'password authentication failed for user "levity"'), which
    never carries the password."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
