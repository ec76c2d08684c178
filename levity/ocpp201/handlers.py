"""One handler per OCPP 2.0.1 message a charging station sends: answer, store, audit.

The audit mapping is the spec's "OCPP 2.0.1 on the same tags" (shared/spec/audit-events.md):
the same tags and field names as 1.6, so queries, dashboards and billing routes see one
stream; every event carries ocpp_version "2.0.1". Framing is shared with 1.6 (levity.framing);
the CALLERROR codes are spelled as 2.0.1 spells them (levity.ocpp201.validation.as_201).

Transactions: Levity gives each TransactionEvent Started its own integer transaction_id (the
same counter as 1.6, so ids are unique across versions and workers) and keeps the station's
string id as station_transaction_id. A Started or Ended follows the 1.6 StartTransaction /
StopTransaction story (levity.handling.store_then_audit): decided under the station's
transaction lock, its row committed durably, then its anomalies and its durable audit event,
then the answer; storage failing is a CALLERROR InternalError the station resends.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Awaitable, Callable

from levity import metrics
from levity.audit.events import DEFAULT_MEASURAND, new_event_id
from levity.audit.sink import NotDurable
from levity.framing import Call, CallError, Reply, call_result as encode_result, parse_frame
from levity.handling import RETRY_INTERVAL, CentralSystemContext, TokenBucket, _now, not_stored, store_then_audit
from levity.ocpp201.validation import VERSION, as_201, check_action
from levity.store import StationTransaction, StorageError, Transaction
from levity.transactions import abandoned_detail, abandoned_event, highest_register, version_fields

log = logging.getLogger(__name__)

MAX_OPEN_PER_CONNECTION = 64
Handler = Callable[["ChargingStation", dict], Awaitable[dict]]
_ROUTES: dict[str, Handler] = {}


def on(action: str):
    def register(handler: Handler) -> Handler:
        _ROUTES[action] = handler
        return handler
    return register


def energy_wh(sample: dict) -> float | None:
    """An energy sampled value in Wh from its unitOfMeasure (unit Wh, the default, or kWh, times
    10^multiplier); None when the unit is another one."""
    unit_of_measure = sample.get("unitOfMeasure") or {}
    unit = unit_of_measure.get("unit", "Wh")
    scale = {"Wh": 1, "kWh": 1000}.get(unit)
    if scale is None:
        return None
    return float(sample["value"]) * scale * 10 ** unit_of_measure.get("multiplier", 0)


def samples(meter_value: list[dict]) -> tuple[int, list[str]]:
    """samples_count and measurands (distinct, in order of first appearance), as ocpp.meter has them."""
    count, measurands = 0, {}
    for entry in meter_value:
        for sample in entry.get("sampledValue", ()):
            count += 1
            measurands.setdefault(sample.get("measurand") or DEFAULT_MEASURAND, None)
    return count, list(measurands)


def as_16_meter_values(meter_value: list[dict]) -> list[dict]:
    """The 1.6 shape the store keeps (snake_case, value as text, energy in Wh)."""
    rows = []
    for entry in meter_value:
        sampled = []
        for sample in entry.get("sampledValue", ()):
            measurand = sample.get("measurand") or DEFAULT_MEASURAND
            unit_of_measure = sample.get("unitOfMeasure") or {}
            value, unit = sample["value"], unit_of_measure.get("unit")
            if measurand.startswith("Energy") and (wh := energy_wh(sample)) is not None:
                value, unit = wh, "Wh"
            elif unit_of_measure.get("multiplier"):
                value = value * 10 ** unit_of_measure["multiplier"]
            sampled.append({"value": f"{value:g}" if isinstance(value, float) else str(value), "measurand": measurand,
                            "unit": unit, "phase": sample.get("phase"), "context": sample.get("context"),
                            "location": sample.get("location")})
        rows.append({"timestamp": entry.get("timestamp", ""), "sampled_value": sampled})
    return rows


class ChargingStation:
    """One OCPP 2.0.1 connection: frames in, answers out, as levity.ocpp16.handlers.ChargePoint."""

    version = VERSION

    def __init__(self, charge_point_id: str, connection, context: CentralSystemContext):
        self.id = charge_point_id
        self._connection = connection
        self.ctx = context
        self._bucket = TokenBucket(context.max_calls_per_second)
        self._odd_units_logged = False
        # Transactions of this connection: station id -> (Levity's id, last energy register in Wh).
        # Spares Updated a database lookup and write; after a reconnect or a restart the
        # database answers (levity.store.Store.station_transaction, energy_registers).
        self._open: dict[str, tuple[int, int | None]] = {}

    @staticmethod
    def routes() -> dict[str, Handler]:
        return _ROUTES

    def event(self, event_type: str, **fields: Any):
        return self.ctx.events.make(event_type, self.id, ocpp_version=VERSION, **fields)

    # Framing --------------------------------------------------------------------------------

    async def handle_frame(self, raw: str | bytes) -> None:
        received = time.perf_counter()
        wait = self._bucket.delay()
        if wait:
            await self.ctx.throttle(wait)
        try:
            frame = parse_frame(raw)
        except CallError as error:
            as_201(error)
            log.warning("%s: malformed frame answered with %s: %s", self.id, error.code, error.description)
            await self._connection.send(error.frame())
            return
        if isinstance(frame, Reply):
            log.warning("%s: ignored a reply to no pending call (unique id %s)", self.id, frame.unique_id[:36])
            return
        answer = await self.answer(frame)
        await self._connection.send(answer)
        metrics.record_call(frame.action, answer.startswith("[4"), time.perf_counter() - received)

    async def answer(self, call: Call) -> str:
        try:
            check_action(call)
            handler = _ROUTES.get(call.action)
            if handler is None:
                raise CallError("NotSupported", f"{call.action} is not supported by Levity", call.unique_id)
            self.ctx.validator_201.validate(call)
            payload = await handler(self, call.payload)
        except (StorageError, NotDurable) as failure:
            return not_stored(self.ctx, self.id, call, failure, ocpp_version=VERSION).frame()
        except CallError as error:
            as_201(error)
            log.warning("%s: %s %s answered with %s: %s", self.id, call.action[:40], call.unique_id,
                        error.code, error.description)
            self.ctx.sink.emit(self.event("call_error", action=call.action[:64], unique_id=call.unique_id,
                                          error_code=error.code, error_description=error.description))
            return error.frame()
        except Exception:
            log.exception("%s: %s %s failed", self.id, call.action, call.unique_id)
            return CallError("InternalError", "the CSMS failed to handle this call", call.unique_id).frame()
        return encode_result(call.unique_id, payload)

    def remember(self, station_id: str, transaction_id: int, register_wh: int | None) -> None:
        if len(self._open) >= MAX_OPEN_PER_CONNECTION and station_id not in self._open:
            self._open.clear()  # a station that never ends its transactions: the database answers
        previous = self._open.get(station_id, (transaction_id, None))[1]
        self._open[station_id] = (transaction_id, register_wh if register_wh is not None else previous)

    async def transaction_id(self, station_id: str) -> int | None:
        """Levity's id of one of this station's transactions (None: never started here). The
        database is asked under the station's transaction lock: a Started being committed (on
        this connection or an older one) is seen once committed."""
        remembered = self._open.get(station_id)
        if remembered is not None:
            return remembered[0]
        async with self.ctx.transaction_lock(self.id):
            known = await self.ctx.store.load_station_transaction(self.id, station_id)
        if known is None:
            return None
        self.remember(station_id, known.transaction.id, None)
        return known.transaction.id

    def last_register(self, station_id: str, transaction_id: int) -> int | None:
        """The last energy register of the transaction, in Wh: this connection's memory, else the
        highest one stored (a reconnect, a restart)."""
        remembered = self._open.get(station_id)
        if remembered is not None and remembered[1] is not None:
            return remembered[1]
        highest = highest_register(self.ctx.store.energy_registers(self.id, transaction_id))
        return round(highest) if highest is not None else None

    def _register_wh(self, meter_value: list[dict] | None, last: bool) -> int | None:
        """The Energy.Active.Import.Register in Wh: the first (a start) or the last (a stop) sampled."""
        readings = []
        for entry in meter_value or ():
            for sample in entry.get("sampledValue", ()):
                if (sample.get("measurand") or DEFAULT_MEASURAND) != DEFAULT_MEASURAND:
                    continue
                wh = energy_wh(sample)
                if wh is None:
                    if not self._odd_units_logged:  # once per connection: passed on without a figure
                        self._odd_units_logged = True
                        log.warning("%s: energy register in unit %r: no Wh figure", self.id,
                                    (sample.get("unitOfMeasure") or {}).get("unit"))
                    continue
                readings.append(round(wh))
        if not readings:
            return None
        return readings[-1] if last else readings[0]


# Handlers ---------------------------------------------------------------------------------------

@on("BootNotification")
async def boot_notification(cs: ChargingStation, payload: dict) -> dict:
    store, now, policy = cs.ctx.store, _now(), cs.ctx.boot_policy
    if policy == "accept":
        status, registered = "Accepted", True
    else:
        registered = store.is_registered(cs.id)
        status = "Accepted" if registered else policy.capitalize()
    station = payload["chargingStation"]
    info = {"vendor": station["vendorName"], "model": station["model"],
            "serial_number": station.get("serialNumber"), "firmware_version": station.get("firmwareVersion")}
    store.record_boot(cs.id, info, status, registered, now)
    store.record_ocpp_version(cs.id, VERSION)
    cs.ctx.sink.emit(cs.event("boot_notification", **info, status=status, reason=payload["reason"]))
    log.info("%s: BootNotification (2.0.1) from %s %s: %s", cs.id, info["vendor"], info["model"], status)
    interval = cs.ctx.heartbeat_interval if status == "Accepted" else RETRY_INTERVAL
    return {"currentTime": now, "interval": interval, "status": status}


@on("Heartbeat")
async def heartbeat(cs: ChargingStation, payload: dict) -> dict:
    now = _now()
    cs.ctx.store.record_heartbeat(cs.id, now)
    cs.ctx.sink.emit(cs.event("heartbeat"))
    return {"currentTime": now}


@on("StatusNotification")
async def status_notification(cs: ChargingStation, payload: dict) -> dict:
    evse_id, connector_id, status = payload["evseId"], payload["connectorId"], payload["connectorStatus"]
    # Kept per EVSE (what an operator starts and stops); 2.0.1 has no error code here.
    cs.ctx.store.record_status(cs.id, evse_id, status, "", f"connector {connector_id}", None,
                               payload["timestamp"], _now())
    cs.ctx.sink.emit(cs.event("status_notification", connector_id=connector_id, status=status, error_code=None,
                              evse_id=evse_id))
    return {}


@on("Authorize")
async def authorize(cs: ChargingStation, payload: dict) -> dict:
    token = payload["idToken"]
    status = cs.ctx.authorizer.status(token["idToken"])
    cs.ctx.sink.emit(cs.event("authorize", id_tag=token["idToken"], status=status, id_token_type=token["type"]))
    return {"idTokenInfo": {"status": status}}


@on("MeterValues")
async def meter_values(cs: ChargingStation, payload: dict) -> dict:
    evse_id, meter_value = payload["evseId"], payload["meterValue"]
    cs.ctx.store.add_meter_values(cs.id, evse_id, None, as_16_meter_values(meter_value))
    count, measurands = samples(meter_value)
    cs.ctx.sink.emit(cs.event("meter_values", connector_id=evse_id, transaction_id=None, samples_count=count,
                              measurands=measurands))
    return {}


@on("TransactionEvent")
async def transaction_event(cs: ChargingStation, payload: dict) -> dict:
    kind = payload["eventType"]
    info = payload["transactionInfo"]
    station_id = info["transactionId"]
    token = payload.get("idToken")
    answer = {"idTokenInfo": {"status": cs.ctx.authorizer.status(token["idToken"])}} if token else {}
    if kind == "Updated":
        await _updated(cs, payload)
        return answer
    # One decision at a time per station, from the committed state, released once committed
    # (CentralSystemContext.transaction_lock): a repeat is seen as one, on any connection.
    async with cs.ctx.transaction_lock(cs.id):
        known = await cs.ctx.store.load_station_transaction(cs.id, station_id, may_start=True)
        if kind == "Started":
            await _started(cs, payload, known)
        else:
            await _ended(cs, payload, known)
    return answer


async def _started(cs: ChargingStation, payload: dict, known: StationTransaction | None) -> None:
    store, events = cs.ctx.store, cs.ctx.events
    info, evse = payload["transactionInfo"], payload.get("evse") or {}
    station_id, timestamp = info["transactionId"], payload["timestamp"]
    if known is not None:  # a resend (offline queue, reconnect): one session, one start
        first = known.transaction
        cs.ctx.sink.emit(events.anomaly(
            cs.id, "repeated_start", first.id,
            f"a second TransactionEvent Started for station transaction {station_id!r}: it stays transaction "
            f"{first.id}", first.start_event_id, ocpp_version=VERSION, station_transaction_id=station_id))
        return
    token = payload.get("idToken") or {}
    meter_start = cs._register_wh(payload.get("meterValue"), last=False)
    event_id = new_event_id()
    now = _now()
    transaction_id = store.start_station_transaction(
        cs.id, station_id, evse.get("connectorId"), evse.get("id"), token.get("idToken"), meter_start, timestamp,
        now, event_id=event_id)
    new_start = {"id_tag": token.get("idToken"), "meter_start": meter_start, "timestamp": timestamp}
    closed, abandoned = await close_superseded(cs, evse.get("id"), transaction_id, new_start, now)

    def undo() -> None:  # never answered: the resend is the first Started, not a repeat; nothing closed for it
        store.forget_transaction(transaction_id)
        for old in closed:
            store.reopen_abandoned(old.id, old.abandon_event_id)

    # Billing depends on this start: the row, then its event, durable before the answer (as 1.6).
    await store_then_audit(cs.ctx, transaction_id, cs.event(
        "transaction_start", event_id=event_id, connector_id=evse.get("connectorId"), id_tag=token.get("idToken"),
        meter_start=meter_start, transaction_id=transaction_id, transaction_timestamp=timestamp,
        evse_id=evse.get("id"), station_transaction_id=station_id, trigger_reason=payload["triggerReason"]),
        abandoned, undo)
    # Once stored: a Started answered with a CALLERROR leaves no samples under an id never issued.
    if payload.get("meterValue"):
        store.add_meter_values(cs.id, evse.get("id") or 0, transaction_id, as_16_meter_values(payload["meterValue"]))
    cs.remember(station_id, transaction_id, meter_start)


async def close_superseded(cs: ChargingStation, evse_id: int | None, transaction_id: int, new_start: dict[str, Any],
                     now: str) -> tuple[list[Transaction], list]:
    """The 1.6 abandoned-transaction rule (levity/transactions.py) on an EVSE: a new transaction
    there closes the open one without a stop. Queued with the new start (key transaction_id), so
    a start that is not stored closes nothing. Returns the closed transactions and their
    anomalies. Without an EVSE id there is no place to compare: nothing is closed."""
    if evse_id is None:
        return [], []
    store, events = cs.ctx.store, cs.ctx.events
    closed = [store.close_abandoned(old.id, f"superseded by transaction {transaction_id}", now, new_event_id(),
                                    key=transaction_id)
              for old in await store.load_open_on_evse(cs.id, evse_id) if old.id != transaction_id]
    abandoned = [abandoned_event(events, old, abandoned_detail(old, transaction_id, old.connector_id, new_start,
                                                               events.id_tags, place=f"EVSE {evse_id}"),
                                 superseded_by=transaction_id)
                 for old in closed]
    return closed, abandoned


async def _updated(cs: ChargingStation, payload: dict) -> None:
    info = payload["transactionInfo"]
    station_id = info["transactionId"]
    meter_value = payload.get("meterValue") or []
    count, measurands = samples(meter_value)
    extra: dict[str, Any] = {}
    transaction_id = await cs.transaction_id(station_id)
    if transaction_id is None:
        extra["unknown_transaction"] = True
    else:
        evse_id = (payload.get("evse") or {}).get("id") or 0
        cs.ctx.store.add_meter_values(cs.id, evse_id, transaction_id, as_16_meter_values(meter_value))
        if (wh := cs._register_wh(meter_value, last=True)) is not None:
            cs.remember(station_id, transaction_id, wh)
    cs.ctx.sink.emit(cs.event(
        "transaction_update", transaction_id=transaction_id,
        station_transaction_id=info["transactionId"], trigger_reason=payload["triggerReason"],
        charging_state=info.get("chargingState"), samples_count=count, measurands=measurands, **extra))


async def _ended(cs: ChargingStation, payload: dict, known: StationTransaction | None) -> None:
    store, events = cs.ctx.store, cs.ctx.events
    info, timestamp = payload["transactionInfo"], payload["timestamp"]
    station_id = info["transactionId"]
    reason = info.get("stoppedReason") or "Local"
    meter_value = payload.get("meterValue")
    meter_stop = cs._register_wh(meter_value, last=True)
    token = payload.get("idToken") or {}
    if known is not None and known.transaction.stopped:
        first = known.transaction
        sent = meter_stop if meter_stop is not None else "none given"
        cs.ctx.sink.emit(events.anomaly(
            cs.id, "repeated_stop", first.id,
            f"a second TransactionEvent Ended for station transaction {station_id!r} (meter_stop {sent}, "
            f"first stop: {first.meter_stop}): not billed again",
            first.stop_event_id, ocpp_version=VERSION, station_transaction_id=station_id))
        return
    extra: dict[str, Any] = {}
    anomalies = []
    event_id = new_event_id()
    now = _now()
    if known is None:
        # Never seen (started before Levity knew this station, or its Started was lost): answered
        # normally; a Levity id is still issued so the stop is one row, and a resend is a repeat.
        extra["unknown_transaction"] = True
        evse = payload.get("evse") or {}
        transaction_id = store.start_station_transaction(
            cs.id, station_id, evse.get("connectorId"), evse.get("id"), token.get("idToken"), None, timestamp, now)
        meter_start = None
        log.warning("%s: TransactionEvent Ended for unknown transaction %r accepted", cs.id, station_id)
        # A transaction Levity never saw started on that EVSE too: the open one there was abandoned.
        new_start = {"id_tag": token.get("idToken"), "meter_start": None, "timestamp": timestamp}
        closed, abandoned = await close_superseded(cs, evse.get("id"), transaction_id, new_start, now)
        anomalies += abandoned

        def undo() -> None:  # never answered: no row, so the resend is not taken for a repeat
            store.forget_stop(transaction_id, event_id)
            store.forget_transaction(transaction_id)
            for old in closed:
                store.reopen_abandoned(old.id, old.abandon_event_id)
    else:
        first = known.transaction
        transaction_id, meter_start = first.id, known.meter_start
        if meter_stop is None:
            meter_stop = cs.last_register(station_id, transaction_id)
        if first.abandoned_at is not None:
            anomalies.append(events.anomaly(
                cs.id, "stop_after_abandoned", transaction_id,
                f"stopped after it was closed as abandoned ({first.abandon_reason}): its transaction_stop "
                f"carries the station's figures", first.abandon_event_id, connector_id=first.connector_id,
                **version_fields(first)))

        def undo() -> None:  # its transaction_stop is not on disk: the resend is the first stop
            store.forget_stop(transaction_id, event_id)
    energy = meter_stop - meter_start if meter_stop is not None and meter_start is not None else None
    request = {"meter_stop": meter_stop, "timestamp": timestamp, "reason": info.get("stoppedReason"),
               "id_tag": token.get("idToken"), "transaction_data_entries": len(meter_value or ())}
    store.stop_transaction(transaction_id, meter_stop, timestamp, reason, token.get("idToken"), now,
                           event_id=event_id, request=request,
                           was_abandoned=known is not None and known.transaction.abandoned_at is not None)
    await store_then_audit(cs.ctx, transaction_id, cs.event(
        "transaction_stop", event_id=event_id, transaction_id=transaction_id, meter_stop=meter_stop,
        energy_delivered=energy, reason=reason, transaction_timestamp=timestamp, station_transaction_id=station_id,
        trigger_reason=payload["triggerReason"], **extra), anomalies, undo)
    # Once stored: an Ended answered with a CALLERROR comes again, its samples and energy with it.
    if meter_value:
        store.add_meter_values(cs.id, (payload.get("evse") or {}).get("id") or 0, transaction_id,
                               as_16_meter_values(meter_value))
    cs._open.pop(station_id, None)
    if energy is not None:
        metrics.record_energy(energy)


# Messages with no state of their own in Levity: answered as the spec says, and audited.

@on("DataTransfer")
async def data_transfer(cs: ChargingStation, payload: dict) -> dict:
    data = payload.get("data")
    cs.ctx.sink.emit(cs.event("data_transfer", vendor_id=payload["vendorId"], message_id=payload.get("messageId"),
                              data_length=len(str(data)) if data is not None else 0, status="UnknownVendorId"))
    return {"status": "UnknownVendorId"}


@on("FirmwareStatusNotification")
async def firmware_status(cs: ChargingStation, payload: dict) -> dict:
    cs.ctx.store.record_cp_status(cs.id, "firmware_status", payload["status"])
    cs.ctx.sink.emit(cs.event("firmware_status", status=payload["status"], request_id=payload.get("requestId")))
    return {}


@on("LogStatusNotification")
async def log_status(cs: ChargingStation, payload: dict) -> dict:
    cs.ctx.sink.emit(cs.event("log_status", status=payload["status"], request_id=payload.get("requestId")))
    return {}


@on("SecurityEventNotification")
async def security_event(cs: ChargingStation, payload: dict) -> dict:
    cs.ctx.sink.emit(cs.event("security_event", security_event_type=payload["type"],
                              event_timestamp=payload["timestamp"], tech_info=payload.get("techInfo")))
    return {}


@on("NotifyEvent")
async def notify_event(cs: ChargingStation, payload: dict) -> dict:
    data = payload["eventData"]
    cs.ctx.sink.emit(cs.event(
        "notify_event", request_timestamp=payload["generatedAt"], seq_no=payload["seqNo"],
        tbc=payload.get("tbc", False), events_count=len(data),
        triggers=sorted({entry["trigger"] for entry in data}),
        components=sorted({entry["component"]["name"] for entry in data})))
    return {}


@on("NotifyReport")
async def notify_report(cs: ChargingStation, payload: dict) -> dict:
    cs.ctx.sink.emit(cs.event("notify_report", request_id=payload["requestId"], seq_no=payload["seqNo"],
                              tbc=payload.get("tbc", False), report_entries=len(payload.get("reportData") or ())))
    return {}


@on("ClearedChargingLimit")
async def cleared_charging_limit(cs: ChargingStation, payload: dict) -> dict:
    cs.ctx.sink.emit(cs.event("charging_limit", action="ClearedChargingLimit",
                              charging_limit_source=payload["chargingLimitSource"], evse_id=payload.get("evseId")))
    return {}


@on("NotifyChargingLimit")
async def notify_charging_limit(cs: ChargingStation, payload: dict) -> dict:
    cs.ctx.sink.emit(cs.event("charging_limit", action="NotifyChargingLimit",
                              charging_limit_source=payload["chargingLimit"]["chargingLimitSource"],
                              evse_id=payload.get("evseId"),
                              schedules_count=len(payload.get("chargingSchedule") or ())))
    return {}


@on("ReportChargingProfiles")
async def report_charging_profiles(cs: ChargingStation, payload: dict) -> dict:
    cs.ctx.sink.emit(cs.event("charging_profiles_report", request_id=payload["requestId"], evse_id=payload["evseId"],
                              charging_limit_source=payload["chargingLimitSource"],
                              profiles_count=len(payload["chargingProfile"]), tbc=payload.get("tbc", False)))
    return {}


@on("NotifyEVChargingNeeds")
async def notify_ev_charging_needs(cs: ChargingStation, payload: dict) -> dict:
    # Levity does no smart charging: it cannot offer a schedule, so it says so (Rejected).
    needs = payload["chargingNeeds"]
    cs.ctx.sink.emit(cs.event("ev_charging_needs", evse_id=payload["evseId"],
                              requested_energy_transfer=needs["requestedEnergyTransfer"], status="Rejected"))
    return {"status": "Rejected"}
