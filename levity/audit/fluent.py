"""Best-effort delivery with fluent-logger's asynchronous sender (no acks, no spool).

fluent-logger packs events (EventTime with nanoseconds) and sends them from its own thread,
so emit() never blocks the event loop. Its queue is circular: when Fluentd is slow or down
the oldest queued events are dropped rather than making a charger wait.
"""

from __future__ import annotations

import asyncio
import logging

from fluent import asyncsender
from fluent.sender import EventTime

from levity.audit.events import AuditEvent
from levity.config import Settings

log = logging.getLogger(__name__)


class _ObservedSender(asyncsender.FluentSender):
    """fluent-logger keeps last_error per thread, so the event loop never sees the sender
    thread's failures; this records the state of the latest send where the loop can read it."""

    failure: Exception | None = None

    def _send_data(self, bytes_):
        try:
            super()._send_data(bytes_)
        except OSError as exc:
            self.failure = exc
            raise
        self.failure = None


class FluentLoggerSink:
    accepting = True

    def __init__(self, settings: Settings):
        self._settings = settings
        self._sender = _ObservedSender(
            "", host=settings.fluentd_host, port=settings.fluentd_port, timeout=settings.fluentd_timeout,
            nanosecond_precision=True, queue_circular=True, queue_maxsize=100_000,
        )
        self._emitted = 0
        self._failing = False
        self._watch: asyncio.Task | None = None

    async def start(self) -> None:
        self._watch = asyncio.create_task(self._watch_errors())

    def emit(self, event: AuditEvent) -> None:
        seconds, nanos = divmod(event.time_ns, 1_000_000_000)
        # An empty sender tag makes fluent-logger use the label as the whole tag.
        self._sender.emit_with_time(event.tag, EventTime(seconds, nanos), event.record)
        self._emitted += 1

    async def emit_durable(self, event: AuditEvent) -> None:
        self.emit(event)

    async def _watch_errors(self) -> None:
        # Log a failure once when it starts and once when it clears, never per event.
        while True:
            await asyncio.sleep(1.0)
            error = self._sender.failure
            if error and not self._failing:
                self._failing = True
                log.error("Fluentd at %s:%s unreachable (%s); events are queued and the oldest dropped "
                          "when the queue is full", self._settings.fluentd_host, self._settings.fluentd_port, error)
            elif not error and self._failing:
                self._failing = False
                log.info("Fluentd reachable again")

    async def close(self, timeout: float) -> None:
        if self._watch:
            self._watch.cancel()
        await asyncio.get_running_loop().run_in_executor(None, self._sender.close)

    def stats(self) -> dict[str, int]:
        return {"emitted": self._emitted}
