"""Property-based fuzz of the frame handler: whatever arrives, no crash, no unhandled
exception, and every CALL gets exactly one well-formed answer (CALLRESULT or a CALLERROR
with an OCPP-J 1.6 error code); replies to nothing get no answer."""

import asyncio
import json

from hypothesis import HealthCheck, given, settings, strategies as st

from levity.audit.events import EventFactory
from levity.audit.sink import NullSink
from levity.ocpp16.handlers import Authorizer, CentralSystemContext, ChargePoint
from levity.ocpp16.validation import CHARGE_POINT_ACTIONS, PayloadValidator
from levity.store import Store

ERROR_CODES = {"NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError",
               "FormationViolation", "PropertyConstraintViolation", "OccurenceConstraintViolation",
               "TypeConstraintViolation", "GenericError"}


class RecordingConnection:
    def __init__(self):
        self.sent: list[str] = []

    async def send(self, message: str) -> None:
        self.sent.append(message)


CONTEXT = CentralSystemContext(store=Store(":memory:"), sink=NullSink(), events=EventFactory(),
                               authorizer=Authorizer(None), validator=PayloadValidator())
LOOP = asyncio.new_event_loop()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(["connectorId", "idTag", "meterStart", "meterStop", "timestamp", "transactionId",
                               "status", "errorCode", "chargePointVendor", "chargePointModel", "meterValue",
                               "sampledValue", "vendorId", "reason", "value", "measurand"])
payloads = st.dictionaries(field_names | st.text(max_size=8), json_values, max_size=6)
actions = st.sampled_from(sorted(CHARGE_POINT_ACTIONS) + ["Reset", "Foo", ""]) | st.text(max_size=20)
unique_ids = st.text(max_size=40) | st.integers() | st.none()
calls = st.builds(lambda u, a, p: [2, u, a, p], unique_ids, actions, payloads | json_values)
frames = st.one_of(
    st.builds(json.dumps, calls),
    st.builds(json.dumps, st.lists(json_values, max_size=6)),
    st.builds(json.dumps, json_values),
    st.text(max_size=60),
    st.binary(max_size=30),
)


def handle(frame):
    connection = RecordingConnection()
    charge_point = ChargePoint("CP-FUZZ", connection, CONTEXT)
    LOOP.run_until_complete(charge_point.route_message(frame))
    return connection.sent


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames)
def test_every_frame_gets_at_most_one_well_formed_answer(frame):
    sent = handle(frame)
    assert len(sent) <= 1
    for message in sent:
        answer = json.loads(message)
        assert isinstance(answer, list) and answer[0] in (3, 4) and isinstance(answer[1], str)
        if answer[0] == 4:
            assert len(answer) == 5 and answer[2] in ERROR_CODES and answer[2] != "InternalError", answer
            assert isinstance(answer[3], str) and len(answer[3]) <= 255 and answer[4] == {}
        else:
            assert len(answer) == 3 and isinstance(answer[2], dict)


@settings(max_examples=500, deadline=None)
@given(calls)
def test_every_call_is_answered(call):
    sent = handle(json.dumps(call))
    if isinstance(call[1], str) and 1 <= len(call[1]) <= 36:
        assert len(sent) == 1 and json.loads(sent[0])[1] == call[1]
    else:
        assert len(sent) == 1 and json.loads(sent[0])[:3] == [4, "-1", "FormationViolation"]


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([3, 4]), st.text(max_size=36), json_values)
def test_replies_to_no_pending_call_are_never_answered(message_type, unique_id, payload):
    frame = [3, unique_id, payload] if message_type == 3 else [4, unique_id, "GenericError", "", payload]
    assert handle(json.dumps(frame)) == []


def test_integers_at_the_64_bit_boundary():
    """SQLite stores 64-bit integers: one beyond gets TypeConstraintViolation, the edges pass,
    whether the frame goes through orjson (up to 2**64-1) or the standard parser (beyond)."""
    from levity.framing import CallError, parse_frame

    def check(meter_start: int):
        frame = json.dumps([2, "b", "StartTransaction", {"connectorId": 1, "idTag": "A", "meterStart": meter_start,
                                                          "timestamp": "2024-01-15T10:10:00Z"}])
        CONTEXT.validator.validate(parse_frame(frame))

    for fits in (2**63 - 1, -(2**63), 10**18, 0):
        check(fits)
    for beyond in (2**63, -(2**63) - 1, 2**64 - 1, 2**64, 10**30):
        try:
            check(beyond)
        except CallError as exc:
            assert exc.code == "TypeConstraintViolation", (beyond, exc.code)
        else:
            raise AssertionError(f"{beyond} was accepted")
