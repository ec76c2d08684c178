"""The PostgreSQL store answers as the SQLite store does: the same calls on both, the same
results (levity/store.py is the reference; levity/store_pg.py the shared-database engine)."""

from __future__ import annotations

import pytest

from levity.store import Store
from levity.store_pg import PostgresStore
from tests.support.postgres import levity_command

NOW = "2024-01-15T10:00:00Z"


def exercise(store) -> dict:
    """Every public call the server and the command line make; what each returns."""
    store.register(["CP1", "CP2"], NOW)
    store.unregister(["CP2"])
    store.set_password_hash("CP1", "hash-1", NOW)
    store.record_boot("CP1", {"vendor": "V", "model": "M", "serial_number": "S", "firmware_version": "1"},
                      "Accepted", False, NOW)
    store.record_heartbeat("CP1", "2024-01-15T10:01:00Z")
    store.record_cp_status("CP1", "firmware_status", "Installed")
    store.record_status("CP1", 1, "Charging", "NoError", None, None, NOW, NOW)
    first = store.start_transaction("CP1", 1, "TAG", 100, NOW, None, NOW, event_id="e1")
    store.commit()
    store.add_meter_values("CP1", 1, first, [{"timestamp": NOW, "sampled_value": [{"value": "150", "unit": "Wh"}]}])
    store.stop_transaction(first, 400, "2024-01-15T11:00:00Z", "Local", "TAG", NOW, event_id="e2",
                           request={"meter_stop": 400})
    second = store.start_transaction("CP1", 2, "TAG", 0, NOW, None, NOW, event_id="e3")
    closed = store.close_abandoned(second, "operator", NOW, "e4", event_sent=False)
    with pytest.raises(ValueError, match="already"):
        store.close_abandoned(second, "again", NOW, "e5")
    pending = [t.id for t in store.pending_closes()]
    store.mark_close_sent(second)
    # OCPP 2.0.1: the version of the latest connection; Levity's id for a station's string id.
    store.record_ocpp_version("CP1", "2.0.1")
    unseen = store.station_transaction("CP1", "st-1")
    station = store.start_station_transaction("CP1", "st-1", 1, 3, "TAG", 1500, NOW, NOW, event_id="e6")
    store.stop_transaction(station, 9000, "2024-01-15T12:00:00Z", "EVDisconnected", None, NOW, event_id="e7")
    # An Ended never started here: no connector, token or meter reading.
    unknown = store.start_station_transaction("CP1", "st-2", None, None, None, None, NOW, NOW)
    store.start_station_transaction("CP1", "st-3", 1, 4, "TAG", None, NOW, NOW)  # open on EVSE 4, no reading
    store.commit()
    point = store.charge_point("CP1")
    return {
        "registered": store.registered_ids(), "is_registered": [store.is_registered("CP1"), store.is_registered("CP2")],
        "password": store.password_hash("CP1"),
        "charge_point": {k: point[k] for k in ("registered", "vendor", "last_heartbeat", "firmware_status",
                                               "ocpp_version")},
        "connector": tuple(store.connector_status("CP1", 1)),
        "identical": store.identical_start("CP1", 1, "TAG", 100, NOW).id == first,
        "meter_stop": store.meter_stop("CP1", first), "registers": [tuple(r) for r in store.energy_registers("CP1", first)],
        "stopped": {k: v for k, v in store.transactions(transaction_id=first)[0].items() if k not in
                    ("transaction_id", "age_seconds")},
        "abandoned": (closed.abandon_reason, closed.open), "pending_before": pending == [second],
        "pending_after": store.pending_closes(), "open": store.open_transactions("CP1"),
        "open_on_connector": store.open_on_connector("CP1", 2),
        "open_on_evse": store.open_on_evse("CP1", 4),
        "open_on_evse_seen": [(t.station_transaction_id, t.meter_start, t.ocpp_version, t.evse_id)
                              for t in store.open_on_evse("CP1", 4)],
        "rows": [{k: v for k, v in row.items() if k != "last_status"} for row in store.charge_point_rows()],
        "connectors": store.connectors("CP1"),
        "counts": [store.count(t) for t in ("charge_points", "connectors", "transactions", "meter_values")],
        "station_unseen": unseen, "station_ids": (station, unknown) == (second + 1, second + 2),
        "station": store.station_transaction("CP1", "st-1"), "station_unknown": store.station_transaction("CP1", "st-2"),
        "station_meter_starts": (store.station_transaction("CP1", "st-1").meter_start,
                                 store.station_transaction("CP1", "st-2").meter_start),
        "station_other_point": store.station_transaction("CP2", "st-1"),
    }


def test_postgres_and_sqlite_answer_the_same(tmp_path, postgres_server):
    url = postgres_server.new_database()
    assert levity_command("db", "upgrade", database=url).returncode == 0
    sqlite, pg = Store(str(tmp_path / "levity.db")), PostgresStore(url)
    try:
        results = exercise(pg)
        assert results == exercise(sqlite)
        assert results["open_on_evse_seen"] == [("st-3", None, "2.0.1", 4)]
        # The 2.0.1 calls did what they say (on both engines, as they agree).
        assert results["charge_point"]["ocpp_version"] == "2.0.1" and results["rows"][0]["ocpp_version"] == "2.0.1"
        assert results["station_unseen"] is None and results["station_other_point"] is None
        assert results["station_ids"] and results["station_meter_starts"] == (1500, None)
        assert results["station"].transaction.stopped and results["station"].transaction.energy_delivered == 7500
        assert results["station_unknown"].transaction.connector_id == 0 and not results["station_unknown"].meter_start_known
        pg.add_api_token("ops", "read", "h1", NOW)
        with pytest.raises(KeyError):
            pg.add_api_token("ops", "read", "h2", NOW)
        assert pg.api_token("h1") == ("ops", "read") and pg.revoke_api_token("ops") and pg.api_tokens() == []
    finally:
        sqlite.close()
        pg.close()
