import pytest

from levity.audit.events import EventFactory, IdTagPolicy, SPEC_FIELDS, TAGS, conformance_errors, count_samples, iso_utc


def test_timestamp_and_event_time_are_one_instant():
    factory = EventFactory(clock=lambda: 1_705_312_800_123_456_789)
    event = factory.make("heartbeat", "CP1")
    assert event.record["timestamp"] == "2024-01-15T10:00:00.123Z"
    assert event.time_ns == 1_705_312_800_123_000_000
    assert event.tag == "ocpp.heartbeat"


def test_tag_prefix_is_configurable_and_every_spec_event_has_a_tag():
    factory = EventFactory(tag_prefix="site1.ocpp")
    assert factory.make("transaction_start", "CP1", connector_id=1, id_tag="A", meter_start=0,
                        transaction_id=1, transaction_timestamp="t").tag == "site1.ocpp.transaction.start"
    assert set(SPEC_FIELDS) <= set(TAGS)
    assert TAGS["websocket_connect"] == TAGS["websocket_disconnect"] == "websocket"


def test_event_ids_are_unique():
    factory = EventFactory()
    assert len({factory.make("heartbeat", "CP1").record["event_id"] for _ in range(1000)}) == 1000


@pytest.mark.parametrize("record, problem", [
    ({"event_type": "heartbeat", "charge_point_id": "CP", "timestamp": "t"}, "event_id"),
    ({"event_type": "status_notification", "charge_point_id": "CP", "timestamp": "t", "event_id": "e",
      "connector_id": "1", "status": "Available", "error_code": "NoError"}, "connector_id"),
    ({"event_type": "status_notification", "charge_point_id": "CP", "timestamp": "t", "event_id": "e",
      "connector_id": True, "status": "Available", "error_code": "NoError"}, "connector_id"),
    ({"event_type": "nonsense"}, "unknown event_type"),
])
def test_conformance_finds_what_breaks_the_contract(record, problem):
    errors = conformance_errors(record)
    assert errors and problem in errors[0]


def test_count_samples_defaults_missing_measurand_and_keeps_first_appearance_order():
    meter_value = [
        {"timestamp": "t", "sampled_value": [{"value": "1"}, {"value": "2", "measurand": "Voltage"}]},
        {"timestamp": "t", "sampled_value": [{"value": "3", "measurand": "Voltage"},
                                             {"value": "4", "measurand": "Current.Import"},
                                             {"value": "5", "measurand": "Energy.Active.Import.Register"}]},
        {"timestamp": "t", "sampled_value": []},
    ]
    assert count_samples(meter_value) == (5, ["Energy.Active.Import.Register", "Voltage", "Current.Import"])


def test_id_tag_modes():
    assert IdTagPolicy("plain").apply("USER") == "USER"
    assert IdTagPolicy("omit").apply("USER") is None
    keyed = IdTagPolicy("pseudonymize", b"secret")
    assert keyed.apply("USER") == keyed.apply("USER") != IdTagPolicy("pseudonymize", b"other").apply("USER")
    assert keyed.apply("USER") != keyed.apply("USER2") and "USER" not in keyed.apply("USER")
    assert keyed.apply(None) is None
    with pytest.raises(ValueError, match="needs a key"):
        IdTagPolicy("pseudonymize")
    with pytest.raises(ValueError, match="one of"):
        IdTagPolicy("hash")


def test_iso_utc_pads_milliseconds():
    assert iso_utc(5_000_000) == "1970-01-01T00:00:00.005Z"


@pytest.mark.parametrize("mode, expected", [("plain", "USER-1"), ("omit", None)])
def test_command_event_follows_the_id_tag_mode_anywhere_in_the_request(mode, expected):
    factory = EventFactory(id_tags=IdTagPolicy(mode))
    request = {"listVersion": 1, "updateType": "Full",
               "localAuthorizationList": [{"idTag": "USER-1", "idTagInfo": {"status": "Accepted", "parentIdTag": "USER-1"}}]}
    event = factory.command("CP1", action="SendLocalList", unique_id="u" * 36, requested_by="ops", request=request,
                            outcome="result", status="Accepted", error_code=None, latency_ms=3.5)
    assert event.tag == "ocpp.command" and conformance_errors(event.record) == []
    entry = event.record["request"]["localAuthorizationList"][0]
    assert entry["idTag"] == expected and entry["idTagInfo"]["parentIdTag"] == expected
    assert request["localAuthorizationList"][0]["idTag"] == "USER-1"  # the payload sent is left alone
