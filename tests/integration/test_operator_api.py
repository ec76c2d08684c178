"""The operator API (docs/operator-api.md) against a real `levity serve`: real HTTP, real
chargers (the `ocpp` library's ChargePoint answering, refusing, staying silent, and raw
WebSocket clients for what a library client will not do), audit events at the suite's
Forward receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time

import httpx
import pytest
import websockets
from ocpp.exceptions import NotSupportedError
from ocpp.routing import on
from ocpp.v16 import ChargePoint as LibraryChargePoint
from ocpp.v16 import call, call_result

from levity.audit.events import conformance_errors
from levity.commands import CENTRAL_SYSTEM_ACTIONS, EXAMPLE_REQUESTS, MAX_WAITING_CALLS
from levity.workers import worker_index
from tests.integration.test_lossless_delivery import fluentd_env
from tests.support.forward_receiver import ForwardReceiver
from tests.support.levity_process import api_env

REQUESTS = EXAMPLE_REQUESTS  # every call a central system sends, as the API documents it
ANSWERS = {
    "ChangeAvailability": call_result.ChangeAvailability(status="Accepted"),
    "ChangeConfiguration": call_result.ChangeConfiguration(status="Accepted"),
    "ClearCache": call_result.ClearCache(status="Accepted"),
    "DataTransfer": call_result.DataTransfer(status="Accepted", data="pong"),
    "GetConfiguration": call_result.GetConfiguration(
        configuration_key=[{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]),
    "RemoteStartTransaction": call_result.RemoteStartTransaction(status="Accepted"),
    "RemoteStopTransaction": call_result.RemoteStopTransaction(status="Accepted"),
    "Reset": call_result.Reset(status="Accepted"),
    "UnlockConnector": call_result.UnlockConnector(status="Unlocked"),
    "GetDiagnostics": call_result.GetDiagnostics(file_name="diagnostics.zip"),
    "UpdateFirmware": call_result.UpdateFirmware(),
    "GetLocalListVersion": call_result.GetLocalListVersion(list_version=3),
    "SendLocalList": call_result.SendLocalList(status="Accepted"),
    "ReserveNow": call_result.ReserveNow(status="Accepted"),
    "CancelReservation": call_result.CancelReservation(status="Accepted"),
    "SetChargingProfile": call_result.SetChargingProfile(status="Accepted"),
    "ClearChargingProfile": call_result.ClearChargingProfile(status="Accepted"),
    "GetCompositeSchedule": call_result.GetCompositeSchedule(status="Accepted", connector_id=1),
    "TriggerMessage": call_result.TriggerMessage(status="Accepted"),
}
EXPECTED_PAYLOADS = {  # the answers above as JSON, as the charger sends them
    "DataTransfer": {"status": "Accepted", "data": "pong"},
    "GetConfiguration": {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "300"}]},
    "UnlockConnector": {"status": "Unlocked"},
    "GetDiagnostics": {"fileName": "diagnostics.zip"},
    "UpdateFirmware": {},
    "GetLocalListVersion": {"listVersion": 3},
    "GetCompositeSchedule": {"status": "Accepted", "connectorId": 1},
}


class TestCharger(LibraryChargePoint):
    __test__ = False

    """Answers every central-system call; `mode` "refuse" answers with a CALLERROR, "silent" never."""

    mode = "answer"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received: list[tuple[str, dict]] = []


def _handler(action: str):
    async def handle(self, **kwargs):
        self.received.append((action, kwargs))
        if self.mode == "refuse":
            raise NotSupportedError(description=f"{action} refused by the test charger", details={"why": "test"})
        if self.mode == "silent":
            await asyncio.Event().wait()
        return ANSWERS[action]
    handle.__name__ = f"on_{action}"  # the library routes by the handler's name
    return handle


for _action in CENTRAL_SYSTEM_ACTIONS:
    setattr(TestCharger, f"on_{_action}", on(_action)(_handler(_action)))


@contextlib.asynccontextmanager
async def charger(url: str, charge_point_id: str, mode: str = "answer", boot: bool = True):
    async with websockets.connect(f"{url}/{charge_point_id}", subprotocols=["ocpp1.6"]) as ws:
        cp = TestCharger(charge_point_id, ws)
        cp.mode = mode
        reader = asyncio.create_task(cp.start())
        try:
            if boot:
                await cp.call(call.BootNotification(charge_point_vendor="V", charge_point_model="M"))
            yield cp
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


def create_token(server, name: str, role: str) -> str:
    done = server.levity_command("api-tokens", "create", name, "--role", role)
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert len(done.stdout.splitlines()) == 1 and len(token) > 40
    return token


def client(server, token: str | None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(base_url=server.api_url + "/api/v1", headers=headers, timeout=30)


async def wait_for(condition, seconds: float, failure: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.05)
    pytest.fail(failure)


def command_events(receiver) -> list[dict]:
    return [e.record for e in receiver.events if e.tag == "ocpp.command"]


@pytest.fixture
def receiver():
    forward = ForwardReceiver().start()
    yield forward
    forward.stop()


async def test_every_call_reaches_the_charger_and_is_audited(levity, receiver):
    server = levity({**api_env(), **fluentd_env(receiver.port), "LEVITY_ID_TAG_MODE": "pseudonymize",
                     "LEVITY_ID_TAG_KEY": "k" * 32})
    token = create_token(server, "ops-alice", "operate")
    async with charger(server.url, "CP001") as cp, client(server, token) as api:
        for action, payload in REQUESTS.items():
            response = await api.post(f"/charge-points/CP001/calls/{action}", json=payload)
            assert response.status_code == 200, (action, response.text)
            expected = EXPECTED_PAYLOADS.get(action, {"status": "Accepted"})
            assert response.json() == expected, action
        assert [action for action, _ in cp.received] == list(REQUESTS)
        assert cp.received[7] == ("Reset", {"type": "Soft"})
    await wait_for(lambda: len(command_events(receiver)) == len(REQUESTS), 10, "not every ocpp.command arrived")
    events = {e["action"]: e for e in command_events(receiver)}
    for action, event in events.items():
        assert conformance_errors(event) == [], event
        assert event["requested_by"] == "ops-alice" and event["outcome"] == "result"
        assert event["error_code"] is None and event["latency_ms"] >= 0 and len(event["unique_id"]) == 36
    assert events["Reset"]["request"] == {"type": "Soft"} and events["Reset"]["status"] == "Accepted"
    assert events["GetDiagnostics"]["status"] is None
    # idTag values follow the privacy mode, wherever they sit in the payload
    assert events["RemoteStartTransaction"]["request"]["idTag"].startswith("hmac-sha256:")
    assert events["SendLocalList"]["request"]["localAuthorizationList"][0]["idTag"].startswith("hmac-sha256:")
    assert token not in json.dumps(command_events(receiver)) and token not in server.log()
    assert server.metrics()['levity_commands_total{action="Reset",outcome="result"}'] == 1


async def test_status_table_roles_and_reads(levity, receiver):
    server = levity({**api_env(), **fluentd_env(receiver.port)})
    operate = create_token(server, "ops", "operate")
    read = create_token(server, "dashboard", "read")
    async with client(server, operate) as api, client(server, read) as reader, client(server, None) as anonymous:
        # 401: no token, unknown token; problem+json with a detail
        for response in (await anonymous.get("/charge-points"),
                         await anonymous.post("/charge-points/CP001/calls/Reset", json={"type": "Soft"}),
                         await client(server, "lvt_not-a-token").get("/charge-points")):
            assert response.status_code == 401
            assert response.headers["content-type"].startswith("application/problem+json")
            assert response.json()["status"] == 401 and "token" in response.json()["detail"].lower()
        spec = await reader.get("/openapi.json")
        assert spec.status_code == 200 and spec.json()["openapi"].startswith("3.1")
        call_doc = spec.json()["paths"]["/api/v1/charge-points/{charge_point_id}/calls/{action}"]["post"]
        assert set(call_doc["requestBody"]["content"]["application/json"]["examples"]) == set(CENTRAL_SYSTEM_ACTIONS)
        assert {"200", "400", "401", "403", "404", "409", "502", "504"} <= set(call_doc["responses"])

        async with charger(server.url, "CP001") as cp, charger(server.url, "CP-REFUSE", mode="refuse"), \
                charger(server.url, "CP-SILENT", mode="silent"):
            await cp.call(call.StatusNotification(connector_id=1, error_code="NoError", status="Preparing"))
            await cp.call(call.StartTransaction(connector_id=1, id_tag="USER-1", meter_start=1000,
                                                timestamp="2024-01-15T10:10:00Z"))
            # 403: a read token sends a call
            refused = await reader.post("/charge-points/CP001/calls/Reset", json={"type": "Soft"})
            assert refused.status_code == 403 and "operate" in refused.json()["detail"]
            # 400: schema break (naming the property), not JSON, not an object
            bad = await api.post("/charge-points/CP001/calls/Reset", json={"type": "Hard2"})
            assert bad.status_code == 400 and "type" in bad.json()["detail"]
            missing = await api.post("/charge-points/CP001/calls/RemoteStartTransaction", json={"connectorId": 1})
            assert missing.status_code == 400 and "idTag" in missing.json()["detail"]
            not_json = await api.post("/charge-points/CP001/calls/Reset", content=b"{type: Soft",
                                      headers={"Content-Type": "application/json"})
            assert not_json.status_code == 400 and "JSON" in not_json.json()["detail"]
            assert (await api.post("/charge-points/CP001/calls/Reset", json=["Soft"])).status_code == 400
            huge = await api.post("/charge-points/CP001/calls/DataTransfer", json={"vendorId": "A", "data": "x" * 70000})
            assert huge.status_code == 400 and "LEVITY_MAX_FRAME_BYTES" in huge.json()["detail"]
            bad_timeout = await api.post("/charge-points/CP001/calls/Reset?timeout=-1", json={"type": "Soft"})
            assert bad_timeout.status_code == 400 and "timeout" in bad_timeout.json()["detail"]
            # 404: unknown charge point, unknown action, an action charge points send
            assert (await api.post("/charge-points/NOPE/calls/Reset", json={"type": "Soft"})).status_code == 404
            unknown = await api.post("/charge-points/CP001/calls/Explode", json={})
            assert unknown.status_code == 404 and "Reset" in unknown.json()["detail"]
            wrong_way = await api.post("/charge-points/CP001/calls/BootNotification", json={})
            assert wrong_way.status_code == 404 and "sent by charge points" in wrong_way.json()["detail"]
            assert cp.received == []  # none of the wrong requests reached the charger
            # 502: CALLERROR, with its code, description and details
            error = await api.post("/charge-points/CP-REFUSE/calls/Reset", json={"type": "Hard"})
            assert error.status_code == 502
            assert error.json()["error_code"] == "NotSupported"
            assert error.json()["error_description"] == "Reset refused by the test charger"
            assert error.json()["error_details"] == {"why": "test"}
            # 504: no answer within ?timeout=
            silent = await api.post("/charge-points/CP-SILENT/calls/Reset?timeout=0.5", json={"type": "Soft"})
            assert silent.status_code == 504 and "0.5" in silent.json()["detail"]
            # 200 still for the others: the silent charger holds up nobody else
            assert (await api.post("/charge-points/CP001/calls/Reset", json={"type": "Soft"})).status_code == 200

            # Reads, with the read token
            listed = {item["id"]: item for item in (await reader.get("/charge-points")).json()}
            assert listed["CP001"]["connected"] is True and listed["CP001"]["ocpp_version"] == "1.6"
            assert listed["CP001"]["last_seen"].endswith("Z")
            detail = (await reader.get("/charge-points/CP001")).json()
            assert detail["connectors"][0]["connector_id"] == 1 and detail["connectors"][0]["status"] == "Preparing"
            assert (await reader.get("/charge-points/NOPE")).status_code == 404
            open_ones = (await reader.get("/transactions", params={"charge_point_id": "CP001", "open": "true"})).json()
            assert len(open_ones) == 1
            assert {"transaction_id", "charge_point_id", "connector_id", "id_tag", "meter_start", "meter_stop",
                    "energy_delivered", "started_at", "stopped_at"} <= set(open_ones[0])
            assert open_ones[0]["meter_start"] == 1000 and open_ones[0]["stopped_at"] is None
            await cp.call(call.StopTransaction(transaction_id=open_ones[0]["transaction_id"], meter_stop=15000,
                                               timestamp="2024-01-15T11:00:00Z"))
            assert (await reader.get("/transactions", params={"open": "true"})).json() == []
            closed = (await reader.get("/transactions", params={"charge_point_id": "CP001"})).json()
            assert closed[0]["energy_delivered"] == 14000 and closed[0]["stopped_at"] == "2024-01-15T11:00:00Z"

        # 409: known, no longer connected
        gone = await api.post("/charge-points/CP001/calls/Reset", json={"type": "Soft"})
        assert gone.status_code == 409 and "not connected" in gone.json()["detail"]
        for _ in range(100):
            after = {item["id"]: item for item in (await reader.get("/charge-points")).json()}
            if not after["CP001"]["connected"]:
                break
            await asyncio.sleep(0.05)
        assert after["CP001"]["connected"] is False and after["CP001"]["last_seen"] is not None

    await wait_for(lambda: {e["outcome"] for e in command_events(receiver)} >= {
        "result", "call_error", "timeout", "not_connected"}, 10, "an outcome is missing from the events")
    outcomes = {(e["charge_point_id"], e["outcome"], e["error_code"]) for e in command_events(receiver)}
    assert ("CP-REFUSE", "call_error", "NotSupported") in outcomes
    assert ("CP-SILENT", "timeout", None) in outcomes and ("CP001", "not_connected", None) in outcomes
    # one event per call that reached a charger or was refused as not connected, none for the rest
    assert len(command_events(receiver)) == 4
    assert all(conformance_errors(e) == [] for e in command_events(receiver))


async def test_one_outstanding_call_per_charger_and_a_disconnect_ends_the_call(levity):
    server = levity(api_env())
    token = create_token(server, "ops", "operate")
    async with websockets.connect(f"{server.url}/CP-RAW", subprotocols=["ocpp1.6"]) as ws, \
            client(server, token) as api:
        requests = [asyncio.create_task(api.post("/charge-points/CP-RAW/calls/ChangeConfiguration",
                                                 json={"key": "K", "value": str(n)})) for n in range(4)]
        seen = []
        for _ in range(4):
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            assert frame[0] == 2 and frame[2] == "ChangeConfiguration"
            seen.append(frame)
            # While this call is unanswered no other call may arrive.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.3)
            await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        answers = await asyncio.gather(*requests)
        assert [r.status_code for r in answers] == [200] * 4
        assert sorted(f[3]["value"] for f in seen) == ["0", "1", "2", "3"]
        assert len({f[1] for f in seen}) == 4  # unique ids

        # An answer that breaks the schema is not taken for a good one.
        garbage = asyncio.create_task(api.post("/charge-points/CP-RAW/calls/Reset", json={"type": "Soft"}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.send(json.dumps([3, frame[1], {"status": "Maybe"}]))
        answer = await garbage
        assert answer.status_code == 502 and answer.json()["error_code"] == "FormationViolation"
        assert "status" in answer.json()["detail"]

        # A charger's own call is answered while Levity's call to it is pending.
        pending = asyncio.create_task(api.post("/charge-points/CP-RAW/calls/Reset", json={"type": "Soft"}))
        frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
        await ws.send(json.dumps([2, "hb", "Heartbeat", {}]))
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))[:2] == [3, "hb"]
        await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        assert (await pending).json() == {"status": "Accepted"}

        # At most MAX_WAITING_CALLS wait behind the outstanding one; more are refused (503).
        crowd = [asyncio.create_task(api.post("/charge-points/CP-RAW/calls/ClearCache?timeout=60", json={}))
                 for _ in range(MAX_WAITING_CALLS + 2)]
        first = json.loads(await asyncio.wait_for(ws.recv(), 10))
        refused = await asyncio.wait_for(next(asyncio.as_completed(crowd)), 20)
        assert refused.status_code == 503 and refused.headers["retry-after"]
        await ws.send(json.dumps([3, first[1], {"status": "Accepted"}]))
        for _ in range(MAX_WAITING_CALLS):
            frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
            await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        assert sorted(r.status_code for r in await asyncio.gather(*crowd)) == [200] * (MAX_WAITING_CALLS + 1) + [503]

        # The charger goes away mid-call: the call ends at once, not after its 60 s timeout.
        stranded = asyncio.create_task(api.post("/charge-points/CP-RAW/calls/Reset?timeout=60", json={"type": "Soft"}))
        await asyncio.wait_for(ws.recv(), 10)
        # A call whose timeout passes while it waits for its turn is never sent.
        queued = await api.post("/charge-points/CP-RAW/calls/UnlockConnector?timeout=0.3", json={"connectorId": 2})
        assert queued.status_code == 504 and "not sent" in queued.json()["detail"]
        await ws.close()
        answer = await asyncio.wait_for(stranded, 20)
        assert answer.status_code == 409 and "disconnected" in answer.json()["detail"]
    expected = 4 + 1 + 1 + MAX_WAITING_CALLS + 1 + 1 + 1  # every call sent or not_connected, none of the refused

    def audited() -> list[dict]:
        path = server.workdir / "audit.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        return [r for r in (json.loads(line)["record"] for line in lines) if r["event_type"] == "command"]

    await wait_for(lambda: len(audited()) >= expected, 10, "ocpp.command events missing from the audit file")
    commands = audited()
    unsent = [r for r in commands if r["action"] == "UnlockConnector"]
    assert [(r["outcome"], r.get("sent")) for r in unsent] == [("timeout", False)]
    assert commands[-1]["action"] == "Reset" and commands[-1]["outcome"] == "not_connected"
    assert len(commands) == expected


async def test_levity_call_and_api_tokens_commands(levity):
    server = levity(api_env())
    token = create_token(server, "cli-operator", "operate")
    read = create_token(server, "cli-reader", "read")
    duplicate = server.levity_command("api-tokens", "create", "cli-operator", "--role", "read")
    assert duplicate.returncode == 2 and "exists" in duplicate.stderr
    listed = server.levity_command("api-tokens", "list").stdout
    assert "cli-operator\toperate" in listed and "cli-reader\tread" in listed and token not in listed
    assert token not in (server.workdir / "levity.db").read_bytes().decode("latin-1")
    env = {"LEVITY_API_URL": server.api_url, "LEVITY_API_TOKEN": token}
    async with charger(server.url, "CP001"):
        done = await asyncio.to_thread(server.levity_command, "call", "CP001", "Reset", '{"type": "Soft"}', env=env)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"status": "Accepted"}
        schema = await asyncio.to_thread(server.levity_command, "call", "CP001", "Reset", '{"type": "x"}', env=env)
        assert schema.returncode == 3 and "type" in schema.stderr
        forbidden = await asyncio.to_thread(server.levity_command, "call", "CP001", "Reset", '{"type": "Soft"}',
                                            env={**env, "LEVITY_API_TOKEN": read})
        assert forbidden.returncode == 5 and "operate" in forbidden.stderr
        unknown = await asyncio.to_thread(server.levity_command, "call", "NOPE", "Reset", '{"type": "Soft"}', env=env)
        assert unknown.returncode == 6
    assert server.levity_command("api-tokens", "revoke", "cli-operator").returncode == 0
    revoked = await asyncio.to_thread(server.levity_command, "call", "CP001", "Reset", '{"type": "Soft"}', env=env)
    assert revoked.returncode == 4 and "token" in revoked.stderr
    unreachable = server.levity_command("call", "CP001", "Reset", "{}", env={**env, "LEVITY_API_URL": "http://127.0.0.1:9"})
    assert unreachable.returncode == 11


async def test_two_workers_route_calls_to_the_owner(levity, receiver):
    server = levity({**api_env(), **fluentd_env(receiver.port), "LEVITY_WORKERS": "2"})
    token = create_token(server, "ops", "operate")
    ids = ["CP-A", "CP-B", "CP-C", "CP-D", "CP-E"]
    assert {worker_index(cp, 2) for cp in ids} == {0, 1}
    async with contextlib.AsyncExitStack() as stack:
        chargers = [await stack.enter_async_context(charger(server.url, cp)) for cp in ids]
        api = await stack.enter_async_context(client(server, token))
        answers = await asyncio.gather(*(api.post(f"/charge-points/{cp}/calls/GetConfiguration", json={})
                                         for cp in ids for _ in range(3)), server_metrics(server))
        assert [a.status_code for a in answers[:-1]] == [200] * 15
        assert all(len(c.received) == 3 for c in chargers)
        listed = (await api.get("/charge-points")).json()
        assert [(item["id"], item["connected"]) for item in listed] == [(cp, True) for cp in ids]
        assert (await api.get("/charge-points/CP-E")).json()["id"] == "CP-E"
        assert (await api.post("/charge-points/NOPE/calls/Reset", json={"type": "Soft"})).status_code == 404
        await chargers[0].call(call.StartTransaction(connector_id=1, id_tag="T", meter_start=5,
                                                     timestamp="2024-01-15T10:10:00Z"))
        assert [t["charge_point_id"] for t in (await api.get("/transactions?open=true")).json()] == ["CP-A"]
    await wait_for(lambda: len(command_events(receiver)) == 15, 10, "ocpp.command events missing")
    assert {e["charge_point_id"] for e in command_events(receiver)} == set(ids)
    metrics = server.metrics()
    assert metrics['levity_commands_total{action="GetConfiguration",outcome="result"}'] == 15
    # A restart with the same number of workers is not refused for the tokens' database.
    server.restart()
    async with client(server, token) as api:
        assert (await api.get("/charge-points")).status_code == 200


async def server_metrics(server):
    return await asyncio.to_thread(server.metrics)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_an_api_port_that_cannot_be_had_stops_levity_with_a_clear_error(levity, workers):
    server = levity({"LEVITY_WORKERS": workers}, start=False)
    server.env["LEVITY_API_PORT"] = str(server.port)
    same = server.levity_command("serve")
    assert same.returncode == 1 and "LEVITY_API_PORT" in same.stderr and "chargers' port" in same.stderr
    with socket.create_server(("127.0.0.1", 0)) as taken:
        server.env["LEVITY_API_PORT"] = str(taken.getsockname()[1])
        busy = server.levity_command("serve")
    assert busy.returncode == 1 and "operator API" in busy.stderr and "LEVITY_API_PORT" in busy.stderr
