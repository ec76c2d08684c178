"""State that must survive: transactions across a Levity restart; one connection per id."""

import asyncio
import json

import pytest
import websockets
from ocpp.v16 import call

from tests.conftest import read_audit_file
from tests.support.ocpp_client import BOOT, library_charge_point, raw_charge_point


def audit_records(server, event_type=None):
    records = [line["record"] for line in read_audit_file(server.workdir / "audit.jsonl")]
    return [r for r in records if event_type is None or r["event_type"] == event_type]


async def test_transaction_started_before_a_restart_stops_correctly_after_it(levity):
    server = levity()
    async with library_charge_point(server.url, "CP-R") as cp:
        await cp.call(BOOT)
        start = await cp.call(call.StartTransaction(connector_id=1, id_tag="U1", meter_start=12_345,
                                                    timestamp="2024-01-15T10:10:00Z"))
    assert server.stop() == 0  # clean SIGTERM shutdown
    server.start()
    async with library_charge_point(server.url, "CP-R") as cp:
        await cp.call(BOOT)
        await cp.call(call.StopTransaction(meter_stop=20_000, timestamp="2024-01-15T11:00:00Z",
                                           transaction_id=start.transaction_id))
        second = await cp.call(call.StartTransaction(connector_id=1, id_tag="U1", meter_start=20_000,
                                                     timestamp="2024-01-15T11:05:00Z"))
    server.stop()
    # Ids are unique and persistent: never reused after a restart.
    assert second.transaction_id > start.transaction_id
    [stop] = audit_records(server, "transaction_stop")
    assert stop["transaction_id"] == start.transaction_id
    assert stop["energy_delivered"] == 20_000 - 12_345
    assert "unknown_transaction" not in stop


async def test_transaction_survives_sigkill(levity):
    server = levity()
    async with library_charge_point(server.url, "CP-K") as cp:
        await cp.call(BOOT)
        start = await cp.call(call.StartTransaction(connector_id=1, id_tag="U1", meter_start=100,
                                                    timestamp="2024-01-15T10:10:00Z"))
    server.kill()
    server.start()
    async with library_charge_point(server.url, "CP-K") as cp:
        await cp.call(call.StopTransaction(meter_stop=600, timestamp="2024-01-15T11:00:00Z",
                                           transaction_id=start.transaction_id))
    server.stop()
    [stop] = audit_records(server, "transaction_stop")
    assert stop["energy_delivered"] == 500


@pytest.mark.parametrize("transaction_id", [-1, 999_999])
async def test_unknown_transaction_stop_gets_a_normal_answer(levity, transaction_id):
    server = levity()
    async with raw_charge_point(server.url, "CP-U") as cp:
        answer = await cp.call("s1", "StopTransaction", {"transactionId": transaction_id, "meterStop": 50,
                                                         "timestamp": "2024-01-15T11:00:00Z", "idTag": "U1"})
    assert answer == [3, "s1", {"idTagInfo": {"status": "Accepted"}}]
    server.stop()
    [stop] = audit_records(server, "transaction_stop")
    assert stop["transaction_id"] == transaction_id and stop["unknown_transaction"] is True
    assert stop["energy_delivered"] == 0 and stop["reason"] == "Local"


async def test_reconnect_with_same_id_newest_wins_and_old_is_closed_cleanly(levity):
    server = levity()
    async with raw_charge_point(server.url, "CP-DUP") as old:
        assert (await old.call("1", "Heartbeat", {}))[0] == 3
        async with raw_charge_point(server.url, "CP-DUP") as new:
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(old.ws.recv(), 5)
            assert closed.value.rcvd.code == 1000
            assert "newer connection" in closed.value.rcvd.reason
            assert (await new.call("2", "Heartbeat", {}))[0] == 3
            assert server.metrics()['levity_connected_charge_points{ocpp_version="1.6"}'] == 1
    server.stop()
    websocket_events = audit_records(server)
    kinds = [(r["event_type"], r.get("replaced")) for r in websocket_events if r["event_type"].startswith("websocket")]
    assert kinds.count(("websocket_connect", None)) == 2
    assert ("websocket_disconnect", True) in kinds and ("websocket_disconnect", False) in kinds


async def test_handshake_follows_ocpp_j(levity):
    server = levity()
    # No subprotocol offered: the handshake completes without one, then Levity closes.
    async with websockets.connect(f"{server.url}/CP-NOSUB") as ws:
        assert ws.subprotocol is None
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1002
    async with websockets.connect(f"{server.url}/CP-OTHER", subprotocols=["ocpp2.0"]) as ws:
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 5)
    # No valid charge point id: refused before the upgrade.
    for path in ["/", "/bad%20id", "/" + "x" * 49]:
        with pytest.raises(websockets.InvalidStatus) as refused:
            async with websockets.connect(f"{server.url}{path}", subprotocols=["ocpp1.6"]):
                pass
        assert refused.value.response.status_code == 404
    # A path prefix is fine: the id is the last segment.
    async with raw_charge_point(f"{server.url}/ocpp", "CP-PREFIX") as cp:
        assert (await cp.call("1", "Heartbeat", {}))[0] == 3


async def test_boot_policy_rejects_unregistered_until_registered(levity):
    server = levity({"LEVITY_BOOT_POLICY": "rejected"})
    boot = {"chargePointVendor": "V", "chargePointModel": "M"}
    async with raw_charge_point(server.url, "CP-NEW") as cp:
        answer = await cp.call("1", "BootNotification", boot)
    assert answer[2]["status"] == "Rejected" and answer[2]["interval"] > 0
    from levity.cli import main

    assert main(["charge-points", "register", "CP-NEW", "--database", server.env["LEVITY_DATABASE"]]) == 0
    async with raw_charge_point(server.url, "CP-NEW") as cp:
        answer = await cp.call("2", "BootNotification", boot)
    assert answer[2]["status"] == "Accepted"
    server.stop()
    assert [r["status"] for r in audit_records(server, "boot_notification")] == ["Rejected", "Accepted"]


async def test_id_tag_list_answers_each_status(levity, tmp_path):
    tags = tmp_path / "id-tags.yaml"
    tags.write_text("GOOD: Accepted\nBAD: Blocked\nOLD: Expired\n")
    server = levity({"LEVITY_ID_TAGS_FILE": str(tags)})
    async with raw_charge_point(server.url, "CP-AUTH") as cp:
        statuses = {tag: (await cp.call(tag, "Authorize", {"idTag": tag}))[2]["idTagInfo"]["status"]
                    for tag in ["GOOD", "BAD", "OLD", "NOBODY"]}
    assert statuses == {"GOOD": "Accepted", "BAD": "Blocked", "OLD": "Expired", "NOBODY": "Invalid"}


async def test_pseudonymized_id_tags_are_stable_and_not_the_tag(levity):
    server = levity({"LEVITY_ID_TAG_MODE": "pseudonymize", "LEVITY_ID_TAG_KEY": "k3y-for-tests"})
    async with raw_charge_point(server.url, "CP-P") as cp:
        await cp.call("1", "Authorize", {"idTag": "USER-123"})
        await cp.call("2", "StartTransaction", {"connectorId": 1, "idTag": "USER-123", "meterStart": 0,
                                                "timestamp": "2024-01-15T10:10:00Z"})
    server.stop()
    records = audit_records(server)
    tags = {r["id_tag"] for r in records if "id_tag" in r}
    assert len(tags) == 1 and "USER-123" not in json.dumps(records)
    assert "k3y-for-tests" not in json.dumps(records) + server.log()
