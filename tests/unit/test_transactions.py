"""One session, one start and one stop: the rules' words, the store's state, the docs' queries,
and the routes that keep anomalies away from billing."""

import asyncio
import errno
import json
import re
import sqlite3
from pathlib import Path

import pytest
import yaml

from levity.audit.events import ANOMALY_KINDS, EventFactory, IdTagPolicy, TAGS, conformance_errors
from levity.handling import Authorizer, CentralSystemContext
from levity.fluentconf.units import tag_pattern_covers
import levity.store as store_module
from levity.store import StorageError, Store
from levity.transactions import (close_abandoned, highest_register, register_wh, registers_in, repeated_stop_detail,
                                 send_pending_closes, stop_request)

ROOT = Path(__file__).resolve().parents[2]
NOW = "2024-01-15T10:10:00.000Z"


def test_anomaly_events_follow_the_contract_and_sit_outside_the_transaction_tags():
    event = EventFactory().anomaly("CP1", "repeated_stop", 42, "identical to the first stop", "abc")
    assert event.tag == "ocpp.anomaly" and not tag_pattern_covers("ocpp.transaction.**", event.tag)
    assert conformance_errors(event.record) == []
    assert event.record["ocpp_version"] == "1.6" and event.record["first_event_id"] == "abc"
    assert not event.durable
    with pytest.raises(AssertionError):
        EventFactory().anomaly("CP1", "no_such_kind", 1, "x")
    assert TAGS["anomaly"] == "anomaly"


def test_a_repeated_stop_detail_names_what_differs_in_words():
    store = Store(":memory:")
    tx = store.start_transaction("CP1", 1, "T", 1000, "2024-01-15T10:10:00Z", None, NOW, event_id="e1")
    first = stop_request(15000, "2024-01-15T11:00:00Z", None, None, None)
    store.stop_transaction(tx, 15000, "2024-01-15T11:00:00Z", "Local", None, NOW, event_id="e2", request=first)
    store.commit()  # reads see committed writes only
    stopped = store.transaction(tx)
    assert stopped.stop_event_id == "e2" and stopped.start_event_id == "e1"
    plain = IdTagPolicy()
    assert repeated_stop_detail(stopped, first, plain) == "identical to the first stop"
    repeat = stop_request(15000, "2024-01-15T11:00:00Z", "Local", "T", [{"timestamp": "x", "sampled_value": []}])
    assert repeated_stop_detail(stopped, repeat, plain) == (
        "differs from the first stop: reason Local (first stop: none given); idTag T (first stop: none given); "
        "transactionData entries 1 (first stop: 0)")
    # An id tag in a detail follows the privacy mode of the id_tag field.
    assert "idTag withheld (first stop: none given)" in repeated_stop_detail(stopped, repeat, IdTagPolicy("omit"))
    hidden = repeated_stop_detail(stopped, repeat, IdTagPolicy("pseudonymize", b"key"))
    assert "idTag hmac-sha256:" in hidden and "idTag T " not in hidden


def test_energy_registers_are_read_in_wh_and_unreadable_ones_skipped():
    assert register_wh("15.5", "kWh") == 15500 and register_wh("100", None) == 100
    assert register_wh("0xAB", "Wh") is None and register_wh("5", "varh") is None
    meter_value = [{"sampled_value": [{"value": "12"}, {"value": "230", "measurand": "Voltage"},
                                      {"value": "1.5", "unit": "kWh", "measurand": "Energy.Active.Import.Register"}]}]
    assert registers_in(meter_value) == [("12", None), ("1.5", "kWh")]
    assert highest_register(registers_in(meter_value)) == 1500
    assert highest_register([]) is None


def test_close_abandoned_closes_open_transactions_only(tmp_path):
    store = Store(str(tmp_path / "levity.db"))
    open_tx = store.start_transaction("CP1", 1, "T", 10, "2024-01-15T10:10:00Z", None, NOW)
    stopped = store.start_transaction("CP1", 2, "T", 10, "2024-01-15T10:10:00Z", None, NOW)
    store.stop_transaction(stopped, 20, "2024-01-15T11:00:00Z", "Local", None, NOW)
    store.commit()
    [row] = store.open_transactions()
    assert row["transaction_id"] == open_tx and row["state"] == "open" and row["age_seconds"] > 0
    assert store.open_transactions("CP2") == []
    with pytest.raises(ValueError, match="already stopped"):
        store.close_abandoned(stopped, "x", NOW, "ev")
    with pytest.raises(LookupError):
        store.close_abandoned(999, "x", NOW, "ev")
    with pytest.raises(ValueError, match="reason"):
        store.close_abandoned(open_tx, "  ", NOW, "ev")
    closed = store.close_abandoned(open_tx, "gone", NOW, "ev-1", event_sent=False)
    store.commit()
    assert closed.abandon_event_id == "ev-1" and not closed.open
    assert store.open_transactions() == []
    assert [t.id for t in store.pending_closes()] == [open_tx]
    store.mark_close_sent(open_tx)
    store.commit()
    assert store.pending_closes() == []
    with pytest.raises(ValueError, match="already closed as abandoned"):
        store.close_abandoned(open_tx, "again", NOW, "ev-2")
    store.close()
    # Reopened (a restart): the state is still there.
    again = Store(str(tmp_path / "levity.db"))
    assert again.transaction(open_tx).abandon_reason == "gone"
    assert again.transactions(transaction_id=stopped)[0]["energy_delivered"] == 10


def test_a_database_of_the_previous_schema_gains_the_columns(tmp_path):
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE transactions (id INTEGER PRIMARY KEY AUTOINCREMENT, charge_point_id TEXT NOT NULL, "
                   "connector_id INTEGER NOT NULL, id_tag TEXT NOT NULL, meter_start INTEGER NOT NULL, "
                   "start_timestamp TEXT NOT NULL, reservation_id INTEGER, meter_stop INTEGER, stop_timestamp TEXT, "
                   "stop_reason TEXT, stop_id_tag TEXT, created_at TEXT NOT NULL, stopped_at TEXT)")
        db.execute("INSERT INTO transactions (charge_point_id, connector_id, id_tag, meter_start, start_timestamp, "
                   "created_at) VALUES ('CP1', 1, 'T', 5, '2024-01-15T10:10:00Z', ?)", (NOW,))
    store = Store(str(path))
    assert store.identical_start("CP1", 1, "T", 5, "2024-01-15T10:10:00Z").id == 1
    assert [t["transaction_id"] for t in store.open_transactions("CP1")] == [1]
    assert store.pending_closes() == []


# Routes and the Elasticsearch template ---------------------------------------------------------

def _first_route(routes: list[dict], tag: str) -> dict | None:
    return next((r for r in routes if tag_pattern_covers(r["match"], tag)), None)


@pytest.mark.parametrize("profile", sorted((ROOT / "profiles").glob("*.yaml")), ids=lambda p: p.stem)
def test_no_shipped_transaction_route_or_filter_takes_anomalies(profile):
    data = yaml.safe_load(profile.read_text())
    anomaly_route = _first_route(data.get("routes") or [], "ocpp.anomaly")
    if anomaly_route is not None:
        assert "transaction" not in anomaly_route["match"], profile.name
    for section in data.get("filters") or []:
        if "transaction" in str(section.get("match", "")):
            assert not tag_pattern_covers(section["match"], "ocpp.anomaly"), profile.name


def test_the_billing_profile_sends_anomalies_to_storage_only():
    routes = yaml.safe_load((ROOT / "profiles" / "billing.yaml").read_text())["routes"]
    assert "billing" in _first_route(routes, "ocpp.transaction.stop")["outputs"]
    assert _first_route(routes, "ocpp.anomaly")["outputs"] == ["storage"]


def test_the_index_template_maps_every_anomaly_field_and_the_billing_queries_use_mapped_fields():
    template = json.loads((ROOT / "share" / "elasticsearch" / "ocpp-events-index-template.json").read_text())
    properties = template["template"]["mappings"]["properties"]
    for name in ("kind", "first_event_id", "ocpp_version", "event_id"):
        assert properties[name]["type"] == "keyword", name
    assert properties["detail"]["type"] == "text" and properties["transaction_id"]["type"] == "long"
    docs = (ROOT / "docs" / "billing.md").read_text()
    bodies = [json.loads(body) for body in re.findall(r"-d '\n(.*?)'\n", docs, re.S)]
    assert len(bodies) == 2
    fields = set(re.findall(r'"field": "(\w+)"', json.dumps(bodies))) | \
        set(re.findall(r'"term": \{"(\w+)"', json.dumps(bodies)))
    assert fields and fields <= set(properties), fields - set(properties)
    assert properties["energy_delivered"]["type"] == "long"
    for kind in ANOMALY_KINDS:
        assert f"`{kind}`" in docs, kind


class CollectingSink:
    """The AuditSink interface, keeping what it is given (the real sinks are tested elsewhere)."""

    def __init__(self):
        self.events = []

    def emit(self, event):
        self.events.append(event)

    async def emit_durable(self, event):
        self.events.append(event)


def test_close_abandoned_inside_the_server_sends_its_anomaly_at_once(tmp_path):
    store, sink, events = Store(str(tmp_path / "levity.db")), CollectingSink(), EventFactory()
    tx = store.start_transaction("CP1", 1, "T", 10, "2024-01-15T10:10:00Z", None, NOW, event_id="start-1")
    store.commit()
    context = CentralSystemContext(store=store, sink=sink, events=events, authorizer=Authorizer(), validator=None)

    async def close():  # as the server does it: on the event loop, the store's writer thread commits
        row = await close_abandoned(context, tx, "charger replaced")
        assert not context._transaction_locks, "the charge point's lock is dropped once free"
        return row

    row = asyncio.run(close())
    assert row["state"] == "abandoned" and row["closed_reason"] == "charger replaced" and row["meter_stop"] is None
    [event] = sink.events
    assert event.record["kind"] == "abandoned_transaction" and event.record["first_event_id"] == "start-1"
    assert event.record["event_id"] == store.transaction(tx).abandon_event_id
    assert send_pending_closes(store, sink, events) == 0, "nothing left to send"
    assert events.anomalies == {"abandoned_transaction": 1}


def test_a_close_whose_commit_may_not_be_on_disk_leaves_the_transaction_open(tmp_path, monkeypatch):
    store, sink, events = Store(str(tmp_path / "levity.db")), CollectingSink(), EventFactory()
    tx = store.start_transaction("CP1", 1, "T", 10, "2024-01-15T10:10:00Z", None, NOW, event_id="start-1")
    store.commit()
    context = CentralSystemContext(store=store, sink=sink, events=events, authorizer=Authorizer(), validator=None)

    def failing_fsync(fd):
        raise OSError(errno.EIO, "Input/output error")

    async def close():
        store.record_heartbeat("CP1", NOW)  # the writer thread exists before the fault
        await store.commit_durable()
        monkeypatch.setattr(store_module.os, "fdatasync", failing_fsync)
        with pytest.raises(StorageError):
            await close_abandoned(context, tx, "charger replaced")

    asyncio.run(close())
    assert store.transaction(tx).open and sink.events == []  # nobody was told: not closed
    assert send_pending_closes(store, sink, events) == 0


def test_a_close_from_the_command_line_is_sent_once_with_the_event_id_it_chose(tmp_path):
    store, sink, events = Store(str(tmp_path / "levity.db")), CollectingSink(), EventFactory()
    tx = store.start_transaction("CP1", 1, "T", 10, "2024-01-15T10:10:00Z", None, NOW)
    store.close_abandoned(tx, "site closed", NOW, "chosen-id", event_sent=False)
    store.commit()
    assert send_pending_closes(store, sink, events) == 1
    assert send_pending_closes(store, sink, events) == 0
    [event] = sink.events
    assert event.record["event_id"] == "chosen-id" and event.record["detail"] == "closed by an operator: site closed"
