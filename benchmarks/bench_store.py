"""What the fsync costs the commits that issue transaction ids (levity/store.py), and
what a group commit costs per write on PostgreSQL (levity/store_pg.py).

    python -m benchmarks.bench_store [--dir DIR] [--starts 500] [--concurrency 200]
    python -m benchmarks.bench_store --postgresql [--batches 300]

Runs the real Store in-process on DIR (default: a temporary directory on the disk of the
working directory, which is where a database usually lives) and prints transaction starts/s
and the mean wait for their commit, one at a time and with many chargers at once, with the
WAL fsynced behind it (what Levity does) and without (what it did before: a power loss could
reissue ids), plus
heartbeats/s through the same store (they never wait for a commit). Numbers only, no verdict.

--postgresql starts a PostgreSQL server in a temporary directory (as the tests do, fsync off)
and commits batches through the real PostgresStore, one batch at a time, of two shapes: one
loop turn of benchmarks/bench.py's mix with 200 chargers (10 status notifications, 20 meter
rows, 10 heartbeats, 3 transaction starts and 3 stops), and a transaction start with a status
(what a start's commit carries when little else is queued); it prints the CPU time per write of
this process (the event loop queueing, the writer thread sending) and of the PostgreSQL server.
Run it with PYTHONPATH=<another checkout> to compare two versions of the store.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import psutil

from levity.store import Store


class NormalStore(Store):
    """The same store, but its durable commits are not fsynced (the old setting)."""

    def _apply(self, db, group):
        group.durable = False
        return super()._apply(db, group)


async def starts(store: Store, count: int, concurrency: int) -> tuple[float, float]:
    waits: list[float] = []

    async def charger(n: int, per: int):
        for i in range(per):
            began = time.perf_counter()
            transaction_id = store.start_transaction(f"CP{n}", 1, "TAG", 0, "2024-01-15T10:00:00Z", None, "now")
            await store.commit_durable(transaction_id)
            waits.append(time.perf_counter() - began)

    per = max(1, count // concurrency)
    began = time.perf_counter()
    await asyncio.gather(*(charger(n, per) for n in range(concurrency)))
    elapsed = time.perf_counter() - began
    return len(waits) / elapsed, sum(waits) / len(waits) * 1000


async def heartbeats(store: Store, count: int) -> float:
    began = time.perf_counter()
    for i in range(count):
        store.record_heartbeat(f"CP{i % 1000}", "now")
        if i % 100 == 0:
            await asyncio.sleep(0)  # a turn of the loop: one group commit
    await store.drain(30)
    return count / (time.perf_counter() - began)


async def run(directory: Path, count: int, concurrency: int) -> None:
    print(f"database in {directory}")
    print(f"{'store':<22}{'concurrency':>12}{'starts/s':>12}{'mean wait ms':>14}")
    for name, cls in (("FULL (Levity)", Store), ("NORMAL (before)", NormalStore)):
        for conc in (1, concurrency):
            path = directory / f"{cls.__name__}-{conc}.db"
            store = cls(str(path))
            rate, wait = await starts(store, count, conc)
            print(f"{name:<22}{conc:>12}{rate:>12.0f}{wait:>14.2f}")
            await store.drain()
            store.close()
    store = Store(str(directory / "heartbeats.db"))
    print(f"heartbeats through the store (no fsync, nobody waits): {await heartbeats(store, 100_000):,.0f}/s")
    store.close()


def loop_turn(store, b: int) -> int:
    """One loop turn's writes with 200 chargers on bench.py's mix; how many."""
    for n in range(10):
        cp = f"CP{(b * 10 + n) % 200}"
        store.record_status(cp, 1, "Charging", "NoError", None, None, "2024-01-15T10:00:00Z", "now")
        store.record_heartbeat(cp, "now")
        store.add_meter_values(cp, 1, None, [{"timestamp": "2024-01-15T10:00:00Z", "sampled_value": [
            {"value": str(b), "unit": "Wh"}, {"value": "16", "measurand": "Current.Import", "unit": "A"}]}])
    for n in range(3):
        cp = f"CP{(b * 3 + n) % 200}"
        store._next_ids[cp] = b * 3 + n + 1  # the id a start's read fetched (the bench makes no reads)
        started = store.start_transaction(cp, 1, "TAG", 0, "2024-01-15T10:00:00Z", None, "now")
        if started > 3:
            store.stop_transaction(started - 3, 100, "2024-01-15T11:00:00Z", "Local", "TAG", "now")
    return 10 + 20 + 10 + 3 + 3


def start_and_status(store, b: int) -> int:
    """What a transaction start commits when little else is queued: its row and a status."""
    cp = f"CP{b % 200}"
    store._next_ids[cp] = b + 1
    store.start_transaction(cp, 1, "TAG", 0, "2024-01-15T10:00:00Z", None, "now")
    store.record_status(cp, 1, "Charging", "NoError", None, None, "2024-01-15T10:00:00Z", "now")
    return 2


SHAPES = {"turn": (loop_turn, "46 writes (a loop turn's)"), "start": (start_and_status, "2 writes (a start, a status)")}


async def postgres_batches(url: str, batches: int, shape) -> tuple[int, float, float, float, float]:
    """Batches of one shape, each committed before the next: how many writes, the
    seconds they took, and the CPU seconds of this process, of its writer thread sending the
    batches, and of the server's backend that committed them (psutil: read before the
    connection closes)."""
    from levity.store_pg import PostgresStore

    store = PostgresStore(url)
    writes, writer_cpu = 0, [0.0]
    apply = store._apply

    def measured_apply(batch):  # the writer thread's CPU for a batch: what the driver costs
        began = time.thread_time()
        try:
            return apply(batch)
        finally:
            writer_cpu[0] += time.thread_time() - began

    store._apply = measured_apply
    await store.commit_durable()  # the writer thread and its connection exist from here
    store.record_heartbeat("CP0", "now")
    await store.commit_durable()
    backend = psutil.Process(store._writer.info.backend_pid)
    began, cpu0, backend0 = time.perf_counter(), time.process_time(), sum(backend.cpu_times()[:2])
    try:
        for b in range(batches):
            writes += shape(store, b)
            await store.commit_durable()
        return (writes, time.perf_counter() - began, time.process_time() - cpu0, writer_cpu[0],
                sum(backend.cpu_times()[:2]) - backend0)
    finally:
        store.close()


def postgresql(batches: int) -> None:
    from benchmarks.bench_cluster import fresh_database
    from tests.support.postgres import PostgresServer, unavailable_reason

    reason = unavailable_reason()
    if reason:
        raise SystemExit(f"bench_store: {reason}")
    server = PostgresServer().start()
    try:
        for shape, what in SHAPES.values():
            writes, elapsed, cpu, writer, database = asyncio.run(postgres_batches(fresh_database(server), batches,
                                                                                  shape))
            print(f"{batches} batches of {what} on PostgreSQL in {elapsed:.2f} s ({writes / elapsed:,.0f} writes/s); "
                  f"CPU per write: this process {cpu / writes * 1e6:.1f} us (its writer thread "
                  f"{writer / writes * 1e6:.1f} us), the server {database / writes * 1e6:.1f} us")
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where to create the databases (default: a temporary directory here)")
    parser.add_argument("--starts", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--postgresql", action="store_true", help="PostgreSQL group commits instead (see above)")
    parser.add_argument("--batches", type=int, default=300, help="with --postgresql: batches to commit")
    args = parser.parse_args()
    if args.postgresql:
        postgresql(args.batches)
    elif args.dir:
        asyncio.run(run(Path(args.dir), args.starts, args.concurrency))
    else:
        with tempfile.TemporaryDirectory(dir=".") as directory:
            asyncio.run(run(Path(directory), args.starts, args.concurrency))


if __name__ == "__main__":
    main()
