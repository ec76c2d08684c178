"""Server CPU per call, OCPP 2.0.1 against 1.6, on the same mix of calls.

    python -m benchmarks.versions                       # 20 chargers x 30 sessions per version, 5 rounds
    python -m benchmarks.versions --chargers 50 --sessions 40 --rounds 9

Starts one `levity serve` (audit to a file, schema validation on) on a free 127.0.0.1 port,
then per version connects the chargers with that subprotocol and runs sessions of the same
shape: BootNotification, StatusNotification, Authorize, a transaction start, three meter
readings in the transaction, its stop, Heartbeat (9 calls; in 2.0.1 the transaction is
TransactionEvent Started / Updated x3 / Ended). Every session is a new transaction in both
versions (its own timestamp and meter readings): none is a repeat, which Levity answers without
storing anything, so both versions pay for the same durable starts and stops.

The number is the server process's CPU time (user + system, from psutil) over the calls
answered; the client runs in this process and is not counted. On a shared machine one run is
noisy: the versions run in interleaved rounds (1.6 then 2.0.1, then the other way round), one
JSON line per run, then one summary line per version with the median of its runs. The last line
counts the anomaly events of the whole run (0: no session was taken for a repeat).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

import psutil
import websockets

from benchmarks.targets import free_port

def session_time(n: int) -> str:
    """A timestamp of its own for session n: a start that differs from every earlier one."""
    return f"2024-01-{15 + n // 86400 % 14:02d}T{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000Z"


def session_16(n: int, transaction_id=None) -> list[tuple[str, dict]]:
    TS = session_time(n)
    meter = [{"timestamp": TS, "sampledValue": [
        {"value": str(1000 + n), "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
        {"value": "11000", "measurand": "Power.Active.Import", "unit": "W"}]}]
    return [
        ("BootNotification", {"chargePointVendor": "Bench", "chargePointModel": "Sim"}),
        ("StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Charging", "timestamp": TS}),
        ("Authorize", {"idTag": "BENCH"}),
        ("StartTransaction", {"connectorId": 1, "idTag": "BENCH", "meterStart": 1000 + n, "timestamp": TS}),
        *[("MeterValues", {"connectorId": 1, "transactionId": "TX", "meterValue": meter})] * 3,
        ("StopTransaction", {"transactionId": "TX", "meterStop": 2000 + n, "timestamp": TS}),
        ("Heartbeat", {}),
    ]


def session_201(n: int, station_tx: str) -> list[tuple[str, dict]]:
    TS = session_time(n)
    meter = [{"timestamp": TS, "sampledValue": [
        {"value": 1000 + n, "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}},
        {"value": 11000, "measurand": "Power.Active.Import", "unitOfMeasure": {"unit": "W"}}]}]

    def event(kind: str, seq: int, trigger: str, **extra) -> tuple[str, dict]:
        return ("TransactionEvent", {"eventType": kind, "timestamp": TS, "triggerReason": trigger, "seqNo": seq,
                                     "transactionInfo": {"transactionId": station_tx}, **extra})
    return [
        ("BootNotification", {"reason": "PowerUp", "chargingStation": {"vendorName": "Bench", "model": "Sim"}}),
        ("StatusNotification", {"timestamp": TS, "connectorStatus": "Occupied", "evseId": 1, "connectorId": 1}),
        ("Authorize", {"idToken": {"idToken": "BENCH", "type": "ISO14443"}}),
        event("Started", 0, "Authorized", evse={"id": 1, "connectorId": 1},
              idToken={"idToken": "BENCH", "type": "ISO14443"}, meterValue=meter),
        *[event("Updated", i, "MeterValuePeriodic", meterValue=meter) for i in (1, 2, 3)],
        event("Ended", 4, "EVDeparted", meterValue=meter),
        ("Heartbeat", {}),
    ]


SESSION_NUMBERS = itertools.count()  # unique over the whole run: every session is a new transaction


async def charger(url: str, name: str, version: str, sessions: int) -> int:
    subprotocol = "ocpp2.0.1" if version == "2.0.1" else "ocpp1.6"
    calls = 0
    async with websockets.connect(f"{url}/{name}", subprotocols=[subprotocol]) as ws:
        for _ in range(sessions):
            n = next(SESSION_NUMBERS)
            transaction_id = None
            steps = session_201(n, f"{name}-{n}") if version == "2.0.1" else session_16(n)
            for i, (action, payload) in enumerate(steps):
                if payload.get("transactionId") == "TX":
                    payload = {**payload, "transactionId": transaction_id}
                await ws.send(json.dumps([2, str(i), action, payload]))
                answer = json.loads(await ws.recv())
                assert answer[0] == 3, answer
                if action == "StartTransaction":
                    transaction_id = answer[2]["transactionId"]
                calls += 1
    return calls


async def measure(url: str, server: psutil.Process, version: str, chargers: int, sessions: int) -> dict:
    before = server.cpu_times()
    started = time.monotonic()
    counts = await asyncio.gather(*(charger(url, f"B{version.replace('.', '')}-{i}", version, sessions)
                                    for i in range(chargers)))
    elapsed = time.monotonic() - started
    after = server.cpu_times()
    cpu = (after.user - before.user) + (after.system - before.system)
    calls = sum(counts)
    return {"ocpp_version": version, "calls": calls, "server_cpu_s": round(cpu, 3),
            "server_cpu_us_per_call": round(cpu / calls * 1e6, 1), "wall_s": round(elapsed, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chargers", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved runs per version (median reported)")
    args = parser.parse_args()
    workdir = tempfile.mkdtemp(prefix="levity-versions-")
    process, url = start_levity(workdir)
    try:
        server = psutil.Process(process.pid)
        # Warm-up (the schemas are compiled at start; this fills caches), then the rounds.
        asyncio.run(measure(url, server, "1.6", 2, 2))
        asyncio.run(measure(url, server, "2.0.1", 2, 2))
        runs: dict[str, list[dict]] = {"1.6": [], "2.0.1": []}
        for round_number in range(args.rounds):
            order = ("1.6", "2.0.1") if round_number % 2 == 0 else ("2.0.1", "1.6")
            for version in order:
                result = asyncio.run(measure(url, server, version, args.chargers, args.sessions))
                runs[version].append(result)
                print(json.dumps({**result, "round": round_number + 1}), flush=True)
        for version, results in runs.items():
            per_call = [r["server_cpu_us_per_call"] for r in results]
            print(json.dumps({"summary": version, "runs": len(results), "calls_per_run": results[0]["calls"],
                              "server_cpu_us_per_call_median": round(statistics.median(per_call), 1),
                              "server_cpu_us_per_call_min": min(per_call),
                              "server_cpu_us_per_call_max": max(per_call)}), flush=True)
    finally:
        process.terminate()
        process.wait(timeout=30)
    anomalies = sum(1 for line in open(f"{workdir}/audit.jsonl") if '"event_type":"anomaly"' in line.replace(" ", ""))
    print(json.dumps({"anomalies": anomalies}), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def start_levity(workdir: str, **settings: str) -> tuple[subprocess.Popen, str]:
    """`levity serve` on a free 127.0.0.1 port (audit to a file, Fluentd off), once it answers
    /health; returns the process and the chargers' URL."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LEVITY_", "FLUENTD_"))}
    environ.update({"LEVITY_HOST": "127.0.0.1", "LEVITY_PORT": str(port), "LEVITY_API_PORT": "0",
                    "LEVITY_DATABASE": f"{workdir}/levity.db", "LEVITY_SPOOL_DIR": f"{workdir}/spool",
                    "LEVITY_AUDIT_SINK": "file", "LEVITY_AUDIT_FILE": f"{workdir}/audit.jsonl",
                    "FLUENTD_ENABLED": "false", "LEVITY_LOG_LEVEL": "WARNING",
                    "LEVITY_MAX_CALLS_PER_SECOND": "100000", **settings})
    process = subprocess.Popen([sys.executable, "-m", "levity.cli", "serve"], env=environ, cwd=workdir)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            return process, f"ws://127.0.0.1:{port}"
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise SystemExit("levity serve did not start")
            time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
