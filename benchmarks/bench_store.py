"""What synchronous=FULL costs the commits that issue transaction ids (levity/store.py).

    python -m benchmarks.bench_store [--dir DIR] [--starts 500] [--concurrency 200]

Runs the real Store in-process on DIR (default: a temporary directory on the disk of the
working directory, which is where a database usually lives) and prints transaction starts/s
and the mean wait for their commit, one at a time and with many chargers at once, with FULL
(what Levity does) and with NORMAL (what it did before, a power loss could reissue ids), plus
heartbeats/s through the same store (they never wait for a commit). Numbers only, no verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from levity.store import Store


class NormalStore(Store):
    """The same store, but its durable commits run with synchronous=NORMAL (the old setting)."""

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where to create the databases (default: a temporary directory here)")
    parser.add_argument("--starts", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=200)
    args = parser.parse_args()
    if args.dir:
        asyncio.run(run(Path(args.dir), args.starts, args.concurrency))
    else:
        with tempfile.TemporaryDirectory(dir=".") as directory:
            asyncio.run(run(Path(directory), args.starts, args.concurrency))


if __name__ == "__main__":
    main()
