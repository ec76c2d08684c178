"""`levity transactions list|close`: see and close open transactions (docs/billing.md).

Closing while Levity runs must not race the server, and only the server may write audit
events (it owns the spool and the Fluentd connection). So the command marks the transaction
closed in the database with one conditional UPDATE (SQLite serializes it against the server's
writes: a stop that got there first wins and the close is refused), with the event id of its
anomaly chosen here; the server sends that `abandoned_transaction` event within a few seconds
while it runs, or when it next starts. The same event id is reused if the server resends it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from levity.config import load_settings


def register(commands) -> None:
    parser = commands.add_parser(
        "transactions", help="list transactions, close an abandoned one",
        description="List transactions (with --open: those neither stopped nor closed, with their age) or close "
                    "an open one as abandoned: no transaction_stop, one ocpp.anomaly event (kind "
                    "abandoned_transaction) that the running Levity sends within seconds, or when it next starts.")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="list transactions, oldest first")
    listing.add_argument("--open", action="store_true", help="only open transactions")
    listing.add_argument("--charge-point", metavar="ID", help="only this charge point's")
    listing.add_argument("--json", action="store_true", help="one JSON object per line (the operator API's fields)")
    close = actions.add_parser("close", help="close an open transaction as abandoned")
    close.add_argument("transaction_id", type=int, metavar="TRANSACTION_ID")
    close.add_argument("--reason", required=True, help="why (lands in the anomaly event's detail)")
    for sub in (listing, close):
        sub.add_argument("--database", default=None, help="SQLite database [env LEVITY_DATABASE]")
        sub.add_argument("--workers", default=None, help="the LEVITY_WORKERS Levity serves with [env LEVITY_WORKERS]")
    parser.set_defaults(func=run)


def _stores(settings):
    from levity.database import open_store
    from levity.workers import check_layout, shard_database

    check_layout(settings)
    return [open_store(settings, database=shard_database(settings.database, i, settings.workers))
            for i in range(settings.workers)]


def run(args: argparse.Namespace) -> int:
    from levity.workers import worker_index

    from levity.database import command_line_settings

    settings = command_line_settings(load_settings(args))
    workers = settings.workers
    stores = _stores(settings)
    try:
        if args.action == "close":
            # Worker k of N issues the ids congruent to k+1 modulo N (levity/workers.py).
            return _close(stores[(args.transaction_id - 1) % workers], args)
        if args.charge_point:
            stores = [stores[worker_index(args.charge_point, workers)]]
        rows = sorted((row for store in stores for row in
                       store.transactions(args.charge_point, open_only=args.open)),
                      key=lambda row: row["transaction_id"])
        for row in rows:
            if args.json:
                print(json.dumps(row, sort_keys=True))
            else:
                print("\t".join("-" if row[key] is None else str(row[key]) for key in (
                    "transaction_id", "charge_point_id", "connector_id", "state", "meter_start", "meter_stop",
                    "energy_delivered", "started_at", "stopped_at", "age_seconds")))
        return 0
    finally:
        for store in stores:
            store.close()


def _close(store, args: argparse.Namespace) -> int:
    from levity.audit.events import iso_utc, new_event_id

    try:
        # Committed at once (Store._write_now): its row count says whether a stop got there first.
        store.close_abandoned(args.transaction_id, args.reason, iso_utc(time.time_ns()), new_event_id(),
                              event_sent=False)
    except (LookupError, ValueError) as exc:
        print(f"levity: {exc.args[0]}", file=sys.stderr)
        return 1
    print(f"transaction {args.transaction_id} closed as abandoned; Levity sends its anomaly event "
          "(within seconds while it runs, else when it starts)")
    return 0
