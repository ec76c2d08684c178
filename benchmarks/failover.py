"""Failover benchmark: calls/s and audit events/s before, during and after the death of the
primary Fluentd, and how long the standby takes to acknowledge (docs/benchmark.md).

    .venv/bin/python -m benchmarks.failover --chargers 1000 --phase 10

Levity runs with FLUENTD_SERVERS=<primary>,<standby> (two counting Forward receivers in this
process). The load clients (benchmarks/loadclient.py, closed loop) run for three phases of
--phase seconds: the primary is killed (listener closed, connections reset, as a crash) at the
end of the first and started again on the same port at the end of the second. Per phase it
prints the calls Levity answered per second (its audit events emitted: every call emits one)
and the audit events acknowledged per second by the receivers; then the time from the primary's
death to the standby's first acknowledgement, and from its restart to its own first one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import shutil
import tempfile
import threading
import time
from array import array
from pathlib import Path

from benchmarks.bench import _recv, parse_mix
from benchmarks.forward_receiver import CountingForwardReceiver
from benchmarks.loadclient import worker_main
from benchmarks.targets import TARGETS, ServerProcess, free_port


class KillableReceiver(CountingForwardReceiver):
    """A counting receiver that can die like a crashed Fluentd and notes when it first acks."""

    def __init__(self, port: int):
        super().__init__("127.0.0.1", port)
        self.writers: set[asyncio.StreamWriter] = set()
        self.first_ack_at: float | None = None

    async def _serve(self, reader, writer):
        self.writers.add(writer)
        try:
            await super()._serve(reader, _AckClock(writer, self))
        finally:
            self.writers.discard(writer)

    async def kill(self) -> None:
        self._server.close()
        for writer in list(self.writers):
            writer.transport.abort()


class _AckClock:
    """Wraps a writer: the first write is the first ack (the receiver writes only acks)."""

    def __init__(self, writer, receiver: KillableReceiver):
        self._writer, self._receiver = writer, receiver

    def write(self, data: bytes) -> None:
        if self._receiver.first_ack_at is None:
            self._receiver.first_ack_at = time.monotonic()
        self._writer.write(data)

    def __getattr__(self, name):
        return getattr(self._writer, name)


class Receivers:
    """The two receivers on an event loop in a thread of this process (one clock for all times)."""

    def __init__(self):
        # free_port() keeps out of the range client source ports come from: once the primary is
        # dead, one of Levity's connections could otherwise take its port and block the restart.
        self.ports = free_port(), free_port()

    def start(self) -> None:
        """After the load clients are forked: a forked child would keep the listeners open."""
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.primary = self.run(KillableReceiver(self.ports[0]).start())
        self.standby = self.run(KillableReceiver(self.ports[1]).start())

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def kill_primary(self) -> float:
        async def kill():
            await self.primary.kill()
            self.standby.first_ack_at = None  # from now on
        self.run(kill())
        return time.monotonic()

    def restart_primary(self) -> float:
        events = self.primary.events
        self.primary = self.run(KillableReceiver(self.primary.port).start())
        self.primary.events_before_restart = events
        return time.monotonic()

    def acknowledged(self) -> int:
        return self.primary.events + getattr(self.primary, "events_before_restart", 0) + self.standby.events


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chargers", type=int, default=1000)
    parser.add_argument("--phase", type=float, default=10.0, help="seconds before, during and after the outage")
    parser.add_argument("--clients", type=int, default=2, help="load client processes")
    parser.add_argument("--json", type=Path, help="write the numbers as JSON")
    args = parser.parse_args(argv)

    receivers = Receivers()
    workdir = Path(tempfile.mkdtemp(prefix="levity-failover-"))
    servers = ",".join(f"127.0.0.1:{port}" for port in receivers.ports)
    server = ServerProcess(TARGETS["levity"], workdir, fluentd_port=receivers.ports[0],
                           extra_env={"FLUENTD_SERVERS": servers, "LEVITY_LOG_LEVEL": "WARNING"}).start()
    context = multiprocessing.get_context("fork")
    workers = []
    ids = [(n, f"FAILOVER{n:06d}") for n in range(1, args.chargers + 1)]
    for index in range(args.clients):
        cfg = {"host": "127.0.0.1", "port": server.port, "echo": False, "charge_points": ids[index::args.clients],
               "mix": parse_mix("heartbeat=25,status=25,meter=25,transaction=25"), "tx_meter_values": 2,
               "rate": 0, "seed": index, "call_timeout": 10.0, "connect_timeout": 60.0,
               "connect_concurrency": 64, "cpus": None}
        parent, child = context.Pipe()
        process = context.Process(target=worker_main, args=(cfg, child), daemon=True)
        process.start()
        workers.append((process, parent))
    receivers.start()
    try:
        ready = [_recv(conn, 120, "ready") for _, conn in workers]
        connected = sum(r["connected"] for r in ready)
        active = [f'levity_fluentd_active{{server="127.0.0.1:{port}"}}' for port in receivers.ports]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the events on the primary before it dies
            metrics = server.metrics()
            if metrics.get(active[0], 0) >= 1 and metrics.get(active[1], 0) == 0:
                break
            time.sleep(0.2)
        start = time.monotonic() + 1.0
        end = start + 3 * args.phase
        for _, conn in workers:
            conn.send(("go", start, end))
        time.sleep(max(0.0, start - time.monotonic()))
        marks = [(time.monotonic(), server.metrics().get('levity_audit_events_total{state="emitted"}', 0), receivers.acknowledged())]
        died = restarted = None
        for phase in range(3):
            time.sleep(max(0.0, start + (phase + 1) * args.phase - time.monotonic()))
            marks.append((time.monotonic(), server.metrics().get('levity_audit_events_total{state="emitted"}', 0), receivers.acknowledged()))
            if phase == 0:
                died = receivers.kill_primary()
            elif phase == 1:
                restarted = receivers.restart_primary()
        outcomes = [_recv(conn, 60, "result") for _, conn in workers]
        standby_first = receivers.standby.first_ack_at
        primary_again = receivers.primary.first_ack_at
    finally:
        for _, conn in workers:
            try:
                conn.send(("close",))
            except (BrokenPipeError, OSError):
                pass
        for process, _ in workers:
            process.join(10)
            if process.is_alive():
                process.kill()
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    phases = {}
    for name, (a, b) in zip(("before", "during", "after"), zip(marks, marks[1:])):
        seconds = b[0] - a[0]
        phases[name] = {"calls_per_second": round((b[1] - a[1]) / seconds, 1),
                        "audit_acknowledged_per_second": round((b[2] - a[2]) / seconds, 1)}
    result = {
        "chargers": connected, "phase_seconds": args.phase, "phases": phases,
        "client_calls_per_second_whole_window": round(
            sum(len(array("l", raw)) for o in outcomes for raw in o["latencies"].values()) / (3 * args.phase), 1),
        "death_to_standby_first_ack_seconds": round(standby_first - died, 3) if standby_first and died else None,
        "restart_to_primary_first_ack_seconds": round(primary_again - restarted, 3)
        if primary_again and restarted else None,
        "timeouts": sum(o["timeouts"] for o in outcomes), "errors": sum(sum(o["errors"].values()) for o in outcomes),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
