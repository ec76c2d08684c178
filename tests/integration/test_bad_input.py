"""Malformed frames, unknown actions and schema violations get the OCPP-J answer, and the
server keeps serving the sender and everyone else."""

import asyncio
import json

import pytest

from tests.conftest import read_audit_file
from tests.support.ocpp_client import raw_charge_point

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}

# (frame, expected [4, unique id, error code])
CASES = [
    ("not json at all", "-1", "FormationViolation"),
    ('{"an": "object"}', "-1", "FormationViolation"),
    ("[]", "-1", "FormationViolation"),
    ('[2, 17, "Heartbeat", {}]', "-1", "FormationViolation"),
    ('[9, "u1", "Heartbeat", {}]', "u1", "FormationViolation"),
    ('[2, "u2", "Heartbeat"]', "u2", "FormationViolation"),
    ('[2, "u3", "Heartbeat", []]', "u3", "FormationViolation"),
    ('[2, "u4", 42, {}]', "u4", "FormationViolation"),
    (json.dumps([2, "x" * 37, "Heartbeat", {}]), "-1", "FormationViolation"),
    ('[2, "u5", "MakeCoffee", {}]', "u5", "NotImplemented"),
    ('[2, "u6", "RemoteStartTransaction", {"idTag": "A"}]', "u6", "NotSupported"),
    ('[2, "u7", "BootNotification", {"chargePointVendor": "V"}]', "u7", "OccurenceConstraintViolation"),
    ('[2, "u8", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M", "x": 1}]', "u8",
     "OccurenceConstraintViolation"),
    ('[2, "u9", "StatusNotification", {"connectorId": "1", "errorCode": "NoError", "status": "Available"}]', "u9",
     "TypeConstraintViolation"),
    ('[2, "u10", "StatusNotification", {"connectorId": 1, "errorCode": "NoError", "status": "Sleeping"}]', "u10",
     "PropertyConstraintViolation"),
    (json.dumps([2, "u11", "Authorize", {"idTag": "T" * 21}]), "u11", "PropertyConstraintViolation"),
    ('[2, "u12", "StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 1.5, '
     '"timestamp": "2024-01-15T10:10:00Z"}]', "u12", "TypeConstraintViolation"),
    ('[2, "u13", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "2024-01-15T10:10:00Z", '
     '"sampledValue": [{"value": "1", "measurand": "Bogus.Measurand"}]}]}]', "u13", "PropertyConstraintViolation"),
]


async def test_each_bad_frame_gets_its_call_error_and_everyone_is_still_served(levity):
    server = levity()
    async with raw_charge_point(server.url, "CP-BAD") as bad, raw_charge_point(server.url, "CP-GOOD") as good:
        assert (await good.call("b", "BootNotification", BOOT))[2]["status"] == "Accepted"
        for index, (frame, unique_id, code) in enumerate(CASES):
            answer = await bad.send_raw(frame)
            assert answer[:3] == [4, unique_id, code], (frame, answer)
            assert isinstance(answer[3], str) and isinstance(answer[4], dict)
            # The error never echoes the frame back.
            assert frame not in json.dumps(answer) and len(answer[3]) <= 255
            # The other charger and the sender itself keep being served.
            assert (await good.call(f"g{index}", "Heartbeat", {}))[0] == 3
        assert (await bad.call("after", "Heartbeat", {}))[:2] == [3, "after"]
    server.stop()
    errors = [line["record"] for line in read_audit_file(server.workdir / "audit.jsonl")
              if line["record"]["event_type"] == "call_error"]
    assert {e["error_code"] for e in errors} >= {"NotImplemented", "NotSupported", "TypeConstraintViolation"}


async def test_replies_to_nothing_are_ignored_not_answered(levity):
    server = levity()
    async with raw_charge_point(server.url, "CP-R") as cp:
        await cp.ws.send('[3, "nobody-asked", {}]')
        await cp.ws.send('[4, "nobody-asked", "GenericError", "", {}]')
        # The next answer is the heartbeat's: nothing was sent back for the replies.
        assert (await cp.call("hb", "Heartbeat", {}))[:2] == [3, "hb"]


async def test_binary_frame_gets_formation_violation(levity):
    server = levity()
    async with raw_charge_point(server.url, "CP-BIN") as cp:
        answer = await cp.send_raw(b'[2, "b1", "Heartbeat", {}]')
        assert answer[:3] == [4, "-1", "FormationViolation"]


async def test_lenient_measurands_escape_accepts_out_of_spec_values(levity):
    frame = {"connectorId": 1, "meterValue": [{"timestamp": "2024-01-15T10:10:00Z", "sampledValue": [
        {"value": "1", "measurand": "Vendor.Special", "unit": "mA"}]}]}
    strict = levity()
    lenient = levity({"LEVITY_LENIENT_MEASURANDS": "true"})
    async with raw_charge_point(strict.url, "CP-S") as cp:
        assert (await cp.call("1", "MeterValues", frame))[2] == "PropertyConstraintViolation"
    async with raw_charge_point(lenient.url, "CP-L") as cp:
        assert (await cp.call("1", "MeterValues", frame)) == [3, "1", {}]
    lenient.stop()
    [meter] = [line["record"] for line in read_audit_file(lenient.workdir / "audit.jsonl")
               if line["record"]["event_type"] == "meter_values"]
    assert meter["measurands"] == ["Vendor.Special"]


async def test_many_chargers_flooding_garbage_do_not_stop_a_good_one(levity):
    server = levity()

    async def flood(n):
        async with raw_charge_point(server.url, f"CP-FLOOD{n}") as cp:
            for i in range(50):
                answer = await cp.send_raw("[2, " * (i % 5) + "garbage")
                assert answer[0] == 4

    async with raw_charge_point(server.url, "CP-OK") as good:
        flooders = asyncio.gather(*(flood(n) for n in range(5)))
        for i in range(20):
            assert (await good.call(str(i), "Heartbeat", {}))[0] == 3
        await flooders
