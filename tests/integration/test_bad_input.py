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
    ('[2, "u14", "Heartbeat", {}, "extra"]', "u14", "FormationViolation"),
    ('[2.0, "u15", "Heartbeat", {}]', "u15", "FormationViolation"),
    ('[true, "u16", "Heartbeat", {}]', "u16", "FormationViolation"),
    ('[3, "u17"]', "u17", "FormationViolation"),
    ('[2, "u18", "heartbeat", {}]', "u18", "NotImplemented"),
    ('[2, "u19", "Heartbeat", {"extra": 1}]', "u19", "OccurenceConstraintViolation"),
    ('[2, "u20", "Heartbeat", null]', "u20", "FormationViolation"),
    ('[2, "u21", "Heartbeat", {"x": NaN}]', "-1", "FormationViolation"),
    ("[" * 5000 + "]" * 5000, "-1", "FormationViolation"),
    ('\ufeff[2, "u22", "Heartbeat", {}]', "-1", "FormationViolation"),
    (json.dumps([2, "u23", "BootNotification", {"chargePointVendor": "V" * 21, "chargePointModel": "M"}]), "u23",
     "PropertyConstraintViolation"),
    ('[2, "u24", "BootNotification", {"chargePointVendor": 7, "chargePointModel": "M"}]', "u24",
     "TypeConstraintViolation"),
    ('[2, "u25", "StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0}]', "u25",
     "OccurenceConstraintViolation"),
    ('[2, "u26", "StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 100000000000000000000000, '
     '"timestamp": "2024-01-15T10:10:00Z"}]', "u26", "TypeConstraintViolation"),
    ('[2, "u27", "StopTransaction", {"transactionId": 1, "meterStop": 1, "timestamp": "2024-01-15T10:10:00Z", '
     '"reason": "Bored"}]', "u27", "PropertyConstraintViolation"),
    ('[2, "u28", "StopTransaction", {"transactionId": "1", "meterStop": 1, "timestamp": "2024-01-15T10:10:00Z"}]',
     "u28", "TypeConstraintViolation"),
    ('[2, "u29", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "2024-01-15T10:10:00Z", '
     '"sampledValue": [{"unit": "Wh"}]}]}]', "u29", "OccurenceConstraintViolation"),
    ('[2, "u30", "MeterValues", {"connectorId": null, "meterValue": []}]', "u30", "TypeConstraintViolation"),
    ('[2, "u31", "MeterValues", {"connectorId": 1, "meterValue": "lots"}]', "u31", "TypeConstraintViolation"),
    ('[2, "u32", "StatusNotification", {"connectorId": 1, "errorCode": "Meh", "status": "Available"}]', "u32",
     "PropertyConstraintViolation"),
    ('[2, "u33", "Authorize", {}]', "u33", "OccurenceConstraintViolation"),
    ('[2, "u34", "Authorize", {"idTag": 12345}]', "u34", "TypeConstraintViolation"),
    (json.dumps([2, "u35", "DataTransfer", {"vendorId": "V" * 256}]), "u35", "PropertyConstraintViolation"),
    ('[2, "u36", "DiagnosticsStatusNotification", {"status": "Exploded"}]', "u36", "PropertyConstraintViolation"),
    ('[2, "u37", "FirmwareStatusNotification", {}]', "u37", "OccurenceConstraintViolation"),
    ('[2, "u38", "SecurityEventNotification", {"type": "x", "timestamp": "2024-01-15T10:10:00Z"}]', "u38",
     "NotSupported"),
    ('[4, "u39", "GenericError"]', "u39", "FormationViolation"),
    ('[2, "u40", "' + "A" * 100 + '", {}]', "u40", "NotImplemented"),
    ('"just a string"', "-1", "FormationViolation"),
    ("[2]", "-1", "FormationViolation"),
    ("null", "-1", "FormationViolation"),
    ('[2, null, "Heartbeat", {}]', "-1", "FormationViolation"),
    # Numbers JSON has no room for, and unique ids a reply could not be matched with.
    ('[2, "u41", "Heartbeat", {"x": Infinity}]', "-1", "FormationViolation"),
    ('[2, "u42", "Heartbeat", {"x": -Infinity}]', "-1", "FormationViolation"),
    ('[2, "u43", "StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 1e999, '
     '"timestamp": "2024-01-15T10:10:00Z"}]', "-1", "FormationViolation"),
    ('[2, "u44", "Heartbeat", {"x": 01}]', "-1", "FormationViolation"),
    ('[2, "u45", "Heartbeat", {"x": +1}]', "-1", "FormationViolation"),
    ('[2, "u46", "Heartbeat", {"x": .5}]', "-1", "FormationViolation"),
    ('[2, "u47", "Heartbeat", {"x": 0x10}]', "-1", "FormationViolation"),
    ('[2, "", "Heartbeat", {}]', "-1", "FormationViolation"),
    (json.dumps([2, "x" * 36 + "y", "Heartbeat", {}]), "-1", "FormationViolation"),
    # Properties the schema does not allow, also nested.
    ('[2, "u48", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "2024-01-15T10:10:00Z", '
     '"sampledValue": [{"value": "1", "vendorExtra": 1}]}]}]', "u48", "OccurenceConstraintViolation"),
    ('[2, "u49", "StopTransaction", {"transactionId": 1, "meterStop": 1, "timestamp": "2024-01-15T10:10:00Z", '
     '"transactionData": [{"timestamp": "2024-01-15T10:10:00Z", "sampledValue": [], "x": 1}]}]', "u49",
     "OccurenceConstraintViolation"),
    # Negative connector ids (and 0 for a transaction, which needs a real connector).
    ('[2, "u50", "StatusNotification", {"connectorId": -1, "errorCode": "NoError", "status": "Available"}]', "u50",
     "PropertyConstraintViolation"),
    ('[2, "u51", "MeterValues", {"connectorId": -3, "meterValue": []}]', "u51", "PropertyConstraintViolation"),
    ('[2, "u52", "StartTransaction", {"connectorId": 0, "idTag": "A", "meterStart": 0, '
     '"timestamp": "2024-01-15T10:10:00Z"}]', "u52", "PropertyConstraintViolation"),
    # Timestamps that are not RFC 3339 date-times (the schemas' date-time fields).
    ('[2, "u53", "StatusNotification", {"connectorId": 0, "errorCode": "NoError", "status": "Available", '
     '"timestamp": "not really a date"}]', "u53", "PropertyConstraintViolation"),
    ('[2, "u54", "StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": 0, '
     '"timestamp": "2024-01-15T10:10:00"}]', "u54", "PropertyConstraintViolation"),
    ('[2, "u55", "StopTransaction", {"transactionId": 1, "meterStop": 1, "timestamp": "2024-02-30T10:10:00Z"}]',
     "u55", "PropertyConstraintViolation"),
    ('[2, "u56", "MeterValues", {"connectorId": 1, "meterValue": [{"timestamp": "15/01/2024 10:10", '
     '"sampledValue": [{"value": "1"}]}]}]', "u56", "PropertyConstraintViolation"),
]

# Frames that are odd but valid: each gets a CALLRESULT.
ODD_BUT_VALID = [
    '[2, "ü-ñ-✓", "Authorize", {"idTag": "ÄÖÜ"}]',
    '  [2 , "ws", "Heartbeat" , { } ]  ',
    '[2, "x", "Heartbeat", {}]',
    json.dumps([2, "i" * 36, "Heartbeat", {}]),
    '[2, "ts", "StatusNotification", {"connectorId": 0, "errorCode": "NoError", "status": "Available", '
    '"timestamp": "2024-01-15T10:10:00.123+01:00"}]',
    '[2, "ts2", "StatusNotification", {"connectorId": 0, "errorCode": "NoError", "status": "Available", '
    '"timestamp": "2016-12-31T23:59:60Z"}]',
    '[2, "ts3", "MeterValues", {"connectorId": 0, "meterValue": [{"timestamp": "2024-01-15T10:10:00.123456789z", '
    '"sampledValue": [{"value": "1"}]}]}]',
]


async def test_odd_but_valid_frames_are_answered(levity):
    server = levity()
    async with raw_charge_point(server.url, "CP-ODD") as cp:
        for frame in ODD_BUT_VALID:
            answer = await cp.send_raw(frame)
            assert answer[0] == 3 and answer[1] == json.loads(frame)[1], (frame, answer)


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


async def test_lenient_timestamps_escape_accepts_other_iso_8601_forms(levity):
    frame = {"connectorId": 0, "errorCode": "NoError", "status": "Available", "timestamp": "2024-01-15 10:10:00"}
    strict = levity()
    lenient = levity({"LEVITY_LENIENT_TIMESTAMPS": "true"})
    async with raw_charge_point(strict.url, "CP-S") as cp:
        assert (await cp.call("1", "StatusNotification", frame))[2] == "PropertyConstraintViolation"
    async with raw_charge_point(lenient.url, "CP-L") as cp:
        assert (await cp.call("1", "StatusNotification", frame)) == [3, "1", {}]


# Request paths whose last segment is no plain charge point id: refused before the upgrade.
BAD_ID_PATHS = ["/..", "/.", "/ocpp/../CP-1", "/CP%2F1", "/CP..1", "/%2e%2e", "/ocpp/%2E%2E/CP-1", "/CP%5C1"]


async def upgrade_status(port: int, path: str) -> bytes:
    """The status line Levity answers a WebSocket upgrade for `path` with (sent as is)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n").encode())
    try:
        return await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()


async def test_charge_point_ids_that_name_another_place_are_refused(levity):
    server = levity()
    for path in BAD_ID_PATHS:
        assert (await upgrade_status(server.port, path)).startswith(b"HTTP/1.1 404 "), path
    assert (await upgrade_status(server.port, "/ocpp/CP-1.2")).startswith(b"HTTP/1.1 101 ")


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


def client_frame(payload: bytes, opcode: int) -> bytes:
    """A final, masked client frame (RFC 6455 5.2; a zero masking key leaves the payload as is)."""
    assert len(payload) < 126
    return bytes((0x80 | opcode, 0x80 | len(payload))) + b"\x00\x00\x00\x00" + payload


async def test_a_call_sent_with_the_close_in_one_segment_is_still_handled(levity):
    server = levity()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(("GET /ocpp/CP-BYE HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
                  "Sec-WebSocket-Protocol: ocpp1.6\r\n\r\n").encode())
    assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 101 ")
    status = b'[2,"bye","StatusNotification",{"connectorId":2,"errorCode":"NoError","status":"Unavailable"}]'
    writer.write(client_frame(status, 0x1) + client_frame(b"\x03\xe8", 0x8))  # one write: call, then close
    rest = await asyncio.wait_for(reader.read(), 5)  # the server's close, then the end of the connection
    assert rest[:1] == b"\x88", rest
    writer.close()
    server.stop()
    [event] = [line["record"] for line in read_audit_file(server.workdir / "audit.jsonl")
               if line["record"]["event_type"] == "status_notification"
               and line["record"]["charge_point_id"] == "CP-BYE"]
    assert event["connector_id"] == 2 and event["status"] == "Unavailable"
