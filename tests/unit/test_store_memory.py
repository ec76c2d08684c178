"""What the stores keep in memory: the outage state behind the `ocpp.store` events
(levity/store_outage.py) and what an instance on PostgreSQL knows of its chargers'
transactions (levity/owned_transactions.py)."""

from levity.audit.events import EventFactory, conformance_errors
from levity.owned_transactions import KEPT_PER_CHARGE_POINT, Known, OwnedTransactions
from levity.store_outage import OutageTracker


def test_an_outage_retried_many_times_is_one_down_and_one_up_event():
    told = []
    tracker = OutageTracker("postgresql", "postgresql://levity@db:5432/levity")
    tracker.listener = told.append
    tracker.recovered(5)  # working commits before: nothing to say
    for attempt in range(50):
        tracker.failed("connection refused", writes_waiting=attempt)
    assert tracker.down
    tracker.recovered(49)
    tracker.recovered(3)
    assert [t["state"] for t in told] == ["down", "up"]
    down, up = told
    assert down["writes_waiting"] == 0 and down["error"] == "connection refused" and down["duration_seconds"] is None
    assert up["writes_waiting"] == 49 and up["since"] == down["since"] and up["duration_seconds"] >= 0
    assert tracker.outages == 1 and not tracker.down
    events = EventFactory()
    for fields in told:
        event = events.store_state(**fields)
        assert event.tag == "ocpp.store" and conformance_errors(event.record) == []
        assert "ocpp_version" not in event.record


def test_a_listener_that_fails_does_not_break_the_commit_path():
    tracker = OutageTracker("sqlite", "levity.db")
    tracker.listener = lambda fields: 1 / 0
    tracker.failed("disk full", 1)
    tracker.recovered(1)
    assert tracker.outages == 1 and not tracker.down


def test_owned_transactions_are_known_only_while_the_charger_is_connected_here():
    owned = OwnedTransactions()
    owned.started("CP1", 7)  # not claimed here: nothing kept
    assert owned.get("CP1", 7) is None
    owned.claim("CP1")
    owned.started("CP1", 7)
    owned.add_registers("CP1", 7, [("100", "Wh")])
    owned.stopped(7, 500)
    assert owned.get("CP1", 7) == Known(meter_stop=500, registers=[("100", "Wh")])
    owned.stopped(7, None)  # the stop was undone
    assert owned.get("CP1", 7).meter_stop is None
    owned.claim("CP1")  # connected again (maybe elsewhere first): start from nothing
    assert owned.get("CP1", 7) is None
    owned.started("CP1", 8)
    owned.release("CP1")
    assert owned.get("CP1", 8) is None
    owned.stopped(8, 1)  # a stop after release changes nothing and does not fail


def test_owned_transactions_are_bounded_per_charger_and_forgotten_on_failure():
    owned = OwnedTransactions()
    owned.claim("CP1")
    for transaction_id in range(KEPT_PER_CHARGE_POINT + 3):
        owned.started("CP1", transaction_id)
    assert owned.get("CP1", 0) is None and owned.get("CP1", 2) is None
    assert owned.get("CP1", KEPT_PER_CHARGE_POINT + 2) is not None
    owned.forget(KEPT_PER_CHARGE_POINT + 2)
    assert owned.get("CP1", KEPT_PER_CHARGE_POINT + 2) is None
    owned.forget_all()
    assert owned.get("CP1", KEPT_PER_CHARGE_POINT + 1) is None
    owned.remember("CP1", 99, Known(meter_stop=None))  # read from the database: registers unknown
    owned.add_registers("CP1", 99, [("1", None)])
    assert owned.get("CP1", 99).registers is None
