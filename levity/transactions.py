"""One charging session, one start and one stop (shared/spec/audit-events.md, docs/billing.md).

Chargers resend calls they are not sure were answered. The rules that keep billing right
whatever they resend live here; the OCPP handlers (levity/ocpp16/handlers.py,
levity/ocpp201/handlers.py) apply them, the store
(levity/store.py) keeps what they need across restarts, and each case is one `ocpp.anomaly`
event (levity/audit/events.py) instead of a second start or stop:

- repeated_start: a StartTransaction identical to one already started (same charge point,
  connector, idTag, meterStart, timestamp) gets the first one's transaction id back.
- repeated_stop: a StopTransaction for a stopped transaction gets a normal answer; the anomaly
  says what differs from the first stop.
- abandoned_transaction: a new start on a connector with an open transaction closes that one
  without a stop; operators close one with `levity transactions close` or close_abandoned().
- stop_after_abandoned: the real stop of an abandoned transaction still counts (its figures are
  the charger's), and is flagged.
- meter_stop_below_start, meter_value_above_stop: meter figures that contradict each other,
  kept as sent and flagged.

Nothing here keeps state per anomaly: a flood of repeats costs one event per call, like any
other call, and the per-charger throttle bounds the calls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Iterable

from levity.audit.events import DEFAULT_MEASURAND, EventFactory, IdTagPolicy, iso_utc, new_event_id
from levity.audit.sink import AuditSink
from levity.handling import store_then_audit
from levity.store import Store, Transaction

log = logging.getLogger(__name__)

PENDING_CLOSE_INTERVAL = 2.0  # seconds between looks for transactions the command line closed
NONE_GIVEN = "none given"

# The StopTransaction fields a repeat is compared on, with the words an operator reads.
STOP_FIELDS = (("meter_stop", "meterStop"), ("timestamp", "timestamp"), ("reason", "reason"),
               ("id_tag", "idTag"), ("transaction_data_entries", "transactionData entries"))
START_FIELDS = (("id_tag", "idTag"), ("meter_start", "meterStart"), ("timestamp", "timestamp"))


def stop_request(meter_stop: int, timestamp: str, reason: str | None, id_tag: str | None,
                 transaction_data: list | None) -> dict[str, Any]:
    """A StopTransaction as sent (reason None when absent), small enough to keep per transaction."""
    return {"meter_stop": meter_stop, "timestamp": timestamp, "reason": reason, "id_tag": id_tag,
            "transaction_data_entries": len(transaction_data or ())}


def _words(key: str, value: Any, id_tags: IdTagPolicy) -> str:
    if value is None:
        return NONE_GIVEN
    if key == "id_tag":  # personal data: shown as the id_tag field of events is (privacy mode)
        return "withheld" if id_tags.mode == "omit" else str(id_tags.apply(value))
    return str(value)


def differences(first: dict[str, Any], repeat: dict[str, Any], fields, first_name: str,
                id_tags: IdTagPolicy) -> list[str]:
    """E.g. ["reason Local (first stop: none given)"]: the repeat's value, then the first's."""
    return [f"{label} {_words(key, repeat.get(key), id_tags)} ({first_name}: {_words(key, first.get(key), id_tags)})"
            for key, label in fields if first.get(key) != repeat.get(key)]


def repeated_stop_detail(transaction: Transaction, repeat: dict[str, Any], id_tags: IdTagPolicy) -> str:
    if transaction.stop_request is None:  # stopped before Levity kept the first stop's fields
        first = {"meter_stop": transaction.meter_stop, "timestamp": transaction.stop_timestamp}
        changed = differences(first, repeat, STOP_FIELDS[:2], "first stop", id_tags)
    else:
        changed = differences(transaction.stop_request, repeat, STOP_FIELDS, "first stop", id_tags)
    return ("differs from the first stop: " + "; ".join(changed)) if changed else "identical to the first stop"


def register_wh(value: str, unit: str | None) -> float | None:
    """An energy register in Wh (unit Wh, the OCPP default, or kWh); None when not a number
    (e.g. SignedData)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if unit == "kWh":
        return number * 1000
    return number if unit in (None, "", "Wh") else None


def highest_register(values: Iterable[tuple[str, str | None]]) -> float | None:
    readings = [wh for value, unit in values if (wh := register_wh(value, unit)) is not None]
    return max(readings) if readings else None


def registers_in(meter_value: list[dict]) -> list[tuple[str, str | None]]:
    """(value, unit) of each Energy.Active.Import.Register sample of a MeterValues/transactionData list."""
    return [(sample.get("value"), sample.get("unit")) for entry in meter_value
            for sample in entry.get("sampled_value", ())
            if (sample.get("measurand") or DEFAULT_MEASURAND) == DEFAULT_MEASURAND]


def _wh(number: float) -> str:
    return f"{number:g} Wh"


def meter_anomalies(events: EventFactory, charge_point_id: str, transaction: Transaction, meter_stop: int,
                    highest: float | None, stop_event_id: str | None) -> list:
    """The anomalies of a stop whose figures contradict each other (kept as sent)."""
    found = []
    if meter_stop < transaction.meter_start:
        found.append(events.anomaly(
            charge_point_id, "meter_stop_below_start", transaction.id,
            f"meterStop {meter_stop} Wh is below meterStart {transaction.meter_start} Wh: kept as sent, "
            f"energy_delivered {meter_stop - transaction.meter_start} Wh", stop_event_id,
            connector_id=transaction.connector_id))
    if highest is not None and highest > meter_stop:
        found.append(register_above_stop(events, charge_point_id, transaction, meter_stop, highest, stop_event_id))
    return found


def register_above_stop(events: EventFactory, charge_point_id: str, transaction: Transaction, meter_stop: int,
                        highest: float, stop_event_id: str | None):
    return events.anomaly(
        charge_point_id, "meter_value_above_stop", transaction.id,
        f"{DEFAULT_MEASURAND} {_wh(highest)} in the transaction's meter values is above meterStop "
        f"{meter_stop} Wh: kept as sent", stop_event_id, connector_id=transaction.connector_id)


def abandoned_detail(old: Transaction, new_id: int, connector_id: int, new_start: dict[str, Any],
                     id_tags: IdTagPolicy, place: str | None = None) -> str:
    """place: where the new start happened, when not "connector N" (a 2.0.1 EVSE)."""
    old_start = {"id_tag": old.id_tag, "meter_start": old.meter_start, "timestamp": old.start_timestamp}
    changed = differences(old_start, new_start, START_FIELDS, "this one", id_tags)
    place = place or f"connector {connector_id}"
    return (f"{place} started transaction {new_id} while this one was open; its start differs in "
            + "; ".join(changed)) if changed else \
        f"{place} started transaction {new_id} while this one was open"


def version_fields(transaction: Transaction) -> dict[str, Any]:
    """What an anomaly about this transaction says of its version: ocpp_version, and for 2.0.1
    the station's own transaction id and EVSE (as the 2.0.1 handlers' anomalies carry them)."""
    if transaction.station_transaction_id is None:
        return {"ocpp_version": transaction.ocpp_version}
    return {"ocpp_version": transaction.ocpp_version, "station_transaction_id": transaction.station_transaction_id,
            "evse_id": transaction.evse_id}


def abandoned_event(events: EventFactory, transaction: Transaction, detail: str, **fields: Any):
    return events.anomaly(transaction.charge_point_id, "abandoned_transaction", transaction.id, detail,
                          transaction.start_event_id, event_id=transaction.abandon_event_id,
                          connector_id=transaction.connector_id, **version_fields(transaction), **fields)


def operator_detail(reason: str) -> str:
    return f"closed by an operator: {reason}"


async def close_abandoned(context, transaction_id: int, reason: str) -> dict[str, Any]:
    """Close an open transaction as abandoned from inside the server (e.g. the operator API):
    one `abandoned_transaction` anomaly, no transaction_stop. `context`: the handlers' shared
    CentralSystemContext. Decided from the committed state under the charge point's transaction
    lock (the one its StartTransaction/StopTransaction take), committed, then its anomaly made
    durable, so a charger's stop and this close cannot both win. Returns the transaction as
    Store.transactions() lists it. LookupError: unknown; ValueError: already closed or no reason;
    StorageError/NotDurable: not closed (nothing sent, the row is as it was)."""
    store = context.store
    known = store.transaction(transaction_id)
    if known is None:
        raise LookupError(f"no transaction {transaction_id}")
    async with context.transaction_lock(known.charge_point_id):
        closed = store.close_abandoned(transaction_id, reason, iso_utc(time.time_ns()), new_event_id())

        def reopen() -> None:  # the close may be on disk while the operator is told it failed
            store.reopen_abandoned(transaction_id, closed.abandon_event_id)

        await store_then_audit(context, transaction_id, abandoned_event(
            context.events, closed, operator_detail(closed.abandon_reason)), undo=reopen)
    return store.transactions(transaction_id=transaction_id)[0]


def send_pending_closes(store: Store, sink: AuditSink, events: EventFactory) -> int:
    """Send the anomaly of each transaction the command line closed (with the event id it chose,
    so a resend after a crash is the same event); returns how many."""
    pending = store.pending_closes()
    for transaction in pending:
        sink.emit(abandoned_event(events, transaction, operator_detail(transaction.abandon_reason)))
        store.mark_close_sent(transaction.id)
    if pending:
        store.commit()
        log.info("closed %d transaction(s) as abandoned on an operator's request", len(pending))
    return len(pending)


async def send_pending_closes_forever(store: Store, sink: AuditSink, events: EventFactory,
                                      interval: float = PENDING_CLOSE_INTERVAL) -> None:
    while True:
        try:
            if send_pending_closes(store, sink, events):
                await store.commit_durable()  # marked sent before the next round looks again
        except Exception:  # a busy or failing database: try again next round
            log.exception("could not send the anomalies of transactions closed by an operator")
        await asyncio.sleep(interval)
