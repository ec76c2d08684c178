"""Several workers (LEVITY_WORKERS=2) on one real PostgreSQL: concurrent starts on both workers
get distinct ids, a transaction continues after its worker is SIGKILLed and restarted, and the
operator API reaches a charger on either worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

import pytest
from ocpp.v16 import call

from levity.workers import worker_index
from tests.integration.test_lossless_delivery import fluentd_env
from tests.integration.test_operator_api import charger, client, command_events, create_token, wait_for
from tests.integration.test_workers import eventually, worker_pids
from tests.support.forward_receiver import ForwardReceiver
from tests.support.levity_process import api_env
from tests.support.ocpp_client import raw_charge_point

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}
CALLRESULT = 3
IDS = [f"CP-PW{n:02d}" for n in range(12)]


def start_payload(connector: int, meter: int) -> dict:
    return {"connectorId": connector, "idTag": "TAG", "meterStart": meter,
            "timestamp": f"2024-01-15T10:1{connector}:00Z"}


@pytest.fixture
def receiver():
    with ForwardReceiver() as forward:
        yield forward


@pytest.fixture
def two_workers(levity, database, receiver):
    return levity({"LEVITY_DATABASE": database, "LEVITY_WORKERS": "2", **api_env(), **fluentd_env(receiver.port)})


def rows(database: str, sql: str) -> list[tuple]:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(database) as connection:
        return connection.execute(sql).fetchall()


async def test_concurrent_starts_on_both_workers_get_distinct_ids(two_workers, database, receiver):
    assert {worker_index(cp, 2) for cp in IDS} == {0, 1}

    async def starts(charge_point_id: str) -> list[int]:
        async with raw_charge_point(two_workers.url, charge_point_id) as cp:
            assert (await cp.call("b", "BootNotification", BOOT))[0] == CALLRESULT
            answers = [await cp.call(f"s{c}", "StartTransaction", start_payload(c, 10 * c)) for c in (1, 2, 3)]
            assert all(answer[0] == CALLRESULT for answer in answers), answers
            return [answer[2]["transactionId"] for answer in answers]

    ids = [tx for result in await asyncio.gather(*(starts(cp) for cp in IDS)) for tx in result]
    assert len(ids) == 3 * len(IDS) and len(set(ids)) == len(ids)
    stored = rows(database, "SELECT id, charge_point_id FROM transactions")
    assert sorted(tx for tx, _ in stored) == sorted(ids)
    assert {cp for _, cp in stored} == set(IDS)
    await wait_for(lambda: len([e for e in receiver.events if e.record["event_type"] == "transaction_start"])
                   == len(ids), 10, "transaction_start events missing")
    assert sorted(e.record["transaction_id"] for e in receiver.events
                  if e.record["event_type"] == "transaction_start") == sorted(ids)


async def test_a_transaction_continues_after_its_worker_is_killed(two_workers, database):
    victim = next(cp for cp in IDS if worker_index(cp, 2) == 1)
    async with raw_charge_point(two_workers.url, victim) as cp:
        assert (await cp.call("b", "BootNotification", BOOT))[0] == CALLRESULT
        started = (await cp.call("s", "StartTransaction", start_payload(1, 1000)))[2]["transactionId"]
        meter = {"connectorId": 1, "transactionId": started, "meterValue": [
            {"timestamp": "2024-01-15T10:20:00Z", "sampledValue": [{"value": "1200", "unit": "Wh"}]}]}
        assert (await cp.call("m", "MeterValues", meter))[0] == CALLRESULT
        pids = worker_pids(two_workers)
        assert len(pids) == 2
        os.kill(pids[1], signal.SIGKILL)  # workers start in index order
    await eventually(lambda: two_workers.metrics().get("levity_worker_restarts_total") == 1
                     and two_workers.metrics()["levity_workers_up"] == 2, 15, "worker not restarted", two_workers)
    async with raw_charge_point(two_workers.url, victim) as cp:
        assert (await cp.call("b", "BootNotification", BOOT))[0] == CALLRESULT
        stop = {"transactionId": started, "meterStop": 1500, "timestamp": "2024-01-15T11:00:00Z"}
        assert (await cp.call("e", "StopTransaction", stop))[0] == CALLRESULT
    assert rows(database, f"SELECT meter_stop, meter_start FROM transactions WHERE id = {started}") == [(1500, 1000)]
    assert rows(database, "SELECT count(*) FROM transactions") == [(1,)]
    assert two_workers.stop() == 0


async def test_the_operator_api_reaches_a_charger_on_either_worker(two_workers, receiver):
    token = create_token(two_workers, "ops", "operate")
    ids = ["CP-A", "CP-B", "CP-C", "CP-D", "CP-E"]
    assert {worker_index(cp, 2) for cp in ids} == {0, 1}
    async with contextlib.AsyncExitStack() as stack:
        chargers = [await stack.enter_async_context(charger(two_workers.url, cp)) for cp in ids]
        api = await stack.enter_async_context(client(two_workers, token))
        answers = await asyncio.gather(*(api.post(f"/charge-points/{cp}/calls/GetConfiguration", json={})
                                         for cp in ids))
        assert [a.status_code for a in answers] == [200] * len(ids), [a.text for a in answers]
        assert all(len(c.received) == 1 for c in chargers)
        listed = (await api.get("/charge-points")).json()
        # Both workers read the one database; each charger is listed once, as its owner sees it.
        assert [(item["id"], item["connected"]) for item in listed] == [(cp, True) for cp in ids]
        await chargers[1].call(call.StartTransaction(connector_id=1, id_tag="T", meter_start=5,
                                                     timestamp="2024-01-15T10:10:00Z"))
        assert [t["charge_point_id"] for t in (await api.get("/transactions?open=true")).json()] == ["CP-B"]
    await wait_for(lambda: len(command_events(receiver)) == len(ids), 10, "ocpp.command events missing")
    assert {e["charge_point_id"] for e in command_events(receiver)} == set(ids)
