"""OCPP 1.6: which actions a charge point sends, and their payloads checked against the
bundled OCA 1.6 schemas (levity.framing compiles and applies them).

Error codes (OCPP-J 1.6, section 4.2.3), as Levity uses them:

| what is wrong                                      | CALLERROR code               |
|----------------------------------------------------|------------------------------|
| not JSON, not an array, bad element types/count    | FormationViolation           |
| NaN, Infinity, numbers beyond a double (1e999)     | FormationViolation           |
| UniqueId empty or longer than 36 characters        | FormationViolation           |
| unknown message type id                            | FormationViolation           |
| action not defined by OCPP 1.6                     | NotImplemented               |
| 1.6 action that a Central System does not take     | NotSupported                 |
| payload field of the wrong JSON type               | TypeConstraintViolation      |
| missing required field, unexpected extra field     | OccurenceConstraintViolation |
| value out of range: enum, length, minimum, format  | PropertyConstraintViolation  |
| negative connectorId (0 in StartTransaction)       | PropertyConstraintViolation  |
| date-time field not RFC 3339 (2024-01-15T10:00:00Z)| PropertyConstraintViolation  |
| payload not an object                              | FormationViolation           |
| handler failure                                    | InternalError                |
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import ocpp.v16
from ocpp.v16.enums import Action

from levity.framing import (RULE_TO_CODE, Call, SchemaValidator, any_date_time,
                            check_direction, compile_schema_file, is_rfc3339_date_time)
from levity.ocpp16.fast_path import FastPath

VERSION = "1.6"
SUBPROTOCOL = "ocpp1.6"

# Actions a charge point sends to a Central System in OCPP 1.6 (core and security whitepaper).
CHARGE_POINT_ACTIONS = frozenset({
    "Authorize", "BootNotification", "DataTransfer", "DiagnosticsStatusNotification",
    "FirmwareStatusNotification", "Heartbeat", "MeterValues", "StartTransaction",
    "StatusNotification", "StopTransaction", "LogStatusNotification", "SecurityEventNotification",
    "SignCertificate", "SignedFirmwareStatusNotification",
})
ALL_16_ACTIONS = frozenset(a.value for a in Action)

SCHEMA_DIR = Path(ocpp.v16.__file__).parent / "schemas"



def compile_schema(name: str, adjust: Callable[[dict], None] | None = None,
                   date_time: Callable[[str], bool] = any_date_time) -> Callable[[Any], Any]:
    """The bundled OCA 1.6 schema `name` (e.g. `Reset`, `ResetResponse`) compiled with fastjsonschema."""
    return compile_schema_file(SCHEMA_DIR / f"{name}.json", adjust, date_time)


class PayloadValidator(SchemaValidator):
    """Validates CALL payloads of charge point actions against the bundled OCPP 1.6 schemas."""

    rule_codes = RULE_TO_CODE
    nested_integers = False

    def __init__(self, lenient_measurands: bool = False, lenient_timestamps: bool = False):
        super().__init__()
        self._lenient_measurands = lenient_measurands
        self._lenient_timestamps = lenient_timestamps
        self._fast_path = FastPath(lenient_measurands, lenient_timestamps)

    def compile(self, actions) -> None:
        """The schemas and the fast path of the actions Levity handles, ahead of the first call."""
        super().compile(actions)
        self._fast_path.compile(actions, SCHEMA_DIR)

    def decode_valid(self, raw: str) -> Call | None:
        return self._fast_path.decode(raw)

    def _compile(self, action: str) -> Callable[[Any], Any]:
        def adjust(schema: dict) -> None:
            if self._lenient_measurands and action in ("MeterValues", "StopTransaction"):
                _relax_sampled_value_enums(schema)
            connector = schema.get("properties", {}).get("connectorId")
            if connector is not None:
                # OCPP 1.6: connectorId > 0 in StartTransaction, >= 0 elsewhere; the JSON schemas omit it.
                connector["minimum"] = 1 if action == "StartTransaction" else 0

        # LEVITY_LENIENT_TIMESTAMPS: for chargers known to send other ISO 8601 variants
        # (no offset, a space for the T); their data is kept rather than refused.
        return compile_schema(action, adjust,
                              any_date_time if self._lenient_timestamps else is_rfc3339_date_time)


def check_action(call: Call) -> None:
    """NotImplemented for actions OCPP 1.6 does not define, NotSupported for the wrong direction."""
    check_direction(call, CHARGE_POINT_ACTIONS, ALL_16_ACTIONS, "{action} is not sent by a charge point",
                    "unknown action {action!r}")


def _relax_sampled_value_enums(schema: dict) -> None:
    """Drop enum constraints on sampledValue fields (measurand, unit, ...): the documented
    escape for chargers that send out-of-spec values (LEVITY_LENIENT_MEASURANDS)."""
    if isinstance(schema, dict):
        if "sampledValue" in schema.get("properties", {}):
            for prop in schema["properties"]["sampledValue"]["items"]["properties"].values():
                prop.pop("enum", None)
        for value in schema.values():
            _relax_sampled_value_enums(value)
    elif isinstance(schema, list):
        for item in schema:
            _relax_sampled_value_enums(item)
