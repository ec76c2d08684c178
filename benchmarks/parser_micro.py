"""Microbenchmark: decoding and validating one OCPP 1.6 CALL frame, today's parser against msgspec.

    .venv/bin/python -m benchmarks.parser_micro [--rounds 5] [--seconds 0.5]

Both parsers get the same text frames, in the same process, in interleaved rounds, and
produce what a handler is called with (snake_case keyword arguments, nested dicts):

- `today`: levity.framing.parse_frame (orjson), the 1.6 PayloadValidator (fastjsonschema,
  the OCA 1.6 schemas with Levity's connectorId minimum and RFC 3339 date-time check) and
  levity.framing.to_snake: the path `levity serve` takes.
- `msgspec`: levity/ocpp16/fast_path.py: one `msgspec.json.Decoder` reads the frame as
  `[int, str, str, Raw]`, a second one per action decodes and validates the payload into
  Structs generated from the same OCA schemas (forbid_unknown_fields, Literal enums,
  max_length, min_length on arrays, integers bounded to 64 bits, the same RFC 3339 check
  through a dec_hook), then the Structs become snake_case dicts.

It prints µs per frame for each call type (median of rounds, the range in brackets), and then
checks the catalogue of hostile payloads below against both: a frame msgspec accepts and
today's parser refuses would be a loosening (msgspec could only ever be a fast path for valid
frames, with today's parser answering every refused one, since msgspec's errors are not the
OCPP-J table's: which is how Levity uses it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import msgspec

from levity.framing import CallError, parse_frame, to_snake
from levity.ocpp16.fast_path import FastPath
from levity.ocpp16.validation import SCHEMA_DIR, PayloadValidator

from benchmarks.frames import BENCH_TIMESTAMP, ID_TAG, TX_METER_VALUE

class MsgspecParser:
    """levity.ocpp16.fast_path: what `levity serve` tries first for every 1.6 text frame."""

    def __init__(self, actions):
        self.fast_path = FastPath()
        self.fast_path.compile(actions, SCHEMA_DIR)

    def parse(self, text: str) -> dict:
        call = self.fast_path.decode(text)
        if call is None:
            raise ValueError("refused")
        return call.arguments


class TodayParser:
    def __init__(self, actions):
        self.validator = PayloadValidator()
        super(PayloadValidator, self.validator).compile(actions)  # the schemas only, not the fast path

    def parse(self, text: str) -> dict:
        call = parse_frame(text)
        self.validator.validate(call)
        return to_snake(call.payload)


def frames() -> dict[str, str]:
    def call(action: str, payload: str) -> str:
        return f'[2,"0000000001","{action}",{payload}]'
    meter = TX_METER_VALUE % (BENCH_TIMESTAMP, 12345)
    return {
        "Heartbeat": call("Heartbeat", "{}"),
        "StatusNotification": call("StatusNotification", json.dumps(
            {"connectorId": 1, "errorCode": "NoError", "status": "Available", "timestamp": BENCH_TIMESTAMP})),
        "Authorize": call("Authorize", json.dumps({"idTag": ID_TAG})),
        "BootNotification": call("BootNotification", json.dumps(
            {"chargePointVendor": "LevityBench", "chargePointModel": "SimCharger",
             "chargePointSerialNumber": "BENCH-SN", "firmwareVersion": "1.0.0"})),
        "StartTransaction": call("StartTransaction", json.dumps(
            {"connectorId": 1, "idTag": ID_TAG, "meterStart": 10000, "timestamp": BENCH_TIMESTAMP})),
        "MeterValues (3 samples)": call("MeterValues", '{"connectorId":1,"transactionId":7,"meterValue":'
                                        + meter + "}"),
        "StopTransaction": call("StopTransaction", json.dumps(
            {"transactionId": 7, "idTag": ID_TAG, "meterStop": 17500, "timestamp": BENCH_TIMESTAMP,
             "reason": "Local"})),
    }


# Payloads today's parser refuses (from the suite's hostile-input catalogue and bad-input tests).
HOSTILE = [
    ("StatusNotification", '{"connectorId":-1,"errorCode":"NoError","status":"Available"}'),
    ("StartTransaction", '{"connectorId":0,"idTag":"T","meterStart":1,"timestamp":"2024-01-15T10:00:00Z"}'),
    ("StatusNotification", '{"connectorId":1,"errorCode":"NoError","status":"Available","extra":1}'),
    ("StatusNotification", '{"connectorId":1,"errorCode":"NoError","status":"Nope"}'),
    ("StatusNotification", '{"connectorId":"1","errorCode":"NoError","status":"Available"}'),
    ("StatusNotification", '{"connectorId":1.5,"errorCode":"NoError","status":"Available"}'),
    ("StatusNotification", '{"connectorId":true,"errorCode":"NoError","status":"Available"}'),
    ("StatusNotification", '{"connectorId":1,"errorCode":"NoError","status":"Available","timestamp":"2024-02-30T10:00:00Z"}'),
    ("StatusNotification", '{"connectorId":1,"errorCode":"NoError","status":"Available","timestamp":"2024-01-15T10:00:00"}'),
    ("StatusNotification", '{"connectorId":1,"errorCode":"NoError","status":"Available","timestamp":"2024-01-15 10:00:00Z"}'),
    ("StatusNotification", '{"connectorId":99999999999999999999,"errorCode":"NoError","status":"Available"}'),
    ("StatusNotification", '{"connectorId":NaN,"errorCode":"NoError","status":"Available"}'),
    ("StatusNotification", '{"connectorId":Infinity,"errorCode":"NoError","status":"Available"}'),
    ("StatusNotification", '{"connectorId":1e999,"errorCode":"NoError","status":"Available"}'),
    ("StatusNotification", '{"errorCode":"NoError","status":"Available"}'),
    ("Authorize", '{"idTag":"ABCDEFGHIJKLMNOPQRSTUVWXYZ"}'),
    ("Authorize", '{"idTag":null}'),
    ("MeterValues", '{"connectorId":1,"meterValue":[]}'),
    ("MeterValues", '{"connectorId":1,"meterValue":[{"timestamp":"2024-01-15T10:00:00Z","sampledValue":[]}]}'),
    ("MeterValues", '{"connectorId":1,"meterValue":[{"timestamp":"2024-01-15T10:00:00Z","sampledValue":[{"value":"1","unit":"parsec"}]}]}'),
    ("StopTransaction", '{"transactionId":1,"meterStop":1,"timestamp":"2024-01-15T10:00:00Z","reason":"Bored"}'),
]
HOSTILE_FRAMES = [
    '[2,"' + "x" * 37 + '","Heartbeat",{}]',
    '[2,"","Heartbeat",{}]',
    '[2,"1","Heartbeat",[]]',
    '[2.0,"1","Heartbeat",{}]',
    '[true,"1","Heartbeat",{}]',
]


def refused(parser, text: str) -> bool:
    try:
        parser.parse(text)
    except (CallError, msgspec.ValidationError, msgspec.DecodeError, ValueError, KeyError):
        return True
    return False


def time_per_frame(parse, text: str, seconds: float) -> float:
    """CPU µs per frame (this thread's CPU time: the machine may be shared)."""
    count, start = 0, time.thread_time()
    deadline = start + seconds
    while True:
        for _ in range(200):
            parse(text)
        count += 200
        now = time.thread_time()
        if now >= deadline:
            return (now - start) / count * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.5, help="per call type, parser and round")
    args = parser.parse_args(argv)
    actions = ("Heartbeat", "StatusNotification", "Authorize", "BootNotification", "StartTransaction",
               "MeterValues", "StopTransaction")
    parsers = {"today": TodayParser(actions), "msgspec": MsgspecParser(actions)}
    samples = frames()
    for name, text in samples.items():  # same input, same handler arguments
        if parsers["today"].parse(text) != parsers["msgspec"].parse(text):
            raise SystemExit(f"{name}: the parsers disagree on what the handler gets")
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for name, text in samples.items():
            for label, p in parsers.items():
                results.setdefault((name, label), []).append(time_per_frame(p.parse, text, args.seconds))
    print(f"CPU us per frame: decode + validate + handler arguments (median of {args.rounds} interleaved rounds)")
    print(f"{'call':26} {'today':>22} {'msgspec':>22} {'saved':>7}")
    for name in samples:
        a, b = results[(name, "today")], results[(name, "msgspec")]
        ma, mb = statistics.median(a), statistics.median(b)
        print(f"{name:26} {ma:7.2f} [{min(a):5.2f}-{max(a):5.2f}] {mb:7.2f} [{min(b):5.2f}-{max(b):5.2f}] "
              f"{ma - mb:7.2f}")
    print("\nhostile payloads and frames (today must refuse each; msgspec refusing too = no loosening):")
    cases = [f'[2,"1","{action}",{payload}]' for action, payload in HOSTILE] + HOSTILE_FRAMES
    loose = 0
    for text in cases:
        today, fast = refused(parsers["today"], text), refused(parsers["msgspec"], text)
        if today and not fast:
            loose += 1
        print(f"  today {'refuses' if today else 'ACCEPTS'}  msgspec {'refuses' if fast else 'ACCEPTS'}  {text[:90]}")
    print(f"{loose} of {len(cases)} accepted by msgspec and refused by today's parser")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
