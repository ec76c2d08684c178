"""The audit event contract (docs/audit-events.md), in exactly one place.

Handlers call the builders below; the sinks ship what they return; the tests compare
against SPEC_FIELDS. Field names and types here are a public contract: add, never rename.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import time
from dataclasses import dataclass, field
from typing import Any

# Tag suffix (after the configured prefix) and event_type of every event.
TAGS: dict[str, str] = {
    "boot_notification": "boot",
    "status_notification": "status",
    "transaction_start": "transaction.start",
    "transaction_stop": "transaction.stop",
    "meter_values": "meter",
    "heartbeat": "heartbeat",
    "authorize": "authorize",
    "websocket_connect": "websocket",
    "websocket_disconnect": "websocket",
    # Additions (allowed by the contract): the other charger-initiated messages.
    "data_transfer": "data_transfer",
    "diagnostics_status": "diagnostics",
    "firmware_status": "firmware",
    "call_error": "error",  # a CALL Levity answered with a CALLERROR
    "command": "command",  # a call Levity sent to a charger (operator API)
    # "One session, one start and one stop": outside ocpp.transaction.** so billing routes never see it.
    "anomaly": "anomaly",
    # OCPP 2.0.1 (the spec's "OCPP 2.0.1 on the same tags"; docs/ocpp201.md): a transaction's
    # updates, and the messages 1.6 has no counterpart for.
    "transaction_update": "transaction.update",
    "notify_event": "notify_event",
    "notify_report": "report",
    "security_event": "security",
    "log_status": "log",
    "charging_limit": "charging_limit",
    "charging_profiles_report": "charging_profiles",
    "ev_charging_needs": "ev_charging_needs",
    # The state store (SQLite or PostgreSQL) stopped taking writes, or takes them again
    # (levity/store_outage.py): about this Levity process, not one charger.
    "store_state": "store",
}

COMMON_FIELDS: dict[str, type | tuple[type, ...]] = {
    "event_type": str,
    "charge_point_id": str,
    "timestamp": str,
    "event_id": str,
}

# Every event carries `ocpp_version` (the spec's "every event" addition); required of anomaly
# events, which never existed without it, so events spooled by earlier versions still conform.
OCPP_VERSION = "1.6"  # the default; events of a 2.0.1 connection pass ocpp_version="2.0.1"
OCPP_VERSIONS = ("1.6", "2.0.1")

NoneType = type(None)

# The fields each event_type must carry, with their types, as the spec fixes them.
SPEC_FIELDS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "boot_notification": {
        "vendor": str,
        "model": str,
        "serial_number": (str, NoneType),
        "firmware_version": (str, NoneType),
        "status": str,
    },
    "status_notification": {"connector_id": int, "status": str, "error_code": str},
    "transaction_start": {
        "connector_id": int,
        "id_tag": (str, NoneType),
        "meter_start": int,
        "transaction_id": int,
        "transaction_timestamp": str,
    },
    "transaction_stop": {
        "transaction_id": int,
        "meter_stop": int,
        "energy_delivered": int,
        "reason": str,
        "transaction_timestamp": str,
    },
    "meter_values": {
        "connector_id": int,
        "transaction_id": (int, NoneType),
        "samples_count": int,
        "measurands": list,
    },
    "heartbeat": {},
    "authorize": {"id_tag": (str, NoneType), "status": str},
    "websocket_connect": {"remote_address": str},
    "websocket_disconnect": {"remote_address": str},
    "command": {
        "action": str,
        "unique_id": str,
        "requested_by": str,
        "request": dict,
        "outcome": str,
        "status": (str, NoneType),
        "error_code": (str, NoneType),
        "latency_ms": (int, float),
    },
    "transaction_update": {
        "transaction_id": (int, NoneType),
        "station_transaction_id": str,
        "trigger_reason": str,
        "charging_state": (str, NoneType),
        "samples_count": int,
        "measurands": list,
    },
    "store_state": {
        "state": str,
        "since": str,
        "duration_seconds": (int, float, NoneType),
        "writes_waiting": int,
        "engine": str,
        "database": str,
        "error": (str, NoneType),
    },
    "anomaly": {
        "ocpp_version": str,
        "kind": str,
        "transaction_id": (int, NoneType),
        "first_event_id": (str, NoneType),
        "detail": str,
    },
}

# Where a 2.0.1 event may hold null (the spec's "OCPP 2.0.1 on the same tags": the station
# did not send it); every other field keeps the type above in both versions.
NULLABLE_201: dict[str, tuple[str, ...]] = {
    "status_notification": ("error_code",),
    "transaction_start": ("connector_id", "meter_start"),
    "transaction_stop": ("meter_stop", "energy_delivered"),
}

# The `kind` of an `anomaly` event: what a charger sent that does not fit one session, one start
# and one stop (docs/billing.md says what each means for billing).
ANOMALY_KINDS: dict[str, str] = {
    "repeated_start": "a StartTransaction identical to one already started: answered with the same transaction id",
    "repeated_stop": "a StopTransaction for a transaction already stopped: answered normally, no second stop",
    "abandoned_transaction": "an open transaction closed without a stop (a new start on its connector, or an "
                             "operator): no transaction_stop, its energy is unknown",
    "stop_after_abandoned": "the real StopTransaction of a transaction closed as abandoned: its transaction_stop "
                            "carries the charger's figures",
    "meter_stop_below_start": "meterStop below meterStart: kept as sent, energy_delivered is negative",
    "meter_value_above_stop": "an Energy.Active.Import.Register of the transaction above its meterStop: kept as sent",
}

STORE_STATES = ("down", "up")
STORE_EVENT_CHARGE_POINT = ""  # store events belong to no charger

COMMAND_OUTCOMES = ("result", "call_error", "timeout", "not_connected")
# Keys whose values are id tags (personal data) in the payloads of calls to chargers.
ID_TAG_KEYS = frozenset({"idTag", "parentIdTag", "idToken"})

DEFAULT_MEASURAND = "Energy.Active.Import.Register"


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One Fluentd event: tag, event time in nanoseconds, and the record."""

    tag: str
    time_ns: int
    record: dict[str, Any] = field(hash=False)

    @property
    def durable(self) -> bool:
        """Transaction events must be on disk before the charger gets its answer."""
        return self.record["event_type"] in ("transaction_start", "transaction_stop")


_second_cache: list = [None, ""]


def iso_utc(time_ns: int) -> str:
    """ISO 8601 UTC with millisecond digits and Z, e.g. 2024-01-15T10:00:00.123Z."""
    seconds, rest = divmod(time_ns, 1_000_000_000)
    if _second_cache[0] != seconds:  # formatting the date part once per second is enough
        _second_cache[:] = [seconds, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))]
    return f"{_second_cache[1]}.{rest // 1_000_000:03d}Z"


class _EventIds:
    """Unique event ids without a uuid4 per event: 64 random bits per process start plus a
    counter, 32 hex characters like a uuid. Within one process they sort in emission order."""

    def __init__(self) -> None:
        self._prefix = os.urandom(8).hex()
        self._counter = itertools.count()

    def next(self) -> str:
        return f"{self._prefix}{next(self._counter):016x}"


_event_ids = _EventIds()


class IdTagPolicy:
    """How id_tag (personal data) leaves Levity: as is, pseudonymized, or omitted.

    Pseudonyms are HMAC-SHA256 with an operator-held key, so the same tag always maps to
    the same value (sessions still join) but cannot be reversed without the key.
    """

    MODES = ("plain", "pseudonymize", "omit")

    def __init__(self, mode: str = "plain", key: bytes | None = None):
        if mode not in self.MODES:
            raise ValueError(f"id_tag mode must be one of {', '.join(self.MODES)}, not {mode!r}")
        if mode == "pseudonymize" and not key:
            raise ValueError("id_tag mode 'pseudonymize' needs a key (LEVITY_ID_TAG_KEY or LEVITY_ID_TAG_KEY_FILE)")
        self.mode = mode
        self._key = key or b""

    def apply(self, id_tag: str | None) -> str | None:
        if id_tag is None or self.mode == "plain":
            return id_tag
        if self.mode == "omit":
            return None
        digest = hmac.new(self._key, id_tag.encode("utf-8"), hashlib.sha256).hexdigest()
        return "hmac-sha256:" + digest[:32]


class EventFactory:
    """Builds contract-conforming events; one instance per server, shared by handlers."""

    def __init__(self, tag_prefix: str = "ocpp", id_tags: IdTagPolicy | None = None, clock=time.time_ns):
        self.tag_prefix = tag_prefix
        self.id_tags = id_tags or IdTagPolicy()
        self._clock = clock
        self.anomalies: dict[str, int] = {}  # kind -> anomaly events built (each is sent), for /metrics

    def make(self, event_type: str, charge_point_id: str, *, event_id: str | None = None,
             **fields: Any) -> AuditEvent:
        """event_id: one chosen in advance (new_event_id()), so it can be stored before the event is sent."""
        # Event time and `timestamp` are one instant: both come from this truncated value.
        now_ns = self._clock() // 1_000_000 * 1_000_000
        record = {
            "event_type": event_type,
            "charge_point_id": charge_point_id,
            "timestamp": iso_utc(now_ns),
            "event_id": event_id or _event_ids.next(),
            "ocpp_version": OCPP_VERSION,
        }
        if "id_tag" in fields:
            fields["id_tag"] = self.id_tags.apply(fields["id_tag"])
        record.update(fields)
        return AuditEvent(f"{self.tag_prefix}.{TAGS[event_type]}", now_ns, record)

    def command(self, charge_point_id: str, *, action: str, unique_id: str, requested_by: str, request: dict,
                outcome: str, status: str | None, error_code: str | None, latency_ms: float,
                **additions: Any) -> AuditEvent:
        """The `ocpp.command` event of one call Levity sent; id tags in `request` follow the privacy mode."""
        assert outcome in COMMAND_OUTCOMES, outcome
        return self.make("command", charge_point_id, action=action, unique_id=unique_id, requested_by=requested_by,
                         request=self._private(request), outcome=outcome, status=status, error_code=error_code,
                         latency_ms=latency_ms, **additions)

    def _private(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: (self.id_tags.apply(v) if k in ID_TAG_KEYS and isinstance(v, str) else self._private(v))
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self._private(v) for v in value]
        return value

    def anomaly(self, charge_point_id: str, kind: str, transaction_id: int | None, detail: str,
                first_event_id: str | None = None, *, event_id: str | None = None, **fields: Any) -> AuditEvent:
        """An `ocpp.anomaly` event; `kind` is one of ANOMALY_KINDS."""
        assert kind in ANOMALY_KINDS, kind
        self.anomalies[kind] = self.anomalies.get(kind, 0) + 1
        return self.make("anomaly", charge_point_id, event_id=event_id, kind=kind, transaction_id=transaction_id,
                         first_event_id=first_event_id, detail=detail, **fields)


    def store_state(self, *, state: str, since: str, duration_seconds: float | None, writes_waiting: int,
                    engine: str, database: str, error: str | None) -> AuditEvent:
        """An `ocpp.store` event: the store's writes failing (`down`) or working again (`up`).
        It concerns no charger (charge_point_id is empty) and no connection (no ocpp_version)."""
        assert state in STORE_STATES, state
        event = self.make("store_state", STORE_EVENT_CHARGE_POINT, state=state, since=since,
                          duration_seconds=duration_seconds, writes_waiting=writes_waiting, engine=engine,
                          database=database, error=error)
        del event.record["ocpp_version"]
        return event


def new_event_id() -> str:
    """An event id chosen before its event is built (stored with the state it belongs to)."""
    return _event_ids.next()


def count_samples(meter_value: list[dict]) -> tuple[int, list[str]]:
    """samples_count and measurands (distinct, first-appearance order) of a MeterValues request
    (meter_value as the handler gets it: snake_case keys)."""
    count = 0
    measurands: dict[str, None] = {}
    for entry in meter_value:
        for sample in entry.get("sampled_value", ()):
            count += 1
            measurands.setdefault(sample.get("measurand") or DEFAULT_MEASURAND, None)
    return count, list(measurands)


def conformance_errors(record: dict[str, Any]) -> list[str]:
    """What in `record` breaks the contract (empty when it conforms). Used by tests and doctor."""
    errors = []
    event_type = record.get("event_type")
    if event_type not in TAGS:
        return [f"unknown event_type {event_type!r}"]
    # Events the contract does not list (additions) need the common fields only.
    nullable = NULLABLE_201.get(event_type, ()) if record.get("ocpp_version") == "2.0.1" else ()
    for name, expected in {**COMMON_FIELDS, **SPEC_FIELDS.get(event_type, {})}.items():
        if name in nullable and name in record and record[name] is None:
            continue
        if name not in record:
            errors.append(f"{event_type}: missing field {name!r}")
        elif not isinstance(record[name], expected) or isinstance(record[name], bool):
            errors.append(f"{event_type}: field {name!r} is {type(record[name]).__name__}, expected {expected}")
    return errors
