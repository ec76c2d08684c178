"""Several workers behind one port (LEVITY_WORKERS): real `levity serve` processes, real
chargers over WebSockets, audit events at the suite's Forward receiver."""

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys

import pytest
import websockets

from levity.workers import worker_index
from tests.integration.test_lossless_delivery import fluentd_env
from tests.support.forward_receiver import ForwardReceiver
from tests.support.ocpp_client import raw_charge_point

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}
WORKERS = {"LEVITY_WORKERS": "2"}
IDS = [f"CP-W{n:02d}" for n in range(16)]


def shard(server, index: int, workers: int = 2):
    return server.workdir / f"levity.shard{index}-of-{workers}.db"


def rows(path, sql):
    with sqlite3.connect(path) as db:
        return db.execute(sql).fetchall()


def worker_pids(server) -> list[int]:
    children = f"/proc/{server.process.pid}/task/{server.process.pid}/children"
    with open(children) as f:
        return [int(pid) for pid in f.read().split()]


async def eventually(condition, seconds: float, failure: str, server) -> None:
    """Wait until condition() holds; fail with `failure` and the server's log after `seconds`."""
    for _ in range(int(seconds * 10)):
        if condition():
            return
        await asyncio.sleep(0.1)
    pytest.fail(f"{failure}:\n{server.log()}")


async def start(url, charge_point_id, meter_start):
    async with raw_charge_point(url, charge_point_id) as cp:
        assert (await cp.call("b", "BootNotification", BOOT))[2]["status"] == "Accepted"
        answer = await cp.call("s", "StartTransaction", {"connectorId": 1, "idTag": "TAG", "meterStart": meter_start,
                                                         "timestamp": "2024-01-15T10:10:00Z"})
        return answer[2]["transactionId"]


async def stop(url, charge_point_id, transaction_id, meter_stop):
    async with raw_charge_point(url, charge_point_id) as cp:
        answer = await cp.call("e", "StopTransaction", {"transactionId": transaction_id, "meterStop": meter_stop,
                                                        "timestamp": "2024-01-15T11:00:00Z"})
        assert answer[0] == 3


async def test_each_charge_point_stays_with_its_worker_and_its_transactions(levity):
    receiver = ForwardReceiver().start()
    try:
        server = levity({**WORKERS, **fluentd_env(receiver.port)})
        started = await asyncio.gather(*(start(server.url, cp, 100 * n) for n, cp in enumerate(IDS)))
        # Each on a new connection: reconnecting chargers reach the worker that holds their transaction.
        await asyncio.gather(*(stop(server.url, cp, tx, 100 * n + 42) for n, (cp, tx) in enumerate(zip(IDS, started))))
        assert server.stop() == 0

        assert len(set(started)) == len(IDS), "transaction ids are unique across workers"
        for index in (0, 1):
            owned = {cp for cp in IDS if worker_index(cp, 2) == index}
            assert owned, "16 ids spread over both workers"
            assert {r[0] for r in rows(shard(server, index), "SELECT id FROM charge_points")} == owned
            for charge_point_id, transaction_id in rows(shard(server, index), "SELECT charge_point_id, id FROM transactions"):
                assert charge_point_id in owned
                assert transaction_id % 2 == (index + 1) % 2
        assert not (server.workdir / "levity.db").exists()
        assert sorted(p.name for p in (server.workdir / "spool").iterdir()) == ["shard0-of-2", "shard1-of-2"]

        receiver.wait_for(7 * len(IDS))  # connect, boot, start, disconnect, connect, stop, disconnect
        stops = {e.record["charge_point_id"]: e.record for e in receiver.events
                 if e.record["event_type"] == "transaction_stop"}
        assert set(stops) == set(IDS)
        for record in stops.values():
            assert record["energy_delivered"] == 42
            assert "unknown_transaction" not in record
        assert len({e.record["event_id"] for e in receiver.events}) == len(receiver.events)
    finally:
        receiver.stop()


async def test_newest_connection_wins_with_workers(levity):
    server = levity(WORKERS)
    async with raw_charge_point(server.url, "CP-TWICE") as first:
        await first.call("b1", "BootNotification", BOOT)
        async with raw_charge_point(server.url, "CP-TWICE") as second:
            with pytest.raises(websockets.ConnectionClosedOK) as closed:
                await asyncio.wait_for(first.ws.recv(), 5)
            assert closed.value.rcvd.code == 1000
            assert (await second.call("h", "Heartbeat", {}))[0] == 3


async def test_health_and_metrics_cover_all_workers(levity):
    server = levity(WORKERS)
    chargers = [raw_charge_point(server.url, cp) for cp in IDS[:6]]
    clients = [await c.__aenter__() for c in chargers]
    try:
        for client in clients:
            await client.call("b", "BootNotification", BOOT)
        metrics = server.metrics()
        assert metrics["levity_workers"] == 2
        assert metrics["levity_workers_up"] == 2
        assert metrics['levity_connected_charge_points{ocpp_version="1.6"}'] == 6
        assert metrics['levity_audit_events_total{state="emitted"}'] == 12  # connect + boot, each
    finally:
        for c in chargers:
            await c.__aexit__(None, None, None)
    # A charger named like an endpoint is still a charger: only a plain GET is the supervisor's.
    async with raw_charge_point(server.url, "metrics") as cp:
        assert (await cp.call("b", "BootNotification", BOOT))[2]["status"] == "Accepted"


async def test_a_worker_that_dies_is_restarted_and_its_state_kept(levity):
    server = levity(WORKERS)
    victim = next(cp for cp in IDS if worker_index(cp, 2) == 1)
    transaction_id = await start(server.url, victim, 1000)
    pids = worker_pids(server)
    assert len(pids) == 2
    os.kill(pids[1], signal.SIGKILL)  # workers start in index order
    await eventually(lambda: server.metrics().get("levity_worker_restarts_total") == 1
                     and server.metrics()["levity_workers_up"] == 2, 10, "worker not restarted", server)
    await stop(server.url, victim, transaction_id, 1500)
    assert server.stop() == 0
    [(meter_stop,)] = rows(shard(server, 1), f"SELECT meter_stop FROM transactions WHERE id = {transaction_id}")
    assert meter_stop == 1500


def serve(directory, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LEVITY_", "FLUENTD_"))}
    environ.update({"LEVITY_PORT": "0", "LEVITY_API_PORT": "0", "LEVITY_HOST": "127.0.0.1",
                    "LEVITY_DATABASE": str(directory / "levity.db"),
                    "LEVITY_SPOOL_DIR": str(directory / "spool"), "LEVITY_AUDIT_SINK": "none", **env})
    return subprocess.run([sys.executable, "-m", "levity.cli", "serve"], env=environ, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("workers", ["1", "3"])
async def test_another_worker_count_on_the_same_files_is_refused(levity, workers):
    server = levity(WORKERS)
    await start(server.url, "CP-LAYOUT", 0)
    assert server.stop() == 0
    result = serve(server.workdir, LEVITY_WORKERS=workers)
    assert result.returncode == 2
    assert "made with 2 worker(s)" in result.stderr and "LEVITY_WORKERS=2" in result.stderr


def test_workers_refuse_tls(tmp_path):
    result = serve(tmp_path, LEVITY_WORKERS="2", LEVITY_SECURITY_PROFILE="2", LEVITY_TLS_CERT="c.pem",
                   LEVITY_TLS_KEY="k.pem")
    assert result.returncode == 2
    assert "LEVITY_WORKERS > 1" in result.stderr and "TLS" in result.stderr


def test_charge_points_command_uses_the_owning_workers_database(tmp_path):
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("LEVITY_")},
               "LEVITY_DATABASE": str(tmp_path / "levity.db"), "LEVITY_WORKERS": "2"}
    ids = IDS[:6]
    subprocess.run([sys.executable, "-m", "levity.cli", "charge-points", "register", *ids], env=environ,
                   check=True, capture_output=True)
    for cp in ids:
        path = tmp_path / f"levity.shard{worker_index(cp, 2)}-of-2.db"
        assert rows(path, f"SELECT registered FROM charge_points WHERE id = '{cp}'") == [(1,)]
    listed = subprocess.run([sys.executable, "-m", "levity.cli", "charge-points", "list"], env=environ,
                            check=True, capture_output=True, text=True).stdout
    assert [line.split("\t")[0] for line in listed.splitlines()] == sorted(ids)


async def test_registered_only_policy_with_workers(levity, tmp_path):
    server = levity({**WORKERS, "LEVITY_UNKNOWN_CHARGE_POINTS": "refuse"}, start=False)
    environ = {**{k: v for k, v in os.environ.items() if not k.startswith("LEVITY_")}, **server.env}
    subprocess.run([sys.executable, "-m", "levity.cli", "charge-points", "register", *IDS[:4]], env=environ,
                   check=True, capture_output=True)
    server.start()
    for cp in IDS[:4]:
        async with raw_charge_point(server.url, cp) as client:
            assert (await client.call("b", "BootNotification", BOOT))[0] == 3
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with raw_charge_point(server.url, "CP-STRANGER"):
            pass
    assert refused.value.response.status_code == 404


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" in f.read()  # exited, waiting to be reaped by whoever adopted it
    except FileNotFoundError:
        return True


async def test_workers_stop_when_the_supervisor_is_killed(levity):
    server = levity(WORKERS)
    pids = worker_pids(server)
    server.kill()  # SIGKILL: no chance to stop the workers itself
    await eventually(lambda: all(_gone(pid) for pid in pids), 10,
                     f"workers {pids} still running without their supervisor", server)
    assert "shutting down" in server.log()  # each worker stopped the normal way


async def test_a_worker_that_cannot_start_is_retried_less_often_while_the_others_serve(levity):
    server = levity(WORKERS)
    victim = next(cp for cp in IDS if worker_index(cp, 2) == 1)
    survivor = next(cp for cp in IDS if worker_index(cp, 2) == 0)
    transaction_id = await start(server.url, victim, 1000)
    database = shard(server, 1)
    os.kill(worker_pids(server)[1], signal.SIGKILL)
    database.rename(database.with_suffix(".away"))
    database.mkdir()  # SQLite cannot open a directory: every restart of worker 1 fails
    await eventually(lambda: "restarting it in 4s (3 failures in a row)" in server.log(), 15, "no backoff", server)
    log = server.log()
    assert log.index("restarting it in 1s") < log.index("restarting it in 2s (2 failures in a row)")
    assert f"[worker 1] levity.workers: cannot open the database {database}" in log
    assert "Traceback" not in log
    metrics = server.metrics()
    assert metrics["levity_workers_up"] == 1
    assert metrics["levity_worker_restarts_total"] == 2
    async with raw_charge_point(server.url, survivor) as cp:  # worker 0 serves on
        assert (await cp.call("h", "Heartbeat", {}))[0] == 3

    database.rmdir()
    database.with_suffix(".away").rename(database)
    await eventually(lambda: server.metrics()["levity_workers_up"] == 2, 10, "worker 1 not back", server)
    await stop(server.url, victim, transaction_id, 1500)
    assert server.stop() == 0
    [(meter_stop,)] = rows(database, f"SELECT meter_stop FROM transactions WHERE id = {transaction_id}")
    assert meter_stop == 1500
