"""Calls Levity sends to chargers (central system to charge point), in OCPP 1.6J and 2.0.1:
each version has its table of calls and its schemas; a call goes to a charger only in the
version the charger speaks.

OCPP-J rules for this direction:
- one outstanding call per charger: later calls wait their turn, at most
  MAX_WAITING_CALLS of them; beyond that the call is refused (`Busy`) and nothing is sent;
- a unique id per call (uuid4, 36 characters: the longest OCPP-J allows);
- the answer is matched by unique id the moment it arrives (OcppConnection.pending_calls), not
  behind the charger's own calls;
- a CALLERROR, no answer within the timeout, or a disconnect (which ends the call at once) each
  have their outcome.

The request is checked against the action's OCA schema before anything is sent, and the answer
when it comes. An answer that breaks its schema counts as a failed call: outcome `call_error`
with error_code `FormationViolation` (2.0.1: `FormatViolation`) and `invalid_answer` true (the CALLERROR Levity itself
would have sent for such a frame), so a caller never takes a malformed answer for a good one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

import fastjsonschema

from levity.framing import CALLERROR, CALL, encode, schema_error_text
from levity.ocpp16 import validation as ocpp16
from levity.ocpp201 import validation as ocpp201

# Every call a central system sends in OCPP 1.6J, with its feature profile.
CENTRAL_SYSTEM_ACTIONS: dict[str, str] = {
    "ChangeAvailability": "Core", "ChangeConfiguration": "Core", "ClearCache": "Core",
    "DataTransfer": "Core", "GetConfiguration": "Core", "RemoteStartTransaction": "Core",
    "RemoteStopTransaction": "Core", "Reset": "Core", "UnlockConnector": "Core",
    "GetDiagnostics": "Firmware Management", "UpdateFirmware": "Firmware Management",
    "GetLocalListVersion": "Local Auth List Management", "SendLocalList": "Local Auth List Management",
    "ReserveNow": "Reservation", "CancelReservation": "Reservation",
    "SetChargingProfile": "Smart Charging", "ClearChargingProfile": "Smart Charging",
    "GetCompositeSchedule": "Smart Charging",
    "TriggerMessage": "Remote Trigger",
}

# A valid request of each call: the OpenAPI document's examples (and what the tests send).
EXAMPLE_REQUESTS: dict[str, dict] = {
    "ChangeAvailability": {"connectorId": 1, "type": "Inoperative"},
    "ChangeConfiguration": {"key": "HeartbeatInterval", "value": "60"},
    "ClearCache": {},
    "DataTransfer": {"vendorId": "Acme", "messageId": "ping", "data": "x"},
    "GetConfiguration": {"key": ["HeartbeatInterval"]},
    "RemoteStartTransaction": {"connectorId": 1, "idTag": "USER-123"},
    "RemoteStopTransaction": {"transactionId": 1},
    "Reset": {"type": "Soft"},
    "UnlockConnector": {"connectorId": 1},
    "GetDiagnostics": {"location": "ftp://diagnostics.example.org/upload"},
    "UpdateFirmware": {"location": "https://firmware.example.org/fw.bin", "retrieveDate": "2024-01-15T10:00:00Z"},
    "GetLocalListVersion": {},
    "SendLocalList": {"listVersion": 1, "updateType": "Full",
                      "localAuthorizationList": [{"idTag": "USER-9", "idTagInfo": {"status": "Accepted"}}]},
    "ReserveNow": {"connectorId": 1, "expiryDate": "2024-01-15T12:00:00Z", "idTag": "USER-1", "reservationId": 7},
    "CancelReservation": {"reservationId": 7},
    "SetChargingProfile": {"connectorId": 1, "csChargingProfiles": {
        "chargingProfileId": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": {
            "chargingRateUnit": "A", "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]}}},
    "ClearChargingProfile": {},
    "GetCompositeSchedule": {"connectorId": 1, "duration": 3600},
    "TriggerMessage": {"requestedMessage": "StatusNotification", "connectorId": 1},
}

# The OCPP 2.0.1 calls a CSMS sends through the operator API, with their functional block.
CSMS_ACTIONS_201: dict[str, str] = {
    "RequestStartTransaction": "Transactions", "RequestStopTransaction": "Transactions",
    "Reset": "Provisioning", "GetVariables": "Provisioning", "SetVariables": "Provisioning",
    "GetBaseReport": "Provisioning", "TriggerMessage": "Remote Control", "UnlockConnector": "Remote Control",
    "ChangeAvailability": "Availability", "SetChargingProfile": "Smart Charging", "ClearCache": "Authorization",
    "GetLog": "Diagnostics", "UpdateFirmware": "Firmware Management",
    "SendLocalList": "Local Authorization List Management",
    "GetLocalListVersion": "Local Authorization List Management",
}
EXAMPLE_REQUESTS_201: dict[str, dict] = {
    "RequestStartTransaction": {"idToken": {"idToken": "USER-123", "type": "ISO14443"}, "remoteStartId": 1,
                                "evseId": 1},
    "RequestStopTransaction": {"transactionId": "station-tx-1"},
    "Reset": {"type": "Immediate"},
    "GetVariables": {"getVariableData": [{"component": {"name": "OCPPCommCtrlr"},
                                          "variable": {"name": "HeartbeatInterval"}}]},
    "SetVariables": {"setVariableData": [{"component": {"name": "OCPPCommCtrlr"},
                                          "variable": {"name": "HeartbeatInterval"}, "attributeValue": "60"}]},
    "GetBaseReport": {"requestId": 1, "reportBase": "SummaryInventory"},
    "TriggerMessage": {"requestedMessage": "StatusNotification", "evse": {"id": 1, "connectorId": 1}},
    "UnlockConnector": {"evseId": 1, "connectorId": 1},
    "ChangeAvailability": {"operationalStatus": "Inoperative", "evse": {"id": 1}},
    "SetChargingProfile": {"evseId": 1, "chargingProfile": {
        "id": 1, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute",
        "chargingSchedule": [{"id": 1, "chargingRateUnit": "A", "startSchedule": "2024-01-15T10:00:00Z",
                              "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16.0}]}]}},
    "ClearCache": {},
    "GetLog": {"logType": "DiagnosticsLog", "requestId": 1, "log": {"remoteLocation": "https://logs.example.org/up"}},
    "UpdateFirmware": {"requestId": 1, "firmware": {"location": "https://firmware.example.org/fw.bin",
                                                    "retrieveDateTime": "2024-01-15T10:00:00Z"}},
    "SendLocalList": {"versionNumber": 1, "updateType": "Full", "localAuthorizationList": [
        {"idToken": {"idToken": "USER-9", "type": "ISO14443"}, "idTokenInfo": {"status": "Accepted"}}]},
    "GetLocalListVersion": {},
}
# The calls of each version, by the `ocpp_version` a charger's connection speaks.
ACTIONS_BY_VERSION: dict[str, dict[str, str]] = {ocpp16.VERSION: CENTRAL_SYSTEM_ACTIONS,
                                                 ocpp201.VERSION: CSMS_ACTIONS_201}
# How an answer that breaks its schema is reported, as each version spells FormationViolation.
INVALID_ANSWER_CODE = {ocpp16.VERSION: "FormationViolation", ocpp201.VERSION: "FormatViolation"}

MAX_WAITING_CALLS = 16  # per charger, behind the one outstanding: more are refused (Busy)
DEFAULT_TIMEOUT = 30.0


class CommandSchemas:
    """The request and answer schemas of the calls above, compiled once (same mechanism as the
    charger-to-central validation in levity.ocpp16.validation)."""

    def __init__(self) -> None:
        self._compiled: dict[tuple[str, str], Callable[[Any], Any]] = {}

    def _validator(self, name: str, version: str) -> Callable[[Any], Any]:
        """name: the request's action (`Reset`) or its answer (`ResetResponse`)."""
        validator = self._compiled.get((name, version))
        if validator is None:
            if version == ocpp201.VERSION:  # the 2.0.1 files are <Action>Request / <Action>Response
                compiled = ocpp201.compile_schema(name if name.endswith("Response") else name + "Request")
            else:
                compiled = ocpp16.compile_schema(name)
            validator = self._compiled[(name, version)] = compiled
        return validator

    def compile_all(self, version: str = ocpp16.VERSION) -> None:
        """Ahead of the first call. The 2.0.1 schemas are larger (up to a third of a second
        each to compile): they compile on first use unless asked for here."""
        for action in ACTIONS_BY_VERSION[version]:
            self._validator(action, version)
            self._validator(action + "Response", version)

    def request_error(self, action: str, payload: Any, version: str = ocpp16.VERSION) -> str | None:
        """What is wrong with a request payload, naming the property; None when it is valid."""
        return self._error(action, payload, version)

    def answer_error(self, action: str, payload: Any, version: str = ocpp16.VERSION) -> str | None:
        return self._error(action + "Response", payload, version)

    def _error(self, name: str, payload: Any, version: str) -> str | None:
        if not isinstance(payload, dict):
            return "the payload must be a JSON object"
        try:
            self._validator(name, version)(payload)
        except fastjsonschema.JsonSchemaValueException as exc:
            return schema_error_text(exc)
        return None


@dataclass
class CommandResult:
    """How one call ended. outcome: result, call_error, timeout, not_connected (the audit
    contract's values); `sent` False when it never left Levity (refused while waiting)."""

    action: str
    unique_id: str
    outcome: str
    payload: Any = None  # the CALLRESULT payload
    error_code: str | None = None
    error_description: str = ""
    error_details: Any = field(default_factory=dict)
    invalid_answer: bool = False
    latency_ms: float = 0.0
    sent: bool = True

    @property
    def status(self) -> str | None:
        """The `status` field of the charger's answer, when it has one."""
        if isinstance(self.payload, dict) and isinstance(self.payload.get("status"), str):
            return self.payload["status"]
        return None

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (
            "action", "unique_id", "outcome", "payload", "error_code", "error_description", "error_details",
            "invalid_answer", "latency_ms", "sent")}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CommandResult":
        return cls(**data)


class Busy(Exception):
    """Too many calls already wait for this charger."""


class Unavailable(Exception):
    """The process holding the charger did not answer (a worker restarting)."""


class CallSender:
    """Sends one charger the calls operators ask for, one at a time (OCPP-J)."""

    def __init__(self, connection, schemas: CommandSchemas, max_waiting: int = MAX_WAITING_CALLS,
                 version: str = ocpp16.VERSION):
        self.connection = connection
        self.schemas = schemas
        self.version = version
        self.max_waiting = max_waiting
        self._turn = asyncio.Lock()
        self._waiting = 0

    async def call(self, action: str, payload: dict, timeout: float = DEFAULT_TIMEOUT,
                   unique_id: str | None = None) -> CommandResult:
        """Raises Busy when the queue is full; every other ending is a CommandResult. The timeout
        covers waiting for the turn and for the answer."""
        unique_id = unique_id or str(uuid.uuid4())
        if self._turn.locked() and self._waiting >= self.max_waiting:
            raise Busy(f"{self._waiting} calls already wait for this charger")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        self._waiting += 1
        try:
            await asyncio.wait_for(self._turn.acquire(), timeout)
        except asyncio.TimeoutError:
            return CommandResult(action, unique_id, "timeout", sent=False,
                                 error_description="the charger's previous call did not end in time; not sent")
        finally:
            self._waiting -= 1
        try:
            return await self._send(action, payload, unique_id, max(0.0, deadline - loop.time()))
        finally:
            self._turn.release()

    async def _send(self, action: str, payload: dict, unique_id: str, timeout: float) -> CommandResult:
        connection = self.connection
        started = time.monotonic()

        def result(outcome: str, **fields: Any) -> CommandResult:
            return CommandResult(action, unique_id, outcome, latency_ms=round((time.monotonic() - started) * 1000, 3),
                                 **fields)

        if connection.transport is None or connection.transport.is_closing() or connection.close_code is not None:
            return result("not_connected", sent=False, error_description="the charger disconnected")
        answer = asyncio.get_running_loop().create_future()
        connection.pending_calls[unique_id] = answer
        try:
            connection.send_now(encode([CALL, unique_id, action, payload]))
            reply = await asyncio.wait_for(answer, timeout)
        except asyncio.TimeoutError:
            return result("timeout", error_description=f"no answer within {timeout:g} s")
        except ConnectionError:
            return result("not_connected", error_description="the charger disconnected before it answered")
        finally:
            connection.pending_calls.pop(unique_id, None)
        if reply.message_type == CALLERROR:
            details = reply.payload
            return result("call_error", error_code=reply.error_code, error_description=reply.error_description,
                          error_details=details if isinstance(details, dict) else {"value": details})
        problem = self.schemas.answer_error(action, reply.payload, self.version)
        if problem is not None:
            return result("call_error", error_code=INVALID_ANSWER_CODE[self.version], invalid_answer=True,
                          error_description=f"the charger's answer breaks the {action}.conf schema: {problem}",
                          error_details={"answer": reply.payload})
        return result("result", payload=reply.payload)
