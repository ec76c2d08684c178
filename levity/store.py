"""Levity's state in an embedded SQLite database: charge points, connectors, transactions,
meter values.

Writes made while the event loop handles one batch of ready connections share one commit,
scheduled to run right after them (group commit: under load one commit serves hundreds of
calls). Transaction starts and stops commit before the charger gets its answer. WAL with
synchronous=NORMAL: a crash of Levity loses nothing committed; only a power loss can lose
the last commits. A transaction start or stop is committed before the charger gets its answer:
the handler calls commit() after its (awaited) audit event, by when the group commit has
usually already run. A transaction id is the row id of an AUTOINCREMENT table, so ids are
unique and never reused, across restarts too. With several workers (levity/workers.py) each
has its own database, and worker k of N issues only ids congruent to k+1 modulo N, so ids stay
unique across all of them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

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
    "abandoned_at, abandon_reason, abandon_event_id FROM transactions")


@dataclass(frozen=True)
class Transaction:
    id: int
    charge_point_id: str
    connector_id: int
    id_tag: str
    meter_start: int
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

    @classmethod
    def from_row(cls, row) -> "Transaction":
        values = list(row)
        values[6] = bool(values[6])
        values[13] = json.loads(values[13]) if values[13] else None
        return cls(*values)

    @property
    def open(self) -> bool:
        return not self.stopped and self.abandoned_at is None

    @property
    def energy_delivered(self) -> int | None:
        return None if self.meter_stop is None else self.meter_stop - self.meter_start


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
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # The event loop thread is the only user; transactions are explicit (_begin/commit).
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._in_transaction = False
        # The hottest writes (meter values, heartbeats) nobody reads back at once: kept here
        # and written with one executemany each at the group commit.
        self._meter_rows: list[tuple] = []
        self._heartbeats: dict[str, str] = {}
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(SCHEMA)
        self._migrate()
        self._migrate_transactions()
        row = self._db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'transactions'").fetchone()
        self._last_transaction_id = row[0] if row else 0  # this store is the only writer of its ids

    def _migrate(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(charge_points)")}
        if "password_hash" not in columns:  # added with security profiles
            self._db.execute("ALTER TABLE charge_points ADD COLUMN password_hash TEXT")
        if "ocpp_version" not in columns:  # added with OCPP 2.0.1
            self._db.execute("ALTER TABLE charge_points ADD COLUMN ocpp_version TEXT")

        self._in_transaction = False

    def _migrate_transactions(self) -> None:
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(transactions)")}
        for name, declaration in TRANSACTION_COLUMNS.items():
            if name not in columns:
                self._db.execute(f"ALTER TABLE transactions ADD COLUMN {name} {declaration}")
        self._db.executescript(TRANSACTION_INDEXES)

    def close(self) -> None:
        self.commit()
        self._db.close()

    def _write(self, sql: str, params=()) -> sqlite3.Cursor:
        self._begin()
        return self._db.execute(sql, params)

    def _write_many(self, sql: str, rows) -> None:
        self._begin()
        self._db.executemany(sql, rows)

    def _begin(self) -> None:
        if self._in_transaction:
            return
        self._db.execute("BEGIN")
        self._in_transaction = True
        try:
            asyncio.get_running_loop().call_soon(self.commit)
        except RuntimeError:  # no event loop (command line tools): the caller commits
            pass

    def commit(self) -> None:
        if self._in_transaction:
            self._write_deferred()
            self._in_transaction = False
            self._db.execute("COMMIT")

    def _write_deferred(self) -> None:
        if self._meter_rows:
            self._db.executemany(INSERT_METER_VALUE, self._meter_rows)
            self._meter_rows = []
        if self._heartbeats:
            self._db.executemany("UPDATE charge_points SET last_heartbeat = ? WHERE id = ?",
                                 [(now, cp) for cp, now in self._heartbeats.items()])
            self._heartbeats = {}

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
        self._begin()
        self._heartbeats[charge_point_id] = now

    def record_cp_status(self, charge_point_id: str, column: str, status: str) -> None:
        assert column in ("firmware_status", "diagnostics_status")
        self._write(f"UPDATE charge_points SET {column} = ? WHERE id = ?", (status, charge_point_id))

    def charge_point(self, charge_point_id: str) -> dict[str, Any] | None:
        self._write_deferred()
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
    # Every decision about repeats reads and writes here without an await in between, so two
    # calls of one charger (one connection, or the old and the new one across a reconnect)
    # cannot both be "the first".

    def start_transaction(self, charge_point_id: str, connector_id: int, id_tag: str, meter_start: int,
                          start_timestamp: str, reservation_id: int | None, now: str,
                          event_id: str | None = None) -> int:
        cursor = self._write(
            "INSERT INTO transactions (id, charge_point_id, connector_id, id_tag, meter_start, start_timestamp, "
            "reservation_id, created_at, start_event_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (self._next_transaction_id(), charge_point_id, connector_id, id_tag, meter_start, start_timestamp,
             reservation_id, now, event_id),
        )
        # Committed with the group; the caller commits before it answers (module doc).
        self._last_transaction_id = cursor.lastrowid
        return cursor.lastrowid

    def _next_transaction_id(self) -> int | None:
        """None lets AUTOINCREMENT choose; with several workers, the next id of this one's residue."""
        if self._id_modulus == 1:
            return None
        last = self._last_transaction_id
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

    def stop_transaction(self, transaction_id: int, meter_stop: int, stop_timestamp: str, reason: str,
                         id_tag: str | None, now: str, event_id: str | None = None,
                         request: dict | None = None) -> None:
        """request: the stop's fields as the charger sent them, kept to describe a repeat."""
        self._write(
            "UPDATE transactions SET meter_stop = ?, stop_timestamp = ?, stop_reason = ?, stop_id_tag = ?, "
            "stopped_at = ?, stop_event_id = ?, stop_request = ? WHERE id = ?",
            (meter_stop, stop_timestamp, reason, id_tag, now, event_id,
             json.dumps(request, sort_keys=True) if request is not None else None, transaction_id),
        )

    def close_abandoned(self, transaction_id: int, reason: str, now: str, event_id: str,
                        event_sent: bool = True) -> Transaction:
        """Close an open transaction without a stop (no meter_stop, no stop event).

        event_id: the id of the `abandoned_transaction` anomaly that reports it. event_sent=False
        when the caller cannot send it (the command line): the server sends it (pending_closes()).
        Raises LookupError for an unknown transaction, ValueError for one already closed.
        """
        if not reason or not reason.strip():
            raise ValueError("a reason is required to close a transaction")
        self._write(
            "UPDATE transactions SET abandoned_at = ?, abandon_reason = ?, abandon_event_id = ?, "
            "abandon_event_sent = ? WHERE id = ? AND stopped_at IS NULL AND abandoned_at IS NULL",
            (now, reason.strip(), event_id, int(event_sent), transaction_id))
        closed = self.transaction(transaction_id)
        if closed is None:
            raise LookupError(f"no transaction {transaction_id}")
        if closed.abandon_event_id != event_id:
            state = "stopped" if closed.stopped else "closed as abandoned"
            raise ValueError(f"transaction {transaction_id} is already {state}")
        return closed

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
        meter_start, meter_stop, energy_delivered (null until stopped), started_at and stopped_at
        (the charger's timestamps), stop_reason, state (open / stopped / abandoned), closed_reason,
        age_seconds (since Levity saw the start), recorded_at and stop_recorded_at (Levity's clock).
        open_only: True keeps the open ones, False the stopped or abandoned ones, None all."""
        self._write_deferred()
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
        indexed lookup, as it runs for every MeterValues of a transaction."""
        row = self._db.execute("SELECT meter_stop FROM transactions WHERE id = ? AND charge_point_id = ? "
                               "AND stopped_at IS NOT NULL", (transaction_id, charge_point_id)).fetchone()
        return row[0] if row else None

    def energy_registers(self, charge_point_id: str, transaction_id: int) -> list[tuple[str, str | None]]:
        """(value, unit) of every Energy.Active.Import.Register sampled for the transaction."""
        self._write_deferred()
        return self._db.execute(
            "SELECT value, unit FROM meter_values WHERE transaction_id = ? AND charge_point_id = ? "
            "AND measurand = 'Energy.Active.Import.Register'", (transaction_id, charge_point_id)).fetchall()

    def open_transaction_count(self) -> int:
        return self._db.execute("SELECT count(*) FROM transactions WHERE stopped_at IS NULL").fetchone()[0]

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
            self._begin()
            self._meter_rows += rows

    # Operator API: read queries --------------------------------------------------------------

    def charge_point_rows(self, charge_point_id: str | None = None) -> list[dict[str, Any]]:
        """Known charge points with when they were last heard of (boot, heartbeat or status)."""
        self._write_deferred()
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
                    (station_transaction_id, evse_id, int(meter_start is not None), transaction_id))
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
        self._write("INSERT INTO api_tokens (name, role, token_hash, created_at) VALUES (?, ?, ?, ?)",
                    (name, role, token_hash, now))
        self.commit()

    def revoke_api_token(self, name: str) -> bool:
        revoked = self._write("DELETE FROM api_tokens WHERE name = ?", (name,)).rowcount > 0
        self.commit()
        return revoked

    def api_tokens(self) -> list[tuple[str, str, str]]:
        """(name, role, created_at) of every token."""
        return self._db.execute("SELECT name, role, created_at FROM api_tokens ORDER BY name").fetchall()

    def api_token(self, token_hash: str) -> tuple[str, str] | None:
        """(name, role) of the token with this hash."""
        return self._db.execute("SELECT name, role FROM api_tokens WHERE token_hash = ?", (token_hash,)).fetchone()

    def count(self, table: str) -> int:
        assert table in ("charge_points", "connectors", "transactions", "meter_values")
        self._write_deferred()
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
    }


def _age_seconds(created_at: str | None, now: float) -> int | None:
    try:
        return max(0, int(now - datetime.fromisoformat(created_at.replace("Z", "+00:00")).timestamp()))
    except (AttributeError, ValueError):
        return None
