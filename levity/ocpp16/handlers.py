"""One handler per OCPP 1.6 action a charge point sends: answer, store, audit.

Handlers follow the `ocpp` library's own examples (`@on(Action...)` on a ChargePoint
subclass, snake_case keyword arguments, `call_result` dataclasses as answers). Framing and
validation are Levity's (levity.framing, levity.ocpp16.validation), so every handler is registered with
skip_schema_validation: the payload was already checked against the same schemas.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ocpp.routing import on
from ocpp.v16 import ChargePoint as OcppChargePoint
from ocpp.v16 import call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import Action

from levity import metrics
from levity.audit.events import DEFAULT_MEASURAND, count_samples, new_event_id
from levity.audit.sink import NotDurable
from levity.framing import Call, CallError, Reply, call_result as encode_result
from levity.framing import parse_frame, response_payload, to_snake
# Authorizer and CentralSystemContext are re-exported: callers of the 1.6 handlers import them here.
from levity.handling import RETRY_INTERVAL, Authorizer, CentralSystemContext, TokenBucket, _now  # noqa: F401
from levity.handling import not_stored, store_then_audit
from levity.ocpp16.validation import VERSION, check_action
from levity.store import StorageError
from levity.transactions import (abandoned_detail, abandoned_event, highest_register, meter_anomalies,
                                 register_above_stop, registers_in, repeated_stop_detail, stop_request)

log = logging.getLogger(__name__)


class ChargePoint(OcppChargePoint):
    # Not the library's __init__: it builds a route map of bound methods, a lock and a queue
    # per connection; with 10,000 chargers the routes are shared per class. Calls Levity sends
    # go through levity.commands.CallSender and the connection's pending-call map, not call().
    def __init__(self, charge_point_id: str, connection, context: CentralSystemContext):
        self.id = charge_point_id
        self._connection = connection
        self.ctx = context
        self._bucket = TokenBucket(context.max_calls_per_second)
        self.logger = log

    @classmethod
    def routes(cls) -> dict[str, Any]:
        routes = cls.__dict__.get("_routes")
        if routes is None:
            routes = {f._on_action: f for klass in reversed(cls.__mro__) for f in vars(klass).values()
                      if hasattr(f, "_on_action")}
            cls._routes = routes
        return routes

    async def call(self, *args, **kwargs):
        raise NotImplementedError("Levity sends calls with levity.commands.CallSender")

    # Framing: every frame gets the answer OCPP-J names; nothing a charger sends stops the loop.

    async def handle_frame(self, raw: str | bytes) -> None:
        received = time.perf_counter()
        wait = self._bucket.delay()
        if wait:
            await self.ctx.throttle(wait)
        await self.route_message(raw, received)

    async def route_message(self, raw: str | bytes, received: float | None = None) -> None:
        # A valid CALL of a handled action is decoded and validated in one step; anything else
        # (broken, a reply, a failed rule) takes the standard path and its exact OCPP-J answer.
        frame = self.ctx.validator.decode_valid(raw) if type(raw) is str else None
        try:
            if frame is None:
                frame = parse_frame(raw)
        except CallError as error:
            log.warning("%s: malformed frame answered with %s: %s", self.id, error.code, error.description)
            await self._send(error.frame())
            return
        if isinstance(frame, Reply):
            # Answers to Levity's own calls are taken by the connection's pending-call map
            # before they get here: this one answers nothing Levity asked.
            log.warning("%s: ignored a reply to no pending call (unique id %s)", self.id, frame.unique_id[:36])
            return
        answer = await self.answer(frame)
        await self._send(answer)
        metrics.record_call(frame.action, answer.startswith("[4"),  # a CALLERROR frame: [4, ...
                            time.perf_counter() - (received or time.perf_counter()))

    async def answer(self, call: Call) -> str:
        """The CALLRESULT or CALLERROR frame for one CALL."""
        try:
            arguments = call.arguments
            if arguments is None:  # not yet validated (levity.framing.Call.arguments)
                check_action(call)
            handler = self.routes().get(call.action)
            if handler is None:
                raise CallError("NotSupported", f"{call.action} is not supported by Levity", call.unique_id)
            if arguments is None:
                self.ctx.validator.validate(call)
                arguments = to_snake(call.payload)
            response = await handler(self, **arguments)
            payload = response_payload(response)
        except (StorageError, NotDurable) as failure:
            return not_stored(self.ctx, self.id, call, failure).frame()
        except CallError as error:
            log.warning("%s: %s %s answered with %s: %s", self.id, call.action[:40], call.unique_id,
                        error.code, error.description)
            self.ctx.sink.emit(self.ctx.events.make(
                "call_error", self.id, action=call.action[:64], unique_id=call.unique_id, error_code=error.code,
                error_description=error.description))
            return error.frame()
        except Exception:
            log.exception("%s: %s %s failed", self.id, call.action, call.unique_id)
            return CallError("InternalError", "the Central System failed to handle this call", call.unique_id).frame()
        log.debug("%s: %s %s answered", self.id, call.action, call.unique_id)
        return encode_result(call.unique_id, payload)

    async def _send(self, message: str) -> None:
        await self._connection.send(message)

    # Handlers -----------------------------------------------------------------------------

    @on(Action.boot_notification, skip_schema_validation=True)
    async def on_boot_notification(self, charge_point_vendor: str, charge_point_model: str,
                                   charge_point_serial_number: str | None = None,
                                   charge_box_serial_number: str | None = None,
                                   firmware_version: str | None = None, **_: Any):
        store, now = self.ctx.store, _now()
        if self.ctx.boot_policy == "accept":
            status, registered = "Accepted", True
        else:
            registered = store.is_registered(self.id)
            status = "Accepted" if registered else self.ctx.boot_policy.capitalize()
        serial = charge_point_serial_number or charge_box_serial_number
        store.record_boot(self.id, {"vendor": charge_point_vendor, "model": charge_point_model,
                                    "serial_number": serial, "firmware_version": firmware_version},
                          status, registered, now)
        self.ctx.sink.emit(self.ctx.events.make(
            "boot_notification", self.id, vendor=charge_point_vendor, model=charge_point_model,
            serial_number=serial, firmware_version=firmware_version, status=status))
        log.info("%s: BootNotification from %s %s: %s", self.id, charge_point_vendor, charge_point_model, status)
        interval = self.ctx.heartbeat_interval if status == "Accepted" else RETRY_INTERVAL
        return call_result.BootNotification(current_time=now, interval=interval, status=status)

    @on(Action.heartbeat, skip_schema_validation=True)
    async def on_heartbeat(self, **_: Any):
        now = _now()
        self.ctx.store.record_heartbeat(self.id, now)
        self.ctx.sink.emit(self.ctx.events.make("heartbeat", self.id))
        return call_result.Heartbeat(current_time=now)

    @on(Action.status_notification, skip_schema_validation=True)
    async def on_status_notification(self, connector_id: int, error_code: str, status: str,
                                     info: str | None = None, timestamp: str | None = None,
                                     vendor_error_code: str | None = None, **_: Any):
        self.ctx.store.record_status(self.id, connector_id, status, error_code, info, vendor_error_code,
                                     timestamp, _now())
        self.ctx.sink.emit(self.ctx.events.make(
            "status_notification", self.id, connector_id=connector_id, status=status, error_code=error_code))
        return call_result.StatusNotification()

    @on(Action.authorize, skip_schema_validation=True)
    async def on_authorize(self, id_tag: str, **_: Any):
        status = self.ctx.authorizer.status(id_tag)
        self.ctx.sink.emit(self.ctx.events.make("authorize", self.id, id_tag=id_tag, status=status))
        return call_result.Authorize(id_tag_info=IdTagInfo(status=status))

    # Transactions: one session, one start and one stop, whatever the charger resends
    # (levity/transactions.py has the rules; each decision is made under the charge point's
    # transaction lock and committed before it is released: CentralSystemContext.transaction_lock).

    @on(Action.start_transaction, skip_schema_validation=True)
    async def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str,
                                   reservation_id: int | None = None, **_: Any):
        store, events = self.ctx.store, self.ctx.events
        status = self.ctx.authorizer.status(id_tag)
        async with self.ctx.transaction_lock(self.id):
            first, still_open = await store.start_lookup(self.id, connector_id, id_tag, meter_start, timestamp)
            if first is not None:
                state = "open" if first.open else "stopped" if first.stopped else "closed as abandoned"
                self.ctx.sink.emit(events.anomaly(
                    self.id, "repeated_start", first.id,
                    f"identical to the StartTransaction of transaction {first.id} ({state}): answered with its id",
                    first.start_event_id, connector_id=connector_id))
                log.info("%s: repeated StartTransaction answered with transaction %d", self.id, first.id)
                return call_result.StartTransaction(transaction_id=first.id, id_tag_info=IdTagInfo(status=status))
            now = _now()
            event_id = new_event_id()
            transaction_id = store.start_transaction(
                self.id, connector_id, id_tag, meter_start, timestamp, reservation_id, now, event_id=event_id)
            new_start = {"id_tag": id_tag, "meter_start": meter_start, "timestamp": timestamp}
            closed = [store.close_abandoned(old.id, f"superseded by transaction {transaction_id}", now,
                                            new_event_id(), key=transaction_id) for old in still_open]
            abandoned = [abandoned_event(events, old, abandoned_detail(old, transaction_id, connector_id, new_start,
                                                                       events.id_tags), superseded_by=transaction_id)
                         for old in closed]

            def undo() -> None:  # the start is never answered: no one learns its id, nothing closed for it
                store.forget_transaction(transaction_id)
                for old in closed:
                    store.reopen_abandoned(old.id, old.abandon_event_id)

            await store_then_audit(self.ctx, transaction_id, events.make(
                "transaction_start", self.id, event_id=event_id, connector_id=connector_id, id_tag=id_tag,
                meter_start=meter_start, transaction_id=transaction_id, transaction_timestamp=timestamp),
                abandoned, undo)
        log.debug("%s: transaction %d started on connector %d (%s)", self.id, transaction_id, connector_id, status)
        return call_result.StartTransaction(transaction_id=transaction_id, id_tag_info=IdTagInfo(status=status))

    @on(Action.stop_transaction, skip_schema_validation=True)
    async def on_stop_transaction(self, meter_stop: int, timestamp: str, transaction_id: int,
                                  reason: str | None = None, id_tag: str | None = None,
                                  transaction_data: list | None = None, **_: Any):
        store, events = self.ctx.store, self.ctx.events
        sent = stop_request(meter_stop, timestamp, reason, id_tag, transaction_data)
        reason = reason or "Local"  # OCPP 1.6: an absent reason means Local
        id_tag_info = IdTagInfo(status=self.ctx.authorizer.status(id_tag)) if id_tag else None
        async with self.ctx.transaction_lock(self.id):
            known = await store.load_transaction(transaction_id)
            # Another charge point's, or a 2.0.1 one (its station never learnt Levity's id): unknown.
            if known is not None and (known.charge_point_id != self.id or known.ocpp_version != VERSION):
                known = None
            if known is not None and known.stopped:
                # A resend (offline queue, reconnect, or two stops within a millisecond): billed once.
                self.ctx.sink.emit(events.anomaly(
                    self.id, "repeated_stop", transaction_id, repeated_stop_detail(known, sent, events.id_tags),
                    known.stop_event_id, connector_id=known.connector_id))
                log.info("%s: repeated StopTransaction for transaction %d answered", self.id, transaction_id)
                return call_result.StopTransaction(id_tag_info=id_tag_info)
            extra: dict[str, Any] = {}
            anomalies = []
            undo = None
            event_id = new_event_id()
            if known is None:
                # Offline starts (-1) and ids we never issued: answer normally, or the charger
                # retries forever; the event says so instead.
                energy = 0
                extra["unknown_transaction"] = True
                log.warning("%s: StopTransaction for unknown transaction %d accepted", self.id, transaction_id)
            else:
                energy = meter_stop - known.meter_start  # kept as sent, even when negative (flagged below)
                store.stop_transaction(transaction_id, meter_stop, timestamp, reason, id_tag, _now(),
                                       event_id=event_id, request=sent, was_abandoned=known.abandoned_at is not None)
                if transaction_data:
                    store.add_meter_values(self.id, known.connector_id, transaction_id, transaction_data)
                if known.abandoned_at is not None:
                    anomalies.append(events.anomaly(
                        self.id, "stop_after_abandoned", transaction_id,
                        f"stopped after it was closed as abandoned ({known.abandon_reason}): its transaction_stop "
                        f"carries the charger's figures", known.abandon_event_id, connector_id=known.connector_id))
                highest = highest_register(store.energy_registers(self.id, transaction_id))
                anomalies += meter_anomalies(events, self.id, known, meter_stop, highest, event_id)

                def undo() -> None:  # its transaction_stop is not on disk: the resend is the first stop
                    store.forget_stop(transaction_id, event_id)

            await store_then_audit(self.ctx, transaction_id, events.make(
                "transaction_stop", self.id, event_id=event_id, transaction_id=transaction_id, meter_stop=meter_stop,
                energy_delivered=energy, reason=reason, transaction_timestamp=timestamp, **extra), anomalies, undo)
            if known is not None:
                metrics.record_energy(energy)  # once stored: a stop answered with a CALLERROR comes again
        log.debug("%s: transaction %d stopped (%s), %d Wh", self.id, transaction_id, reason, energy)
        return call_result.StopTransaction(id_tag_info=id_tag_info)

    @on(Action.meter_values, skip_schema_validation=True)
    async def on_meter_values(self, connector_id: int, meter_value: list, transaction_id: int | None = None,
                              **_: Any):
        self.ctx.store.add_meter_values(self.id, connector_id, transaction_id, meter_value)
        samples_count, measurands = count_samples(meter_value)
        self.ctx.sink.emit(self.ctx.events.make(
            "meter_values", self.id, connector_id=connector_id, transaction_id=transaction_id,
            samples_count=samples_count, measurands=measurands))
        if transaction_id is not None and DEFAULT_MEASURAND in measurands:
            await self._check_late_register(transaction_id, meter_value)
        return call_result.MeterValues()

    async def _check_late_register(self, transaction_id: int, meter_value: list) -> None:
        """Meter values that arrive after their transaction's stop (an offline queue) and read
        more than its meterStop: kept, and flagged. Under the transaction lock: a stop being
        committed now is either seen here or sees these values (Store.energy_registers)."""
        highest = highest_register(registers_in(meter_value))
        if highest is None:
            return
        async with self.ctx.transaction_lock(self.id):
            meter_stop = self.ctx.store.meter_stop(self.id, transaction_id)
            if meter_stop is not None and highest > meter_stop:
                known = self.ctx.store.transaction(transaction_id)
                self.ctx.sink.emit(register_above_stop(self.ctx.events, self.id, known, meter_stop, highest,
                                                       known.stop_event_id))

    @on(Action.data_transfer, skip_schema_validation=True)
    async def on_data_transfer(self, vendor_id: str, message_id: str | None = None, data: str | None = None,
                               **_: Any):
        # No vendor extensions are installed; the data itself stays out of the audit trail.
        self.ctx.sink.emit(self.ctx.events.make(
            "data_transfer", self.id, vendor_id=vendor_id, message_id=message_id,
            data_length=len(data) if data else 0, status="UnknownVendorId"))
        return call_result.DataTransfer(status="UnknownVendorId")

    @on(Action.diagnostics_status_notification, skip_schema_validation=True)
    async def on_diagnostics_status_notification(self, status: str, **_: Any):
        self.ctx.store.record_cp_status(self.id, "diagnostics_status", status)
        self.ctx.sink.emit(self.ctx.events.make("diagnostics_status", self.id, status=status))
        return call_result.DiagnosticsStatusNotification()

    @on(Action.firmware_status_notification, skip_schema_validation=True)
    async def on_firmware_status_notification(self, status: str, **_: Any):
        self.ctx.store.record_cp_status(self.id, "firmware_status", status)
        self.ctx.sink.emit(self.ctx.events.make("firmware_status", self.id, status=status))
        return call_result.FirmwareStatusNotification()
