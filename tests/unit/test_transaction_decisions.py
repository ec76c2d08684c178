"""Transaction decisions (repeated start or stop, abandoned, meter checks) on a store whose reads
see only committed writes: a decision for a charge point waits until the previous one is
committed, a stop's meter check sees the meter values not yet committed, and a call that is not
answered leaves nothing that would make its resend look like a repeat."""

import asyncio
import json
import sqlite3

from levity.audit.events import EventFactory
from levity.audit.sink import NotDurable
from levity.handling import Authorizer, CentralSystemContext
from levity.ocpp16.handlers import ChargePoint
from levity.framing import parse_frame
from levity.ocpp16.validation import PayloadValidator
from levity.store import Store

START = {"connectorId": 1, "idTag": "TAG", "meterStart": 1000, "timestamp": "2024-01-15T10:10:00Z"}
STOP = {"meterStop": 15000, "timestamp": "2024-01-15T11:00:00Z"}


class Sink:
    """The AuditSink interface, keeping what it is given; `fail` makes the next durable events of
    these types fail as a full disk does (surely not written)."""

    def __init__(self):
        self.events, self.fail = [], set()

    def emit(self, event):
        self.events.append(event.record)

    async def emit_durable(self, event):
        if event.record["event_type"] in self.fail:
            self.fail.discard(event.record["event_type"])
            raise NotDurable("disk full")
        self.events.append(event.record)

    def of(self, event_type, kind=None):
        return [e for e in self.events if e["event_type"] == event_type and kind in (None, e.get("kind"))]


class Connection:
    async def send(self, message: str) -> None:
        pass


def context(tmp_path) -> CentralSystemContext:
    return CentralSystemContext(store=Store(str(tmp_path / "levity.db")), sink=Sink(), events=EventFactory(),
                                authorizer=Authorizer(None), validator=PayloadValidator())


async def call(ctx, unique_id: str, action: str, payload: dict) -> list:
    """One CALL on a new connection of CP1 (as after a reconnect); its answer frame."""
    return json.loads(await ChargePoint("CP1", Connection(), ctx).answer(
        parse_frame(json.dumps([2, unique_id, action, payload]))))


def test_a_repeat_on_a_new_connection_waits_for_the_first_start_to_commit(tmp_path):
    async def run():
        ctx = context(tmp_path)
        assert (await call(ctx, "boot", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}))[0] == 3
        await ctx.store.commit_durable()
        holder = sqlite3.connect(tmp_path / "levity.db", isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's write: the first start's commit waits
        first = asyncio.create_task(call(ctx, "s1", "StartTransaction", START))
        while ctx.store._inflight is None:  # the first start decided, its commit is on the writer thread
            await asyncio.sleep(0)
        second = asyncio.create_task(call(ctx, "s2", "StartTransaction", START))
        for _ in range(20):
            await asyncio.sleep(0)  # turns of the loop, not time: the second could decide now
        assert not second.done() and ctx.store.stats()["pending_writes"] == 0, "the repeat waits, unwritten"
        holder.rollback()
        holder.close()
        answers = await asyncio.gather(first, second)
        assert answers[0][2]["transactionId"] == answers[1][2]["transactionId"] == 1
        assert ctx.store.count("transactions") == 1
        assert [a["kind"] for a in ctx.sink.of("anomaly")] == ["repeated_start"]
        assert not ctx._transaction_locks, "the lock is dropped once free"
        ctx.store.close()

    asyncio.run(run())


def test_a_stops_meter_check_sees_meter_values_not_yet_committed(tmp_path):
    async def run():
        ctx = context(tmp_path)
        tx = (await call(ctx, "s", "StartTransaction", START))[2]["transactionId"]
        reading = [{"timestamp": "2024-01-15T10:50:00Z", "sampledValue": [{"value": "16000"}]}]
        # The MeterValues and the stop are answered in one turn of the loop: its row is still queued.
        await asyncio.gather(call(ctx, "m", "MeterValues", {"connectorId": 1, "transactionId": tx,
                                                             "meterValue": reading}),
                             call(ctx, "e", "StopTransaction", {**STOP, "transactionId": tx}))
        [anomaly] = ctx.sink.of("anomaly")
        assert anomaly["kind"] == "meter_value_above_stop" and "16000 Wh" in anomaly["detail"]
        assert ctx.store.energy_registers("CP1", tx) == [("16000", None)]
        ctx.store.close()

    asyncio.run(run())


def test_a_stop_whose_event_failed_is_a_first_stop_when_sent_again(tmp_path):
    async def run():
        ctx = context(tmp_path)
        sink = ctx.sink
        tx = (await call(ctx, "s", "StartTransaction", START))[2]["transactionId"]
        sink.fail.add("transaction_stop")
        failed = await call(ctx, "e1", "StopTransaction", {**STOP, "transactionId": tx})
        assert failed[0] == 4 and failed[2] == "InternalError"
        assert not ctx.store.transaction(tx).stopped, "the stop was undone and committed"
        assert (await call(ctx, "e2", "StopTransaction", {**STOP, "transactionId": tx}))[0] == 3
        [stop] = sink.of("transaction_stop")
        assert stop["energy_delivered"] == 14000 and sink.of("anomaly") == [], "not taken for a repeat"
        ctx.store.close()

    asyncio.run(run())


def test_a_start_whose_event_failed_leaves_the_connector_as_it_was(tmp_path):
    async def run():
        ctx = context(tmp_path)
        sink = ctx.sink
        old = (await call(ctx, "s1", "StartTransaction", START))[2]["transactionId"]
        new_start = {**START, "meterStart": 2000}
        sink.fail.add("transaction_start")
        assert (await call(ctx, "s2", "StartTransaction", new_start))[0] == 4
        assert ctx.store.transaction(old).open, "its close was undone with the start"
        assert ctx.store.count("transactions") == 1
        answer = await call(ctx, "s3", "StartTransaction", new_start)  # the charger's resend
        assert answer[0] == 3 and answer[2]["transactionId"] > old
        assert not ctx.store.transaction(old).open
        [closed] = [a for a in sink.of("anomaly") if a["transaction_id"] == old][-1:]
        assert closed["kind"] == "abandoned_transaction"
        assert closed["event_id"] == ctx.store.transaction(old).abandon_event_id
        assert [s["transaction_id"] for s in sink.of("transaction_start")] == [old, answer[2]["transactionId"]]
        ctx.store.close()

    asyncio.run(run())


def test_a_start_the_database_refuses_closes_nothing(tmp_path):
    async def run():
        ctx = context(tmp_path)
        old = (await call(ctx, "s1", "StartTransaction", START))[2]["transactionId"]
        with sqlite3.connect(tmp_path / "levity.db") as db:
            db.execute("CREATE TRIGGER refuse BEFORE INSERT ON transactions WHEN NEW.id_tag = 'REFUSED' "
                       "BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
        refused = await call(ctx, "s2", "StartTransaction", {**START, "idTag": "REFUSED"})
        assert refused[0] == 4 and refused[2] == "InternalError"
        assert ctx.store.transaction(old).open, "the close committed with the refused start was undone"
        assert ctx.sink.of("anomaly") == []
        ctx.store.close()

    asyncio.run(run())
