"""OCPP 2.0.1: which actions a charging station sends, and their payloads checked against the
OCA 2.0.1 schemas the `ocpp` package ships (compiled by levity.framing, as for 1.6).

OCPP-J 2.0.1 spells two CALLERROR codes differently from 1.6: `FormatViolation` (1.6:
FormationViolation) and `OccurrenceConstraintViolation` (1.6: OccurenceConstraintViolation);
the shared framing raises the 1.6 names and a 2.0.1 connection renames them (as_201()).
An action 2.0.1 does not define (a 1.6 StartTransaction, ...) is NotImplemented; a 2.0.1
action only a CSMS sends is NotSupported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import ocpp.v201
from ocpp.v201.enums import Action

from levity.framing import (RULE_TO_CODE, Call, CallError, SchemaValidator,
                            any_date_time, check_direction, compile_schema_file, is_rfc3339_date_time)

VERSION = "2.0.1"
SUBPROTOCOL = "ocpp2.0.1"

# Messages a charging station sends to a CSMS in OCPP 2.0.1 (part 2, the "CS -> CSMS" ones).
CHARGING_STATION_ACTIONS = frozenset({
    "Authorize", "BootNotification", "ClearedChargingLimit", "DataTransfer", "FirmwareStatusNotification",
    "Get15118EVCertificate", "GetCertificateStatus", "Heartbeat", "LogStatusNotification", "MeterValues",
    "NotifyChargingLimit", "NotifyCustomerInformation", "NotifyDisplayMessages", "NotifyEVChargingNeeds",
    "NotifyEVChargingSchedule", "NotifyEvent", "NotifyMonitoringReport", "NotifyReport",
    "PublishFirmwareStatusNotification", "ReportChargingProfiles", "ReservationStatusUpdate",
    "SecurityEventNotification", "SignCertificate", "StatusNotification", "TransactionEvent",
})
ALL_201_ACTIONS = frozenset(a.value for a in Action)

SCHEMA_DIR = Path(ocpp.v201.__file__).parent / "schemas"

# The 1.6 spellings the shared framing uses, as 2.0.1 spells them.
CODES_201 = {"FormationViolation": "FormatViolation", "OccurenceConstraintViolation": "OccurrenceConstraintViolation"}
RULE_TO_CODE_201 = {rule: CODES_201.get(code, code) for rule, code in RULE_TO_CODE.items()}


def as_201(error: CallError) -> CallError:
    error.code = CODES_201.get(error.code, error.code)
    return error


def compile_schema(name: str, adjust: Callable[[dict], None] | None = None,
                   date_time: Callable[[str], bool] = any_date_time) -> Callable[[Any], Any]:
    """The OCA 2.0.1 schema `name` (e.g. `ResetRequest`) compiled with fastjsonschema."""
    return compile_schema_file(SCHEMA_DIR / f"{name}.json", adjust, date_time)


def _bound_integers(schema: Any) -> None:
    """Give every integer of the schema the 64-bit range (SQLite's INTEGER), checked inline by
    the compiled validator: 2.0.1 payloads nest integers (evse.id, ...), and walking each
    payload for oversized ones in Python cost a third of the validation."""
    if isinstance(schema, dict):
        if schema.get("type") == "integer":
            schema["maximum"] = min(schema.get("maximum", INT64_MAX), INT64_MAX)
            schema["minimum"] = max(schema.get("minimum", -INT64_MAX - 1), -INT64_MAX - 1)
        for value in schema.values():
            _bound_integers(value)
    elif isinstance(schema, list):
        for item in schema:
            _bound_integers(item)


INT64_MAX = 2**63 - 1


def _inline_definitions(schema: dict) -> None:
    """Replace each `{"$ref": "#/definitions/X"}` by a copy of X, so fastjsonschema compiles one
    function with the checks inline (as for the 1.6 schemas, which have no $ref) instead of a
    function call per referenced object, each building the name of its JSON path from locals()
    for every array item: that cost a TransactionEvent with meter values about 2.5 times the
    validation of a 1.6 MeterValues. The checks are the same; the OCA 2.0.1 schemas use only
    local references, alone in their object. A reference cycle would be left as it is."""
    definitions = schema.get("definitions") or {}

    def inline(node: Any, resolving: tuple[str, ...]) -> Any:
        if isinstance(node, list):
            return [inline(item, resolving) for item in node]
        if not isinstance(node, dict):
            return node
        reference = node.get("$ref")
        if isinstance(reference, str) and len(node) == 1 and reference.startswith("#/definitions/"):
            name = reference.removeprefix("#/definitions/")
            if name in definitions and name not in resolving:
                return inline(definitions[name], resolving + (name,))
        return {key: value if key == "definitions" else inline(value, resolving) for key, value in node.items()}

    for key, value in list(schema.items()):
        if key != "definitions":
            schema[key] = inline(value, ())


def _adjust(schema: dict) -> None:
    _inline_definitions(schema)
    _bound_integers(schema)


class PayloadValidator(SchemaValidator):
    """Validates CALL payloads of charging station messages against the OCA 2.0.1 schemas."""

    rule_codes = RULE_TO_CODE_201
    nested_integers = False  # bounded in the schemas themselves (_bound_integers)

    def __init__(self, lenient_timestamps: bool = False):
        super().__init__()
        self._lenient_timestamps = lenient_timestamps

    def _compile(self, action: str) -> Callable[[Any], Any]:
        return compile_schema(f"{action}Request", _adjust,
                              any_date_time if self._lenient_timestamps else is_rfc3339_date_time)


# Compiled when the server starts; the others (NotifyReport, ReportChargingProfiles, ...: up to
# a third of a second each) compile one at a time in the background after it started.
HOT_ACTIONS = ("BootNotification", "Heartbeat", "StatusNotification", "Authorize", "TransactionEvent",
               "MeterValues")


def check_action(call: Call) -> None:
    check_direction(call, CHARGING_STATION_ACTIONS, ALL_201_ACTIONS, "{action} is not sent by a charging station",
                    "{action!r} is not an OCPP 2.0.1 action")
