"""The `levity` command: serve, fluentd (render/validate/profiles), doctor."""

from __future__ import annotations

import argparse
import os
import sys

from levity import __version__
from levity.config import ConfigError, add_arguments, load_settings


def _serve(args: argparse.Namespace) -> int:
    from levity.serve import run

    settings = load_settings(args)
    return run(settings)


def _charge_points(args: argparse.Namespace) -> int:
    from levity.audit.events import iso_utc
    from levity.database import command_line_settings, open_store
    from levity.store import StorageError
    from levity.workers import check_layout, shard_database, worker_index
    import time

    settings = command_line_settings(load_settings(args))
    check_layout(settings)
    workers = settings.workers
    # With several workers each charge point lives in the database of the worker that owns it.
    # Owner-only files, as `levity serve` creates them: password hashes and personal data.
    umask = os.umask(0o077)
    try:
        stores = [open_store(settings, database=shard_database(settings.database, i, workers))
                  for i in range(workers)]
    finally:
        os.umask(umask)

    def store_of(charge_point_id: str):
        return stores[worker_index(charge_point_id, workers)]

    try:
        if args.action == "set-password":
            return _set_password(store_of(args.ids[0]) if args.ids else stores[0], args)
        if args.action == "register":
            for charge_point_id in args.ids:
                store_of(charge_point_id).register([charge_point_id], iso_utc(time.time_ns()))
        elif args.action == "unregister":
            for charge_point_id in args.ids:
                store_of(charge_point_id).unregister([charge_point_id])
        try:
            for store in stores:
                store.commit()  # now: the write lock is held only for this commit, never while listing
        except StorageError as exc:
            print(f"levity: {exc}", file=sys.stderr)
            return 1
        listed = args.ids or sorted(cp for store in stores for cp in store.registered_ids())
        for charge_point_id in listed:
            row = store_of(charge_point_id).charge_point(charge_point_id) or {}
            print(f"{charge_point_id}\t{'registered' if row.get('registered') else 'not registered'}\t"
                  f"{row.get('vendor') or '-'}\t{row.get('model') or '-'}\t{row.get('last_boot') or '-'}")
    finally:
        for store in stores:
            store.close()
    return 0


def _set_password(store, args: argparse.Namespace) -> int:
    """Store the hash of each charger's AuthorizationKey (security profiles 1 and 2)."""
    from levity.audit.events import iso_utc
    from levity.auth import generate_authorization_key, hash_password
    import time

    if len(args.ids) != 1:
        print("levity: set-password takes exactly one CHARGE_POINT_ID", file=sys.stderr)
        return 2
    if args.generate:
        password = generate_authorization_key()
    elif args.password_file:
        password = open(args.password_file, encoding="utf-8").read().strip()
    else:
        password = sys.stdin.readline().strip()
    if not 16 <= len(password) <= 40:
        print("levity: an AuthorizationKey has 16 to 40 characters (OCPP 1.6 security)", file=sys.stderr)
        return 2
    store.set_password_hash(args.ids[0], hash_password(password), iso_utc(time.time_ns()))
    if args.generate:
        print(password)  # shown once, to be configured on the charger; only its hash is kept
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="levity",
        description="OCPP 1.6J central system that sends one audit event per exchange to Fluentd.",
    )
    parser.add_argument("--version", action="version", version=f"levity {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run the OCPP central system",
        description="Run the OCPP 1.6J central system. Chargers connect to ws://HOST:PORT/<charge_point_id> "
                    "with the ocpp1.6 subprotocol. Every option can also be set by the environment variable shown.",
    )
    add_arguments(serve)
    serve.set_defaults(func=_serve)

    charge_points = commands.add_parser(
        "charge-points", help="register charge points (for --boot-policy pending/rejected) and list them")
    charge_points.add_argument("action", choices=("list", "register", "unregister", "set-password"))
    charge_points.add_argument("ids", nargs="*", metavar="CHARGE_POINT_ID")
    charge_points.add_argument("--database", default=None, help="SQLite database [env LEVITY_DATABASE]")
    charge_points.add_argument("--workers", default=None,
                               help="the LEVITY_WORKERS Levity serves with [env LEVITY_WORKERS]")
    charge_points.add_argument("--password-file", help="set-password: read the AuthorizationKey from this file "
                               "(default: first line of standard input)")
    charge_points.add_argument("--generate", action="store_true",
                               help="set-password: generate a 40-character key and print it once")
    charge_points.set_defaults(func=_charge_points)

    # Each concern registers its own sub-commands.
    from levity.fluentconf.cli import register as register_fluentd
    register_fluentd(commands)
    from levity.api.cli import register as register_api
    register_api(commands)
    from levity.transactions_cli import register as register_transactions
    register_transactions(commands)
    from levity.database_cli import register as register_database
    register_database(commands)
    from levity.doctor import register as register_doctor
    register_doctor(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except ConfigError as exc:
        print(f"levity: configuration error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
