"""The frames the spool has just written, kept in memory so the sender need not read them back.

While the sender keeps up, every batch it sends is one the spool thread wrote a moment ago:
reading it back (a pread, a crc and a parse per frame) cost more CPU per event than writing it.
So each write that went through whole also leaves its frames here, with the spool positions
they were written at, and the sender takes a batch from here when the position it sends from
is among them. It is the same bytes at the same positions, so the cursor, the acks and the
at-least-once replay stay exactly the spool's. When the sender is behind (an outage, a
failover, a restart) its position is older than anything kept: it reads the spool, as before.

Only the spool thread touches this (ForwardSink writes and reads there), so there is no lock.
The memory is bounded: the oldest writes are forgotten first; the spool still has them.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

from levity.audit.spool import Position, entry_offset


class _Written(NamedTuple):
    start: Position
    end: Position
    frames: list[bytes]  # spool frames, as written
    tags: list[str]  # the tag of each frame


class RecentWrites:
    def __init__(self, max_events: int, max_bytes: int = 16 << 20):
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._writes: deque[_Written] = deque()
        self._events = 0
        self._bytes = 0

    def add(self, start: Position, end: Position, frames: list[bytes], tags: list[str]) -> None:
        """Frames written whole from `start` to `end`, in one segment."""
        if start.segment != end.segment or end.index - start.index != len(frames):
            return  # a rotation within the write: the spool reads it, as before
        if self._writes and self._writes[-1].end != start:
            self.clear()  # not contiguous with what is kept (a write failed in between)
        self._writes.append(_Written(start, end, frames, tags))
        self._events += len(frames)
        self._bytes += end.offset - start.offset
        while self._events > self.max_events or self._bytes > self.max_bytes:
            self._drop_oldest()

    def clear(self) -> None:
        self._writes.clear()
        self._events = self._bytes = 0

    def take(self, pos: Position, max_events: int) -> tuple[int, Position, list[tuple[str, list[bytes]]]] | None:
        """Up to max_events events from `pos` as (count, end position, runs of (tag, entries)), or
        None when `pos` is not among the frames kept (the caller reads the spool)."""
        writes = self._writes
        while writes and writes[0].end <= pos:
            self._drop_oldest()  # acknowledged, or read from the spool already
        if not writes or writes[0].start.segment != pos.segment or writes[0].start.offset > pos.offset:
            return None
        first = writes[0]
        skip = pos.index - first.start.index  # frames of the first write already sent
        if not 0 <= skip < len(first.frames) or \
                first.start.offset + sum(map(len, first.frames[:skip])) != pos.offset:
            self.clear()  # `pos` is not a frame boundary of what is kept: read the spool
            return None
        runs: list[tuple[str, list[bytes]]] = []
        run_tag, entries, offset = None, None, 0
        count, end = 0, pos
        for written in writes:
            if written is not first:
                if written.start != end:
                    break  # add() keeps them contiguous; never more than what is contiguous
                skip = 0
            last = min(len(written.frames), skip + max_events - count)
            position = end.offset
            for tag, frame in zip(written.tags[skip:last], written.frames[skip:last]):
                if tag != run_tag:
                    run_tag, entries, offset = tag, [], entry_offset(tag)
                    runs.append((tag, entries))
                entries.append(frame[offset:])
                position += len(frame)
            count += last - skip
            end = Position(end.segment, position, written.start.index + last)
            if count >= max_events:
                break
        return count, end, runs

    def _drop_oldest(self) -> None:
        oldest = self._writes.popleft()
        self._events -= len(oldest.frames)
        self._bytes -= oldest.end.offset - oldest.start.offset
