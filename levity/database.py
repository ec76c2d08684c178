"""Which store Levity's state lives in: an SQLite file (the embedded default) or a shared
PostgreSQL database (several instances behind a balancer, docs/scaling.md).

LEVITY_DATABASE is a path for SQLite or a `postgresql://user@host:port/db` URL. The password
comes from the URL, LEVITY_DATABASE_PASSWORD_FILE, or libpq's own PGPASSWORD / ~/.pgpass; it is
never printed: every message names the database through redact().
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

POSTGRES_SCHEMES = ("postgresql", "postgres")


class DatabaseStartupError(Exception):
    """The database cannot be used at start: one line naming it (without its password)."""


def is_postgres(database: str) -> bool:
    return urlsplit(database).scheme in POSTGRES_SCHEMES


def redact(database: str) -> str:
    """The database as it may be logged: a URL without its password (and without query
    parameters, which may carry one too); a path unchanged."""
    if not is_postgres(database):
        return database
    parts = urlsplit(database)
    netloc = parts.hostname or ""
    if ":" in netloc:
        netloc = f"[{netloc}]"
    if parts.port:
        netloc += f":{parts.port}"
    if parts.username:
        netloc = f"{parts.username}@{netloc}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def open_store(settings, transaction_ids: tuple[int, int] = (1, 1), check_schema: bool = True,
               database: str | None = None):
    """The store LEVITY_DATABASE names. PostgreSQL raises DatabaseStartupError with a line fit
    for the log when it cannot be reached, refuses the credentials, or has no (or a newer)
    schema; SQLite creates and upgrades its file as it always has."""
    database = settings.database if database is None else database
    if is_postgres(database):
        from levity.store_pg import PostgresStore

        return PostgresStore(database, password=settings.secret("database_password"), check_schema=check_schema)
    from levity.store import Store

    return Store(database, transaction_ids)


def command_line_settings(settings):
    """With PostgreSQL every worker shares one database: the command line opens it once."""
    import dataclasses

    return dataclasses.replace(settings, workers=1) if is_postgres(settings.database) else settings
