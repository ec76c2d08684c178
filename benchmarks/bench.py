"""Load benchmark: Levity against a plain `ocpp`-library server and a raw WebSocket echo
server, with the same load client, in the same run.

    python -m benchmarks.bench                                   # 100 and 1,000 chargers, 10 s each
    python -m benchmarks.bench --chargers 100,1000,5000 --json bench.json --plot bench.png
    python -m benchmarks.bench --mode open --rate 2 --chargers 1000
    python -m benchmarks.bench --connections-only 10000 --targets levity
    python -m benchmarks.bench --targets all                     # + audit off, Fluentd down
    python -m benchmarks.bench --per-core                        # server on CPU 0, the rest elsewhere

Every server is started by the bench on a free 127.0.0.1 port and stopped at the end; temp
directories are removed. See docs/benchmark.md for what is measured and how.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time
from array import array
from dataclasses import dataclass
from pathlib import Path

import psutil

from benchmarks import report
from benchmarks.loadclient import STEPS, worker_main
from benchmarks.targets import (DEFAULT_TARGETS, TARGETS, ProcessTree, ServerProcess, describe_machine,
                                ephemeral_ports, free_port, ulimit_nofile)

MAX_CHARGERS = 20_000
MAX_DURATION = 900.0
ACTION_OF_KEY = {"StatusNotificationCharging": "StatusNotification", "TxMeterValues": "MeterValues"}
EMITTED = 'levity_audit_events_total{state="emitted"}'  # in Levity's /metrics
ACKNOWLEDGED = 'levity_audit_events_total{state="acknowledged"}'
# --per-core: the targets measured on the server's CPU set (the whole-machine table keeps --targets).
PER_CORE_TARGETS = ("levity", "levity-audit-off", "plain-ocpp", "echo")
STORM_TARGETS = ("levity", "plain-ocpp")


def parse_mix(text: str) -> dict[str, float]:
    mix: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, weight = part.partition("=")
        if name not in STEPS:
            raise argparse.ArgumentTypeError(f"unknown step {name!r}: use {', '.join(STEPS)}")
        try:
            mix[name] = float(weight or 1)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad weight in {part!r}") from None
    if not mix or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError("the mix needs at least one positive weight")
    return mix


DEFAULT_MIX = parse_mix("heartbeat=25,status=25,meter=25,transaction=25")


def parse_counts(text: str) -> list[int]:
    counts = [int(x) for x in text.replace("_", "").split(",") if x.strip()]
    if not counts or any(not 1 <= n <= MAX_CHARGERS for n in counts):
        raise argparse.ArgumentTypeError(f"charge point counts must be 1..{MAX_CHARGERS}")
    return counts


def parse_targets(text: str) -> list[str]:
    names = list(TARGETS) if text == "all" else [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown target(s) {unknown}: choose from {', '.join(TARGETS)} or all")
    return names


def parse_cpus(text: str) -> list[int]:
    cpus = sorted({int(x) for x in text.split(",") if x.strip()})
    available = os.sched_getaffinity(0)
    if not cpus or any(c not in available for c in cpus):
        raise argparse.ArgumentTypeError(f"CPUs must be among {sorted(available)}")
    return cpus


def parse_steps(text: str) -> list[str]:
    if text == "none":
        return []
    steps = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown step(s) {unknown}: use {', '.join(STEPS)} or none")
    return steps


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--targets", type=parse_targets, default=None,
                   help=f"comma-separated, or 'all': {', '.join(TARGETS)} (default: {','.join(DEFAULT_TARGETS)}; "
                        f"with --per-core, the pinned table's default is {','.join(PER_CORE_TARGETS)})")
    p.add_argument("--levity-tree", type=Path, metavar="DIR",
                   help="run the levity targets from this source tree (e.g. an export of another commit): "
                        "before/after comparisons with the same client")
    p.add_argument("--chargers", type=parse_counts, default=[100, 1000],
                   help="comma-separated numbers of simulated charge points, one measuring point each")
    p.add_argument("--duration", type=float, default=None,
                   help="measuring window per point, seconds (default 10; 60 with --connections-only)")
    p.add_argument("--warmup", type=float, default=None,
                   help="load before the window, not recorded (default 3; 0 with --connections-only)")
    p.add_argument("--mode", choices=("closed", "open"), default="closed",
                   help="closed: each charger sends its next call as soon as the answer comes; "
                        "open: --rate calls per second per charger on a fixed schedule")
    p.add_argument("--rate", type=float, default=1.0, help="open loop: calls per second per charger")
    p.add_argument("--mix", type=parse_mix, default=DEFAULT_MIX,
                   help="relative weights of the next step: heartbeat, status, meter, transaction "
                        "(a transaction is Authorize, StartTransaction, MeterValues x --tx-meter-values, "
                        "StopTransaction)")
    p.add_argument("--tx-meter-values", type=int, default=2, help="MeterValues calls inside each transaction")
    p.add_argument("--connections-only", type=int, metavar="N", default=None,
                   help="hold N idle chargers (after BootNotification) sending only heartbeats every "
                        "--heartbeat-interval seconds, spread out; reports heartbeat p99 and RSS per connection")
    p.add_argument("--heartbeat-interval", type=float, default=30.0, help="--connections-only heartbeat period")
    p.add_argument("--mixed-versions", action="store_true",
                   help="with --connections-only: half the chargers speak OCPP 2.0.1 (subprotocol ocpp2.0.1, "
                        "a 2.0.1 BootNotification), half 1.6, alternating; Levity targets only")
    p.add_argument("--clients", type=int, default=None,
                   help="load client processes (default: number of CPUs, at most one per 10 chargers)")
    p.add_argument("--connect-concurrency", type=int, default=64,
                   help="handshakes in flight per client process while connecting")
    p.add_argument("--connect-timeout", type=float, default=60.0, help="per charger: connect + BootNotification")
    p.add_argument("--call-timeout", type=float, default=10.0, help="a call unanswered this long is a timeout")
    p.add_argument("--levity-env", action="append", default=[], metavar="KEY=VALUE",
                   help="extra environment for the levity targets (repeatable), e.g. LEVITY_LOG_LEVEL=WARNING")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="sample each server with py-spy during the window (pip install py-spy): "
                        "DIR/<target>-<N>.collapsed (flamegraph input) and .top.txt (hottest functions)")
    p.add_argument("--server-cpus", type=parse_cpus, default=None, metavar="LIST",
                   help="pin the server (and its children) to these CPUs, e.g. 0 (default: no pinning)")
    p.add_argument("--client-cpus", type=parse_cpus, default=None, metavar="LIST",
                   help="pin the load client processes to these CPUs, e.g. 1")
    p.add_argument("--receiver", choices=("counting", "tests", "fluentd"), default=None,
                   help="Fluentd or a stand-in for the levity target: benchmarks/forward_receiver.py (counting: "
                        "decodes and counts; keeps up with Levity), the suite's tests/support/forward_receiver.py "
                        "(tests: decodes and keeps every event: a cross-check, but under load it falls behind and "
                        "Levity spools) or a real Fluentd with the null output (fluentd: FLUENTD_BIN or on PATH). "
                        "Default: fluentd with --per-core when one is installed, else counting")
    p.add_argument("--per-core", action="store_true",
                   help="measure per core: the server (every thread and worker) pinned to --server-cpus (default: "
                        "the first CPU), the load client and the receiver to the others; levity with audit on and "
                        "off, plain-ocpp and echo; then --by-type and --storm on the same CPUs, then the "
                        "whole-machine table (--targets, unpinned) unless --no-whole-machine")
    p.add_argument("--by-type", type=parse_steps, default=None, metavar="STEPS",
                   help="with --per-core: one extra point per step type (the mix STEP=100) for server CPU "
                        "microseconds per call by call type (default: all steps; 'none' to skip)")
    p.add_argument("--storm", type=int, default=None, metavar="N",
                   help="reconnect storm: N chargers connect and boot at once; time until all are booted, "
                        "failures and timeouts; levity against plain-ocpp (default with --per-core: 10000; 0 skips)")
    p.add_argument("--no-whole-machine", action="store_true", help="with --per-core: skip the unpinned table")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every target at every point this many times, interleaved; ratios are taken "
                        "within each round (neighbours in time) and their median is reported")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, metavar="FILE", help="write the full report as JSON")
    p.add_argument("--plot", type=Path, metavar="FILE", help="write a PNG: throughput and p99 against chargers")
    p.add_argument("--quiet", action="store_true", help="only the final table")
    return p


def log(args, message: str) -> None:
    if not args.quiet:
        print(message, file=sys.stderr, flush=True)


# One measuring point -----------------------------------------------------------------------

def percentiles(values: list[int]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    values = sorted(values)
    n = len(values)

    def at(q: float) -> float:
        return round(values[min(n - 1, int(q * n))] / 1000.0, 3)

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": round(values[-1] / 1000.0, 3),
            "mean": round(sum(values) / n / 1000.0, 3)}


def _recv(conn, timeout: float, expect: str):
    if not conn.poll(timeout):
        raise TimeoutError(f"a load client sent no {expect!r} within {timeout:.0f}s")
    message = conn.recv()
    if message[0] != expect:
        raise RuntimeError(f"a load client sent {message[0]!r} instead of {expect!r}")
    return message[1] if len(message) > 1 else None


@dataclass(frozen=True)
class Phase:
    """One table of the report: which CPUs, which mix, load or a reconnect storm."""

    name: str
    title: str
    targets: tuple[str, ...]
    chargers: tuple[int, ...]
    mix: dict
    mix_name: str = "default"
    server_cpus: tuple[int, ...] | None = None
    client_cpus: tuple[int, ...] | None = None
    storm: bool = False
    by_type: bool = False  # one of the single-step phases, reported together


def build_phases(args) -> list[Phase]:
    default_mix = "default" if args.mix == DEFAULT_MIX else "custom"
    if not args.per_core:
        return [Phase("main", "", tuple(args.targets or DEFAULT_TARGETS), tuple(args.chargers), args.mix,
                      default_mix, _opt(args.server_cpus), _opt(args.client_cpus))]
    pinned_targets = tuple(args.targets or PER_CORE_TARGETS)
    cpus = sorted(os.sched_getaffinity(0))
    server_cpus = args.server_cpus or cpus[:1]
    client_cpus = args.client_cpus or [c for c in cpus if c not in server_cpus]
    if not client_cpus:
        raise SystemExit(f"--per-core needs a CPU besides the server's {server_cpus} for the client: "
                         f"this process may use {cpus}")
    pinned = dict(server_cpus=tuple(server_cpus), client_cpus=tuple(client_cpus))
    where = f"server on CPU {','.join(map(str, server_cpus))}, client and receiver on {','.join(map(str, client_cpus))}"
    phases = [Phase("per-core", f"Per core ({where})", pinned_targets, tuple(args.chargers), args.mix,
                    default_mix, **pinned)]
    for step in args.by_type:
        phases.append(Phase(f"per-core-{step}", f"Per core, only {step} ({where})", pinned_targets,
                            tuple(args.chargers[:1]), {step: 1.0}, step, by_type=True, **pinned))
    if args.storm:
        phases.append(Phase("storm", f"Reconnect storm: {args.storm} chargers connect and boot at once ({where})",
                            STORM_TARGETS, (args.storm,), args.mix, default_mix, storm=True, **pinned))
    if not args.no_whole_machine:
        phases.append(Phase("whole-machine", f"Whole machine (no pinning, {len(cpus)} CPUs)",
                            tuple(args.targets or DEFAULT_TARGETS),
                            tuple(args.chargers), args.mix, default_mix))
    return phases


def _opt(cpus):
    return tuple(cpus) if cpus else None


def start_receiver(args, workdir: Path, cpus):
    if args.receiver == "fluentd":
        from benchmarks.fluentd_null import FluentdNullReceiver, fluentd_binary

        return FluentdNullReceiver(fluentd_binary(), workdir / "fluentd", free_port(), cpus=list(cpus or []))
    from benchmarks.forward_receiver import ReceiverProcess

    receiver = ReceiverProcess(kind=args.receiver)
    if cpus:
        os.sched_setaffinity(receiver.pid, cpus)
    return receiver


def received(receiver, server: ServerProcess, fast: bool = True) -> dict:
    """What the receiver has: its own counts, or for a real Fluentd what Levity saw acknowledged."""
    if getattr(receiver, "kind", "") == "fluentd":
        events = int(server.metrics().get(ACKNOWLEDGED, 0))
        return {"events": events, "by_tag": {}, "acks": None, "connections": None, "decode_errors": 0}
    return receiver.snapshot(fast=fast)


def run_point(args, target_name: str, chargers: int, workdir: Path, phase: Phase | None = None) -> dict:
    phase = phase or build_phases(args)[0]
    spec = TARGETS[target_name]
    receiver = None
    server = None
    workers: list[tuple[multiprocessing.Process, object]] = []
    result: dict = {"target": target_name, "charge_points": chargers, "mode": args.mode,
                    "rate_per_charger": args.rate if args.mode == "open" else None,
                    "phase": phase.name, "mix": phase.mix_name}
    try:
        fluentd_port = None
        if spec.kind == "levity" and spec.audit == "fluentd":
            receiver = start_receiver(args, workdir, phase.client_cpus)
            fluentd_port = receiver.port
            result["receiver"] = args.receiver
        elif spec.kind == "levity" and spec.audit == "down":
            fluentd_port = free_port()  # nothing listens there
        extra_env = dict(kv.split("=", 1) for kv in args.levity_env)
        server = ServerProcess(spec, workdir, extra_env=extra_env, fluentd_port=fluentd_port,
                               cpus=list(phase.server_cpus) if phase.server_cpus else None,
                               source_tree=args.levity_tree).start()
        if spec.kind == "levity":
            result["levity_env"] = server.env_used
        tree = ProcessTree(server.process.pid)
        time.sleep(0.5)
        rss_start = tree.rss()

        # Load clients: the charge points split round-robin between the processes.
        clients = args.clients or (len(phase.client_cpus) if phase.client_cpus else multiprocessing.cpu_count()) or 1
        clients = max(1, min(clients, (chargers + 9) // 10))
        # A storm: every charger of a client process connects at once.
        concurrency = (chargers + clients - 1) // clients if phase.storm else args.connect_concurrency
        ids = [(n, f"BENCH{n:06d}") for n in range(1, chargers + 1)]
        context = multiprocessing.get_context("fork")
        for index in range(clients):
            cfg = {"host": "127.0.0.1", "port": server.port, "echo": spec.kind == "echo",
                   "charge_points": ids[index::clients], "mix": phase.mix, "tx_meter_values": args.tx_meter_values,
                   "rate": args.rate if args.mode == "open" else 0, "seed": args.seed * 1000 + index,
                   "call_timeout": args.call_timeout, "connect_timeout": args.connect_timeout,
                   "connect_concurrency": concurrency,
                   "cpus": list(phase.client_cpus) if phase.client_cpus else None,
                   "mixed_versions": args.mixed_versions}
            parent_conn, child_conn = context.Pipe()
            process = context.Process(target=worker_main, args=(cfg, child_conn), daemon=True,
                                      name=f"bench-client-{index}")
            process.start()
            child_conn.close()
            workers.append((process, parent_conn))

        connect_started = time.monotonic()
        ready = [_recv(conn, args.connect_timeout * (1 + chargers / 500) + 30, "ready") for _, conn in workers]
        connected = sum(r["connected"] for r in ready)
        failures: dict[str, int] = {}
        for r in ready:
            for reason, count in r["connect_failures"].items():
                failures[reason] = failures.get(reason, 0) + count
        boots = array("l")
        for r in ready:
            boots.frombytes(r["boot_latencies"])
        result.update(connected=connected, connect_failures=failures,
                      connect_seconds=round(time.monotonic() - connect_started, 2),
                      boot_latency_ms=percentiles(list(boots)), client_processes=clients)
        log(args, f"  {target_name}: {connected}/{chargers} charge points connected and booted "
                  f"in {result['connect_seconds']:.1f}s" + (f"; failures: {failures}" if failures else ""))
        if phase.storm:
            result["connect_timeouts"] = sum(n for reason, n in failures.items() if "Timeout" in reason)
            result["server_cpu_seconds"] = round(ProcessTree(server.process.pid).cpu_seconds(), 2)
            _close_chargers(workers, 30)
            result["server_exit_code"] = server.stop()
            return result

        time.sleep(1.0)  # settle: answers written, buffers back
        rss_idle = tree.rss()
        client_trees = [ProcessTree(p.pid) for p, _ in workers]

        now = time.monotonic()
        measure_start = now + 0.2 + args.warmup
        measure_end = measure_start + args.duration
        for _, conn in workers:
            conn.send(("go", measure_start, measure_end))
        peak_rss = rss_idle
        while time.monotonic() < measure_start:
            peak_rss = max(peak_rss, tree.rss())
            time.sleep(min(0.25, max(0.0, measure_start - time.monotonic())))
        profiler = _start_profiler(args, server, target_name, chargers)
        cpu0 = tree.cpu_seconds()
        client_cpu0 = sum(t.cpu_seconds() for t in client_trees)
        receiver_cpu0 = ProcessTree(receiver.pid).cpu_seconds() if receiver else 0.0
        audit0 = received(receiver, server)["events"] if receiver else 0
        machine0 = psutil.cpu_times()
        t0 = time.monotonic()
        while time.monotonic() < measure_end:
            peak_rss = max(peak_rss, tree.rss())
            time.sleep(min(0.25, max(0.0, measure_end - time.monotonic())))
        elapsed = time.monotonic() - t0
        machine1 = psutil.cpu_times()
        cpu1 = tree.cpu_seconds()
        client_cpu1 = sum(t.cpu_seconds() for t in client_trees)
        receiver_cpu1 = ProcessTree(receiver.pid).cpu_seconds() if receiver else 0.0
        audit1 = received(receiver, server)["events"] if receiver else 0
        peak_rss = max(peak_rss, tree.rss())
        metrics_window = server.metrics()
        if profiler is not None:
            result["profile"] = _finish_profiler(profiler)

        outcomes = [_recv(conn, args.call_timeout + 30, "result") for _, conn in workers]
        latencies: dict[str, list[int]] = {}
        for outcome in outcomes:
            for key, raw in outcome["latencies"].items():
                values = array("l")
                values.frombytes(raw)
                latencies.setdefault(ACTION_OF_KEY.get(key, key), []).extend(values)
        all_latencies = [v for values in latencies.values() for v in values]
        errors_by_action: dict[str, int] = {}
        for outcome in outcomes:
            for action, count in outcome["errors"].items():
                action = ACTION_OF_KEY.get(action, action)
                errors_by_action[action] = errors_by_action.get(action, 0) + count
        calls = len(all_latencies)
        result.update(
            window_seconds=round(args.duration, 3), calls=calls, calls_per_second=round(calls / args.duration, 1),
            latency_ms=percentiles(all_latencies),
            per_action={action: {"calls": len(values), **percentiles(values)}
                        for action, values in sorted(latencies.items())},
            errors=sum(errors_by_action.values()), errors_by_action=errors_by_action,
            error_samples=[s for o in outcomes for s in o["error_samples"]][:5],
            timeouts=sum(o["timeouts"] for o in outcomes),
            unexpected_frames=sum(o["unexpected"] for o in outcomes),
            disconnects=sum(o["disconnects"] for o in outcomes),
            connections_held=sum(o["open_at_end"] for o in outcomes),
            server_cpu_percent=round((cpu1 - cpu0) / elapsed * 100, 1),
            # The figure that survives a shared machine: server CPU per answered call.
            server_cpu_us_per_call=round((cpu1 - cpu0) / calls * 1e6, 1) if calls else None,
            server_processes=tree.num_processes(),
            server_cpus_allowed=tree.cpus_used(),  # every thread of every process: the pinning held
            client_cpu_percent=round((client_cpu1 - client_cpu0) / elapsed * 100, 1),
            machine_cpu_busy_percent=_busy_percent(machine0, machine1),
            client_cpu_percent_by_process=[round(o["client_cpu_percent"], 1) for o in outcomes],
            server_rss_start_mb=round(rss_start / 2**20, 1), server_rss_idle_mb=round(rss_idle / 2**20, 1),
            server_peak_rss_mb=round(peak_rss / 2**20, 1),
            rss_per_connection_kb=round((rss_idle - rss_start) / connected / 1024, 1) if connected else None,
        )
        if spec.kind == "levity":
            result["server_connected_metric"] = metrics_window.get('levity_connected_charge_points{ocpp_version="1.6"}')
            if args.mixed_versions:  # what the server says it holds of each version
                result["server_connected_by_version"] = {
                    version: metrics_window.get(f'levity_connected_charge_points{{ocpp_version="{version}"}}')
                    for version in ("1.6", "2.0.1")}
            result["calls_throttled"] = metrics_window.get("levity_calls_throttled_total")

        # Close the chargers, then the server (it flushes its audit events on SIGTERM).
        _close_chargers(workers, 15)
        time.sleep(0.3)
        metrics_final = server.metrics()
        exit_code = server.stop()
        result["server_exit_code"] = exit_code
        if spec.kind == "levity":
            audit_stats = {name.removeprefix('levity_audit_events_total{state="').removesuffix('"}'): value
                           for name, value in metrics_final.items() if name.startswith("levity_audit_events_total")}
            audit_stats["spooled"] = metrics_final.get("levity_audit_unacknowledged_events")
            audit = {"sink_stats": audit_stats}
            if receiver is not None:
                delivered = _settle(receiver, audit_stats.get("emitted"), metrics_final)
                audit.update(
                    receiver=args.receiver, delivered=delivered["events"], delivered_by_tag=delivered["by_tag"],
                    # The fluentd receiver's count is Levity's acknowledged metric, read before SIGTERM.
                    delivered_counted_by="levity /metrics" if args.receiver == "fluentd" else "receiver",
                    acks_sent=delivered["acks"], forward_connections=delivered["connections"],
                    decode_errors=delivered["decode_errors"],
                    delivered_in_window=audit1 - audit0,
                    # Emitted but not yet at the receiver when the window closed (spooled, in flight).
                    backlog_at_window_end=(int(metrics_window[EMITTED]) - audit1
                                           if EMITTED in metrics_window else None),
                    delivered_per_second=round((audit1 - audit0) / elapsed, 1),
                    receiver_cpu_percent=round((receiver_cpu1 - receiver_cpu0) / elapsed * 100, 1))
            else:
                audit.update(delivered=0)
            result["audit"] = audit
        return result
    finally:
        for process, conn in workers:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
            conn.close()
        if server is not None:
            server.kill()
        if receiver is not None:
            receiver.stop()


def _close_chargers(workers, timeout: float) -> None:
    for _, conn in workers:
        conn.send(("close",))
    for _, conn in workers:
        try:
            _recv(conn, timeout, "closed")
        except (TimeoutError, RuntimeError, EOFError):
            pass


def _start_profiler(args, server: ServerProcess, target: str, chargers: int):
    if not args.profile:
        return None
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if exe is None:
        print("warning: --profile needs py-spy (pip install py-spy): not profiling", file=sys.stderr)
        return None
    args.profile.mkdir(parents=True, exist_ok=True)
    out = args.profile / f"{target}-{chargers}.collapsed"
    command = [exe, "record", "--pid", str(server.process.pid), "--duration", str(max(1, int(args.duration))),
               "--rate", "100", "--format", "raw", "--nonblocking", "--subprocesses", "--output", str(out)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), out


def _finish_profiler(profiler) -> str | None:
    process, out = profiler
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
    if not out.exists():
        return None
    top = out.with_suffix(".top.txt")
    top.write_text(profile_summary(out.read_text()))
    return str(top)


def _frame_name(frame: str) -> tuple[str, str]:
    """py-spy's 'func (path/to/file.py:12)' as ('func (file.py)', 'func (file.py:12)')."""
    function, _, where = frame.partition(" (")
    if not where:
        return frame, frame
    where = where.rstrip(")").rsplit("/", 1)[-1]
    file, _, line = where.rpartition(":")
    if not file:
        file, line = where, ""
    return f"{function} ({file})", f"{function} ({file}:{line})" if line else f"{function} ({file})"


def profile_summary(collapsed: str, lines: int = 40) -> str:
    """The hottest functions of py-spy's collapsed stacks: inclusive and self share of samples."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame_name(f) for f in stack.split(";")]
        for name in dict.fromkeys(function for function, _ in frames):
            inclusive[name] = inclusive.get(name, 0) + n
        own[frames[-1][1]] = own.get(frames[-1][1], 0) + n
    if not total:
        return "no samples\n"
    out = [f"{total} samples", "", "inclusive (function, any line):"]
    out += [f"{v / total * 100:6.1f}%  {k}" for k, v in sorted(inclusive.items(), key=lambda kv: -kv[1])[:lines]]
    out += ["", "self (function:line):"]
    out += [f"{v / total * 100:6.1f}%  {k}" for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:lines]]
    return "\n".join(out) + "\n"


def _busy_percent(before, after) -> float:
    """Share of all CPUs that was busy (user, system, softirq...: not idle or iowait), in %."""
    total = sum(after) - sum(before)
    idle = (after.idle - before.idle) + (getattr(after, "iowait", 0) - getattr(before, "iowait", 0))
    return round((total - idle) / total * 100, 1) if total > 0 else 0.0


def _settle(receiver, emitted: float | None, levity_metrics: dict, timeout: float = 15.0) -> dict:
    """The receiver's counts once events stop arriving (or all emitted ones are in)."""
    if getattr(receiver, "kind", "") == "fluentd":  # counted by Levity: its reading before SIGTERM
        return {"events": int(levity_metrics.get(ACKNOWLEDGED, 0)), "by_tag": {}, "acks": None,
                "connections": None, "decode_errors": 0}
    deadline = time.monotonic() + timeout
    last = receiver.snapshot(fast=True)
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        snap = receiver.snapshot(fast=True)
        if emitted is not None and snap["events"] >= emitted:
            break
        if snap["events"] != last["events"]:
            last, stable_since = snap, time.monotonic()
        elif time.monotonic() - stable_since > 1.5:
            break
    return receiver.snapshot()


# The run ----------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.connections_only is not None:
        if not 1 <= args.connections_only <= MAX_CHARGERS:
            raise SystemExit(f"--connections-only: 1..{MAX_CHARGERS}")
        args.chargers = [args.connections_only]
        args.mode, args.rate = "open", 1.0 / args.heartbeat_interval
        args.mix = {"heartbeat": 1.0}
        args.duration = 60.0 if args.duration is None else args.duration
        args.warmup = 0.0 if args.warmup is None else args.warmup
    if args.mixed_versions and args.connections_only is None:
        raise SystemExit("--mixed-versions needs --connections-only: the load mix's other calls are OCPP 1.6 frames")
    if args.mixed_versions and any(TARGETS[t].kind != "levity" for t in args.targets):
        raise SystemExit("--mixed-versions: Levity targets only (the plain and echo servers speak 1.6 only), "
                         "e.g. --targets levity")
    args.duration = 10.0 if args.duration is None else args.duration
    args.warmup = 3.0 if args.warmup is None else args.warmup
    if not 0 < args.duration <= MAX_DURATION or not 0 <= args.warmup <= MAX_DURATION:
        raise SystemExit(f"--duration and --warmup: up to {MAX_DURATION:.0f} s")
    if not 1 <= args.rounds <= 20:
        raise SystemExit("--rounds: 1..20")
    if args.mode == "open" and args.rate <= 0:
        raise SystemExit("--rate must be positive")
    for kv in args.levity_env:
        if "=" not in kv:
            raise SystemExit(f"--levity-env {kv!r}: expected KEY=VALUE")

    if args.levity_tree is not None and not (args.levity_tree / "levity" / "cli.py").is_file():
        raise SystemExit(f"--levity-tree {args.levity_tree}: no levity/cli.py there")
    if args.receiver is None:
        from benchmarks.fluentd_null import fluentd_binary

        args.receiver = "fluentd" if args.per_core and fluentd_binary() else "counting"
    elif args.receiver == "fluentd":
        from benchmarks.fluentd_null import fluentd_binary

        if not fluentd_binary():
            raise SystemExit("--receiver fluentd: no Fluentd here (set FLUENTD_BIN or put `fluentd` on PATH)")
    if args.by_type is None:
        args.by_type = list(STEPS) if args.per_core else []
    if args.storm is None:
        args.storm = 10_000 if args.per_core else 0
    if not 0 <= args.storm <= MAX_CHARGERS:
        raise SystemExit(f"--storm: 0..{MAX_CHARGERS}")
    if (args.by_type or args.storm) and not args.per_core:
        raise SystemExit("--by-type and --storm measure on the per-core CPU sets: add --per-core")
    phases = build_phases(args)
    if args.receiver == "tests":
        from benchmarks.forward_receiver import tests_receiver_available

        if not tests_receiver_available():
            raise SystemExit("--receiver tests: tests/support/forward_receiver.py is not importable")
    soft, hard = ulimit_nofile()
    needed = max(max(p.chargers) for p in phases) + 256
    limits = {"nofile_soft": soft, "nofile_hard": hard, "ephemeral_ports": ephemeral_ports()}
    if soft < needed:
        print(f"warning: open files limit {soft} (hard {hard}) is below the {needed} descriptors the server "
              f"needs for {needed - 256} charge points: some connections will fail", file=sys.stderr)

    run = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": describe_machine(), "limits": limits,
           "config": {"targets": [t for p in phases for t in p.targets], "chargers": args.chargers, "mode": args.mode,
                      "rate_per_charger": args.rate if args.mode == "open" else None, "mix": args.mix,
                      "tx_meter_values": args.tx_meter_values, "duration": args.duration, "warmup": args.warmup,
                      "connections_only": args.connections_only, "mixed_versions": args.mixed_versions,
                      "heartbeat_interval": args.heartbeat_interval if args.connections_only else None,
                      "clients": args.clients or multiprocessing.cpu_count(), "seed": args.seed,
                      "rounds": args.rounds,
                      "levity_env": args.levity_env, "receiver": args.receiver, "server_cpus": args.server_cpus,
                      "client_cpus": args.client_cpus, "per_core": args.per_core,
                      "levity_tree": str(args.levity_tree) if args.levity_tree else None,
                      "phases": [{"name": p.name, "title": p.title, "targets": list(p.targets),
                                  "chargers": list(p.chargers), "mix": p.mix,
                                  "server_cpus": list(p.server_cpus) if p.server_cpus else None,
                                  "client_cpus": list(p.client_cpus) if p.client_cpus else None,
                                  "storm": p.storm, "by_type": p.by_type, "mix_name": p.mix_name}
                                 for p in phases]},
           "results": []}
    workdir = Path(tempfile.mkdtemp(prefix="levity-bench-"))
    try:
        # Rounds outermost: each round measures every target close together in time, so the
        # machine's drift (these machines are shared) hits a round's targets alike.
        for round_index in range(args.rounds):
            for phase in phases:
                for chargers in phase.chargers:
                    for target in phase.targets:
                        what = ("reconnect storm" if phase.storm else
                                f"{args.mode} loop, mix {phase.mix_name}, {args.warmup:g}s warm-up + {args.duration:g}s")
                        log(args, f"[{phase.name}: {target} x {chargers} charge points, {what}, "
                                  f"round {round_index + 1}/{args.rounds}]")
                        point_dir = workdir / f"{phase.name}-{target}-{chargers}-{round_index}"
                        point_dir.mkdir()
                        try:
                            result = run_point(args, target, chargers, point_dir, phase)
                        except (RuntimeError, TimeoutError, OSError) as exc:
                            result = {"target": target, "charge_points": chargers, "phase": phase.name,
                                      "mix": phase.mix_name, "failed": str(exc)[-2000:]}
                            log(args, f"  {target}: FAILED: {exc}")
                        result["round"] = round_index
                        run["results"].append(result)
                        shutil.rmtree(point_dir, ignore_errors=True)
    except KeyboardInterrupt:
        print("interrupted: reporting what was measured", file=sys.stderr)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    run["ratios"] = report.ratios(run["results"])
    print(report.table(run))
    if args.json:
        args.json.write_text(json.dumps(run, indent=2) + "\n")
        log(args, f"JSON written to {args.json}")
    if args.plot:
        report.plot(run, args.plot)
        log(args, f"plot written to {args.plot}")
    return 0 if all("failed" not in r for r in run["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
