"""CPU per call of Levity's OCPP 1.6 handler path in one process, without sockets or load client.

    .venv/bin/python -m benchmarks.handler_path [--calls 3000] [--rounds 3] [--before DIR]

Each call type's text frames go through ChargePoint.route_message (parse, validate, handler,
SQLite store in a temp directory, audit event to a null sink, answer encoding, metrics) and
the answers are collected by a recording connection. The figure is CPU time (all threads of
the process: the store's writer included) per call, so it moves little when other work shares
the machine, unlike calls/s through the network benchmark. Every answer is checked to be a
CALLRESULT, or the run stops.

`--before DIR` runs the same measurement in a child process importing Levity from DIR (e.g.
`git archive main levity | tar -x -C DIR`) alternately with this tree, round by round, and
prints both: the before/after comparison of a hot-path change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from benchmarks.frames import ID_TAG, STATIC_PAYLOADS, TX_METER_VALUE

REPO = Path(__file__).resolve().parent.parent
TYPES = ("Heartbeat", "StatusNotification", "Authorize", "MeterValues", "BootNotification", "transaction")


def frames_of(kind: str, calls: int) -> list[str]:
    """`calls` text frames of one call type; `transaction` is Start, MeterValues x2, Stop per session."""
    if kind != "transaction":
        body = json.dumps(STATIC_PAYLOADS[kind], separators=(",", ":"))
        return [f'[2,"{i:010d}","{kind}",{body}]' for i in range(calls)]
    frames, session = [], 0
    while len(frames) < calls:
        start = 10_000 + session * 7_500
        transaction_id = session + 1  # a fresh store numbers the transactions from 1
        # Each session at its own minute, as a charger's sessions are: starts sharing one
        # timestamp would all match the repeated-start lookup's index and make it a scan.
        at = (datetime(2024, 1, 15, 10, tzinfo=timezone.utc) + timedelta(minutes=session)).strftime(
            "%Y-%m-%dT%H:%M:%S.000Z")
        frames.append(f'[2,"s{session:09d}","StartTransaction",{{"connectorId":1,"idTag":"{ID_TAG}",'
                      f'"meterStart":{start},"timestamp":"{at}"}}]')
        for k in (1, 2):
            meter = TX_METER_VALUE % (at, start + k * 2_500)
            frames.append(f'[2,"m{k}{session:08d}","MeterValues",{{"connectorId":1,"transactionId":{transaction_id},'
                          f'"meterValue":{meter}}}]')
        frames.append(f'[2,"t{session:09d}","StopTransaction",{{"transactionId":{transaction_id},"idTag":"{ID_TAG}",'
                      f'"meterStop":{start + 7_500},"timestamp":"{at}","reason":"Local"}}]')
        session += 1
    return frames


class RecordingConnection:
    def __init__(self):
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        self.sent.append(message)


def measure(calls: int) -> dict[str, float]:
    """CPU µs per call by call type, in this process, with the Levity on sys.path."""
    from levity.audit.events import EventFactory
    from levity.audit.sink import NullSink
    from levity.handling import Authorizer, CentralSystemContext
    from levity.ocpp16.handlers import ChargePoint
    from levity.ocpp16.validation import PayloadValidator
    from levity.store import Store

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in TYPES:
            store = Store(str(Path(tmp) / f"{kind}.db"))
            validator = PayloadValidator()
            validator.compile(ChargePoint.routes())
            context = CentralSystemContext(store=store, sink=NullSink(), events=EventFactory(),
                                           authorizer=Authorizer(None), validator=validator)
            connection = RecordingConnection()
            claim = getattr(store, "claim_connection", None)  # as the server does when a charger connects
            if claim is not None:
                claim("CP-BENCH")
            charge_point = ChargePoint("CP-BENCH", connection, context)
            frames = frames_of(kind, calls)

            async def run() -> float:
                for frame in frames[:50]:  # warm-up: caches, first statements
                    await charge_point.route_message(frame)
                connection.sent.clear()
                began = time.process_time()
                for frame in frames[50:]:
                    await charge_point.route_message(frame)
                return time.process_time() - began

            cpu = asyncio.run(run())
            bad = [answer for answer in connection.sent if not answer.startswith("[3,")]
            if bad or len(connection.sent) != len(frames) - 50:
                raise SystemExit(f"{kind}: {len(bad)} answers are not CALLRESULTs: {bad[:2]}")
            results[kind] = cpu / (len(frames) - 50) * 1e6
            store.close()
    return results


def _child(tree: Path, calls: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": f"{tree}{os.pathsep}{REPO}"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.handler_path", "--calls", str(calls), "--json-only"],
                         cwd=tree, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=3000, help="per call type and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", type=Path, metavar="DIR", help="a Levity tree to compare with, interleaved")
    parser.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.json_only:
        print(json.dumps(measure(args.calls)))
        return 0
    sides = {"before": args.before, "after": REPO} if args.before else {"this tree": REPO}
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for _ in range(args.rounds):
        for side, tree in sides.items():
            runs[side].append(_child(tree, args.calls))
    print(f"CPU us per call, in-process handler path, {args.calls} calls per type "
          f"(median of {args.rounds} interleaved rounds [each round])")
    print(f"{'call type':20}" + "".join(f" {side:>30}" for side in sides) + ("   change" if args.before else ""))
    for kind in TYPES:
        cells, medians = [], []
        for side in sides:
            values = [run[kind] for run in runs[side]]
            medians.append(statistics.median(values))
            cells.append(f"{medians[-1]:6.1f} [{', '.join(f'{v:.1f}' for v in values)}]")
        change = f"  {100 * (medians[1] - medians[0]) / medians[0]:+6.1f}%" if args.before else ""
        print(f"{kind:20}" + "".join(f" {cell:>30}" for cell in cells) + change)
    print("transaction: per call of StartTransaction, MeterValues x2, StopTransaction")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
