"""A durable, bounded, on-disk FIFO of audit events (the spool behind lossless delivery).

Layout of the spool directory:

    0000000000000001.seg, 0000000000000002.seg, ...   append-only segment files
    cursor                                           the acknowledged position (JSON)

A segment is a sequence of frames: ``length (u32 BE) | crc32 (u32 BE) | payload`` where the
payload is the msgpack of ``[tag, [EventTime, record]]``: its second element is the event's
Fluentd Forward PackedForward entry exactly as it goes on the wire, so an event is encoded once,
when it is emitted, and batches are sent from the spool as they lie (forward.encode_batch only
puts a message header around each run of entries). Spools written by earlier versions hold
``[tag, time_ns, record]`` payloads; they are read too (their entry is built when read), so an
upgrade delivers what the old version left behind. Only the newest segment is appended to;
it is sealed (and a new one started) once it reaches ``segment_bytes``. The cursor names the
first unacknowledged frame: ``{"segment": n, "offset": bytes, "index": frames before it}``. It
is replaced atomically (temp file, fsync, os.replace, fsync of the directory). Segments wholly
before the cursor are deleted.

Crash safety: opening the spool scans every segment and truncates it at the first frame that is
short or fails its crc (a torn tail after SIGKILL or power loss), then resumes after the cursor.
A stale cursor only means some events are sent twice (at-least-once; every event carries an
``event_id`` so downstream can drop the duplicates).

This class is synchronous and not thread-safe: the delivery sink calls it from one dedicated
I/O thread only, so disk work never runs on the event loop.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

import msgpack

log = logging.getLogger(__name__)

HEADER = struct.Struct(">II")  # payload length, crc32(payload)
MAX_FRAME = 64 << 20  # anything claiming more is corruption, not an event
SEGMENT_RE = re.compile(r"^(\d{16})\.seg$")
OVERFLOW_POLICIES = ("block", "drop_oldest", "drop_newest")
DROP_SUMMARY_SECONDS = 60.0


class Position(NamedTuple):
    """A place in the spool: segment number, byte offset in it, frames before it in it."""

    segment: int
    offset: int
    index: int

    def __lt__(self, other):  # order by (segment, offset); index follows from them
        return (self.segment, self.offset) < (other.segment, other.offset)

    def __le__(self, other):
        return (self.segment, self.offset) <= (other.segment, other.offset)

    def __gt__(self, other):
        return (self.segment, self.offset) > (other.segment, other.offset)

    def __ge__(self, other):
        return (self.segment, self.offset) >= (other.segment, other.offset)


EVENT_TIME = struct.Struct(">BbII")  # msgpack fixext 8, type 0 (EventTime): seconds, nanoseconds
ENTRY_HEAD = 1 + EVENT_TIME.size  # the entry's 0x92 array header and its EventTime
FORMAT_V1 = 0x93  # first payload byte: [tag, time_ns, record] (earlier versions)
FORMAT_V2 = 0x92  # [tag, [EventTime, record]]


class SpooledEvent(NamedTuple):
    """An event as the spool holds it: its tag and its PackedForward entry
    ``[EventTime, record]`` (msgpack, forwarded without re-encoding)."""

    tag: str
    entry: bytes

    @property
    def time_ns(self) -> int:
        _, _, seconds, nanoseconds = EVENT_TIME.unpack_from(self.entry, 1)
        return seconds * 1_000_000_000 + nanoseconds

    @property
    def record(self) -> bytes:
        """The record's msgpack."""
        return self.entry[ENTRY_HEAD:]

    @classmethod
    def of(cls, tag: str, time_ns: int, record: dict) -> "SpooledEvent":
        return cls(tag, forward_entry(time_ns, msgpack.packb(record, use_bin_type=True)))


@dataclass
class ReadBatch:
    events: list[SpooledEvent]
    start: Position
    end: Position  # position just after the last event: acknowledging the batch moves the cursor here
    size: int  # bytes of the frames


@dataclass
class _Segment:
    size: int
    count: int


def forward_entry(time_ns: int, record_msgpack: bytes) -> bytes:
    """A PackedForward entry, ``[EventTime, record]``, around an already encoded record."""
    seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
    return b"\x92" + EVENT_TIME.pack(0xD7, 0, seconds, nanoseconds) + record_msgpack


_ENTRY_START = struct.Struct(">BBbII")  # the entry's array header, then its EventTime
_tag_heads: dict[str, bytes] = {}  # tag -> the payload's array header and the tag's msgpack


def encode_frame(tag: str, time_ns: int, record: dict, pack=msgpack.packb) -> bytes:
    """The spool frame of one event: the only time its record is encoded. `pack`: a
    msgpack.Packer's pack, which a caller on one thread can reuse (cheaper than packb)."""
    head = _tag_heads.get(tag) or _tag_head(tag)
    seconds, nanoseconds = divmod(time_ns, 1_000_000_000)
    payload = b"".join((head, _ENTRY_START.pack(0x92, 0xD7, 0, seconds, nanoseconds), pack(record)))
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _tag_head(tag: str) -> bytes:
    head = _tag_heads[tag] = bytes([FORMAT_V2]) + msgpack.packb(tag)
    return head


def entry_offset(tag: str) -> int:
    """Where the PackedForward entry starts in a frame that encode_frame made for `tag`."""
    return HEADER.size + len(_tag_heads.get(tag) or _tag_head(tag))


def _split_payload(payload: bytes, tags: dict[bytes, str]) -> SpooledEvent:
    """The tag and the PackedForward entry of a frame's payload, without decoding the record.
    A payload of an earlier version, [tag, time_ns, record], gets its entry built here."""
    version = payload[0]
    if version != FORMAT_V2 and version != FORMAT_V1:
        raise ValueError("frame payload is not a spooled event")
    pos = 1
    head = payload[pos]
    if 0xA0 <= head <= 0xBF:
        length, pos = head & 0x1F, pos + 1
    elif head == 0xD9:
        length, pos = payload[pos + 1], pos + 2
    elif head == 0xDA:
        length, pos = int.from_bytes(payload[pos + 1:pos + 3], "big"), pos + 3
    elif head == 0xDB:
        length, pos = int.from_bytes(payload[pos + 1:pos + 5], "big"), pos + 5
    else:
        raise ValueError("frame tag is not a string")
    raw_tag = payload[pos:pos + length]
    tag = tags.get(raw_tag)
    if tag is None:
        tag = tags[raw_tag] = raw_tag.decode("utf-8")
    pos += length
    if version == FORMAT_V2:
        if payload[pos] != 0x92 or payload[pos + 1] != 0xD7 or payload[pos + 2] != 0:
            raise ValueError("frame entry is not [EventTime, record]")
        return SpooledEvent(tag, payload[pos:])
    head = payload[pos]
    if head < 0x80:
        time_ns, pos = head, pos + 1
    elif head in (0xCC, 0xCD, 0xCE, 0xCF):
        width = {0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}[head]
        time_ns, pos = int.from_bytes(payload[pos + 1:pos + 1 + width], "big"), pos + 1 + width
    else:
        raise ValueError("frame time is not an unsigned integer")
    return SpooledEvent(tag, forward_entry(time_ns, payload[pos:]))


def scan(data: bytes) -> tuple[list[int], int, bool]:
    """Frame start offsets of the valid prefix of `data`, its length, and whether a bad frame
    (crc mismatch or absurd length) ended it, as opposed to a clean or short end."""
    starts: list[int] = []
    pos, end = 0, len(data)
    while pos + HEADER.size <= end:
        length, crc = HEADER.unpack_from(data, pos)
        if length == 0 or length > MAX_FRAME:
            return starts, pos, True
        if pos + HEADER.size + length > end:
            return starts, pos, False  # short frame: a torn tail
        payload = data[pos + HEADER.size:pos + HEADER.size + length]
        if zlib.crc32(payload) != crc:
            return starts, pos, True
        starts.append(pos)
        pos += HEADER.size + length
    return starts, pos, False


class SpoolWriteError(OSError):
    """Appending failed. The first `written` frames of the call are in the spool (not
    necessarily on disk: `synced` is False then), the others are not."""

    def __init__(self, written: int, cause: OSError, synced: bool = False):
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.written = written
        self.synced = synced


class SpoolLocked(RuntimeError):
    """Another process has the spool open."""


class DropReporter:
    """Drops are logged: the first one at once, then a summary at most every minute."""

    def __init__(self, what: str, interval: float = DROP_SUMMARY_SECONDS, clock=time.monotonic):
        self.what = what
        self.total = 0
        self._unreported = 0
        self._interval = interval
        self._clock = clock
        self._last_report = 0.0

    def dropped(self, count: int, reason: str) -> None:
        if count <= 0:
            return
        self.total += count
        if self.total == count:
            log.warning("%s: dropped %d event(s): %s; further drops are summarised every %.0fs",
                        self.what, count, reason, self._interval)
            self._last_report = self._clock()
            return
        self._unreported += count
        self.tick(reason)

    def tick(self, reason: str = "", force: bool = False) -> None:
        if self._unreported and (force or self._clock() - self._last_report >= self._interval):
            log.warning("%s: dropped %d more event(s) since the last report (%d in total)%s",
                        self.what, self._unreported, self.total, f": {reason}" if reason else "")
            self._unreported = 0
            self._last_report = self._clock()


class Spool:
    def __init__(self, directory: str | os.PathLike, max_bytes: int, overflow: str = "drop_oldest",
                 segment_bytes: int | None = None, cursor_interval: float = 0.5):
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"spool overflow must be one of {', '.join(OVERFLOW_POLICIES)}, not {overflow!r}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.overflow = overflow
        # Small enough that drop_oldest loses a small fraction of the bound, big enough to keep
        # the number of files low.
        self.segment_bytes = segment_bytes or max(64 << 10, min(16 << 20, max_bytes // 16))
        self.cursor_interval = cursor_interval
        self.drops = DropReporter(f"audit spool {self.directory}")
        self._segments: dict[int, _Segment] = {}
        self._cursor = Position(1, 0, 0)
        self._persisted = self._cursor
        self._persisted_at = 0.0
        self._write_fd: int | None = None
        self._write_seq = 0
        self._disk_bytes = 0
        self._total_count = 0  # frames in all segments, acknowledged ones of the head included
        self._tags: dict[bytes, str] = {}
        self._blocking = False
        self._cursor_failing = False
        self._open = False
        self._lock_fd: int | None = None
        self.recovered_events = 0  # unacknowledged events found when opening
        self.truncated_bytes = 0

    # Opening ---------------------------------------------------------------------------------

    def open(self) -> "Spool":
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise SpoolLocked(f"audit spool {self.directory} is in use by another process "
                              "(two Levity instances cannot share a spool directory)") from None
        for stale in self.directory.glob("cursor.tmp*"):
            stale.unlink(missing_ok=True)
        cursor = self._load_cursor()
        seqs = sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := SEGMENT_RE.match(p.name)))
        for seq in [s for s in seqs if cursor and s < cursor.segment]:
            self._path(seq).unlink(missing_ok=True)  # wholly acknowledged before the last run ended
        seqs = [s for s in seqs if not cursor or s >= cursor.segment]
        for seq in seqs:
            self._segments[seq] = self._scan_segment(seq)
        if seqs:
            first = seqs[0]
            if cursor is None or cursor.segment != first:
                cursor = Position(first, 0, 0)
            else:
                cursor = self._align(cursor)
            self._write_seq = seqs[-1]
        else:
            self._write_seq = (cursor.segment if cursor else 0) + 1
            cursor = Position(self._write_seq, 0, 0)
            self._segments[self._write_seq] = _Segment(0, 0)
        self._cursor = cursor
        self._disk_bytes = sum(s.size for s in self._segments.values())
        self._total_count = sum(s.count for s in self._segments.values())
        self._write_fd = os.open(self._path(self._write_seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._fsync_dir()
        self._write_cursor()
        self._open = True
        self.recovered_events = self.depth_events
        self._update_blocking()
        if self.recovered_events:
            log.info("audit spool %s: %d unacknowledged event(s) (%d bytes) from a previous run will be replayed",
                     self.directory, self.recovered_events, self.depth_bytes)
        return self

    def _scan_segment(self, seq: int) -> _Segment:
        path = self._path(seq)
        data = path.read_bytes()
        starts, valid, corrupt = scan(data)
        if valid < len(data):
            lost = len(data) - valid
            self.truncated_bytes += lost
            how = "a corrupt frame" if corrupt else "a torn tail"
            log.warning("audit spool: %s ends in %s; truncating %d byte(s) at offset %d", path.name, how, lost, valid)
            with open(path, "r+b") as f:
                f.truncate(valid)
                f.flush()
                os.fsync(f.fileno())
        return _Segment(valid, len(starts))

    def _align(self, cursor: Position) -> Position:
        """The cursor's index recomputed from the frames (and snapped to a frame boundary)."""
        data = self._path(cursor.segment).read_bytes()[:self._segments[cursor.segment].size]
        starts, _, _ = scan(data)
        index = 0
        offset = 0
        for start in starts:
            if start >= cursor.offset:
                break
            index += 1
        offset = starts[index] if index < len(starts) else self._segments[cursor.segment].size
        if offset != cursor.offset:
            log.warning("audit spool: cursor offset %d is not a frame boundary; resuming at %d",
                        cursor.offset, offset)
        return Position(cursor.segment, offset, index)

    def _load_cursor(self) -> Position | None:
        return self._read_cursor_file(self.directory / "cursor")

    @staticmethod
    def _read_cursor_file(path: Path) -> Position | None:
        try:
            raw = json.loads(path.read_text())
            return Position(int(raw["segment"]), int(raw["offset"]), int(raw.get("index", 0)))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, OSError) as exc:
            log.warning("audit spool: unreadable cursor file (%s); replaying every spooled event", exc)
            return None

    # Writing ---------------------------------------------------------------------------------

    def append(self, events: Iterable[tuple[str, int, dict]], fsync: bool = False) -> int:
        """Append events in order; fsync if asked. Returns how many were written (the others
        were refused by the drop_newest policy and are counted as dropped); SpoolWriteError
        when the disk fails."""
        frames: list[bytes] = []
        for tag, time_ns, record in events:
            try:
                frames.append(encode_frame(tag, time_ns, record))
            except (TypeError, ValueError, OverflowError) as exc:
                self.drops.dropped(1, f"event not serialisable ({exc})")
        return self.append_frames(frames, fsync)

    def append_frames(self, frames: list[bytes], fsync: bool = False) -> int:
        """append() for events already encoded with encode_frame. The frames written are
        always the first ones (drop_newest refuses from the end)."""
        if not frames:
            if fsync:
                self._sync_or_raise(0)
            return 0
        incoming = sum(len(f) for f in frames)
        written = 0
        pending: list[bytes] = []
        pending_bytes = 0
        try:
            if self._disk_bytes + incoming > self.max_bytes:
                frames = self._make_room(frames, incoming)
            for frame in frames:
                seg = self._segments[self._write_seq]
                if seg.size + pending_bytes + len(frame) > self.segment_bytes and (seg.size + pending_bytes) > 0:
                    written += self._write(pending)
                    pending, pending_bytes = [], 0
                    self._rotate()
                pending.append(frame)
                pending_bytes += len(frame)
            written += self._write(pending)
        except OSError as exc:
            raise SpoolWriteError(written, exc) from exc
        finally:
            self._update_blocking()
        if fsync:
            self._sync_or_raise(written)
        return written

    def _sync_or_raise(self, written: int) -> None:
        try:
            self.sync()
        except OSError as exc:
            raise SpoolWriteError(written, exc, synced=False) from exc

    def _write(self, frames: list[bytes]) -> int:
        """Write whole frames or none: on an error the file is cut back and OSError raised."""
        if not frames:
            return 0
        blob = b"".join(frames)
        seg = self._segments[self._write_seq]
        try:
            view = memoryview(blob)
            while view:
                done = os.write(self._write_fd, view)
                view = view[done:]
        except OSError:
            # Never leave half a frame behind: cut the file back to its last whole frame.
            try:
                os.ftruncate(self._write_fd, seg.size)
            except OSError:
                pass
            raise
        seg.size += len(blob)
        seg.count += len(frames)
        self._disk_bytes += len(blob)
        self._total_count += len(frames)
        return len(frames)

    def _rotate(self) -> None:
        os.fsync(self._write_fd)  # a sealed segment is complete on disk
        seq = self._write_seq + 1
        fd = os.open(self._path(seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)  # first: may fail
        os.close(self._write_fd)
        self._write_fd, self._write_seq = fd, seq
        self._segments[seq] = _Segment(0, 0)
        self._fsync_dir()

    def _make_room(self, frames: list[bytes], incoming: int) -> list[bytes]:
        if self.overflow == "block":
            return frames  # kept: the sink stops accepting connections until the spool drains
        if self.overflow == "drop_newest":
            room = self.max_bytes - self._disk_bytes
            kept: list[bytes] = []
            for frame in frames:
                if len(frame) > room:
                    break
                kept.append(frame)
                room -= len(frame)
            self.drops.dropped(len(frames) - len(kept), f"spool full ({self.max_bytes} bytes), "
                                                        "overflow policy drop_newest")
            return kept
        # drop_oldest: delete whole unacknowledged segments from the head, never the one written to.
        while self._disk_bytes + incoming > self.max_bytes and len(self._segments) > 1:
            seq = min(self._segments)
            seg = self._segments.pop(seq)
            lost = seg.count - (self._cursor.index if self._cursor.segment == seq else 0)
            self._disk_bytes -= seg.size
            self._total_count -= seg.count
            nxt = min(self._segments)
            self._cursor = Position(nxt, 0, 0)
            self._persist_cursor()
            self._path(seq).unlink(missing_ok=True)
            self.drops.dropped(lost, f"spool full ({self.max_bytes} bytes), overflow policy drop_oldest "
                                     f"deleted segment {seq}")
        if self._disk_bytes + incoming > self.max_bytes:
            # Only the segment being written is left: rotate so it can go next time, keep these.
            if self._segments[self._write_seq].size:
                self._rotate()
        return frames

    def sync(self) -> None:
        if self._write_fd is not None:
            os.fdatasync(self._write_fd)

    def _update_blocking(self) -> None:
        if self.overflow != "block":
            return
        if not self._blocking and self._disk_bytes >= self.max_bytes:
            self._blocking = True
            log.warning("audit spool %s is full (%d bytes, bound %d): refusing new charger connections until "
                        "Fluentd acknowledges events (overflow policy block)",
                        self.directory, self._disk_bytes, self.max_bytes)
        elif self._blocking and self._disk_bytes < self.max_bytes * 0.9:
            self._blocking = False
            log.info("audit spool %s below 90%% of its bound again: accepting connections", self.directory)

    # Reading and acknowledging -----------------------------------------------------------

    def read(self, pos: Position | None = None, max_events: int = 500, max_bytes: int = 4 << 20) -> ReadBatch:
        """Up to max_events events from pos (default: the cursor), all from one segment."""
        pos = self.read_position(pos)
        while True:
            seg = self._segments.get(pos.segment)
            if seg is None:  # deleted under us (drop_oldest): go on from the cursor
                pos = self._cursor
                continue
            if pos.offset >= seg.size and pos.segment != self._write_seq:
                nxt = min(s for s in self._segments if s > pos.segment)
                pos = Position(nxt, 0, 0)
                continue
            break
        if pos.offset >= seg.size:
            return ReadBatch([], pos, pos, 0)
        want = min(seg.size - pos.offset, max_bytes)
        fd = os.open(self._path(pos.segment), os.O_RDONLY)
        try:
            data = os.pread(fd, want, pos.offset)
            if len(data) >= HEADER.size:
                first_len = HEADER.unpack_from(data)[0]
                if first_len + HEADER.size > len(data) and first_len <= MAX_FRAME:
                    data = os.pread(fd, min(seg.size - pos.offset, first_len + HEADER.size), pos.offset)
        finally:
            os.close(fd)
        events: list[SpooledEvent] = []
        off = 0
        while off + HEADER.size <= len(data) and len(events) < max_events:
            length, crc = HEADER.unpack_from(data, off)
            if off + HEADER.size + length > len(data):
                break
            payload = data[off + HEADER.size:off + HEADER.size + length]
            if length == 0 or zlib.crc32(payload) != crc:
                return self._skip_corrupt(pos, events, off)
            try:
                events.append(_split_payload(payload, self._tags))
            except (ValueError, IndexError, UnicodeDecodeError):
                return self._skip_corrupt(pos, events, off)
            off += HEADER.size + length
        end = Position(pos.segment, pos.offset + off, pos.index + len(events))
        return ReadBatch(events, pos, end, off)

    def _skip_corrupt(self, pos: Position, events: list[SpooledEvent], off: int) -> ReadBatch:
        seg = self._segments[pos.segment]
        lost = seg.count - pos.index - len(events)
        log.error("audit spool: corrupt frame in segment %d at offset %d; skipping the rest of it (%d event(s))",
                  pos.segment, pos.offset + off, lost)
        self.drops.dropped(lost, "corrupt spool segment")
        # Pretend the batch runs to the segment's end, so acknowledging it passes the damage.
        return ReadBatch(events, pos, Position(pos.segment, seg.size, seg.count), off)

    def ack(self, end: Position) -> int:
        """Everything before `end` is acknowledged. Returns how many events left the spool."""
        if end <= self._cursor:
            return 0
        before = self.depth_events
        if end.segment not in self._segments:
            return 0
        seg = self._segments[end.segment]
        if end.offset >= seg.size and end.segment != self._write_seq:
            later = [s for s in self._segments if s > end.segment]
            end = Position(min(later), 0, 0)
        deleted = [s for s in self._segments if s < end.segment]
        self._cursor = end
        for seq in deleted:
            gone = self._segments.pop(seq)
            self._disk_bytes -= gone.size
            self._total_count -= gone.count
        if deleted or time.monotonic() - self._persisted_at >= self.cursor_interval:
            self._persist_cursor()
        for seq in deleted:
            self._path(seq).unlink(missing_ok=True)
        self._update_blocking()
        return before - self.depth_events

    def flush_cursor(self) -> None:
        if self._open and self._cursor != self._persisted:
            self._persist_cursor()

    def _persist_cursor(self) -> None:
        """_write_cursor(), but a failure (disk full) only costs duplicates after a restart (the
        cursor file lags; deleted segments are skipped at open), so it is logged once, not raised."""
        try:
            self._write_cursor()
        except OSError as exc:
            if not self._cursor_failing:
                self._cursor_failing = True
                log.warning("audit spool: cannot write the cursor file in %s (%s); delivery goes on, a restart "
                            "would resend acknowledged events (logged again when it works)", self.directory, exc)
            return
        if self._cursor_failing:
            self._cursor_failing = False
            log.info("audit spool: the cursor file is written again")

    def _write_cursor(self) -> None:
        tmp = self.directory / f"cursor.tmp{os.getpid()}"
        data = json.dumps({"segment": self._cursor.segment, "offset": self._cursor.offset,
                           "index": self._cursor.index}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / "cursor")
        self._fsync_dir()
        self._persisted = self._cursor
        self._persisted_at = time.monotonic()

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # State -------------------------------------------------------------------------------

    @property
    def cursor(self) -> Position:
        return self._cursor

    def read_position(self, pos: Position | None) -> Position:
        """Where a read from `pos` starts: the cursor when `pos` is None or acknowledged already."""
        return self._cursor if pos is None or pos < self._cursor else pos

    @property
    def end(self) -> Position:
        """The position the next frame will be written at."""
        seg = self._segments[self._write_seq]
        return Position(self._write_seq, seg.size, seg.count)

    @property
    def depth_events(self) -> int:
        head = self._cursor.index if self._cursor.segment in self._segments else 0
        return self._total_count - head

    @property
    def depth_bytes(self) -> int:
        head = self._cursor.offset if self._cursor.segment in self._segments else 0
        return self._disk_bytes - head

    @property
    def disk_bytes(self) -> int:
        return self._disk_bytes

    @property
    def dropped(self) -> int:
        return self.drops.total

    @property
    def blocking(self) -> bool:
        """True while the block policy wants new connections refused."""
        return self._blocking

    def oldest_time_ns(self) -> int | None:
        """Event time of the oldest unacknowledged event, or None when the spool is empty."""
        if not self.depth_events:
            return None
        batch = self.read(self._cursor, max_events=1)
        return batch.events[0].time_ns if batch.events else None

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self.sync()
        finally:
            os.close(self._write_fd)
            self._write_fd = None
        self._persist_cursor()
        self.drops.tick(force=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:016d}.seg"


def iter_events(directory: str | os.PathLike) -> Iterator[tuple[str, int, dict]]:
    """Every unacknowledged event of a spool directory, decoded, without changing anything
    (safe while Levity runs; for doctor and tests). A torn tail is simply not read."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    cursor = Spool._read_cursor_file(directory / "cursor")
    seqs = sorted(int(m.group(1)) for p in directory.iterdir() if (m := SEGMENT_RE.match(p.name)))
    tags: dict[bytes, str] = {}
    for seq in seqs:
        if cursor and seq < cursor.segment:
            continue
        try:
            data = (directory / f"{seq:016d}.seg").read_bytes()
        except FileNotFoundError:  # acknowledged and deleted while we looked
            continue
        starts, _, _ = scan(data)
        for start in starts:
            if cursor and seq == cursor.segment and start < cursor.offset:
                continue
            length = HEADER.unpack_from(data, start)[0]
            ev = _split_payload(data[start + HEADER.size:start + HEADER.size + length], tags)
            yield ev.tag, ev.time_ns, msgpack.unpackb(ev.record, raw=False)


@dataclass
class SpoolInfo:
    events: int
    bytes: int
    oldest_time_ns: int | None
    segments: int


def inspect_spool(directory: str | os.PathLike) -> SpoolInfo:
    """Depth of a spool directory (read-only, safe while Levity runs)."""
    count = 0
    oldest = None
    for _, time_ns, _ in iter_events(directory):
        count += 1
        if oldest is None:
            oldest = time_ns
    directory = Path(directory)
    segs = [p for p in directory.iterdir() if SEGMENT_RE.match(p.name)] if directory.is_dir() else []
    cursor = Spool._read_cursor_file(directory / "cursor")
    size = 0
    for p in segs:
        try:
            size += p.stat().st_size
        except FileNotFoundError:
            pass
    if cursor and (directory / f"{cursor.segment:016d}.seg").exists():
        size -= cursor.offset
    return SpoolInfo(count, max(size, 0) if count else 0, oldest, len(segs))
