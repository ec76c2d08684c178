"""Audit delivery throughput: emit() -> spool -> Forward -> acknowledged by a local receiver.

    .venv/bin/python benchmarks/bench_emitter.py [--events 200000] [--paced 100000 --rate 20000]
        [--chargers 200] [--durable 20000]

The receiver (tests/support/forward_receiver.py) runs in a separate process so it does not share
the GIL with the sink. Prints numbers, among them the CPU time of this process (every thread:
the event loop, the spool thread) per event, which other work on the machine barely moves;
asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from levity.audit.delivery import ForwardSink  # noqa: E402
from levity.audit.events import EventFactory  # noqa: E402
from levity.config import Settings  # noqa: E402

RECEIVER = """
import sys, time
from tests.support.forward_receiver import ForwardReceiver
r = ForwardReceiver().start()
print(r.port, flush=True)
while True:  # the sink counts acks; keep the receiver's bookkeeping (linear in what it holds) small
    time.sleep(0.2)
    r.clear()
"""


class LoopLag:
    """Largest delay of a 5 ms timer: how long the event loop was kept busy at a stretch."""

    def __init__(self):
        self.samples: list[float] = []
        self._task = None

    async def _run(self):
        while True:
            start = time.perf_counter()
            await asyncio.sleep(0.005)
            self.samples.append(time.perf_counter() - start - 0.005)

    def start(self):
        self._task = asyncio.create_task(self._run())

    def stop(self) -> str:
        self._task.cancel()
        s = sorted(self.samples) or [0.0]
        return f"loop lag p50 {s[len(s) // 2] * 1e3:.2f} ms, p99 {s[int(len(s) * 0.99)] * 1e3:.2f} ms, max {s[-1] * 1e3:.1f} ms"


async def wait_acked(sink, count):
    while sink.stats()["acknowledged"] < count:
        await asyncio.sleep(0.005)


async def bench(args, port: int) -> None:
    factory = EventFactory("ocpp")
    with tempfile.TemporaryDirectory(dir=args.spool_parent) as spool:
        settings = Settings(fluentd_enabled=True, fluentd_host="127.0.0.1", fluentd_port=port, spool_dir=spool,
                            batch_size=args.batch_size, flush_interval=0.2)
        sink = ForwardSink(settings)
        await sink.start()

        # 1. emit() -> acknowledged
        def event(i):
            if args.mixed and i % 2:  # tags alternate: every event is its own PackedForward message
                return factory.make("heartbeat", f"CP{i % 1000}")
            return factory.make("meter_values", f"CP{i % 1000}", connector_id=1, transaction_id=i, samples_count=3,
                                measurands=["Energy.Active.Import.Register", "Voltage", "Current.Import"])

        events = [event(i) for i in range(args.events)]
        lag = LoopLag()
        lag.start()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        emit_time = 0.0
        for i in range(0, len(events), 1000):
            e0 = time.perf_counter()
            for ev in events[i:i + 1000]:
                sink.emit(ev)
            emit_time += time.perf_counter() - e0
            await asyncio.sleep(0)  # a server interleaves emits with other work
        await wait_acked(sink, args.events)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        print(f"emit() -> acknowledged{' (tags alternating)' if args.mixed else ''}: {args.events} events in {elapsed:.2f}s = {args.events / elapsed:,.0f} events/s "
              f"(emit() itself {emit_time / args.events * 1e6:.2f} us/call; CPU {cpu / args.events * 1e6:.2f} us/event, "
              f"all threads); {lag.stop()}")

        # 2. paced: a steady --rate events/s in 10 ms ticks, as a server under steady load emits them;
        # the sender keeps up, so this is the per-event cost of the steady state (with a burst, as
        # in 1., it falls behind and reads the spool back).
        paced = [event(i) for i in range(args.paced)]
        base = sink.stats()["acknowledged"]
        per_tick = max(1, round(args.rate * 0.01))
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        for i in range(0, len(paced), per_tick):
            for ev in paced[i:i + per_tick]:
                sink.emit(ev)
            await asyncio.sleep(max(0.0, t0 + (i + per_tick) / args.rate - time.perf_counter()))
        await wait_acked(sink, base + len(paced))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        print(f"emit() paced at {args.rate:,.0f}/s -> acknowledged: {len(paced)} events in {elapsed:.2f}s; "
              f"CPU {cpu / len(paced) * 1e6:.2f} us/event, all threads")

        # 3. durable events: concurrent chargers awaiting emit_durable (one fsync shared per group)
        base = sink.stats()["acknowledged"]
        per = max(1, args.durable // args.chargers)
        latencies: list[float] = []

        async def charger(n):
            for i in range(per):
                ev = factory.make("transaction_start", f"CP{n}", connector_id=1, id_tag="T", meter_start=i,
                                  transaction_id=i, transaction_timestamp="2024-01-15T10:00:00Z")
                s = time.perf_counter()
                await sink.emit_durable(ev)
                latencies.append(time.perf_counter() - s)

        lag = LoopLag()
        lag.start()
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        await asyncio.gather(*(charger(n) for n in range(args.chargers)))
        total = per * args.chargers
        await wait_acked(sink, base + total)
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        latencies.sort()
        print(f"emit_durable (fsync'd) -> acknowledged, {args.chargers} concurrent: {total} events in {elapsed:.2f}s = "
              f"{total / elapsed:,.0f} events/s; latency p50 {statistics.median(latencies) * 1e3:.1f} ms, "
              f"p99 {latencies[int(len(latencies) * 0.99)] * 1e3:.1f} ms; CPU {cpu / total * 1e6:.2f} us/event, "
              f"all threads; {lag.stop()}")

        # 4. one charger at a time: one fsync per event (the floor)
        t0 = time.perf_counter()
        n1 = 300
        for i in range(n1):
            await sink.emit_durable(factory.make("transaction_stop", "CP1", transaction_id=i, meter_stop=1,
                                                 energy_delivered=1, reason="Local",
                                                 transaction_timestamp="2024-01-15T10:00:00Z"))
        elapsed = time.perf_counter() - t0
        print(f"emit_durable, 1 charger sequential: {n1 / elapsed:,.0f} events/s ({elapsed / n1 * 1e3:.2f} ms/fsync)")
        await wait_acked(sink, base + total + n1)
        stats = sink.stats()
        await sink.close(10)
        print("stats:", stats, "sent from memory:", getattr(sink, "sent_from_memory", "-"))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--durable", type=int, default=20_000)
    parser.add_argument("--chargers", type=int, default=200)
    parser.add_argument("--paced", type=int, default=100_000, help="events of the paced run")
    parser.add_argument("--rate", type=float, default=20_000, help="events/s of the paced run")
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--mixed", action="store_true", help="alternate tags (worst case for PackedForward)")
    parser.add_argument("--spool-parent", default=None, help="directory to put the spool in (default: the temp dir)")
    args = parser.parse_args()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER], cwd=ROOT,
                                stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        port = int(receiver.stdout.readline())
        print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, spool under {args.spool_parent or tempfile.gettempdir()}")
        asyncio.run(bench(args, port))
    finally:
        receiver.terminate()
        receiver.wait(10)


if __name__ == "__main__":
    main()
