"""`levity db upgrade`: create or upgrade the schema of LEVITY_DATABASE (SQLite or PostgreSQL)."""

from __future__ import annotations

import argparse
import sys


def register(commands) -> None:
    db = commands.add_parser(
        "db", help="create or upgrade the database schema (PostgreSQL needs it before `levity serve`)",
        description="upgrade: apply the schema migrations this Levity knows to LEVITY_DATABASE; "
                    "status: print the schema version. Safe to run on a live database and from "
                    "several hosts at once.")
    db.add_argument("action", choices=("upgrade", "status"))
    db.add_argument("--database", default=None, help="SQLite file or postgresql:// URL [env LEVITY_DATABASE]")
    db.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from levity.config import load_settings
    from levity.database import DatabaseStartupError, is_postgres, open_store, redact

    settings = load_settings(argparse.Namespace(database=args.database))
    name = redact(settings.database)
    if not is_postgres(settings.database):
        open_store(settings).close()  # the SQLite store creates and upgrades its tables on open
        print(f"SQLite database {name}: schema up to date")
        return 0

    import psycopg

    from levity import schema_pg
    from levity.store_pg import describe

    try:
        store = open_store(settings, check_schema=False)
    except DatabaseStartupError as exc:
        print(f"levity: {exc}", file=sys.stderr)
        return 1
    try:
        connection = store.connection()
        if args.action == "status":
            version = schema_pg.current_version(connection.cursor())
            print(f"{name}: schema version {version if version is not None else 'none'} "
                  f"(this Levity: {schema_pg.LATEST})")
            return 0
        applied = schema_pg.upgrade(connection, name)
    except schema_pg.SchemaError as exc:
        print(f"levity: {exc}", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"levity: cannot upgrade the database {name}: {describe(exc)}", file=sys.stderr)
        return 1
    finally:
        store.close()
    for version, description in applied:
        print(f"applied {version}: {description}")
    print(f"{name}: schema version {schema_pg.LATEST}" + ("" if applied else " (already up to date)"))
    return 0
