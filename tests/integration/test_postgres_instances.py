"""Several `levity serve` instances on one real PostgreSQL: transactions continue on another
instance, ids stay unique, the newest connection wins across instances, and a database Levity
cannot use stops the start with one clear line."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from ocpp.v16 import call

from tests.conftest import read_audit_file
from tests.support import postgres
from tests.support.ocpp_client import BOOT, library_charge_point, raw_charge_point
from tests.support.postgres import levity_command


def audit(server, event_type):
    return [line["record"] for line in read_audit_file(server.workdir / "audit.jsonl")
            if line["record"]["event_type"] == event_type]


async def until(condition, what: str, seconds: float = 15.0):
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.05)


def start(connector: int, meter: int, timestamp: str = "2024-01-15T10:10:00Z"):
    return call.StartTransaction(connector_id=connector, id_tag="U1", meter_start=meter, timestamp=timestamp)


# Bad databases at start --------------------------------------------------------------------

def test_wrong_password_is_refused_with_one_line_without_the_password(levity, postgres_server, database):
    wrong = database.replace(postgres.PASSWORD, "not-the-password-71")
    server = levity({"LEVITY_DATABASE": wrong}, start=False)
    with pytest.raises(AssertionError, match="exited with 1"):
        server.start()
    [line] = [line for line in server.log().splitlines() if "database" in line]
    assert "password authentication failed" in line
    assert f"postgresql://levity@127.0.0.1:{postgres_server.port}/" in line
    assert "not-the-password-71" not in server.log() and postgres.PASSWORD not in server.log()


def test_unreachable_database_is_refused_with_one_line(levity, postgres_server):
    from tests.support.levity_process import free_port

    url = f"postgresql://levity:{postgres.PASSWORD}@127.0.0.1:{free_port()}/levity"
    server = levity({"LEVITY_DATABASE": url}, start=False)
    with pytest.raises(AssertionError, match="exited with 1"):
        server.start()
    assert "cannot open the database postgresql://levity@127.0.0.1:" in server.log()
    assert postgres.PASSWORD not in server.log()


def test_missing_schema_says_to_run_db_upgrade_and_a_newer_one_is_refused(levity, postgres_server):
    import psycopg

    empty = postgres_server.new_database()
    server = levity({"LEVITY_DATABASE": empty}, start=False)
    with pytest.raises(AssertionError, match="exited with 1"):
        server.start()
    assert "has no Levity schema: run `levity db upgrade`" in server.log()

    assert levity_command("db", "upgrade", database=empty).returncode == 0
    again = levity_command("db", "upgrade", database=empty)
    assert again.returncode == 0 and "already up to date" in again.stdout
    with psycopg.connect(empty, autocommit=True) as connection:
        connection.execute("INSERT INTO levity_schema (version, description) VALUES (999, 'from the future')")
    newer = levity({"LEVITY_DATABASE": empty}, start=False)
    with pytest.raises(AssertionError, match="exited with 1"):
        newer.start()
    assert "schema version 999, made by a newer Levity" in newer.log()
    refused = levity_command("db", "upgrade", database=empty)
    assert refused.returncode == 1 and "made by a newer Levity" in refused.stderr


def test_password_from_a_file_and_never_in_the_settings_log(levity, postgres_server, database, tmp_path):
    secret = tmp_path / "db-password"
    secret.write_text(postgres.PASSWORD + "\n")
    without_password = database.replace(f":{postgres.PASSWORD}@", "@")
    server = levity({"LEVITY_DATABASE": without_password, "LEVITY_DATABASE_PASSWORD_FILE": str(secret),
                     "LEVITY_LOG_LEVEL": "DEBUG"})
    server.stop()
    assert postgres.PASSWORD not in server.log()


# Several instances ----------------------------------------------------------------------------

async def test_transaction_started_on_a_killed_instance_stops_on_another_with_the_right_energy(instances):
    first, second = instances(2)
    async with library_charge_point(first.url, "CP-MOVE") as cp:
        await cp.call(BOOT)
        started = await cp.call(start(1, 12_345))
        await cp.call(call.MeterValues(connector_id=1, transaction_id=started.transaction_id, meter_value=[
            {"timestamp": "2024-01-15T10:20:00Z", "sampledValue": [{"value": "15000", "unit": "Wh"}]}]))
    first.kill()  # the host dies: nothing flushes
    async with library_charge_point(second.url, "CP-MOVE") as cp:
        await cp.call(BOOT)
        await cp.call(call.StopTransaction(meter_stop=20_000, timestamp="2024-01-15T11:00:00Z",
                                           transaction_id=started.transaction_id))
    second.stop()
    [stop] = audit(second, "transaction_stop")
    assert stop["transaction_id"] == started.transaction_id
    assert stop["energy_delivered"] == 20_000 - 12_345
    assert "unknown_transaction" not in stop


async def test_concurrent_starts_on_two_instances_get_distinct_ids(instances):
    servers = instances(2)

    async def charger(server, name):
        async with library_charge_point(server.url, name) as cp:
            await cp.call(BOOT)
            return [(await cp.call(start(connector, 100, f"2024-01-15T10:1{connector}:00Z"))).transaction_id
                    for connector in (1, 2, 3)]

    results = await asyncio.gather(*(charger(servers[i % 2], f"CP-C{i}") for i in range(20)))
    ids = [transaction_id for result in results for transaction_id in result]
    assert len(ids) == 60 and len(set(ids)) == 60


async def test_three_instances_one_killed_mid_transaction_its_chargers_finish_on_the_others(instances):
    servers = instances(3)
    chargers = [f"CP-T{i}" for i in range(9)]
    started = {}
    for i, name in enumerate(chargers):
        async with library_charge_point(servers[i % 3].url, name) as cp:
            await cp.call(BOOT)
            started[name] = (await cp.call(start(1, 1_000 * i))).transaction_id
    servers[0].kill()
    survivors = servers[1:]
    for i, name in enumerate(chargers):
        async with library_charge_point(survivors[i % 2].url, name) as cp:
            await cp.call(BOOT)
            await cp.call(call.StopTransaction(meter_stop=1_000 * i + 500 + i, timestamp="2024-01-15T11:00:00Z",
                                               transaction_id=started[name]))
    for server in survivors:
        server.stop()
    stops = {stop["charge_point_id"]: stop for server in survivors for stop in audit(server, "transaction_stop")}
    assert {name: stops[name]["energy_delivered"] for name in chargers} == {
        name: 500 + i for i, name in enumerate(chargers)}
    assert {name: stops[name]["transaction_id"] for name in chargers} == started


async def test_a_stale_connection_on_the_old_instance_loses_to_the_newest_on_another(instances):
    first, second = instances(2)
    async with raw_charge_point(first.url, "CP-STALE") as old:
        assert (await old.call("1", "Heartbeat", {}))[0] == 3
        async with raw_charge_point(second.url, "CP-STALE") as new:
            assert (await new.call("2", "Heartbeat", {}))[0] == 3
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(old.ws.recv(), 10)
            assert closed.value.rcvd.code == 1000 and "newer connection" in closed.value.rcvd.reason
            assert (await new.call("3", "Heartbeat", {}))[0] == 3  # the newest one stays
    await until(lambda: audit(first, "websocket_disconnect"), "the old instance audits the close")
    [disconnect] = audit(first, "websocket_disconnect")
    assert disconnect["replaced"] is True


async def test_201_transaction_started_on_a_killed_instance_ends_on_another_with_the_right_energy(instances):
    from tests.integration.test_ocpp201 import wait_for_audit
    from tests.integration.test_operator_api import client, create_token
    from tests.support.levity_process import api_env
    from tests.support.ocpp201_client import BOOT as BOOT201
    from tests.support.ocpp201_client import energy, library_charging_station, transaction_event

    [first] = instances(1)
    [second] = instances(1, api_env())

    def ended(seq_no: int):
        return transaction_event("Ended", "st-pg", seq_no, timestamp="2024-01-15T11:00:00Z",
                                 trigger_reason="EVDeparted", stopped_reason="EVDisconnected",
                                 meter_value=energy(15.5, "kWh", timestamp="2024-01-15T11:00:00Z"))

    async with library_charging_station(first.url, "CS-PG") as cs:
        await cs.call(BOOT201)
        await cs.call(transaction_event("Started", "st-pg", 0, timestamp="2024-01-15T10:10:00Z",
                                        trigger_reason="Authorized", id_token="USER-PG", evse={"id": 1, "connector_id": 1},
                                        meter_value=energy(1.5, "kWh")))
        await cs.call(transaction_event("Updated", "st-pg", 1, timestamp="2024-01-15T10:30:00Z",
                                        trigger_reason="MeterValuePeriodic", meter_value=energy(8, "kWh")))
    [start] = audit(first, "transaction_start")  # on disk before the station got its answer
    first.kill()  # the host dies: nothing flushes
    async with library_charging_station(second.url, "CS-PG") as cs:
        await cs.call(BOOT201)
        await cs.call(ended(2))
        await cs.call(ended(3))  # resent (no answer seen, say): one stop, not two
    [stop] = await wait_for_audit(second, lambda r: r["event_type"] == "transaction_stop")
    [repeat] = await wait_for_audit(second, lambda r: r["event_type"] == "anomaly")

    assert isinstance(start["transaction_id"], int)
    assert (start["station_transaction_id"], start["meter_start"], start["evse_id"], start["ocpp_version"]) == \
        ("st-pg", 1500, 1, "2.0.1")
    assert stop["transaction_id"] == start["transaction_id"] and stop["station_transaction_id"] == "st-pg"
    assert (stop["meter_stop"], stop["energy_delivered"]) == (15_500, 14_000)
    assert "unknown_transaction" not in stop
    assert (repeat["kind"], repeat["transaction_id"], repeat["first_event_id"]) == \
        ("repeated_stop", start["transaction_id"], stop["event_id"])
    token = create_token(second, "ops", "read")
    async with client(second, token) as api:
        listed = (await api.get("/charge-points/CS-PG")).json()
    assert listed["ocpp_version"] == "2.0.1"


# The database going away while serving ------------------------------------------------------

async def test_heartbeats_are_answered_while_the_database_is_down_and_no_write_is_lost(levity, own_postgres_server):
    import psycopg

    url = own_postgres_server.new_database()
    assert levity_command("db", "upgrade", database=url).returncode == 0
    server = levity({"LEVITY_DATABASE": url})
    async with raw_charge_point(server.url, "CP-OUT") as cp:
        assert (await cp.call("b", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}))[0] == 3
        own_postgres_server.pause()
        heartbeat = await cp.call("h", "Heartbeat", {})
        assert heartbeat[0] == 3 and "currentTime" in heartbeat[2]  # answered: the spec allows it
        start_payload = {"connectorId": 1, "idTag": "U1", "meterStart": 10, "timestamp": "2024-01-15T10:10:00Z"}
        refused = await cp.call("s1", "StartTransaction", start_payload)
        assert refused[0] == 4  # no transaction id the database does not hold
        own_postgres_server.resume()
        started = None
        for attempt in range(100):  # the charger retries, as chargers do
            answer = await cp.call(f"s{attempt + 2}", "StartTransaction", start_payload)
            if answer[0] == 3:
                started = answer[2]["transactionId"]
                break
            await asyncio.sleep(0.1)
        assert started is not None
    with psycopg.connect(url) as connection:
        rows = connection.execute("SELECT id FROM transactions").fetchall()
        heartbeat_seen = connection.execute("SELECT last_heartbeat FROM charge_points WHERE id = 'CP-OUT'").fetchone()
    assert rows == [(started,)]  # one transaction, not two
    assert heartbeat_seen[0] is not None  # the heartbeat written while the database was down landed
    assert "tried again" in server.log()
