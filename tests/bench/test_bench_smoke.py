"""The load bench, end to end on a tiny configuration: a complete, consistent report.

No timing thresholds: the bench prints numbers, the tests only check they are all there.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os

import msgpack
import pytest

from benchmarks import bench, frames
from benchmarks.forward_receiver import CountingForwardReceiver

TARGETS = ("levity", "plain-ocpp", "echo")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path, png_path = out / "bench.json", out / "bench.png"
    code = bench.main(["--chargers", "5", "--duration", "2", "--warmup", "0.5", "--clients", "2",
                       "--targets", ",".join(TARGETS), "--json", str(json_path), "--plot", str(png_path),
                       "--quiet"])
    return code, json.loads(json_path.read_text()), png_path


def test_every_target_answered_calls(smoke_run):
    code, run, _ = smoke_run
    assert code == 0
    results = {r["target"]: r for r in run["results"]}
    assert set(results) == set(TARGETS)
    for target, r in results.items():
        assert "failed" not in r, r
        assert r["connected"] == 5 and r["connections_held"] == 5, target
        assert r["calls"] > 0 and r["calls_per_second"] > 0, target
        assert r["errors"] == 0 and r["timeouts"] == 0, (target, r["error_samples"])
        for field in ("p50", "p95", "p99"):
            assert r["latency_ms"][field] is not None and r["latency_ms"][field] >= 0
        assert r["latency_ms"]["p50"] <= r["latency_ms"]["p95"] <= r["latency_ms"]["p99"]
        assert sum(a["calls"] for a in r["per_action"].values()) == r["calls"]
        # The default mix reaches every action a charger sends after booting.
        assert set(r["per_action"]) == {"Heartbeat", "StatusNotification", "MeterValues", "Authorize",
                                        "StartTransaction", "StopTransaction"}
        assert r["server_cpu_percent"] >= 0 and r["server_peak_rss_mb"] > 0
        assert r["rss_per_connection_kb"] is not None
        assert r["boot_latency_ms"]["p99"] is not None


def test_levity_audit_reached_the_receiver(smoke_run):
    _, run, _ = smoke_run
    levity = next(r for r in run["results"] if r["target"] == "levity")
    audit = levity["audit"]
    assert audit["delivered"] > 0
    assert audit["decode_errors"] == 0
    # One event per answered call at least, plus boots and connects/disconnects.
    assert audit["delivered"] >= levity["calls"]
    assert audit["delivered_by_tag"]["ocpp.boot"] == 5
    assert audit["delivered_by_tag"]["ocpp.websocket"] == 10  # 5 connects, 5 disconnects
    assert levity["server_exit_code"] == 0


def test_ratios_table_json_and_plot(smoke_run, capsys):
    _, run, png_path = smoke_run
    ratios = {r["target"]: r for r in run["ratios"]}
    assert ratios["levity"]["calls_per_second_vs_plain-ocpp"] > 0
    assert ratios["levity"]["calls_per_second_vs_echo"] > 0
    for key in ("machine", "limits", "config", "results", "ratios"):
        assert key in run
    assert png_path.stat().st_size > 1000 and png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_connections_only_mode(tmp_path):
    json_path = tmp_path / "conn.json"
    code = bench.main(["--connections-only", "20", "--heartbeat-interval", "0.5", "--duration", "2",
                       "--targets", "levity-audit-off", "--json", str(json_path), "--quiet"])
    assert code == 0
    (r,) = json.loads(json_path.read_text())["results"]
    assert r["connections_held"] == 20
    assert set(r["per_action"]) == {"Heartbeat"} and r["per_action"]["Heartbeat"]["calls"] > 0
    assert r["per_action"]["Heartbeat"]["p99"] is not None


def test_connections_only_mixed_fleet_holds_both_versions(tmp_path):
    json_path = tmp_path / "mixed.json"
    code = bench.main(["--connections-only", "20", "--mixed-versions", "--heartbeat-interval", "0.5",
                       "--duration", "2", "--targets", "levity-audit-off", "--json", str(json_path), "--quiet"])
    assert code == 0
    run = json.loads(json_path.read_text())
    (r,) = run["results"]
    assert run["config"]["mixed_versions"] is True
    assert r["connections_held"] == 20 and r["errors"] == 0, r["error_samples"]
    # The server holds ten of each: the 2.0.1 half negotiated ocpp2.0.1 and booted as 2.0.1.
    assert r["server_connected_by_version"] == {"1.6": 10, "2.0.1": 10}
    assert r["per_action"]["Heartbeat"]["calls"] > 0


def test_mixed_versions_is_refused_where_it_cannot_mean_anything():
    with pytest.raises(SystemExit, match="needs --connections-only"):
        bench.main(["--mixed-versions", "--targets", "levity"])
    with pytest.raises(SystemExit, match="Levity targets only"):
        bench.main(["--connections-only", "5", "--mixed-versions", "--targets", "plain-ocpp"])


def test_prebuilt_frames_are_valid_ocpp_json():
    for frame in (*frames.STATIC.values(), frames.BOOT_201):
        whole = frame.build(b"0000000001")
        assert whole[0] == 0x81 and whole[1] & 0x80  # final text frame, masked as a client must
        body = whole[whole.index(b"[2,"):]
        assert (whole[1] & 0x7F) in (len(body), 126)
        message = json.loads(body)
        assert message[:3] == [2, "0000000001", frame.action] and isinstance(message[3], dict)
    stamp = frames.now_timestamp()
    built = {"StartTransaction": frames.START_TRANSACTION.build(b"0000000002", 10_000, stamp),
             "TxMeterValues": frames.TX_METER_VALUES.build(b"0000000003", 42, stamp, 13_750),
             "StopTransaction": frames.STOP_TRANSACTION.build(b"0000000004", 42, 17_500, stamp)}
    for key, whole in built.items():
        body = whole[whole.index(b"[2,"):]
        assert (whole[1] & 0x7F) in (len(body), 126)
        message = json.loads(body)
        assert message[2] == key.replace("Tx", "")
    payload = {key: json.loads(whole[whole.index(b"[2,"):])[3] for key, whole in built.items()}
    assert payload["StartTransaction"]["meterStart"] == 10_000
    assert payload["TxMeterValues"]["transactionId"] == 42
    stop = payload["StopTransaction"]
    assert stop["transactionId"] == 42 and stop["meterStop"] == 17_500 and stop["timestamp"] == stamp.decode()


async def test_counting_receiver_decodes_every_forward_mode():
    receiver = await CountingForwardReceiver().start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", receiver.port)
        event_time = msgpack.ExtType(0, (1700000000).to_bytes(4, "big") + (5).to_bytes(4, "big"))
        record = {"event_type": "heartbeat"}
        entries = b"".join(msgpack.packb([event_time, record]) for _ in range(3))
        writer.write(msgpack.packb(["ocpp.heartbeat", event_time, record]))  # Message
        writer.write(msgpack.packb(["ocpp.heartbeat", [[1700000000, record]] * 2]))  # Forward
        writer.write(msgpack.packb(["ocpp.meter", entries, {"chunk": "c1", "size": 3}]))  # PackedForward
        writer.write(msgpack.packb(["ocpp.meter", gzip.compress(entries),
                                    {"chunk": "c2", "size": 3, "compressed": "gzip"}]))
        await writer.drain()
        unpacker = msgpack.Unpacker(raw=False)
        acks = []
        while len(acks) < 2:
            unpacker.feed(await asyncio.wait_for(reader.read(1024), 5))
            acks += list(unpacker)
        assert acks == [{"ack": "c1"}, {"ack": "c2"}]
        assert receiver.events == 1 + 2 + 3 + 3
        assert receiver.by_tag == {"ocpp.heartbeat": 3, "ocpp.meter": 6}
        writer.close()
    finally:
        await receiver.stop()


def test_ratios_are_taken_within_each_round_and_their_median_reported():
    from benchmarks import report

    def point(target, calls_per_second, round_index):
        return {"target": target, "charge_points": 100, "calls_per_second": calls_per_second,
                "latency_ms": {"p99": 10.0}, "round": round_index}

    # Round by round 4x, 6x and 2.5x: the machine was fast, then slow for the baseline only...
    results = [point("levity", 4000, 0), point("plain-ocpp", 1000, 0), point("levity", 3000, 1),
               point("plain-ocpp", 500, 1), point("levity", 5000, 2), point("plain-ocpp", 2000, 2)]
    [row] = report.ratios(results)
    assert row["calls_per_second_vs_plain-ocpp"] == 4.0  # the median of the rounds' ratios
    assert sorted(row["rounds"]["calls_per_second_vs_plain-ocpp"]) == [2.5, 4.0, 6.0]
    # ...whereas pooling all rounds first would say 12000 / 3500.
    assert row["calls_per_second_vs_plain-ocpp"] != round(12000 / 3500, 3)


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="--per-core needs two CPUs: one for the server")
def test_per_core_mode_pins_and_reports_cpu_per_call_by_type_and_the_storm(tmp_path):
    """--per-core: the server's every thread on the first CPU, the client elsewhere; CPU
    microseconds per call beside calls/s, audit on against off, a row per call type, the
    reconnect storm, and the whole-machine table after."""
    json_path = tmp_path / "per-core.json"
    code = bench.main(["--per-core", "--chargers", "5", "--duration", "1", "--warmup", "0.3",
                       "--by-type", "heartbeat", "--storm", "30", "--receiver", "counting",
                       "--targets", "levity,levity-audit-off,echo", "--json", str(json_path), "--quiet"])
    assert code == 0
    run = json.loads(json_path.read_text())
    by_phase: dict[str, dict[str, dict]] = {}
    for r in run["results"]:
        assert "failed" not in r, r
        by_phase.setdefault(r["phase"], {})[r["target"]] = r
    assert set(by_phase) == {"per-core", "per-core-heartbeat", "storm", "whole-machine"}
    first = min(run["config"]["phases"][0]["server_cpus"])
    for phase in ("per-core", "per-core-heartbeat"):
        for target, r in by_phase[phase].items():
            assert r["server_cpus_allowed"] == [first], (phase, target)
            assert r["server_cpu_us_per_call"] > 0 and r["calls"] > 0
    assert set(by_phase["per-core-heartbeat"]["levity"]["per_action"]) == {"Heartbeat"}
    assert len(by_phase["whole-machine"]["levity"]["server_cpus_allowed"]) == len(os.sched_getaffinity(0))
    for target in ("levity", "plain-ocpp"):
        storm = by_phase["storm"][target]
        assert storm["connected"] == 30 and storm["connect_timeouts"] == 0
    on_off = next(r for r in run["ratios"] if r["phase"] == "per-core" and r["target"] == "levity")
    assert on_off["cpu_us_per_call_vs_audit-off"] > 0 and on_off["calls_per_second_vs_audit-off"] > 0
