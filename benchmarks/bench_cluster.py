"""Several instances on PostgreSQL (docs/scaling.md): what it costs and how fast chargers move.

    python -m benchmarks.bench_cluster                  # both measurements, defaults below
    python -m benchmarks.bench_cluster --chargers 1000 --duration 10
    python -m benchmarks.bench_cluster --failover-only --failover-chargers 10000 --failover-instances 3
    python -m benchmarks.bench_cluster --failover-chargers 0 --previous-tree DIR   # before/after

1. Calls/s of one Levity process (one worker) on SQLite and on PostgreSQL, the same load client
   and mix (benchmarks/bench.py with LEVITY_DATABASE switched), interleaved (SQLite, PostgreSQL,
   SQLite, PostgreSQL ... for --rounds) so a neighbour's load on a shared machine hits both
   alike; each PostgreSQL run on a new, empty database, as each SQLite run has a new file. Per
   run also the CPU time per call: of the Levity process (its CPU time in the measured window /
   calls) and of the PostgreSQL server (its processes' CPU time over the whole run, warm-up
   included / calls), which on a small machine is what limits the ratio; and the p99 latency,
   of all calls and per call type. Of the Levity process's CPU, the part of its other threads
   (the store's writer and readers, the audit emitter: all but each process's main thread,
   the event loop), from their CPU times read every quarter second until the run ends.
   --previous-tree DIR adds a PostgreSQL run of another checkout's Levity (e.g. `git archive
   main | tar -x -C DIR`) to each round, right after this one's: a before/after in one session.
   --levity-cpus LIST measures per instance: Levity (every thread) on those CPUs in every run,
   the load client, the audit receiver and the PostgreSQL server on the others, as a database
   on its own host would leave the instance's cores to it. Both stores get the same cores; the
   PostgreSQL runs share the other CPUs with the server (against them, if those are saturated).
2. Failover: N chargers booted on instance A of several sharing a PostgreSQL; A is killed
   (SIGKILL); every charger reconnects to one of the others (chosen by a hash of its id, as the
   balancer's consistent hashing spreads them) and sends BootNotification. Prints the seconds
   from the kill to all booted (what a host failure costs when the balancer sends them on at
   once). The open files limit is raised to its hard limit first: the load client holds one
   socket per charger, and each instance inherits the limit.

A PostgreSQL server is started in a temporary directory from Debian's binaries (as the tests
do: tests/support/postgres.py), with fsync off like the tests; numbers are indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import resource
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path
from typing import NamedTuple

import psutil
import websockets

from benchmarks import bench
from tests.support.levity_process import LevityProcess
from tests.support.postgres import PostgresServer, levity_command, unavailable_reason

BOOT = json.dumps([2, "boot", "BootNotification", {"chargePointVendor": "Bench", "chargePointModel": "M"}])


class Run(NamedTuple):
    calls_per_second: float
    server_cpu_us_per_call: float  # the Levity process, in the measured window
    other_threads_us_per_call: float | None  # of that, the part of its threads besides the event loop
    database_cpu_us_per_call: float | None  # the PostgreSQL server, over the whole run
    p99_ms: float | None  # all calls
    p99_ms_by_action: dict[str, float | None]  # per call type
    errors: int


def postmaster(server: PostgresServer) -> psutil.Process:
    """The PostgreSQL server's main process (its pid is the first line of postmaster.pid)."""
    return psutil.Process(int((server.data / "postmaster.pid").read_text().split()[0]))


def database_cpu_seconds(server: PostgresServer) -> float:
    """CPU time of the PostgreSQL server so far: the postmaster, the backends it has reaped
    (a run's connections end with it) and those still running."""
    main = postmaster(server)
    times = main.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in main.children():
        with contextlib.suppress(psutil.Error):
            child_times = child.cpu_times()
            total += child_times.user + child_times.system
    return total


class ThreadSplit(threading.Thread):
    """Reads the CPU times of the threads of Levity's processes (children of this process
    running `levity ... serve`) every quarter second until stopped: the last reading of each
    thread, split into main threads (the event loops) and the others."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stopped = threading.Event()
        self.last: dict[tuple[int, int], tuple[bool, float]] = {}  # (pid, tid) -> (main thread, CPU s)

    def run(self) -> None:
        while not self.stopped.wait(0.25):
            for process in psutil.Process().children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    if "serve" in process.cmdline():
                        for thread in process.threads():
                            self.last[(process.pid, thread.id)] = (thread.id == process.pid,
                                                                   thread.user_time + thread.system_time)

    def other_share(self) -> float | None:
        self.stopped.set()
        self.join()
        total = sum(cpu for _, cpu in self.last.values())
        return sum(cpu for main, cpu in self.last.values() if not main) / total if total else None


def load_run(database: str | None, chargers: int, duration: float, out: Path,
             server: PostgresServer | None = None, tree: Path | None = None,
             levity_cpus: list[int] | None = None, other_cpus: list[int] | None = None) -> Run:
    report = out / f"bench-{'pg' if database else 'sqlite'}.json"
    argv = ["--targets", "levity", "--chargers", str(chargers), "--duration", str(duration), "--warmup", "2",
            "--clients", "1", "--json", str(report), "--quiet", "--levity-env", "LEVITY_WORKERS=1"]
    if levity_cpus:
        argv += ["--server-cpus", ",".join(map(str, levity_cpus)), "--client-cpus", ",".join(map(str, other_cpus))]
    if database:
        argv += ["--levity-env", f"LEVITY_DATABASE={database}"]
    if tree is not None:
        argv += ["--levity-tree", str(tree)]
    database_cpu0 = database_cpu_seconds(server) if server else 0.0
    threads = ThreadSplit()
    threads.start()
    if bench.main(argv) != 0:
        raise SystemExit("the load bench failed")
    other_share = threads.other_share()
    database_cpu = database_cpu_seconds(server) - database_cpu0 if server else None
    result = json.loads(report.read_text())["results"][0]
    calls = result["calls"] or 1
    server_cpu_seconds = result["server_cpu_percent"] / 100 * result["window_seconds"]
    server_cpu_us = server_cpu_seconds / calls * 1e6
    return Run(result["calls_per_second"], server_cpu_us, server_cpu_us * other_share if other_share else None,
               database_cpu / calls * 1e6 if database_cpu is not None else None, result["latency_ms"]["p99"],
               {action: figures["p99"] for action, figures in result["per_action"].items()},
               result["errors"] + result["timeouts"])


def fresh_database(server: PostgresServer) -> str:
    """An empty database with Levity's schema: each run starts from nothing, as each SQLite run
    does with its new file (a database grown by earlier runs costs more per call)."""
    database = server.new_database()
    if levity_command("db", "upgrade", database=database).returncode != 0:
        raise SystemExit("levity db upgrade failed")
    return database


def pin_database(server: PostgresServer, cpus: list[int]) -> None:
    """The PostgreSQL server's processes on these CPUs (backends forked later inherit it)."""
    main = postmaster(server)
    for process in [main, *main.children()]:
        with contextlib.suppress(psutil.Error):
            process.cpu_affinity(cpus)


def compare(server: PostgresServer, chargers: int, duration: float, rounds: int, out: Path,
            previous: Path | None = None, levity_cpus: list[int] | None = None) -> None:
    """SQLite and PostgreSQL runs interleaved (and the previous Levity's PostgreSQL run); one
    line per run, then the medians. Also prints the machine's load average before each round."""
    stores = {"SQLite": None, "PostgreSQL": "now"}
    if previous is not None:
        stores["PostgreSQL, previous"] = "previous"
    runs: dict[str, list[Run]] = {name: [] for name in stores}
    other_cpus = None
    if levity_cpus:
        other_cpus = [cpu for cpu in sorted(os.sched_getaffinity(0)) if cpu not in levity_cpus]
        if not other_cpus:
            raise SystemExit(f"--levity-cpus {levity_cpus} leaves no CPU for the load client and PostgreSQL")
        pin_database(server, other_cpus)
        print(f"per instance: Levity on CPU {','.join(map(str, levity_cpus))}; load client, audit receiver and "
              f"PostgreSQL server on CPU {','.join(map(str, other_cpus))}")
    print(f"calls/s, one process, {chargers} chargers, {duration:.0f} s per run, {rounds} round(s):")
    print(f"{'store':<22}{'calls/s':>10}{'Levity CPU us/call':>20}{'of it other threads':>21}"
          f"{'PostgreSQL CPU us/call':>24}{'p99 ms':>8}{'errors':>8}  p99 ms by call type")
    for _ in range(rounds):
        print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        for name, which in stores.items():
            url = fresh_database(server) if which else None
            run = load_run(url, chargers, duration, out, server if url else None,
                           previous if which == "previous" else None, levity_cpus, other_cpus)
            runs[name].append(run)
            database_cpu = f"{run.database_cpu_us_per_call:,.0f}" if run.database_cpu_us_per_call is not None else "-"
            other = f"{run.other_threads_us_per_call:,.0f}" if run.other_threads_us_per_call is not None else "-"
            by_action = "  ".join(f"{action} {p99}" for action, p99 in run.p99_ms_by_action.items())
            print(f"{name:<22}{run.calls_per_second:>10,.0f}{run.server_cpu_us_per_call:>20,.0f}{other:>21}"
                  f"{database_cpu:>24}{run.p99_ms or 0:>8.1f}{run.errors:>8}  {by_action}")
    median = {name: Run(*(statistics.median(getattr(r, field) or 0 for r in runs[name])
                          if field != "p99_ms_by_action" else {} for field in Run._fields)) for name in runs}
    sqlite = median["SQLite"]
    for name, run in median.items():
        ratio = 100 * run.calls_per_second / sqlite.calls_per_second
        print(f"median {name}: {run.calls_per_second:,.0f} calls/s ({ratio:.0f}% of SQLite), Levity CPU per call "
              f"{run.server_cpu_us_per_call:,.0f} us (other threads {run.other_threads_us_per_call:,.0f} us), "
              f"PostgreSQL server {run.database_cpu_us_per_call:,.0f} us, "
              f"p99 {run.p99_ms:.1f} ms")


async def boot_all(url, names: list[str], concurrency: int = 200) -> list:
    """Connect and boot every charger (retrying until its instance answers); the open sockets.
    `url`: the instance's, or a function of the charge point id giving it."""
    limit = asyncio.Semaphore(concurrency)
    url_of = url if callable(url) else (lambda _: url)

    async def one(name: str):
        while True:
            async with limit:
                try:
                    ws = await websockets.connect(f"{url_of(name)}/{name}", subprotocols=["ocpp1.6"],
                                                  open_timeout=10)
                    await ws.send(BOOT)
                    if json.loads(await asyncio.wait_for(ws.recv(), 10))[0] == 3:
                        return ws
                    await ws.close()
                except (OSError, asyncio.TimeoutError, websockets.WebSocketException):
                    pass
            await asyncio.sleep(0.05)

    return await asyncio.gather(*(one(name) for name in names))


def raise_open_files_limit() -> int:
    """Soft limit up to the hard one (raising the hard one needs privileges); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        soft = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


async def failover_seconds(database: str, chargers: int, workdir: Path, instances: int = 2) -> float:
    env = {"LEVITY_DATABASE": database, "LEVITY_AUDIT_SINK": "none",
           "LEVITY_MAX_CONNECTIONS": str(max(20000, chargers + 1000))}
    servers = []
    try:
        for index in range(instances):
            (workdir / f"instance{index}").mkdir()
            servers.append(LevityProcess(workdir / f"instance{index}", env).start())
        first, survivors = servers[0], servers[1:]
        names = [f"CP{i:06d}" for i in range(chargers)]
        sockets = await boot_all(first.url, names)
        killed = time.perf_counter()
        first.kill()
        for ws in sockets:
            ws.transport.abort()
        moved = await boot_all(lambda name: survivors[zlib.crc32(name.encode()) % len(survivors)].url, names)
        seconds = time.perf_counter() - killed
        await asyncio.gather(*(ws.close() for ws in moved))
        return seconds
    finally:
        for server in servers:
            server.kill()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chargers", type=int, default=200, help="chargers of the calls/s comparison")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds of load per store")
    parser.add_argument("--rounds", type=int, default=2, help="SQLite/PostgreSQL pairs of the calls/s comparison")
    parser.add_argument("--failover-chargers", type=int, default=1000,
                        help="chargers moved after the kill (0: skip the failover measurement)")
    parser.add_argument("--failover-instances", type=int, default=2,
                        help="instances on the database; the killed one's chargers spread over the others")
    parser.add_argument("--failover-only", action="store_true", help="skip the calls/s comparison")
    parser.add_argument("--previous-tree", type=Path, metavar="DIR",
                        help="also run PostgreSQL with the Levity of this source tree, each round (before/after)")
    parser.add_argument("--levity-cpus", type=bench.parse_cpus, metavar="LIST",
                        help="per instance: Levity on these CPUs, the load client and PostgreSQL on the others")
    args = parser.parse_args(argv)
    if args.failover_instances < 2:
        parser.error("--failover-instances needs at least 2 (one is killed)")
    open_files = raise_open_files_limit()
    if open_files < args.failover_chargers + 1000:
        print(f"bench_cluster: the open files limit ({open_files}) is too low for {args.failover_chargers} "
              "chargers: raise the hard limit (ulimit -Hn, as root)", file=sys.stderr)
        return 1
    reason = unavailable_reason()
    if reason:
        print(f"bench_cluster: {reason}", file=sys.stderr)
        return 1
    server = PostgresServer().start()
    try:
        with tempfile.TemporaryDirectory(prefix="levity-bench-cluster-") as directory:
            out = Path(directory)
            if not args.failover_only:
                compare(server, args.chargers, args.duration, args.rounds, out, args.previous_tree,
                        args.levity_cpus)
            if args.failover_chargers <= 0:
                return 0
            failover_db = server.new_database()
            levity_command("db", "upgrade", database=failover_db)
            seconds = asyncio.run(failover_seconds(failover_db, args.failover_chargers, out, args.failover_instances))
            others = args.failover_instances - 1
            print(f"failover: {args.failover_chargers} chargers reconnected and booted on the other "
                  f"{'instance' if others == 1 else f'{others} instances'} {seconds:.2f} s after the kill "
                  f"({args.failover_chargers / seconds:,.0f} boots/s)")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
