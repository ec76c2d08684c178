"""The OCPP 1.6 fast path (levity/ocpp16/fast_path.py) never accepts what the standard path
(orjson + the compiled OCA schemas) refuses, and gives the handlers the same arguments.

Valid payloads of every handled action are mutated at random (a field removed, replaced by
any JSON value, an extra one added, values at the schema's edges); for each frame: when the
fast path accepts it, the standard path must accept it too, with exactly the arguments
to_snake gives. The valid frames themselves must take the fast path, or it would save nothing."""

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from levity.framing import CallError, parse_frame, to_snake
from levity.ocpp16.handlers import ChargePoint
from levity.ocpp16.validation import PayloadValidator

TIMESTAMP = "2024-01-15T10:00:00.000Z"
SAMPLES = [{"value": "12345", "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register",
            "unit": "Wh"},
           {"value": "16.0", "measurand": "Current.Import", "phase": "L1", "unit": "A", "location": "Outlet",
            "format": "Raw"}]
VALID = {
    "Heartbeat": {},
    "BootNotification": {"chargePointVendor": "V", "chargePointModel": "M", "chargePointSerialNumber": "S",
                         "chargeBoxSerialNumber": "B", "firmwareVersion": "1.0", "iccid": "I", "imsi": "M",
                         "meterType": "T", "meterSerialNumber": "N"},
    "StatusNotification": {"connectorId": 0, "errorCode": "NoError", "status": "Available", "info": "i",
                           "timestamp": TIMESTAMP, "vendorId": "v", "vendorErrorCode": "e"},
    "Authorize": {"idTag": "T" * 20},
    "StartTransaction": {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": TIMESTAMP,
                         "reservationId": 3},
    "MeterValues": {"connectorId": 1, "transactionId": 7, "meterValue": [{"timestamp": TIMESTAMP,
                                                                          "sampledValue": SAMPLES}]},
    "StopTransaction": {"transactionId": 7, "idTag": "T", "meterStop": 9, "timestamp": TIMESTAMP,
                        "reason": "Local", "transactionData": [{"timestamp": TIMESTAMP, "sampledValue": SAMPLES}]},
    "DataTransfer": {"vendorId": "v", "messageId": "m", "data": "d"},
    "DiagnosticsStatusNotification": {"status": "Uploaded"},
    "FirmwareStatusNotification": {"status": "Installed"},
}
OPTIONS = [{}, {"lenient_measurands": True}, {"lenient_timestamps": True}]


def validator(**options) -> PayloadValidator:
    made = PayloadValidator(**options)
    made.compile(ChargePoint.routes())
    return made


VALIDATORS = [validator(**options) for options in OPTIONS]


def standard_arguments(checker: PayloadValidator, frame: str):
    """The handler's arguments on the standard path, or None when it answers a CALLERROR."""
    try:
        call = parse_frame(frame)
        checker.validate(call)
    except CallError:
        return None
    return to_snake(call.payload)


def test_every_handled_action_has_a_fast_path():
    assert set(VALID) == set(ChargePoint.routes())


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("action", sorted(VALID))
def test_valid_frames_take_the_fast_path_with_the_standard_arguments(action, options):
    checker = VALIDATORS[OPTIONS.index(options)]
    frame = json.dumps([2, "u-1", action, VALID[action]])
    call = checker.decode_valid(frame)
    assert call is not None and (call.unique_id, call.action) == ("u-1", action)
    assert call.arguments == standard_arguments(checker, frame)
    assert all(type(value) is str for value in _strings(call.arguments))  # no str subclass leaks out


def _strings(value):
    if isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, str):
        yield value


HOSTILE = [
    '[2,"1","StatusNotification",{"connectorId":-1,"errorCode":"NoError","status":"Available"}]',
    '[2,"1","StartTransaction",{"connectorId":0,"idTag":"T","meterStart":1,"timestamp":"2024-01-15T10:00:00Z"}]',
    '[2,"1","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Available","extra":1}]',
    '[2,"1","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Available","info":null}]',
    '[2,"1","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Available",'
    '"timestamp":"2024-02-30T10:00:00Z"}]',
    '[2,"1","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Available",'
    '"timestamp":"2024-01-15T10:00:00"}]',
    '[2,"1","StatusNotification",{"connectorId":9223372036854775808,"errorCode":"NoError","status":"Available"}]',
    '[2,"1","StatusNotification",{"connectorId":NaN,"errorCode":"NoError","status":"Available"}]',
    '[2,"1","StatusNotification",{"connectorId":Infinity,"errorCode":"NoError","status":"Available"}]',
    '[2,"1","StatusNotification",{"connectorId":1e999,"errorCode":"NoError","status":"Available"}]',
    '[2,"1","StatusNotification",{"connectorId":true,"errorCode":"NoError","status":"Available"}]',
    '[2,"1","Authorize",{"idTag":"ABCDEFGHIJKLMNOPQRSTU"}]',
    '[2,"1","MeterValues",{"connectorId":1,"meterValue":[]}]',
    '[2,"1","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":"2024-01-15T10:00:00Z","sampledValue":'
    '[{"value":"1","unit":"parsec"}]}]}]',
    '[2,"' + "x" * 37 + '","Heartbeat",{}]',
    '[2,"","Heartbeat",{}]',
    '[2,"1","Heartbeat",[]]',
    '[2.0,"1","Heartbeat",{}]',
    '[3,"1",{}]',
    '[2,"1","Reset",{"type":"Hard"}]',
    '[2,"1","Heartbeat",{},1]',
    '[2,"1","Heartbeat",{}',
]


@pytest.mark.parametrize("frame", HOSTILE)
def test_hostile_frames_take_the_standard_path(frame):
    """The standard path refuses or ignores each of these; the fast path must leave them to it."""
    assert VALIDATORS[0].decode_valid(frame) is None


def test_lenient_options_loosen_the_fast_path_as_they_loosen_the_schemas():
    measurand = ('[2,"1","MeterValues",{"connectorId":1,"meterValue":[{"timestamp":"2024-01-15T10:00:00Z",'
                 '"sampledValue":[{"value":"1","measurand":"Energy.Made.Up","unit":"parsec"}]}]}]')
    local_time = '[2,"1","StatusNotification",{"connectorId":1,"errorCode":"NoError","status":"Available",' \
                 '"timestamp":"2024-01-15 10:00:00"}]'
    strict, lenient_measurands, lenient_timestamps = VALIDATORS
    assert strict.decode_valid(measurand) is None and strict.decode_valid(local_time) is None
    assert lenient_measurands.decode_valid(measurand).arguments == standard_arguments(lenient_measurands, measurand)
    assert lenient_timestamps.decode_valid(local_time).arguments == standard_arguments(lenient_timestamps, local_time)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2**64), max_value=2**64)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=25)
    | st.sampled_from(["", "T" * 20, "T" * 21, "Available", "Local", "Wh", TIMESTAMP, "2024-01-15T10:00:00+25:00"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)


def _paths(value, path=()):
    """Every place in a payload where a value sits (dict keys and list items)."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield path + (key,)
            yield from _paths(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield path + (index,)
            yield from _paths(item, path + (index,))


@st.composite
def mutated_frames(draw):
    action = draw(st.sampled_from(sorted(VALID)))
    payload = json.loads(json.dumps(VALID[action]))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        paths = list(_paths(payload))
        kind = draw(st.sampled_from(["replace", "remove", "add"]))
        if kind == "add" or not paths:
            containers = [()] + [p for p in paths if isinstance(_get(payload, p), dict)]
            target = _get(payload, draw(st.sampled_from(containers)))
            target[draw(st.text(max_size=12) | st.sampled_from(["connectorId", "idTag", "info", "unit"]))] = \
                draw(json_values)
            continue
        path = draw(st.sampled_from(paths))
        parent = _get(payload, path[:-1])
        if kind == "remove":
            del parent[path[-1]]
        else:
            parent[path[-1]] = draw(json_values)
    unique_id = draw(st.sampled_from(["u", "x" * 36, "x" * 37, ""]))
    return json.dumps([2, unique_id, action, payload])


def _get(value, path):
    for step in path:
        value = value[step]
    return value


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_frames(), st.sampled_from(range(len(OPTIONS))))
def test_the_fast_path_accepts_only_what_the_standard_path_accepts_with_the_same_arguments(frame, which):
    checker = VALIDATORS[which]
    call = checker.decode_valid(frame)
    if call is not None:
        assert call.arguments == standard_arguments(checker, frame), frame
