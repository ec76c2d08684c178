"""Storage failing under a real `levity serve`: a full disk under the spool, the audit file or
the database, a full spool with drop_newest, writes the database refuses, another process
holding the database's write lock. Transaction calls are never answered as stored when they
are not (the charger gets a CALLERROR and retries), every other call is still answered, and
storage works again once the fault is gone.

The full-disk tests mount a small tmpfs, which needs root; elsewhere they skip saying so."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import read_audit_file
from tests.support.forward_receiver import ForwardReceiver
from tests.support.levity_process import LevityProcess
from tests.support.ocpp_client import raw_charge_point

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}
CALLRESULT, CALLERROR = 3, 4


_sessions = itertools.count()


def start_payload(id_tag: str = "TAG") -> dict:
    """A new session's start each call: an identical one would be a repeat, answered with the
    first start's id without storing anything (levity/transactions.py)."""
    return {"connectorId": 1, "idTag": id_tag, "meterStart": next(_sessions), "timestamp": "2024-01-15T10:10:00Z"}


@contextlib.contextmanager
def small_disk(path: Path, size: str = "1m"):
    """A tmpfs of `size` at `path`: a disk that can be filled on purpose."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {result.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> Path:
    """Take every free byte of the file system under `directory`; delete the file to free them."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 4096, 1):  # big blocks first, then what is left of the last pages
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as full:
        (directory / "probe").write_bytes(b"x" * 4096)
    assert full.value.errno == errno.ENOSPC
    (directory / "probe").unlink(missing_ok=True)
    return filler


async def eventually(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def fluentd_env(port: int) -> dict[str, str]:
    return {"FLUENTD_ENABLED": "true", "FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(port),
            "FLUENTD_TIMEOUT": "1", "LEVITY_FLUSH_INTERVAL": "0.05"}


def error_lines(server, needle: str) -> list[str]:
    return [line for line in server.log().splitlines() if "ERROR" in line and needle in line]


async def test_full_disk_under_the_spool_answers_callerror_then_recovers(levity, tmp_path):
    with small_disk(tmp_path / "disk", "2m") as disk, ForwardReceiver() as receiver:
        receiver.refuse = True  # everything stays in the spool
        server = levity({**fluentd_env(receiver.port), "LEVITY_SPOOL_DIR": str(disk / "spool")})
        async with raw_charge_point(server.url, "CP-SPOOL") as cp:
            assert (await cp.call("b", "BootNotification", BOOT))[0] == CALLRESULT
            first = await cp.call("s-first", "StartTransaction", start_payload())  # spooled with the others
            assert first[0] == CALLRESULT
            filler = fill(disk)
            answered = [first[2]["transactionId"]]
            for n in range(500):  # the segment's last page may still hold a few events
                answer = await cp.call(f"s{n}", "StartTransaction", start_payload())
                if answer[0] == CALLERROR:
                    break
                answered.append(answer[2]["transactionId"])
            for n in range(3):
                assert answer[0] == CALLERROR and answer[2] == "InternalError", answer
                assert (await cp.call(f"h{n}", "Heartbeat", {}))[0] == CALLRESULT  # other calls go on
                answer = await cp.call(f"again{n}", "StartTransaction", start_payload())
            assert answer[0] == CALLERROR, answer
            metrics = server.metrics()
            assert metrics["levity_audit_durable_failed"] >= 3
            assert metrics["levity_calls_not_stored"] == 4
            # One line for the failure episode, not one per event.
            assert len(error_lines(server, "cannot write to")) == 1, server.log()
            # Fluentd back while the disk is still full: what was spooled before is delivered,
            # though the spool cannot record its cursor.
            receiver.refuse = False
            await eventually(lambda: server.metrics()['levity_audit_events_total{state="acknowledged"}'] >= 2 + len(answered),
                             what="the events spooled before the disk filled up to be acknowledged")
            filler.unlink()
            answer = await cp.call("s-ok", "StartTransaction", start_payload())
            assert answer[0] == CALLRESULT, answer
            transaction_id = answer[2]["transactionId"]
            # The episode ends once writes have worked for a while (levity/audit/write_failures.py).
            n = 0
            while "spool: writing works again" not in server.log():
                n += 1
                assert n < 200, server.log()
                assert (await cp.call(f"h-after{n}", "Heartbeat", {}))[0] == CALLRESULT
                await asyncio.sleep(0.1)  # a charger's pace: the recovery is judged over seconds
        await eventually(lambda: any(e.record.get("transaction_id") == transaction_id
                                     and e.record["event_type"] == "transaction_start" for e in receiver.events),
                         what="the answered start to reach Fluentd")
        # Only the answered starts are in the database: the refused ones left no transaction.
        with sqlite3.connect(server.env["LEVITY_DATABASE"]) as db:
            assert [r[0] for r in db.execute("SELECT id FROM transactions ORDER BY id")] == [
                *answered, transaction_id]
        assert len(error_lines(server, "cannot write to")) == 1, server.log()
        assert "unexpected error" not in server.log()


async def test_drop_newest_on_a_full_spool_refuses_transaction_events(levity):
    with ForwardReceiver() as receiver:
        receiver.refuse = True
        server = levity({**fluentd_env(receiver.port), "LEVITY_SPOOL_MAX_BYTES": "64KB",
                         "LEVITY_SPOOL_OVERFLOW": "drop_newest",
                         "LEVITY_MAX_CALLS_PER_SECOND": "100000"})
        async with raw_charge_point(server.url, "CP-FULL") as cp:
            assert (await cp.call("b", "BootNotification", BOOT))[0] == CALLRESULT
            n = 0
            while server.metrics()['levity_audit_events_total{state="dropped"}'] == 0:  # until the spool refuses events
                for _ in range(50):
                    n += 1
                    assert (await cp.call(f"h{n}", "Heartbeat", {}))[0] == CALLRESULT
            answer = await cp.call("s", "StartTransaction", start_payload())
            assert answer[0] == CALLERROR and answer[2] == "InternalError", answer
            assert server.metrics()["levity_audit_durable_failed"] >= 1


async def test_full_disk_under_the_audit_file_answers_callerror(levity, tmp_path):
    with small_disk(tmp_path / "disk", "1m") as disk:
        server = levity({"LEVITY_AUDIT_SINK": "file", "LEVITY_AUDIT_FILE": str(disk / "audit.jsonl")})
        async with raw_charge_point(server.url, "CP-FILE") as cp:
            assert (await cp.call("s0", "StartTransaction", start_payload()))[0] == CALLRESULT
            filler = fill(disk)
            answered = []
            for n in range(500):  # the file's last page may still hold a few lines
                answer = await cp.call(f"s{n + 1}", "StartTransaction", start_payload())
                if answer[0] == CALLERROR:
                    break
                answered.append(answer[2]["transactionId"])
            assert answer[0] == CALLERROR and answer[2] == "InternalError", answer
            filler.unlink()
            answer = await cp.call("s-ok", "StartTransaction", start_payload())
            assert answer[0] == CALLRESULT
            answered.append(answer[2]["transactionId"])
        assert server.metrics()["levity_audit_durable_failed"] >= 1
        server.stop()
        # Every transaction id a charger got has its event in the file; the refused call left none.
        records = [r["record"] for r in read_audit_file(disk / "audit.jsonl")]
        starts = [r["transaction_id"] for r in records if r["event_type"] == "transaction_start"]
        assert starts[1:] == answered


async def test_database_on_a_full_disk_fails_transactions_and_keeps_the_other_writes(levity, tmp_path):
    with small_disk(tmp_path / "disk", "2m") as disk:
        database = disk / "levity.db"
        server = levity({"LEVITY_DATABASE": str(database)})
        async with raw_charge_point(server.url, "CP-DB") as cp:
            assert (await cp.call("b", "BootNotification", BOOT))[0] == CALLRESULT
            first = await cp.call("s0", "StartTransaction", start_payload())
            assert first[0] == CALLRESULT
            filler = fill(disk)
            status = {"connectorId": 2, "errorCode": "NoError", "status": "Faulted"}
            assert (await cp.call("st", "StatusNotification", status))[0] == CALLRESULT
            for n in range(3):
                answer = await cp.call(f"s{n + 1}", "StartTransaction", start_payload())
                assert answer[0] == CALLERROR and answer[2] == "InternalError", answer
            filler.unlink()
            answer = await cp.call("s-ok", "StartTransaction", start_payload())
            assert answer[0] == CALLRESULT, answer
            assert answer[2]["transactionId"] > first[2]["transactionId"]
        with sqlite3.connect(database) as db:
            # The status written during the outage was kept and committed once the disk had room.
            assert db.execute("SELECT status FROM connectors WHERE connector_id = 2").fetchone() == ("Faulted",)
            ids = [r[0] for r in db.execute("SELECT id FROM transactions ORDER BY id")]
        assert ids == [first[2]["transactionId"], answer[2]["transactionId"]]
        log = server.log()
        assert "Exception in callback" not in log and "within a transaction" not in log, log
        assert len(error_lines(server, "database: commit failed")) == 1, log
        assert "database: commits work again" in log
        assert server.metrics()["levity_store_commit_failures"] >= 1


async def test_a_write_the_database_refuses_is_dropped_alone(levity):
    server = levity()
    database = server.env["LEVITY_DATABASE"]
    async with raw_charge_point(server.url, "CP-POISON") as cp:
        assert (await cp.call("b", "BootNotification", BOOT))[0] == CALLRESULT
        with sqlite3.connect(database, timeout=10) as db:
            db.execute("CREATE TRIGGER poison_meter BEFORE INSERT ON meter_values WHEN NEW.value = 'poison' "
                       "BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
            db.execute("CREATE TRIGGER poison_start BEFORE INSERT ON transactions WHEN NEW.id_tag = 'POISON' "
                       "BEGIN SELECT RAISE(ABORT, 'injected fault'); END")
        meter = {"connectorId": 1, "meterValue": [{"timestamp": "2024-01-15T10:20:00Z",
                                                   "sampledValue": [{"value": "poison"}]}]}
        assert (await cp.call("m", "MeterValues", meter))[0] == CALLRESULT
        refused = await cp.call("s-poison", "StartTransaction", start_payload("POISON"))
        assert refused[0] == CALLERROR and refused[2] == "InternalError", refused
        answer = await cp.call("s", "StartTransaction", start_payload())
        assert answer[0] == CALLRESULT, answer
    with sqlite3.connect(database) as db:
        assert [r[0] for r in db.execute("SELECT id FROM transactions")] == [answer[2]["transactionId"]]
    assert server.metrics()["levity_store_writes_refused"] == 2
    assert "Exception in callback" not in server.log()


async def test_another_process_holding_the_write_lock_does_not_stall_answers(levity):
    server = levity()
    database = server.env["LEVITY_DATABASE"]
    async with raw_charge_point(server.url, "CP-LOCK") as cp:
        assert (await cp.call("b", "BootNotification", BOOT))[0] == CALLRESULT
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # what a slow `levity charge-points` would hold
        try:
            # Before: the loop's own connection waited up to 5 s for the lock, answering nobody.
            for n in range(5):
                reply = await cp.call(f"h{n}", "Heartbeat", {}, timeout=4)
                assert reply[0] == CALLRESULT
            start = asyncio.create_task(cp.call("s", "StartTransaction", start_payload(), timeout=15))
            await asyncio.sleep(0)
            assert not start.done()  # it waits for its commit, which waits for the lock
        finally:
            holder.execute("COMMIT")
            holder.close()
        answer = await start
        assert answer[0] == CALLRESULT and answer[2]["transactionId"] > 0
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT last_heartbeat FROM charge_points WHERE id = 'CP-LOCK'").fetchone()[0]


def test_charge_points_command_commits_before_it_lists(tmp_path):
    """The command line holds the write lock only while it commits, not while it prints."""
    database = tmp_path / "levity.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LEVITY_", "FLUENTD_"))}
    env["LEVITY_DATABASE"] = str(database)
    count = 5000  # their list is more than a pipe holds
    reader, writer = os.pipe()  # nobody reads: printing the list blocks
    process = subprocess.Popen([sys.executable, "-m", "levity.cli", "charge-points", "register",
                                *[f"CP-{n}" for n in range(count)]], env=env, stdout=writer, stderr=subprocess.PIPE)
    os.close(writer)
    try:
        end = time.monotonic() + 20
        registered = 0
        while time.monotonic() < end and registered < count:
            if database.exists():
                with contextlib.suppress(sqlite3.OperationalError):
                    with sqlite3.connect(database, timeout=0.1) as db:
                        registered = db.execute("SELECT count(*) FROM charge_points").fetchone()[0]
            time.sleep(0.05)
        assert registered == count
        assert process.poll() is None  # still printing into the full pipe...
        with sqlite3.connect(database, timeout=1) as db:  # ...and the write lock is free
            db.execute("BEGIN IMMEDIATE")
            db.execute("ROLLBACK")
    finally:
        os.close(reader)
        process.wait(10)


async def test_a_stdout_nobody_reads_does_not_stall_answers(tmp_path):
    reader, writer = os.pipe()
    server = LevityProcess(tmp_path, {"LEVITY_AUDIT_SINK": "stdout", "LEVITY_MAX_CALLS_PER_SECOND": "100000"},
                           stdout=writer)
    try:
        server.start()
        os.close(writer)
        async with raw_charge_point(server.url, "CP-PIPE") as cp, raw_charge_point(server.url, "CP-OTHER") as other:
            # More events than a pipe holds (64 KiB): before, the event loop blocked in write().
            for n in range(1500):
                assert (await cp.call(f"h{n}", "Heartbeat", {}))[0] == CALLRESULT
            start = asyncio.create_task(cp.call("s", "StartTransaction", start_payload(), timeout=60))
            for n in range(20):  # the other charger is answered while the start waits for its line
                assert (await other.call(f"o{n}", "Heartbeat", {}))[0] == CALLRESULT
            assert not start.done()

            def read_until_the_start():
                seen = b""
                while b"transaction_start" not in seen:
                    chunk = os.read(reader, 1 << 16)
                    assert chunk, "stdout closed before the transaction event"
                    seen = seen[-100:] + chunk
            await asyncio.get_running_loop().run_in_executor(None, read_until_the_start)
            answer = await start
            assert answer[0] == CALLRESULT and answer[2]["transactionId"] > 0
    finally:
        server.kill()
        os.close(reader)
