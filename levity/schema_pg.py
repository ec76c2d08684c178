"""Levity's PostgreSQL schema as numbered migrations, applied by `levity db upgrade`.

The table levity_schema records each applied version. `levity serve` never changes the schema:
it refuses a database without one (run `levity db upgrade`) and one upgraded by a newer Levity.
The tables and columns are those of the SQLite store (levity/store.py), so both engines answer
the same queries; transaction ids come from a sequence, unique across every instance.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "charge points, connectors, transactions, meter values, API tokens", """
CREATE SEQUENCE transaction_ids;
CREATE TABLE charge_points (
    id TEXT PRIMARY KEY,
    registered INTEGER NOT NULL DEFAULT 0,
    vendor TEXT, model TEXT, serial_number TEXT, firmware_version TEXT,
    registration_status TEXT,
    firmware_status TEXT, diagnostics_status TEXT,
    first_seen TEXT, last_boot TEXT, last_heartbeat TEXT,
    password_hash TEXT
);
CREATE TABLE connectors (
    charge_point_id TEXT NOT NULL,
    connector_id INTEGER NOT NULL,
    status TEXT NOT NULL, error_code TEXT NOT NULL,
    info TEXT, vendor_error_code TEXT, status_timestamp TEXT, updated_at TEXT NOT NULL,
    PRIMARY KEY (charge_point_id, connector_id)
);
CREATE TABLE transactions (
    id BIGINT PRIMARY KEY DEFAULT nextval('transaction_ids'),
    charge_point_id TEXT NOT NULL,
    connector_id INTEGER NOT NULL,
    id_tag TEXT NOT NULL,
    meter_start BIGINT NOT NULL,
    start_timestamp TEXT NOT NULL,
    reservation_id INTEGER,
    meter_stop BIGINT, stop_timestamp TEXT, stop_reason TEXT, stop_id_tag TEXT,
    created_at TEXT NOT NULL, stopped_at TEXT,
    start_event_id TEXT, stop_event_id TEXT, stop_request TEXT,
    abandoned_at TEXT, abandon_reason TEXT, abandon_event_id TEXT,
    abandon_event_sent INTEGER NOT NULL DEFAULT 1
);
ALTER SEQUENCE transaction_ids OWNED BY transactions.id;
CREATE INDEX transactions_start ON transactions (charge_point_id, connector_id, start_timestamp);
CREATE INDEX transactions_unclosed ON transactions (charge_point_id, connector_id)
    WHERE stopped_at IS NULL AND abandoned_at IS NULL;
CREATE INDEX transactions_close_pending ON transactions (id) WHERE abandon_event_sent = 0;
CREATE TABLE meter_values (
    id BIGSERIAL PRIMARY KEY,
    charge_point_id TEXT NOT NULL,
    connector_id INTEGER NOT NULL,
    transaction_id BIGINT,
    timestamp TEXT NOT NULL,
    measurand TEXT NOT NULL, value TEXT NOT NULL,
    unit TEXT, phase TEXT, context TEXT, location TEXT, format TEXT
);
CREATE INDEX meter_values_tx ON meter_values (transaction_id);
CREATE TABLE api_tokens (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
);
"""),
    (2, "which instance holds each charger's connection (several instances, docs/scaling.md)", """
CREATE SEQUENCE connection_generations;
CREATE TABLE connection_owners (
    charge_point_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    generation BIGINT NOT NULL,
    connected_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
"""),
    (3, "OCPP 2.0.1: each charge point's OCPP version; a transaction's station id, EVSE and known start", """
ALTER TABLE charge_points ADD COLUMN ocpp_version TEXT;
ALTER TABLE transactions ADD COLUMN ocpp_version TEXT;
ALTER TABLE transactions ADD COLUMN station_transaction_id TEXT;
ALTER TABLE transactions ADD COLUMN evse_id INTEGER;
ALTER TABLE transactions ADD COLUMN meter_start_known INTEGER NOT NULL DEFAULT 1;
CREATE INDEX transactions_station ON transactions (charge_point_id, station_transaction_id)
    WHERE station_transaction_id IS NOT NULL;
"""),
]

LATEST = MIGRATIONS[-1][0]
# Taken while upgrading, so instances or operators upgrading at once apply each migration once.
UPGRADE_LOCK = 0x4C455649  # "LEVI"


class SchemaError(Exception):
    """The database's schema is missing or newer than this Levity knows."""


def current_version(cursor) -> int | None:
    """The highest applied version, or None when the database has no Levity schema."""
    cursor.execute("SELECT to_regclass('levity_schema') IS NOT NULL")
    if not cursor.fetchone()[0]:
        return None
    cursor.execute("SELECT max(version) FROM levity_schema")
    return cursor.fetchone()[0]


def check(cursor, name: str) -> None:
    """SchemaError with one line for the log unless the schema is exactly this Levity's."""
    version = current_version(cursor)
    if version is None:
        raise SchemaError(f"the database {name} has no Levity schema: run `levity db upgrade`")
    if version > LATEST:
        raise SchemaError(f"the database {name} has schema version {version}, made by a newer Levity "
                          f"(this one knows up to {LATEST}): upgrade Levity")
    if version < LATEST:
        raise SchemaError(f"the database {name} has schema version {version}, this Levity needs {LATEST}: "
                          "run `levity db upgrade`")


def upgrade(connection, name: str) -> list[tuple[int, str]]:
    """Apply the missing migrations in one transaction (all or none); the (version, description)
    applied. SchemaError for a database from a newer Levity."""
    applied = []
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (UPGRADE_LOCK,))
        connection.execute("CREATE TABLE IF NOT EXISTS levity_schema (version INTEGER PRIMARY KEY, "
                           "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())")
        version = current_version(connection.cursor()) or 0
        if version > LATEST:
            raise SchemaError(f"the database {name} has schema version {version}, made by a newer Levity "
                              f"(this one knows up to {LATEST}): upgrade Levity")
        for number, description, sql in MIGRATIONS:
            if number <= version:
                continue
            connection.execute(sql)
            connection.execute("INSERT INTO levity_schema (version, description) VALUES (%s, %s)",
                               (number, description))
            applied.append((number, description))
    return applied
