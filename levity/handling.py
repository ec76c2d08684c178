"""What the handlers of both OCPP versions share: the id-tag decisions, the per-charger
throttle, the context the server builds once (store, audit, policies), and how a transaction
start or stop is stored before it is answered (store_then_audit, not_stored).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any, Callable

import yaml
from ocpp.v16.enums import AuthorizationStatus

from levity.audit.events import EventFactory, iso_utc
from levity.audit.sink import AuditSink, NotDurable
from levity.framing import Call, CallError, SchemaValidator
from levity.store import StorageError, Store

log = logging.getLogger(__name__)

RETRY_INTERVAL = 60  # seconds a Pending/Rejected charger waits before booting again
AUTH_STATUSES = {s.value for s in AuthorizationStatus} - {"ConcurrentTx"}


class Authorizer:
    """Id tag decisions: every tag Accepted, or a list of tag -> Accepted/Blocked/Expired/Invalid
    (tags not listed are Invalid)."""

    def __init__(self, statuses: dict[str, str] | None = None):
        self._statuses = statuses

    @classmethod
    def from_file(cls, path: str | None) -> "Authorizer":
        if not path:
            return cls(None)
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of id tag to status")
        statuses = {}
        for tag, status in data.items():
            if status not in AUTH_STATUSES:
                raise ValueError(f"{path}: id tag {tag!r}: status {status!r} is not one of {sorted(AUTH_STATUSES)}")
            statuses[str(tag)] = status
        return cls(statuses)

    def status(self, id_tag: str) -> str:
        if self._statuses is None:
            return AuthorizationStatus.accepted.value
        return self._statuses.get(id_tag, AuthorizationStatus.invalid.value)


class TokenBucket:
    """Calls per second per charger: bursts up to twice the rate, then answers slow down.
    Slowing (not refusing) keeps every call of a charger that misbehaves briefly."""

    def __init__(self, rate: float):
        self.rate = rate
        self.capacity = max(1.0, 2 * rate)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def delay(self) -> float:
        """Take one token; return how long to wait first (0 when within the rate)."""
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class TransactionLock:
    """One charge point's transaction lock, created on demand and dropped when nobody holds or
    awaits it. A class rather than an asynccontextmanager: it is taken up to three times per
    transaction, and a generator-based context manager costs several times as much per use."""

    __slots__ = ("locks", "charge_point_id", "entry")

    def __init__(self, locks: dict[str, list], charge_point_id: str):
        self.locks = locks  # charge point id -> [asyncio.Lock, users]
        self.charge_point_id = charge_point_id

    async def __aenter__(self) -> None:
        entry = self.locks.get(self.charge_point_id)
        if entry is None:
            entry = self.locks[self.charge_point_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        self.entry = entry
        try:
            await entry[0].acquire()
        except BaseException:  # cancelled while waiting: no longer a user
            self._leave()
            raise

    async def __aexit__(self, *exc_info) -> None:
        self.entry[0].release()
        self._leave()

    def _leave(self) -> None:
        entry = self.entry
        entry[1] -= 1
        if not entry[1]:
            del self.locks[self.charge_point_id]


class CentralSystemContext:
    """What every charge point handler shares: built once by the server."""

    def __init__(self, *, store: Store, sink: AuditSink, events: EventFactory, authorizer: Authorizer,
                 validator: SchemaValidator, boot_policy: str = "accept", heartbeat_interval: int = 300,
                 max_calls_per_second: float = 50.0):
        self.max_calls_per_second = max_calls_per_second
        self.throttled = 0
        self.not_stored = 0  # transaction calls answered with a CALLERROR because storage failed
        self.store = store
        self.sink = sink
        self.events = events
        self.authorizer = authorizer
        self.validator = validator  # the 1.6 one; validator_201 for OCPP 2.0.1
        self.validator_201: SchemaValidator | None = None
        self.boot_policy = boot_policy
        self.heartbeat_interval = heartbeat_interval
        self._transaction_locks: dict[str, list] = {}  # charge point id -> [asyncio.Lock, users]

    def transaction_lock(self, charge_point_id: str) -> "TransactionLock":
        """Held by a transaction decision (repeated start or stop, abandoned, a meter check) from
        its reads until its writes are committed: the store's reads see only committed data, so
        the next decision for this charge point, on this connection or a new one after a
        reconnect, must wait for them. `async with ctx.transaction_lock(charge_point_id):`"""
        return TransactionLock(self._transaction_locks, charge_point_id)

    async def throttle(self, wait: float) -> None:
        """A charger above its call rate (TokenBucket.delay() > 0): its next answer waits."""
        self.throttled += 1
        await asyncio.sleep(wait)


# Storage failures on transaction calls (both versions) -----------------------------------------

async def store_then_audit(ctx: CentralSystemContext, transaction_id: int, event, anomalies=(), undo=None) -> None:
    """Before a transaction start or stop is answered: the row is committed (fsynced), then
    its audit event is on disk. Either failing raises StorageError/NotDurable, which the
    connection turns into a CALLERROR (not_stored); never an answer for something not stored.
    The caller holds the charge point's transaction lock (ctx.transaction_lock) throughout.

    anomalies: this call's ocpp.anomaly events. Queued only once the row is committed and
    just before `event`, they reach disk with it; a call not stored sends none (its writes,
    an abandoned close included, are dropped with its commit and the resend decides again).
    undo: when the event surely did not reach disk (the row did), or the database refused
    the row alone, writes back what the call changed, so the charger's resend is not taken
    for a repeat; committed before the caller releases its transaction lock. An anomaly
    queued ahead of the failed event may still have reached disk: the resend's anomaly then
    repeats it (a new event id)."""
    written = None

    def queue_events() -> None:  # run by the store as it reports the commit, before this task wakes
        nonlocal written
        for anomaly in anomalies:
            ctx.sink.emit(anomaly)
        written = ctx.sink.emit_durable(event)

    try:
        await ctx.store.commit_durable(transaction_id, then=queue_events)
    except StorageError as failure:
        if failure.refused and undo is not None:  # its other writes (a close) committed without it
            await write_back(ctx.store, undo)
        raise
    try:
        await written
    except NotDurable as failure:
        if undo is not None and not failure.maybe_written:
            await write_back(ctx.store, undo)
        raise


async def write_back(store: Store, undo: Callable[[], None]) -> None:
    """Queue `undo` (writes that put back what a call not answered changed) and commit it."""
    undo()
    try:
        await store.commit_durable()
    except StorageError:
        pass  # logged by the store; the undo stays queued and is retried


def not_stored(ctx: CentralSystemContext, charge_point_id: str, call: Call, failure: Exception,
               **event_fields: Any) -> CallError:
    """The CALLERROR for a transaction call that could not be stored (StorageError, NotDurable):
    InternalError, the call was valid and Levity could not store it, so the charger resends it.
    OCPP 1.6 (edition 2) section 3.7, "Transaction-related messages", and 3.7.1, "Error
    responses to transaction-related messages" (TransactionMessageAttempts,
    TransactionMessageRetryInterval); OCPP 2.0.1 part 2, use case E13 "Transaction-related
    message not accepted by CSMS" (MessageAttemptsTransactionEvent,
    MessageAttemptIntervalTransactionEvent). In OCPP-J that failure is a CALLERROR.
    event_fields: added to the call_error event (2.0.1: ocpp_version)."""
    ctx.not_stored += 1
    # The store and the sink each log once per failure episode; per call only debug.
    log.debug("%s: %s %s not stored (%s): answered InternalError so the charger retries",
              charge_point_id, call.action, call.unique_id, failure)
    ctx.sink.emit(ctx.events.make(
        "call_error", charge_point_id, action=call.action[:64], unique_id=call.unique_id, error_code="InternalError",
        error_description="not stored", **event_fields))
    return CallError("InternalError", "Levity could not store this transaction message; send it again",
                     call.unique_id)


def _now() -> str:
    return iso_utc(time.time_ns())
