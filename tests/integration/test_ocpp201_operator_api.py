"""The operator API's calls to OCPP 2.0.1 charging stations: every 2.0.1 call through a real
`levity serve` to the `ocpp` library's v201 ChargePoint (which checks each request against the
OCA schemas), 404 across versions, and `ocpp_version` in the charge point list."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
from ocpp.routing import on
from ocpp.v201 import ChargePoint as LibraryChargingStation
from ocpp.v201 import call_result

from levity.commands import CSMS_ACTIONS_201, EXAMPLE_REQUESTS_201
from tests.integration.test_operator_api import charger, client, create_token
from tests.support.levity_process import api_env
from tests.support.ocpp201_client import BOOT, library_charging_station

COMPONENT = {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}}
ANSWERS = {
    "RequestStartTransaction": call_result.RequestStartTransaction(status="Accepted", transaction_id="st-9"),
    "RequestStopTransaction": call_result.RequestStopTransaction(status="Accepted"),
    "Reset": call_result.Reset(status="Accepted"),
    "GetVariables": call_result.GetVariables(get_variable_result=[
        {"attribute_status": "Accepted", "attribute_value": "300", **COMPONENT}]),
    "SetVariables": call_result.SetVariables(set_variable_result=[{"attribute_status": "Accepted", **COMPONENT}]),
    "GetBaseReport": call_result.GetBaseReport(status="Accepted"),
    "TriggerMessage": call_result.TriggerMessage(status="Accepted"),
    "UnlockConnector": call_result.UnlockConnector(status="Unlocked"),
    "ChangeAvailability": call_result.ChangeAvailability(status="Scheduled"),
    "SetChargingProfile": call_result.SetChargingProfile(status="Accepted"),
    "ClearCache": call_result.ClearCache(status="Accepted"),
    "GetLog": call_result.GetLog(status="Accepted", filename="log.zip"),
    "UpdateFirmware": call_result.UpdateFirmware(status="Accepted"),
    "SendLocalList": call_result.SendLocalList(status="Accepted"),
    "GetLocalListVersion": call_result.GetLocalListVersion(version_number=4),
}


class TestStation(LibraryChargingStation):
    __test__ = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.received: list[str] = []


def _handler(action: str):
    async def handle(self, **kwargs):
        self.received.append(action)
        return ANSWERS[action]
    handle.__name__ = f"on_{action}"  # the library routes by the handler's name
    return handle


for _action in CSMS_ACTIONS_201:
    setattr(TestStation, f"on_{_action}", on(_action)(_handler(_action)))


@contextlib.asynccontextmanager
async def station(url: str, station_id: str):
    async with library_charging_station(url, station_id, TestStation) as cs:
        await cs.call(BOOT)
        yield cs


def audit_commands(server) -> list[dict]:
    from tests.integration.test_ocpp201 import audit_records

    return [r for r in audit_records(server) if r["event_type"] == "command"]


async def test_every_201_call_reaches_the_station_and_versions_do_not_mix(levity):
    server = levity(api_env())
    token = create_token(server, "ops", "operate")
    async with client(server, token) as api, station(server.url, "CS-API") as cs, \
            charger(server.url, "CP-API16") as cp16:
        for action, request in EXAMPLE_REQUESTS_201.items():
            answer = await api.post(f"/charge-points/CS-API/calls/{action}", json=request)
            assert answer.status_code == 200, (action, answer.text)
        assert cs.received == list(CSMS_ACTIONS_201)
        assert (await api.post("/charge-points/CS-API/calls/GetLocalListVersion", json={})).json() == \
            {"versionNumber": 4}
        # A 1.6 call to a 2.0.1 station, and a 2.0.1 call to a 1.6 charger: 404, nothing sent.
        wrong = await api.post("/charge-points/CS-API/calls/RemoteStartTransaction",
                               json={"connectorId": 1, "idTag": "T"})
        assert wrong.status_code == 404 and "OCPP 2.0.1" in wrong.json()["detail"]
        wrong = await api.post("/charge-points/CP-API16/calls/RequestStartTransaction",
                               json=EXAMPLE_REQUESTS_201["RequestStartTransaction"])
        assert wrong.status_code == 404 and "OCPP 1.6" in wrong.json()["detail"]
        # Reset exists in both, with other payloads: the charger's version decides.
        invalid = await api.post("/charge-points/CP-API16/calls/Reset", json={"type": "Immediate"})
        assert invalid.status_code == 400 and "type" in invalid.json()["detail"]
        assert (await api.post("/charge-points/CS-API/calls/Reset", json={"type": "Soft"})).status_code == 400
        assert cp16.received == []
        listed = {item["id"]: item for item in (await api.get("/charge-points")).json()}
        assert listed["CS-API"]["ocpp_version"] == "2.0.1" and listed["CS-API"]["connected"] is True
        assert listed["CP-API16"]["ocpp_version"] == "1.6"
    async with client(server, token) as api:
        for _ in range(100):  # until the server has seen the disconnect
            item = (await api.get("/charge-points/CS-API")).json()
            if not item["connected"]:
                break
            await asyncio.sleep(0.05)
        assert item["connected"] is False and item["ocpp_version"] == "2.0.1"  # the last one seen
        gone = await api.post("/charge-points/CS-API/calls/ClearCache", json={})
        assert gone.status_code == 409
    commands = audit_commands(server)
    sent_201 = [c for c in commands if c.get("ocpp_version") == "2.0.1" and c["outcome"] == "result"]
    assert [c["action"] for c in sent_201] == list(CSMS_ACTIONS_201) + ["GetLocalListVersion"]
    # The id token of RequestStartTransaction follows the privacy mode like idTag (plain here).
    assert sent_201[0]["request"]["idToken"]["idToken"] == "USER-123"


async def test_openapi_documents_the_201_calls(levity):
    server = levity(api_env())
    token = create_token(server, "reader", "read")
    async with httpx.AsyncClient(base_url=server.api_url, headers={"Authorization": f"Bearer {token}"}) as api:
        document = (await api.get("/api/v1/openapi.json")).json()
    operation = document["paths"]["/api/v1/charge-points/{charge_point_id}/calls/{action}"]["post"]
    examples = operation["requestBody"]["content"]["application/json"]["x-ocpp-2.0.1-examples"]
    assert {action: example["value"] for action, example in examples.items()} == EXAMPLE_REQUESTS_201
