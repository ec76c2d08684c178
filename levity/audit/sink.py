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
from typing import IO, Protocol

from levity.audit.events import AuditEvent
from levity.config import Settings

log = logging.getLogger(__name__)


class NotDurable(Exception):
    """emit_durable() could not make the event safe. `maybe_written`: it may still be on
    disk (written, but the fsync failed), so it may still be delivered."""

    def __init__(self, reason: str, maybe_written: bool = False):
        super().__init__(reason)
        self.maybe_written = maybe_written


class AuditSink(Protocol):
    async def start(self) -> None: ...

    def emit(self, event: AuditEvent) -> None: ...

    async def emit_durable(self, event: AuditEvent) -> None: ...

    async def close(self, timeout: float) -> None: ...

    def stats(self) -> dict[str, int]: ...

    def reopen(self) -> None:
        """SIGHUP: start again on a file that logrotate moved away (only a file has one)."""
        ...

    @property
    def accepting(self) -> bool:
        """False while new charger connections should be refused (spool full, overflow=block)."""
        ...


class NullSink:
    accepting = True

    def __init__(self) -> None:
        self._emitted = 0

    async def start(self) -> None:
        pass

    def emit(self, event: AuditEvent) -> None:
        self._emitted += 1

    async def emit_durable(self, event: AuditEvent) -> None:
        self._emitted += 1

    async def close(self, timeout: float) -> None:
        pass

    def stats(self) -> dict[str, int]:
        return {"emitted": self._emitted}

    def reopen(self) -> None:
        pass


class JsonLinesSink:
    """One JSON object per line: {"tag", "time", "record"}, on stdout or appended to a file.

    Lets `levity serve` do its job on a bare machine; a log shipper (or Fluentd's in_tail)
    can pick the file up. Writes are line-buffered, so an event is out when emit returns.
    emit_durable() (transaction events) also fsyncs the file before it returns, on a thread:
    durable events that arrive while an fsync runs share the next one (group commit), so the
    event loop never waits for the disk. On a pipe or terminal there is nothing to fsync.
    After logrotate moves the file away, SIGHUP makes Levity carry on in a new one (reopen).
    """

    accepting = True

    def __init__(self, stream: IO[bytes], owns_stream: bool = False, path: str | None = None):
        self._stream = stream
        self._owns_stream = owns_stream
        self._path = path
        self._emitted = 0
        self._failed = 0
        self.durable_failed = 0
        self._io: ThreadPoolExecutor | None = None
        self._sync_waiters: list[asyncio.Future] = []  # durable events written, waiting for the next fsync
        self._syncing = False
        self._sync_failing = False

    @classmethod
    def to_file(cls, path: str) -> "JsonLinesSink":
        return cls(_open_for_append(path), owns_stream=True, path=path)

    def reopen(self) -> None:
        if self._path is None:
            return
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
        pass

    def emit(self, event: AuditEvent) -> bool:
        line = json.dumps({"tag": event.tag, "time": round(event.time_ns / 1e9, 3), "record": event.record},
                          ensure_ascii=False, separators=(",", ":"))
        data = (line + "\n").encode("utf-8")
        try:
            # Unbuffered: one write per line, and a failed line is not kept in a buffer to
            # appear later, after its transaction call was answered with an error.
            written = self._stream.write(data)
            if written is not None and written != len(data):
                _cut_partial_line(self._stream, written)
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")
            self._emitted += 1
            return True
        except (OSError, ValueError) as exc:
            if not self._failed:
                log.error("audit sink: cannot write events (%s); further failures are only counted", exc)
            self._failed += 1
            return False

    async def emit_durable(self, event: AuditEvent) -> None:
        if not self.emit(event):
            self.durable_failed += 1
            raise NotDurable("the audit file cannot be written")
        future = asyncio.get_running_loop().create_future()
        self._sync_waiters.append(future)
        if not self._syncing:
            self._start_sync()
        await future

    def _start_sync(self) -> None:
        waiters, self._sync_waiters = self._sync_waiters, []
        self._syncing = True
        if self._io is None:
            self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="levity-audit-file")
        try:
            fd = os.dup(self._stream.fileno())  # reopen() may close the stream meanwhile
        except (OSError, ValueError) as exc:
            self._synced(waiters, exc)
            return
        future = asyncio.get_running_loop().run_in_executor(self._io, _fsync_and_close, fd)
        future.add_done_callback(lambda f: f.cancelled() or self._synced(waiters, f.exception()))

    def _synced(self, waiters: list[asyncio.Future], error: BaseException | None) -> None:
        self._syncing = False
        if error is None and self._sync_failing:
            self._sync_failing = False
            log.info("audit file: fsync works again")
        elif error is not None:
            self.durable_failed += len(waiters)
            if not self._sync_failing:
                self._sync_failing = True
                log.error("audit file: fsync failed (%s); transaction calls are answered with a CALLERROR "
                          "until it works (logged again then)", error)
        for waiter in waiters:
            if waiter.done():
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(NotDurable(f"audit file fsync failed: {error}", maybe_written=True))
        if self._sync_waiters:
            self._start_sync()

    async def close(self, timeout: float) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass
        if self._io is not None:
            self._io.shutdown(wait=True)
        if self._owns_stream:
            self._stream.close()

    def stats(self) -> dict[str, int]:
        return {"emitted": self._emitted, "dropped": self._failed, "durable_failed": self.durable_failed}


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise  # EINVAL/ENOTSUP: a pipe or terminal (stdout), nothing to make durable here
    finally:
        os.close(fd)


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
