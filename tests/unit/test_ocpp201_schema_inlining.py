"""The OCA 2.0.1 schemas compiled with their $refs inlined (levity.ocpp201.validation, for
speed) accept and refuse exactly what the schemas as shipped do, naming the same property and
rule: the speed-up loosens nothing."""

import copy
import json

import fastjsonschema
import pytest

from levity.framing import is_rfc3339_date_time
from levity.ocpp201.validation import CHARGING_STATION_ACTIONS, SCHEMA_DIR, _bound_integers, _inline_definitions

GOOD = {"eventType": "Started", "timestamp": "2024-01-15T10:00:00Z", "triggerReason": "Authorized", "seqNo": 0,
        "transactionInfo": {"transactionId": "t-1", "chargingState": "Charging"},
        "evse": {"id": 1, "connectorId": 1}, "idToken": {"idToken": "A", "type": "ISO14443",
                                                        "additionalInfo": [{"additionalIdToken": "x", "type": "y"}]},
        "meterValue": [{"timestamp": "2024-01-15T10:00:00Z", "sampledValue": [
            {"value": 1.5, "measurand": "Energy.Active.Import.Register", "context": "Transaction.Begin",
             "unitOfMeasure": {"unit": "kWh", "multiplier": 0}, "customData": {"vendorId": "v"}}]}]}


def schema(name: str, inline: bool) -> dict:
    loaded = json.loads((SCHEMA_DIR / f"{name}.json").read_text(encoding="utf-8-sig"))
    loaded.pop("$id", None)
    if inline:
        _inline_definitions(loaded)
    _bound_integers(loaded)
    return loaded


def compiled(name: str, inline: bool):
    return fastjsonschema.compile(schema(name, inline), formats={"date-time": is_rfc3339_date_time})


def outcome(validator, payload):
    try:
        validator(payload)
    except fastjsonschema.JsonSchemaValueException as exc:
        return exc.rule, exc.name, exc.message
    return "valid"


@pytest.mark.parametrize("action", sorted(CHARGING_STATION_ACTIONS))
def test_no_reference_is_left_in_any_request_schema(action):
    text = json.dumps({k: v for k, v in schema(f"{action}Request", inline=True).items() if k != "definitions"})
    assert "$ref" not in text


def broken_payloads():
    """GOOD with one thing wrong at each depth the references reach."""
    def changed(path, value):
        payload = copy.deepcopy(GOOD)
        target = payload
        for key in path[:-1]:
            target = target[key]
        if value is KeyError:
            del target[path[-1]]
        else:
            target[path[-1]] = value
        return payload
    sampled = ("meterValue", 0, "sampledValue", 0)
    return [GOOD, changed(("eventType",), "Begun"), changed(("transactionInfo", "chargingState"), "Fast"),
            changed(("transactionInfo", "transactionId"), "x" * 37), changed(("evse", "id"), "1"),
            changed(("idToken", "type"), "Card"), changed(("idToken", "additionalInfo", 0, "type"), 5),
            changed(("idToken", "additionalInfo", 0, "extra"), 1),
            changed(sampled + ("measurand",), "Energy"), changed(sampled + ("context",), "Sometimes"),
            changed(sampled + ("unitOfMeasure", "multiplier"), 2**63), changed(sampled + ("unitOfMeasure", "unit"), 7),
            changed(sampled + ("customData",), {}), changed(sampled + ("value",), "1"),
            changed(sampled + ("signedMeterValue",), {"signedMeterData": "x"}),
            changed(("meterValue", 0, "timestamp"), "2024-01-15 10:00"), changed(("meterValue", 0, "sampledValue"), []),
            changed(("meterValue", 0, "timestamp"), KeyError), changed(("transactionInfo", "transactionId"), KeyError)]


def test_inlined_transaction_event_refuses_what_the_shipped_schema_refuses_with_the_same_words():
    inlined, shipped = compiled("TransactionEventRequest", True), compiled("TransactionEventRequest", False)
    results = [(outcome(inlined, payload), outcome(shipped, payload)) for payload in broken_payloads()]
    assert results[0] == ("valid", "valid")
    for mine, theirs in results[1:]:
        assert mine != "valid" and mine == theirs
