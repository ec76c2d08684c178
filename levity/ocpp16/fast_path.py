"""OCPP 1.6 fast path: decode and validate a valid CALL frame in one step with msgspec.

msgspec reads the frame and checks the payload against Structs generated here from the same
bundled OCA 1.6 schemas, with Levity's adjustments (connectorId minimum, integers within 64
bits, RFC 3339 date-times, the lenient options), in about half the time of orjson +
fastjsonschema + the snake_case conversion (docs/benchmark.md, "A lighter hot path").

It never answers an error itself: a frame it refuses for any reason (broken, not a CALL, an action Levity
does not handle, any failed rule) goes to the standard path (levity.framing.parse_frame and
the compiled schemas), which answers with the OCPP-J error table exactly as before.
msgspec's own error messages never reach a charger. So the fast path may be stricter than
the schemas (an integer sent as 1.0 is left to the standard path) but never looser: every
rule of a schema has its counterpart here, and an optional field sent as null is refused
(UNSET, not None, marks an absent one), as the schemas refuse it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Callable, Literal

import msgspec
from msgspec.structs import asdict

from levity.framing import CALL, MAX_UNIQUE_ID_LENGTH, Call, is_rfc3339_date_time

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_UNSET = msgspec.UNSET


class DateTime(str):
    """A date-time field: the decoder's hook checks it with Levity's RFC 3339 check (msgspec
    takes only an instance of the declared type from the hook, hence a str subclass)."""


def _check_date_time(kind: type, value: Any) -> Any:
    if kind is DateTime and type(value) is str and is_rfc3339_date_time(value):
        return DateTime(value)
    raise ValueError("not an RFC 3339 date-time")


def _snake(name: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in name)


class _SchemaTypes:
    """msgspec types for the nodes of one OCA 1.6 schema: object, array, string, integer
    (all that the schemas of the actions a charge point sends use)."""

    def __init__(self, action: str, lenient_measurands: bool, lenient_timestamps: bool):
        self.action = action
        self.lenient_measurands = lenient_measurands
        self.lenient_timestamps = lenient_timestamps

    def type_of(self, schema: dict, name: str, in_sampled_value: bool = False) -> tuple[Any, Converter | None]:
        """The msgspec type of a node, and how its decoded value becomes a handler argument
        (None: as it is)."""
        kind = schema.get("type")
        if kind == "object":
            return self._struct(schema, name, in_sampled_value)
        if kind == "array":
            item, convert_item = self.type_of(schema["items"], name + "Item", name.endswith("SampledValue"))
            convert = None if convert_item is None else (lambda items: [convert_item(x) for x in items])
            return Annotated[list[item], msgspec.Meta(min_length=schema.get("minItems", 0))], convert
        if kind == "string":
            if "enum" in schema and not (in_sampled_value and self.lenient_measurands):
                return Literal[tuple(schema["enum"])], None
            if schema.get("format") == "date-time" and not self.lenient_timestamps:
                return DateTime, str  # a plain str for the handlers, as the standard path gives
            if "maxLength" in schema:
                return Annotated[str, msgspec.Meta(max_length=schema["maxLength"])], None
            return str, None
        if kind == "integer":
            minimum = max(schema.get("minimum", INT64_MIN), INT64_MIN)
            return Annotated[int, msgspec.Meta(ge=minimum, le=INT64_MAX)], None
        raise ValueError(f"{self.action}: schema type {kind!r} has no fast-path type")

    def _struct(self, schema: dict, name: str, in_sampled_value: bool) -> tuple[type[msgspec.Struct], Converter]:
        if schema.get("additionalProperties", True) is not False:
            raise ValueError(f"{self.action}: an object open to extra properties has no fast-path type")
        required = set(schema.get("required", ()))
        fields, converted = [], []
        for prop, sub in schema.get("properties", {}).items():
            if prop == "connectorId":  # as levity.ocpp16.validation: > 0 in StartTransaction, >= 0 elsewhere
                sub = {**sub, "minimum": 1 if self.action == "StartTransaction" else 0}
            field_type, convert = self.type_of(sub, name + prop[0].upper() + prop[1:], in_sampled_value)
            if prop in required:
                fields.append((_snake(prop), field_type))
            else:
                fields.append((_snake(prop), field_type | msgspec.UnsetType, _UNSET))
            if convert is not None:
                converted.append((_snake(prop), convert))
        fields.sort(key=len)  # msgspec wants the required fields (2-tuples) first
        struct = msgspec.defstruct(name, fields, rename="camel", forbid_unknown_fields=True)
        return struct, _arguments_of(optional=len(required) < len(fields), converted=converted)


Converter = Callable[[Any], Any]


def _arguments_of(optional: bool, converted: list[tuple[str, Converter]]) -> Converter:
    """How a Struct becomes handler arguments: a snake_case dict (asdict uses the attribute
    names), absent fields left out, nested and date-time fields converted: what
    levity.framing.to_snake gives for the same payload. Planned once per Struct type, so a
    call walks only the fields that need it."""
    def arguments(value: msgspec.Struct) -> dict[str, Any]:
        result = asdict(value)
        if optional:
            result = {field: v for field, v in result.items() if v is not _UNSET}
        for field, convert in converted:
            v = result.get(field)
            if v is not None:
                result[field] = convert(v)
        return result
    return arguments


_Frame = tuple[int, Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_UNIQUE_ID_LENGTH)], str, msgspec.Raw]


class FastPath:
    """Decodes the CALL frames of the given actions when they are valid; None otherwise."""

    _frame = msgspec.json.Decoder(_Frame)

    def __init__(self, lenient_measurands: bool = False, lenient_timestamps: bool = False):
        self._lenient_measurands = lenient_measurands
        self._lenient_timestamps = lenient_timestamps
        self._payloads: dict[str, tuple[msgspec.json.Decoder, Converter]] = {}

    def compile(self, actions, schema_dir) -> None:
        for action in actions:
            schema = json.loads((schema_dir / f"{action}.json").read_text(encoding="utf-8-sig"))
            types = _SchemaTypes(action, self._lenient_measurands, self._lenient_timestamps)
            try:
                payload_type = types.type_of(schema, action + "Request")
            except ValueError:
                continue  # a schema this module cannot mirror exactly: its calls take the standard path
            self._payloads[action] = (msgspec.json.Decoder(payload_type[0], dec_hook=_check_date_time),
                                      payload_type[1])

    def decode(self, raw: str) -> Call | None:
        try:
            message_type, unique_id, action, payload = self._frame.decode(raw)
            decoder = self._payloads.get(action)
            if message_type != CALL or decoder is None:
                return None
            return Call(unique_id, action, None, arguments=decoder[1](decoder[0].decode(payload)))
        except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
            return None
