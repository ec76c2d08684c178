"""Lossless audit delivery: every event goes through the on-disk spool to Fluentd, with acks.

    emit() ──► in-memory batch ──(spool thread: write, fsync for durable)──► spool segments
                                                                               │
    Fluentd ◄── PackedForward + chunk ◄── sender task reads from the cursor ◄──┘
            ──► {"ack": chunk} ──► cursor advanced, acknowledged segments deleted

- emit() only appends to a list on the event loop: it never blocks and never raises. The batch
  is written within LEVITY_FLUSH_INTERVAL (0.2 s) by the single spool thread.
- emit_durable() (transaction start/stop) returns once its event is fsynced. Its batch goes to
  the spool thread at once, no task in between (levity/handoff.py says why); durable events that
  arrive while a write is running wait for the next one and share it (group commit). When the
  event cannot be made durable (write or fsync error, refused by drop_newest, sink closing) it
  raises NotDurable and the charger is answered with a CALLERROR, so it sends the call again.
- The sender reads up to LEVITY_BATCH_SIZE events from the acknowledged cursor (from memory
  when they are the spool thread's latest writes, levity/audit/recent.py), sends them as
  PackedForward messages (one per run of consecutive events with the same tag, so the
  emission order is kept across tags) and advances the cursor only when every message of the
  batch is acknowledged. Any failure (refused, closed, no ack within FLUENTD_TIMEOUT) closes
  the connection; the sender goes on with the next server of FLUENTD_SERVERS (failover.py
  decides which, with capped exponential backoff per server) and resends from the cursor, in
  order. Delivery is at-least-once: a resent event carries the same `event_id`.
- close(timeout) stops accepting, writes and fsyncs what is pending, sends what Fluentd
  acknowledges before the deadline, and leaves the rest in the spool for the next start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import msgpack

from levity.audit.events import AuditEvent
from levity.audit.failover import PROBE_INTERVAL, ServerPool
from levity.audit.forward import (Endpoint, ForwardConnection, ForwardError, encode_batch, encode_runs,
                                  endpoints_from_settings)
from levity.audit.recent import RecentWrites
from levity.audit.sink import NotDurable, release_waiters, settled
from levity.audit.spool import Spool, SpoolWriteError, encode_frame
from levity.audit.write_failures import WriteFailures
from levity.config import Settings
from levity.handoff import hand_off

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.2  # per server (failover.ServerPool)
BACKOFF_MAX = 5.0
DROP_TICK_SECONDS = 5.0


class ForwardSink:
    """AuditSink delivering to Fluentd through the spool (FLUENTD_ENABLED=true)."""

    def __init__(self, settings: Settings, *, endpoints: list[Endpoint] | None = None,
                 backoff_initial: float = BACKOFF_INITIAL, backoff_max: float = BACKOFF_MAX,
                 probe_interval: float = PROBE_INTERVAL, segment_bytes: int | None = None):
        self.settings = settings
        self.servers = ServerPool(endpoints or endpoints_from_settings(settings), backoff_initial=backoff_initial,
                                  backoff_max=backoff_max, probe_interval=probe_interval)
        self.spool = Spool(settings.spool_dir, settings.spool_max_bytes, settings.spool_overflow,
                           segment_bytes=segment_bytes)
        self.flush_interval = settings.flush_interval
        self.batch_size = max(1, settings.batch_size)
        self._io: ThreadPoolExecutor | None = None
        # Events wait here as their spool frames: bytes, which the garbage collector does not
        # track (event objects held for a flush interval were a large part of its work).
        self._pending: list[bytes] = []
        self._pending_tags: list[str] = []  # the tag of each pending frame, for RecentWrites
        # The latest writes, which the sender takes without reading them back (spool thread only).
        self._recent = RecentWrites(max_events=4 * self.batch_size)
        self.sent_from_memory = 0  # events the sender took from _recent rather than the spool
        self._pack = msgpack.Packer().pack  # emit() runs on the event loop only: one Packer for all
        self._first_pending_at = 0.0
        self._unwritten_bytes = 0  # pending and being written: not yet in spool.disk_bytes
        self._waiters: list[tuple[asyncio.Future, int]] = []  # durable events: (waiter, index in _pending)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writing = False  # a batch is on the spool thread; its end starts the next write
        self._timer: asyncio.TimerHandle | None = None  # writes the pending batch at the flush interval
        self._written: asyncio.Event | None = None  # set at the end of every write (close() waits on it)
        self._data: asyncio.Event | None = None  # the spool has new events for the sender
        self._tasks: list[asyncio.Task] = []
        self._sender: asyncio.Task | None = None
        self._conn: ForwardConnection | None = None
        self._active = 0  # index of the server self._conn talks to
        self._probe: asyncio.Task | None = None  # connecting to a preferred server while another has the events
        self._degraded = False  # a less preferred server has had the events since the first acknowledged again
        self._started = False
        self._closing = False
        self._failing_since: float | None = None
        self._write_failures = WriteFailures(log, "audit spool: writing works again")
        self._late_drops = 0
        # counters
        self.emitted = 0
        self.acknowledged = 0
        self.replayed = 0
        self.send_failures = 0
        self.durable_failed = 0  # emit_durable() calls that raised NotDurable
        self.connected = False
        self.last_error: str | None = None  # why Fluentd is unavailable, None while delivery works

    # AuditSink ---------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        if self._closing or self.spool.blocking:
            return False
        # Block as soon as what waits to be written would fill the spool, not after its write:
        # a busy charger adds a flush interval's worth of events meanwhile.
        return self.spool.overflow != "block" or self.spool.disk_bytes + self._unwritten_bytes < self.spool.max_bytes

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="levity-spool")
        await loop.run_in_executor(self._io, self.spool.open)
        self.replayed += self.spool.recovered_events
        self._written, self._data = asyncio.Event(), asyncio.Event()
        self._data.set()
        self._sender = asyncio.create_task(self._send_loop(), name="audit-forward-sender")
        self._tasks = [self._sender, asyncio.create_task(self._tick_loop(), name="audit-drop-report")]
        self._started = True
        log.info("audit delivery to Fluentd at %s (spool %s, bound %d bytes, overflow %s)",
                 self.servers.describe(), self.settings.spool_dir, self.settings.spool_max_bytes,
                 self.settings.spool_overflow)

    def emit(self, event: AuditEvent) -> None:
        try:
            self.emitted += 1
            if self._closing or not self._started:
                self._drop_late()
                return
            pending = self._pending
            frame = encode_frame(event.tag, event.time_ns, event.record, self._pack)
            pending.append(frame)
            self._pending_tags.append(event.tag)
            self._unwritten_bytes += len(frame)
            if len(pending) >= self.batch_size:
                self._flush()
            elif len(pending) == 1:
                self._first_pending_at = time.monotonic()
                if not self._writing:  # else the running write's end decides
                    self._timer = self._loop.call_later(self.flush_interval, self._flush)
        except (TypeError, ValueError, OverflowError) as exc:
            self.spool.drops.dropped(1, f"event not serialisable ({exc})")
        except Exception:  # noqa: BLE001 - emit must never raise into a handler
            log.exception("audit: emit failed")

    def emit_durable(self, event: AuditEvent) -> asyncio.Future:
        self.emitted += 1
        if self._closing or not self._started:
            self._drop_late()
            self.durable_failed += 1
            return settled(NotDurable("the audit sink is " + ("closing" if self._closing else "not started")))
        try:
            frame = encode_frame(event.tag, event.time_ns, event.record, self._pack)
        except (TypeError, ValueError, OverflowError) as exc:
            self.spool.drops.dropped(1, f"event not serialisable ({exc})")
            self.durable_failed += 1
            return settled(NotDurable(f"event not serialisable ({exc})"))
        future = self._loop.create_future()  # a cancelled waiter only stops waiting: release skips it
        self._waiters.append((future, len(self._pending)))
        self._pending.append(frame)
        self._pending_tags.append(event.tag)
        self._unwritten_bytes += len(frame)
        if len(self._pending) == 1:
            self._first_pending_at = time.monotonic()
        self._flush()
        return future

    def reopen(self) -> None:
        pass  # the spool is Levity's own: nothing rotates it

    def _drop_late(self) -> None:
        self._late_drops += 1
        if self._late_drops == 1:
            log.warning("audit: event emitted while the sink is %s; dropped (further ones only counted)",
                        "closing" if self._closing else "not started")

    def stats(self) -> dict[str, int]:
        return {
            "emitted": self.emitted,
            "acknowledged": self.acknowledged,
            "spooled": self.spool.depth_events + len(self._pending),
            "spooled_bytes": self.spool.depth_bytes,
            "replayed": self.replayed,
            "dropped": self.spool.dropped + self._late_drops,
            "send_failures": self.send_failures,
            "durable_failed": self.durable_failed,
            "fluentd_connected": int(self.connected),
        }

    def metric_lines(self) -> list[str]:
        return self.servers.metric_lines()

    async def close(self, timeout: float) -> None:
        if not self._started or self._closing:
            self._closing = True
            return
        self._closing = True
        deadline = time.monotonic() + max(0.0, timeout)
        loop = asyncio.get_running_loop()
        self._flush()
        try:
            while self._writing or self._pending:  # each write's end starts the next (fsynced: closing)
                self._written.clear()
                await asyncio.wait_for(self._written.wait(), max(0.1, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            log.warning("audit: the spool writer did not finish within the shutdown timeout")
        # Let the sender deliver what Fluentd acknowledges before the deadline.
        while self.spool.depth_events and self.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await _cancel_and_wait(self._tasks)
        self._disconnect()
        left = self.spool.depth_events
        await loop.run_in_executor(self._io, self.spool.close)
        self._io.shutdown(wait=True)
        self._io = None  # a write that outlived the deadline reports back; nothing more is handed over
        if left:
            log.info("audit: %d event(s) not yet acknowledged stay in the spool %s and are sent at the next start",
                     left, self.settings.spool_dir)

    # Spool writer ------------------------------------------------------------------------

    def _flush(self) -> None:
        """Hand the pending batch to the spool thread now, unless a write is running (its end
        hands over what came meanwhile)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writing or not self._pending or self._io is None:
            return
        batch, self._pending = self._pending, []
        tags, self._pending_tags = self._pending_tags, []
        waiters, self._waiters = self._waiters, []
        self._writing = True
        hand_off(self._loop, self._io, self._write, batch, tags, bool(waiters) or self._closing,
                 then=lambda outcome: self._batch_written(batch, waiters, outcome))

    def _write(self, batch: list[bytes], tags: list[str], fsync: bool) -> tuple[int, Exception | None]:
        """On the spool thread: (events written, error). The spool writes a prefix of the batch:
        drop_newest refuses from the end. A batch written whole is also kept for the sender
        (RecentWrites). Never raises."""
        try:
            start = self.spool.end
            written = self.spool.append_frames(batch, fsync=fsync)
        except SpoolWriteError as exc:
            return exc.written, exc
        except Exception as exc:  # noqa: BLE001 - unknown: treat as written, not durable
            return len(batch), exc
        if written == len(batch):
            self._recent.add(start, self.spool.end, batch, tags)
        return written, None

    def _batch_written(self, batch: list[bytes], waiters: list[tuple[asyncio.Future, int]],
                       outcome: tuple[int, Exception | None]) -> None:
        self._writing = False
        self._unwritten_bytes -= sum(map(len, batch))
        written, error = outcome
        if error is None:
            self._write_failures.worked()
        else:
            durable = {index for _, index in waiters}
            lost = sum(1 for index in range(written, len(batch)) if index not in durable)
            self.spool.drops.dropped(lost, f"spool write failed: {error}")
            self._write_failures.failed(
                "audit spool: cannot write to %s: %s. Transaction calls are answered with a CALLERROR (the charger "
                "retries) and other events are counted as dropped until it works again (logged then)",
                self.settings.spool_dir, error)
        reason = f"spool write failed: {error}" if error else "spool full (overflow policy drop_newest)"
        self.durable_failed += release_waiters(waiters, written, error is None, reason)
        self._data.set()
        self._written.set()
        if not self._pending:
            return
        due = self._first_pending_at + self.flush_interval
        if self._waiters or self._closing or len(self._pending) >= self.batch_size or due <= time.monotonic():
            self._flush()
        else:
            self._timer = self._loop.call_later(due - time.monotonic(), self._flush)

    async def _tick_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(DROP_TICK_SECONDS)
            await loop.run_in_executor(self._io, self.spool.drops.tick)
            await loop.run_in_executor(self._io, self.spool.flush_cursor)  # logs its own failures

    # Sender ------------------------------------------------------------------------------

    async def _send_loop(self) -> None:
        while True:
            try:
                await self._send_until_error()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug or a disk error must not end delivery for good
                log.exception("audit sender: unexpected error; restarting from the acknowledged cursor in 1s")
                self._disconnect()
                await asyncio.sleep(1.0)

    def _disconnect(self) -> None:
        if self._probe is not None:
            if self._probe.done():
                _close_probed(self._probe)
            else:
                self._probe.cancel()
                self._probe.add_done_callback(_close_probed)
            self._probe = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.servers.active = None
        self.connected = False

    async def _send_until_error(self) -> None:
        loop = asyncio.get_running_loop()
        pos = None  # None: from the acknowledged cursor
        acked = None  # end of a batch Fluentd acknowledged, for the spool (in the next read's hop)
        while True:
            if self._conn is None or not self._conn.usable:
                if self._conn is not None:  # Fluentd closed an idle connection: nothing was lost
                    self._disconnect()
                opened = await self.servers.connect()
                if opened is None:
                    self._all_down()
                    await asyncio.sleep(self.servers.seconds_until_retry())
                    continue
                self._switch_to(*opened)
            self._switch_back_when_preferred_is_up()
            self._data.clear()
            count, end, data, chunk = await loop.run_in_executor(self._io, self._read_encoded, acked, pos)
            acked = None
            if not count:
                try:
                    async with asyncio.timeout(1.0):  # not wait_for: see _cancel_and_wait
                        await self._data.wait()
                except TimeoutError:
                    pass
                continue
            if not self._conn.usable:  # closed while idle: reconnect and send this batch there
                continue
            try:
                await self._conn.send(data, chunk)
            except ForwardError as exc:
                self.send_failures += 1
                self.replayed += count
                # Logged when a working server fails, not again while it keeps failing (a server
                # that accepts but never acknowledges is retried by every probe), nor during an
                # outage of every server (logged once by _all_down).
                worked = self.servers.servers[self._active].last_error is None
                self.servers.failed(self._active, exc)
                self._conn.close()
                self._conn = None
                self.connected = False
                pos = None  # resend from the cursor, to the next server
                self.last_error = str(exc)
                log.log(logging.WARNING if worked and self._failing_since is None else logging.DEBUG,
                        "Fluentd at %s failed: %s; %d unacknowledged event(s) are re-sent from the spool%s",
                        self.servers.servers[self._active].endpoint.describe(), exc, count,
                        " to the next server" if len(self.servers.servers) > 1 else "")
                continue
            self.acknowledged += count
            self.servers.acknowledged(self._active, count)
            if self._degraded and self._active == 0:
                self._degraded = False
                log.info("audit events go to the preferred Fluentd at %s again", self._conn.endpoint.describe())
            pos = acked = end
            if self._failing_since is not None:
                log.info("Fluentd at %s acknowledges events again (after %.1fs); replaying %d spooled event(s)",
                         self._conn.endpoint.describe(), time.monotonic() - self._failing_since,
                         self.spool.depth_events)
                self._failing_since = None
            self.last_error = None
            if count < self.batch_size and not self._closing:
                # Caught up: let the next batch gather for a flush interval, as Fluentd's own
                # buffers do. A batch per group commit (under load, per few transaction
                # events) cost more CPU in hops, wake-ups and acks than its events did. The
                # spool learns of the ack first, so its depth is right meanwhile.
                await loop.run_in_executor(self._io, self.spool.ack, end)
                acked = None
                await asyncio.sleep(self.flush_interval)

    def _switch_to(self, index: int, conn: ForwardConnection) -> None:
        self._active, self._conn = index, conn
        self.servers.active = index
        self.connected = True
        if index > 0 and not self._degraded:  # once until the preferred server acknowledges again
            self._degraded = True
            log.warning("audit events go to Fluentd at %s (server %d of %d) until a preferred one is back",
                        conn.endpoint.describe(), index + 1, len(self.servers.servers))

    def _switch_back_when_preferred_is_up(self) -> None:
        """Between two batches (nothing in flight): move to a preferred server the background
        probe reached, or start such a probe when one is due."""
        if self._probe is not None and self._probe.done():
            probe, self._probe = self._probe, None
            opened = None if probe.cancelled() or probe.exception() else probe.result()
            if opened is not None:
                self._conn.close()
                log.debug("Fluentd at %s answers again: trying it with the next batch", opened[1].endpoint.describe())
                self._switch_to(*opened)
        elif self._probe is None and self.servers.probe_due(self._active):
            self._probe = asyncio.create_task(self.servers.connect(below=self._active), name="audit-forward-probe")

    def _all_down(self) -> None:
        """Log an outage of every server once when it starts; it is logged again only when it clears."""
        self.last_error = self.servers.errors()
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            log.error("no Fluentd server available (%s). Events are kept in the spool %s and sent when one is "
                      "back (logged again when it recovers)", self.last_error, self.settings.spool_dir)

    def _read_encoded(self, acked, pos):
        """On the I/O thread, in one hop (under load every await of the event loop is a long one):
        move the spool's cursor past an acknowledged batch, read the next batch and encode it
        (off the event loop, which serves the chargers). Only the wire bytes are kept until
        the ack, not an object per event."""
        if acked is not None:
            self.spool.ack(acked)
        recent = self._recent.take(self.spool.read_position(pos), self.batch_size)
        if recent is not None:
            count, end, runs = recent
            self.sent_from_memory += count
            return (count, end, *encode_runs(runs))
        batch = self.spool.read(pos, self.batch_size)
        data, chunk = encode_batch(batch.events) if batch.events else (b"", "")
        return len(batch.events), batch.end, data, chunk


async def _cancel_and_wait(tasks: list[asyncio.Task]) -> None:
    """Cancel the tasks and wait until they have ended; cancel again whichever goes on: in
    Python 3.11 asyncio.wait_for() swallows a cancellation that arrives as the awaited thing
    completes (fixed in 3.12), and the sender awaits its reads and acks with it."""
    while live := [task for task in tasks if not task.done()]:
        for task in live:
            task.cancel()
        await asyncio.wait(live, timeout=0.1)


def _close_probed(task: asyncio.Task) -> None:
    """A probe cancelled after it connected: close what it opened."""
    if not task.cancelled() and task.exception() is None and task.result() is not None:
        task.result()[1].close()
