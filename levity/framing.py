"""OCPP-J framing, shared by both OCPP versions: parse a WebSocket text frame, read a CALL,
build the answers, and validate payloads with compiled JSON schemas.

Written here rather than taken from the `ocpp` library's ChargePoint.route_message because
that one answers malformed frames with silence, swaps NotImplemented and NotSupported,
echoes whole raw messages in error details, and validates with interpreted jsonschema
(about 40% of a server's time). The schemas are the library's own bundled OCA schemas,
compiled once with fastjsonschema; each version (levity/ocpp16/, levity/ocpp201/) says which
schemas, which actions, and how its CALLERROR codes are spelled.

The codes raised here are OCPP-J 1.6's; a 2.0.1 connection renames the few that 2.0.1
spells differently (levity/ocpp201/validation.py). When the unique id of a broken frame
cannot be read, the answer carries "-1" (the convention OCPP 2.0.1 made explicit).
CALLRESULT and CALLERROR frames are never answered (OCPP-J).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from datetime import datetime
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import fastjsonschema
import orjson

CALL, CALLRESULT, CALLERROR = 2, 3, 4
MAX_UNIQUE_ID_LENGTH = 36
MAX_DESCRIPTION_LENGTH = 255


class CallError(Exception):
    """An error to answer with a CALLERROR frame."""

    def __init__(self, code: str, description: str, unique_id: str = "-1", details: dict | None = None):
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description[:MAX_DESCRIPTION_LENGTH]
        self.unique_id = unique_id
        self.details = details or {}

    def frame(self) -> str:
        return encode([CALLERROR, self.unique_id, self.code, self.description, self.details])


@dataclass(frozen=True, slots=True)
class Call:
    unique_id: str
    action: str
    payload: dict[str, Any] | None
    # True when the standard parser read the frame (orjson refused it): then any integer
    # anywhere may be beyond 64 bits and the whole payload is walked. orjson's integers are
    # below 2**64, and after validation they sit at the payload's top level only (the schemas
    # of the actions Levity handles have no nested integers), so a look there is enough.
    may_hold_large_integers: bool = True
    # The handler's keyword arguments when a version's fast path (levity/ocpp16/fast_path.py)
    # already decoded and validated the payload; then `payload` is None.
    arguments: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Reply:
    """A CALLRESULT or CALLERROR from the charge point, answering one of our calls."""

    message_type: int
    unique_id: str
    payload: Any
    error_code: str | None = None
    error_description: str = ""


INT64 = range(-(2**63), 2**63)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: valid JSON grammar, but no double holds it
        raise ValueError("number out of range")
    return value


# RFC 3339 date-time (the schemas' "date-time" format), with the offset required: a charger's
# local time without one cannot be placed on the timeline. Checked on the fields the schemas
# mark date-time only (fastjsonschema calls this per field), never on whole frames.
_DATE_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.\d{1,9})?(?:[Zz]|[+-](\d\d):(\d\d))")


@functools.lru_cache(maxsize=1024)  # a 2.0.1 TransactionEvent repeats its timestamp in its meter values
def is_rfc3339_date_time(value: str) -> bool:
    match = _DATE_TIME.fullmatch(value) if len(value) <= 40 else None
    if match is None:
        return False
    year, month, day, hour, minute, second, offset_hours, offset_minutes = match.groups()
    try:
        datetime(int(year), int(month), int(day), int(hour), int(minute), min(int(second), 59))
    except ValueError:  # 2024-02-30, 25:00, ...
        return False
    return int(second) <= 60 and int(offset_hours or 0) < 24 and int(offset_minutes or 0) < 60


def _oversized_integer(value: Any) -> bool:
    """True when an integer anywhere in value does not fit 64 bits (SQLite's INTEGER)."""
    if isinstance(value, int):
        return value not in INT64
    if isinstance(value, dict):
        return any(_oversized_integer(v) for v in value.values())
    if isinstance(value, list):
        return any(_oversized_integer(v) for v in value)
    return False


def encode(message: list) -> str:
    return orjson.dumps(message).decode()


def _loads(raw: str) -> tuple[Any, bool]:
    """The parsed frame, and whether the standard parser (not orjson) read it."""
    try:
        return orjson.loads(raw), False
    except orjson.JSONDecodeError:
        # Slow path for what orjson refuses (deep nesting, ...): the standard parser tells a
        # broken frame from a merely out-of-range value.
        return json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float), True


# Payload keys between OCPP's camelCase and the handlers' snake_case. The `ocpp` library
# converts with a regular expression per key per message; the set of keys is small and
# fixed, so each conversion is computed once.
_SNAKE: dict[str, str] = {}
_CAMEL: dict[str, str] = {}
_UPPER = re.compile(r"(?<!^)(?=[A-Z])")


def _snake_key(key: str) -> str:
    snake = _SNAKE.get(key)
    if snake is None:
        snake = _SNAKE[key] = _UPPER.sub("_", key).lower() if len(_SNAKE) < 10_000 else key
    return snake


def to_snake(value: Any) -> Any:
    if isinstance(value, dict):
        return {_snake_key(k): to_snake(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_snake(v) for v in value]
    return value


def _camel_key(key: str) -> str:
    camel = _CAMEL.get(key)
    if camel is None:
        first, *rest = key.split("_")
        camel = _CAMEL[key] = first + "".join(part.capitalize() for part in rest)
    return camel


_FIELD_NAMES: dict[type, list[tuple[str, str]]] = {}  # answer dataclass -> (field, camelCase key)


def response_payload(value: Any) -> Any:
    """An answer dataclass (ocpp.v16.call_result) as an OCPP JSON payload: camelCase keys,
    None fields left out, as the library's serialize_as_dict/remove_nones/snake_to_camel_case."""
    names = _FIELD_NAMES.get(type(value))
    if names is None and dataclasses.is_dataclass(value):
        names = _FIELD_NAMES[type(value)] = [(f.name, _camel_key(f.name)) for f in dataclasses.fields(value)]
    if names is not None:
        return {camel: response_payload(v) for name, camel in names if (v := getattr(value, name)) is not None}
    if isinstance(value, dict):
        return {_camel_key(k): response_payload(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [response_payload(v) for v in value]
    return value


def call_result(unique_id: str, payload: dict[str, Any]) -> str:
    return encode([CALLRESULT, unique_id, payload])


def parse_frame(raw: str | bytes) -> Call | Reply:
    """Parse one frame; raise CallError (with the best unique id known) when it is broken."""
    if isinstance(raw, bytes):
        raise CallError("FormationViolation", "OCPP-J uses text frames; got a binary frame")
    try:
        message, slow_path = _loads(raw)
    except (ValueError, RecursionError):
        raise CallError("FormationViolation", "frame is not valid JSON") from None
    if not isinstance(message, list) or not message:
        raise CallError("FormationViolation", "frame is not a JSON array [MessageTypeId, UniqueId, ...]")
    unique_id = message[1] if len(message) > 1 and isinstance(message[1], str) else "-1"
    if len(unique_id) > MAX_UNIQUE_ID_LENGTH:
        raise CallError("FormationViolation", f"UniqueId longer than {MAX_UNIQUE_ID_LENGTH} characters")

    if len(message) < 2 or not isinstance(message[1], str):
        raise CallError("FormationViolation", "UniqueId (element 2) must be a string")
    message_type = message[0]
    if type(message_type) is not int:  # 2.0 and true are not MessageTypeIds
        raise CallError("FormationViolation", "MessageTypeId must be an integer", unique_id)
    if message_type == CALL:
        if not unique_id:  # an answer to "" could not be told apart from one to a broken frame
            raise CallError("FormationViolation", "UniqueId must not be empty")
        if len(message) != 4 or not isinstance(message[2], str):
            raise CallError("FormationViolation", "CALL must be [2, UniqueId, Action, Payload]", unique_id)
        if not isinstance(message[3], dict):
            raise CallError("FormationViolation", "CALL payload must be a JSON object", unique_id)
        return Call(unique_id, message[2], message[3], slow_path)
    if message_type == CALLRESULT and len(message) == 3:
        return Reply(CALLRESULT, unique_id, message[2])
    if message_type == CALLERROR and len(message) == 5:
        return Reply(CALLERROR, unique_id, message[4], error_code=str(message[2]),
                     error_description=str(message[3])[:MAX_DESCRIPTION_LENGTH])
    raise CallError("FormationViolation", f"unknown MessageTypeId or wrong length: {str(message_type)[:20]}",
                    unique_id)


def any_date_time(value: str) -> bool:
    return True


def compile_schema_file(path: Path, adjust: Callable[[dict], None] | None = None,
                        date_time: Callable[[str], bool] = any_date_time) -> Callable[[Any], Any]:
    """The OCA schema at `path` compiled with fastjsonschema. `date_time` checks the fields the
    schema marks `format: date-time` (by default not at all)."""
    schema = json.loads(path.read_text(encoding="utf-8-sig"))
    schema.pop("$id", None)  # 2.0.1 schemas name a urn fastjsonschema would try to resolve
    if adjust is not None:
        adjust(schema)
    return fastjsonschema.compile(schema, formats={"date-time": date_time})


def schema_error_text(exc: fastjsonschema.JsonSchemaValueException) -> str:
    """A schema failure in words naming the property (`type must be one of ...`)."""
    field = (exc.name or "data").removeprefix("data").lstrip(".") or "payload"
    return exc.message.replace(exc.name or "", field, 1)


# Which CALLERROR a failed schema rule gets, as OCPP-J 1.6 spells the codes (2.0.1 renames
# some: levity/ocpp201/validation.py); any other rule is a PropertyConstraintViolation.
RULE_TO_CODE = {
    "type": "TypeConstraintViolation",
    "required": "OccurenceConstraintViolation",
    "additionalProperties": "OccurenceConstraintViolation",
    "minItems": "OccurenceConstraintViolation",
    "maxItems": "OccurenceConstraintViolation",
}


def check_direction(call: Call, handled: frozenset[str], defined: frozenset[str], not_sent: str,
                    not_defined: str) -> None:
    """NotSupported for an action of the version sent the wrong way (`not_sent`), NotImplemented
    for one the version does not define (`not_defined`); both formatted with {action}."""
    if call.action in handled:
        return
    if call.action in defined:
        raise CallError("NotSupported", not_sent.format(action=call.action), call.unique_id)
    raise CallError("NotImplemented", not_defined.format(action=call.action[:40]), call.unique_id)


class SchemaValidator:
    """Validates CALL payloads against one OCPP version's compiled schemas; subclasses say
    how a schema is compiled and which CALLERROR code each failed rule gets."""

    rule_codes: dict[str, str] = {}
    default_code = "PropertyConstraintViolation"
    type_code = "TypeConstraintViolation"
    # False when the handled schemas have integers at the top level only (1.6): then a payload
    # orjson parsed is checked there only (see Call.may_hold_large_integers).
    nested_integers = True

    def __init__(self) -> None:
        self._validators: dict[str, Callable[[Any], Any]] = {}

    def _compile(self, action: str) -> Callable[[Any], Any]:
        raise NotImplementedError

    def compile(self, actions) -> None:
        """Compile ahead of the first call (about 60 ms for ten schemas)."""
        for action in actions:
            self._validator(action)

    def decode_valid(self, raw: str) -> Call | None:
        """The CALL in `raw`, decoded and validated in one step, when the version has a fast
        path and the frame is valid; None sends it the standard way (parse_frame, validate)."""
        return None

    def _validator(self, action: str) -> Callable[[Any], Any]:
        validator = self._validators.get(action)
        if validator is None:
            validator = self._validators[action] = self._compile(action)
        return validator

    def validate(self, call: Call) -> None:
        validator = self._validator(call.action)
        try:
            validator(call.payload)
        except fastjsonschema.JsonSchemaValueException as exc:
            code = self.rule_codes.get(exc.rule, self.default_code)
            raise CallError(code, f"{call.action}: {schema_error_text(exc)}", call.unique_id) from None
        if call.may_hold_large_integers or self.nested_integers:
            oversized = _oversized_integer(call.payload)
        else:
            oversized = any(type(value) is int and value not in INT64 for value in call.payload.values())
        if oversized:
            raise CallError(self.type_code, f"{call.action}: integer out of range", call.unique_id)
