"""Lossless audit delivery, end to end: chargers under load against a real `levity serve`,
Fluentd (the suite's Forward receiver) going away and coming back, Levity SIGKILLed."""

import asyncio
import json

from tests.support.forward_receiver import ForwardReceiver
from tests.support.ocpp_client import raw_charge_point

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}


def fluentd_env(port: int) -> dict[str, str]:
    return {"FLUENTD_ENABLED": "true", "FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(port),
            "FLUENTD_TIMEOUT": "1", "LEVITY_FLUSH_INTERVAL": "0.05"}


async def run_charger(url: str, charge_point_id: str, sessions: int, answered: list[dict]):
    """Boot, then whole transactions; record every transaction the charger got an answer for."""
    async with raw_charge_point(url, charge_point_id) as cp:
        await cp.call("boot", "BootNotification", BOOT, timeout=10)
        for n in range(sessions):
            start = await cp.call(f"s{n}", "StartTransaction", {
                "connectorId": 1, "idTag": "TAG", "meterStart": 1000 * n, "timestamp": "2024-01-15T10:10:00Z"},
                timeout=10)
            transaction_id = start[2]["transactionId"]
            answered.append({"event_type": "transaction_start", "transaction_id": transaction_id})
            await cp.call(f"m{n}", "MeterValues", {"connectorId": 1, "transactionId": transaction_id, "meterValue": [
                {"timestamp": "2024-01-15T10:20:00Z", "sampledValue": [{"value": str(1000 * n + 500)}]}]},
                timeout=10)
            await cp.call(f"e{n}", "StopTransaction", {"transactionId": transaction_id, "meterStop": 1000 * n + 700,
                                                       "timestamp": "2024-01-15T10:30:00Z"}, timeout=10)
            answered.append({"event_type": "transaction_stop", "transaction_id": transaction_id})


def by_identity(events):
    return {(e.record["event_type"], e.record.get("transaction_id")) for e in events
            if e.record["event_type"] in ("transaction_start", "transaction_stop")}


def assert_duplicates_share_event_ids(events):
    seen: dict[str, str] = {}
    for event in events:
        body = json.dumps(event.record, sort_keys=True)
        event_id = event.record["event_id"]
        assert seen.setdefault(event_id, body) == body, "one event_id, two different events"


async def test_fluentd_down_under_load_then_back_every_event_arrives(levity):
    receiver = ForwardReceiver().start()
    try:
        server = levity(fluentd_env(receiver.port))
        answered: list[dict] = []
        receiver.refuse = True  # Fluentd goes away while chargers are busy
        chargers = asyncio.gather(*(run_charger(server.url, f"CP-LOAD{n}", 10, answered) for n in range(10)))
        await asyncio.sleep(1.0)
        receiver.refuse = False  # ...and comes back mid-load
        await chargers
        emitted = None
        for _ in range(100):  # until everything emitted is acknowledged
            metrics = server.metrics()
            emitted = metrics['levity_audit_events_total{state="emitted"}']
            if metrics.get('levity_audit_events_total{state="acknowledged"}', 0) >= emitted:
                break
            await asyncio.sleep(0.2)
        events = receiver.events
        assert {(a["event_type"], a["transaction_id"]) for a in answered} <= by_identity(events)
        assert len({e.record["event_id"] for e in events}) == emitted
        assert_duplicates_share_event_ids(events)
        assert server.metrics()['levity_audit_events_total{state="dropped"}'] == 0
    finally:
        receiver.stop()


async def test_sigkill_under_load_loses_no_answered_transaction_event(levity):
    receiver = ForwardReceiver().start()
    try:
        receiver.refuse = True  # nothing can leave Levity before the kill: all of it is in the spool
        server = levity(fluentd_env(receiver.port))
        answered: list[dict] = []
        chargers = [asyncio.create_task(run_charger(server.url, f"CP-KILL{n}", 50, answered)) for n in range(5)]
        while len(answered) < 60:
            await asyncio.sleep(0.05)
        server.kill()
        await asyncio.gather(*chargers, return_exceptions=True)
        receiver.refuse = False
        server.start()  # the spool is replayed on start
        expected = {(a["event_type"], a["transaction_id"]) for a in answered}
        for _ in range(100):
            if expected <= by_identity(receiver.events):
                break
            await asyncio.sleep(0.2)
        assert expected <= by_identity(receiver.events)
        assert_duplicates_share_event_ids(receiver.events)
    finally:
        receiver.stop()
