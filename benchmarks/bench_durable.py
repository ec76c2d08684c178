"""How long a transaction call's two durable steps take on a busy event loop.

    python -m benchmarks.bench_durable [--calls 200] [--busy-ms 0,2,5] [--chargers 1,20]

Before a StartTransaction or StopTransaction is answered its row is committed with
synchronous=FULL and then its audit event is fsynced in the spool (levity/handling.py
store_then_audit). Each step runs on its own thread, so on a loaded server what the answer
waits for is mostly event-loop iterations: handing the work over and the result back. This
runs the real Store and ForwardSink in one process (no Fluentd: the events stay in the spool,
which is the durable part) and makes every loop iteration take BUSY ms, as a loop serving many
chargers does, then prints the mean and p50 wait per call and that wait in loop iterations.
Run it with another tree on PYTHONPATH to compare (the same script, the same numbers).
Numbers only, no verdict.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path

from levity.audit.delivery import ForwardSink
from levity.audit.events import EventFactory
from levity.config import Settings
from levity.handling import CentralSystemContext, store_then_audit
from levity.store import Store


async def busy_loop(busy_seconds: float, iterations: list[int]) -> None:
    """One callback per loop iteration that holds the loop for busy_seconds (the other chargers' work)."""
    while True:
        if busy_seconds:
            end = time.perf_counter() + busy_seconds
            while time.perf_counter() < end:
                pass
        iterations[0] += 1
        await asyncio.sleep(0)


async def measure(directory: Path, calls: int, chargers: int, busy_ms: float) -> tuple[float, float, float, int]:
    store = Store(str(directory / "levity.db"))
    sink = ForwardSink(Settings(fluentd_enabled=True, fluentd_host="127.0.0.1", fluentd_port=9,  # nobody there
                                spool_dir=str(directory / "spool"), flush_interval=0.2, batch_size=500))
    await sink.start()
    ctx = CentralSystemContext(store=store, sink=sink, events=EventFactory(), authorizer=None, validator=None)
    iterations = [0]
    load = asyncio.create_task(busy_loop(busy_ms / 1000, iterations))
    waits: list[float] = []
    waited_iterations: list[int] = []

    async def charger(n: int) -> None:
        for i in range(calls // chargers):
            began, first = time.perf_counter(), iterations[0]
            transaction_id = store.start_transaction(f"CP{n}", 1, "TAG", i, "2024-01-15T10:00:00Z", None, "now")
            await store_then_audit(ctx, transaction_id, ctx.events.make(
                "transaction_start", f"CP{n}", transaction_id=transaction_id, connector_id=1, id_tag="TAG",
                meter_start=i, timestamp="2024-01-15T10:00:00Z"))
            waits.append(time.perf_counter() - began)
            waited_iterations.append(iterations[0] - first)

    await asyncio.gather(*(charger(n) for n in range(chargers)))
    load.cancel()
    await asyncio.gather(load, return_exceptions=True)
    spooled = sink.stats()["spooled"]  # nobody acknowledges: every durable event is still there
    await sink.close(0.5)
    await store.drain()
    store.close()
    return (statistics.mean(waits) * 1000, statistics.median(waits) * 1000, statistics.mean(waited_iterations),
            spooled)


async def run(directory: Path, calls: int, busy: list[float], chargers: list[int]) -> None:
    print(f"{'busy ms/iteration':>18}{'chargers':>10}{'mean wait ms':>14}{'p50 ms':>9}{'iterations waited':>19}"
          f"{'events spooled':>16}")
    for busy_ms in busy:
        for count in chargers:
            with tempfile.TemporaryDirectory(dir=directory) as scratch:
                mean, p50, waited, spooled = await measure(Path(scratch), calls, count, busy_ms)
            print(f"{busy_ms:>18g}{count:>10}{mean:>14.2f}{p50:>9.2f}{waited:>19.1f}{spooled:>16}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default=".", help="where to create the database and spool (default: here)")
    parser.add_argument("--calls", type=int, default=200, help="transaction starts per measurement")
    parser.add_argument("--busy-ms", default="0,2,5", help="comma-separated loop iteration lengths")
    parser.add_argument("--chargers", default="1,20", help="comma-separated numbers of concurrent chargers")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)  # the sink's "no Fluentd" line is expected here
    asyncio.run(run(Path(args.dir), args.calls, [float(b) for b in args.busy_ms.split(",")],
                    [int(c) for c in args.chargers.split(",")]))


if __name__ == "__main__":
    main()
