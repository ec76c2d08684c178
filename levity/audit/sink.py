"""Where audit events go: the sink interface, and the local JSON-lines sink.

The server only knows AuditSink. `emit` must never block the event loop nor raise: a slow
or absent Fluentd must not make a charger wait. `emit_durable` returns once the event is
safe (on disk) and is used for transaction start/stop before the charger gets its answer;
when it cannot make the event safe it raises NotDurable, and the charger is told to retry.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Awaitable, Protocol

from levity.audit.events import AuditEvent
from levity.audit.write_failures import WriteFailures
from levity.config import Settings
from levity.handoff import hand_off

log = logging.getLogger(__name__)


class NotDurable(Exception):
    """emit_durable() could not make the event safe. `maybe_written`: it may still be on
    disk (written, but the fsync failed), so it may still be delivered."""

    def __init__(self, reason: str, maybe_written: bool = False):
        super().__init__(reason)
        self.maybe_written = maybe_written


def release_waiters(waiters: list[tuple[asyncio.Future, int]], written: int, synced: bool, reason: str) -> int:
    """After a group write: the emit_durable() callers whose event (at `index` in the batch)
    is within the first `written` and fsynced return, the others get NotDurable. Returns how
    many failed."""
    failed = 0
    for waiter, index in waiters:
        if waiter.done():
            continue
        if index < written and synced:
            waiter.set_result(None)
        else:
            failed += 1
            waiter.set_exception(NotDurable(reason, maybe_written=index < written))
    return failed


class AuditSink(Protocol):
    async def start(self) -> None: ...

    def emit(self, event: AuditEvent) -> None: ...

    def emit_durable(self, event: AuditEvent) -> Awaitable[None]:
        """A transaction event: done once it is on disk, NotDurable if it cannot be. A plain
        function returning a future, not a coroutine, so the write starts at the call even when
        the caller awaits later (store_then_audit calls it as the database commit is reported)."""
        ...

    async def close(self, timeout: float) -> None: ...

    def stats(self) -> dict[str, int]: ...

    def reopen(self) -> None:
        """SIGHUP: start again on a file that logrotate moved away (only a file has one)."""
        ...

    @property
    def accepting(self) -> bool:
        """False while new charger connections should be refused (spool full, overflow=block)."""
        ...


def settled(outcome: Exception | None) -> asyncio.Future:
    """An emit_durable() answer known at once: done, or failed with `outcome`."""
    future = asyncio.get_running_loop().create_future()
    if outcome is None:
        future.set_result(None)
    else:
        future.set_exception(outcome)
    return future


class NullSink:
    accepting = True

    def __init__(self) -> None:
        self._emitted = 0

    async def start(self) -> None:
        pass

    def emit(self, event: AuditEvent) -> None:
        self._emitted += 1

    def emit_durable(self, event: AuditEvent) -> Awaitable[None]:
        self._emitted += 1
        return settled(None)

    async def close(self, timeout: float) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {"emitted": self._emitted}

    def reopen(self) -> None:
        pass


class JsonLinesSink:
    """One JSON object per line: {"tag", "time", "record"}, on stdout or appended to a file.

    Lets `levity serve` do its job on a bare machine; a log shipper (or Fluentd's in_tail)
    can pick the file up. After logrotate moves the file away, SIGHUP makes Levity carry on in
    a new one (reopen).

    The event loop never writes: emit() appends the line to a list, and the lines of one turn
    of the loop are written together by the sink's own thread (a slow disk or a stdout pipe
    nobody reads stalls that thread, never the chargers). emit_durable() (transaction events)
    returns once its line is written and fsynced; lines that arrive meanwhile share the next
    write and fsync (group commit). A line that cannot be written is counted as dropped; a
    durable one raises NotDurable. On a pipe or terminal there is nothing to fsync.
    """

    accepting = True

    def __init__(self, stream: IO[bytes], owns_stream: bool = False, path: str | None = None):
        self._stream = stream  # used on the sink's thread only, once started
        self._owns_stream = owns_stream
        self._path = path
        self._emitted = 0
        self._failed = 0
        self.durable_failed = 0
        self._io: ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lines: list[bytes] = []
        self._waiters: list[tuple[asyncio.Future, int]] = []  # durable lines: (waiter, index in _lines)
        self._scheduled = False  # a write is scheduled or running
        self._write_failures = WriteFailures(log, "audit file: writing works again")

    @classmethod
    def to_file(cls, path: str) -> "JsonLinesSink":
        return cls(_open_for_append(path), owns_stream=True, path=path)

    def reopen(self) -> None:
        if self._path is None:
            return
        if self._io is not None:  # after the writes already queued, on the sink's thread
            self._io.submit(self._reopen_now)
        else:
            self._reopen_now()

    def _reopen_now(self) -> None:
        try:
            stream = _open_for_append(self._path)
        except OSError as exc:
            log.error("audit file: cannot reopen %s (%s); writing on to the old one", self._path, exc)
            return
        old, self._stream = self._stream, stream
        try:
            old.close()
        except (OSError, ValueError):
            pass
        log.info("audit file %s reopened", self._path)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="levity-audit-file")

    def emit(self, event: AuditEvent) -> None:
        line = json.dumps({"tag": event.tag, "time": round(event.time_ns / 1e9, 3), "record": event.record},
                          ensure_ascii=False, separators=(",", ":"))
        self._lines.append((line + "\n").encode("utf-8"))
        self._emitted += 1
        self._schedule()

    def emit_durable(self, event: AuditEvent) -> Awaitable[None]:
        if self._loop is None:
            return settled(NotDurable("the audit sink is not started"))
        future = self._loop.create_future()
        self._waiters.append((future, len(self._lines)))
        self.emit(event)
        return future

    def _schedule(self) -> None:
        if self._scheduled or self._loop is None:
            return
        self._scheduled = True
        self._loop.call_soon(self._write_pending)

    def _write_pending(self) -> None:
        lines, self._lines = self._lines, []
        waiters, self._waiters = self._waiters, []
        if not lines or self._io is None:
            self._scheduled = False
            return
        hand_off(self._loop, self._io, _write_lines, self, lines, bool(waiters),
                 then=lambda outcome: self._written(lines, waiters, *outcome))

    def _written(self, lines: list[bytes], waiters: list[tuple[asyncio.Future, int]], written: int,
                 synced: bool, error: OSError | None) -> None:
        if error is None:
            self._write_failures.worked()
        else:
            self._failed += len(lines) - written
            self._write_failures.failed(
                "audit file: cannot write events (%s). Transaction calls are answered with a CALLERROR (the charger "
                "retries) and other events are counted as dropped until it works again (logged then)", error)
        self.durable_failed += release_waiters(waiters, written, synced, f"audit file: {error}")
        self._scheduled = False
        if self._lines:
            self._schedule()

    async def close(self, timeout: float) -> None:
        if self._io is not None:
            io, self._io = self._io, None
            io.shutdown(wait=True)  # a write still running finishes first
        if self._lines:  # the last turn's lines
            lines, self._lines = self._lines, []
            written, _, _ = _write_lines(self, lines, True)
            self._failed += len(lines) - written
        for waiter, _ in self._waiters:
            if not waiter.done():
                waiter.set_exception(NotDurable("the audit sink closed"))
        self._loop = None
        if self._owns_stream:
            self._stream.close()

    def stats(self) -> dict[str, int]:
        return {"emitted": self._emitted, "dropped": self._failed, "durable_failed": self.durable_failed}


def _write_lines(sink: JsonLinesSink, lines: list[bytes], fsync: bool) -> tuple[int, bool, OSError | None]:
    """On the sink's thread: write whole lines (a partial one is cut off again where the stream
    is a file) and fsync if asked. Returns (lines written, fsynced, error); never raises."""
    stream = sink._stream  # read here: reopen() swaps it on this thread
    data = b"".join(lines)
    done = 0
    try:
        view = memoryview(data)
        while done < len(data):
            count = stream.write(view[done:])
            if not count:
                raise OSError(errno.EIO, "the stream accepts no more data")
            done += count
    except (OSError, ValueError) as exc:
        error = exc if isinstance(exc, OSError) else OSError(errno.EBADF, str(exc))
        whole, written = 0, 0
        for line in lines:  # the whole lines within what was written
            if written + len(line) > done:
                break
            written += len(line)
            whole += 1
        if done > written:
            _cut_partial_line(stream, done - written)
        return whole, False, error
    if fsync:
        try:
            os.fsync(stream.fileno())
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # a pipe or terminal: nothing to fsync
                return len(lines), False, exc
    return len(lines), True, None


def _open_for_append(path: str) -> IO[bytes]:
    return open(path, "ab", buffering=0)  # unbuffered: each event out at once


def _cut_partial_line(stream: IO[bytes], written: int) -> None:
    """Remove the start of a line that did not fit (a file; a pipe cannot be cut)."""
    try:
        fd = stream.fileno()
        os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_END) - written)
    except OSError:
        pass


def make_sink(settings: Settings) -> AuditSink:
    """The sink the settings ask for."""
    if settings.fluentd_enabled:
        # Acknowledged, spooled delivery (levity/audit/delivery.py, docs/delivery.md).
        from levity.audit.delivery import ForwardSink

        return ForwardSink(settings)
    if settings.audit_sink == "file":
        return JsonLinesSink.to_file(settings.audit_file)
    if settings.audit_sink == "stdout":
        return JsonLinesSink(open(sys.stdout.fileno(), "wb", buffering=0, closefd=False))
    return NullSink()


async def wait_closed(sink: AuditSink, timeout: float) -> None:
    try:
        await asyncio.wait_for(sink.close(timeout), timeout + 1)
    except asyncio.TimeoutError:
        log.warning("audit sink did not close within %.1fs", timeout)
