"""Where audit events go: the sink interface, and the local JSON-lines sink.

The server only knows AuditSink. `emit` must never block the event loop nor raise: a slow
or absent Fluentd must not make a charger wait. `emit_durable` returns once the event is
safe (on disk) and is used for transaction start/stop before the charger gets its answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from typing import IO, Protocol

from levity.audit.events import AuditEvent
from levity.config import Settings

log = logging.getLogger(__name__)


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
    After logrotate moves the file away, SIGHUP makes Levity carry on in a new one (reopen).
    """

    accepting = True

    def __init__(self, stream: IO[str], owns_stream: bool = False, path: str | None = None):
        self._stream = stream
        self._owns_stream = owns_stream
        self._path = path
        self._emitted = 0
        self._failed = 0

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

    def emit(self, event: AuditEvent) -> None:
        line = json.dumps({"tag": event.tag, "time": round(event.time_ns / 1e9, 3), "record": event.record},
                          ensure_ascii=False, separators=(",", ":"))
        try:
            self._stream.write(line + "\n")
            self._emitted += 1
        except (OSError, ValueError) as exc:
            if not self._failed:
                log.error("audit sink: cannot write events (%s); further failures are only counted", exc)
            self._failed += 1

    async def emit_durable(self, event: AuditEvent) -> None:
        self.emit(event)

    async def close(self, timeout: float) -> None:
        try:
            self._stream.flush()
        except (OSError, ValueError):
            pass
        if self._owns_stream:
            self._stream.close()

    def stats(self) -> dict[str, int]:
        return {"emitted": self._emitted, "dropped": self._failed}


def _open_for_append(path: str) -> IO[str]:
    return open(path, "a", encoding="utf-8", buffering=1)  # line-buffered: each event out at once


def make_sink(settings: Settings) -> AuditSink:
    """The sink the settings ask for."""
    if settings.fluentd_enabled:
        # Acknowledged, spooled delivery (levity/audit/delivery.py, docs/delivery.md).
        from levity.audit.delivery import ForwardSink

        return ForwardSink(settings)
    if settings.audit_sink == "file":
        return JsonLinesSink.to_file(settings.audit_file)
    if settings.audit_sink == "stdout":
        return JsonLinesSink(sys.stdout)
    return NullSink()


async def wait_closed(sink: AuditSink, timeout: float) -> None:
    try:
        await asyncio.wait_for(sink.close(timeout), timeout + 1)
    except asyncio.TimeoutError:
        log.warning("audit sink did not close within %.1fs", timeout)
