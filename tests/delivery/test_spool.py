"""The on-disk spool: order, acknowledgement, restart, torn tails, the bound and its policies."""

import logging
import os

import msgpack
import pytest

from levity.audit.spool import HEADER, Spool, SpoolLocked, inspect_spool, iter_events


def events(n, start=0, tag="ocpp.meter", pad=0):
    return [(tag, 1_700_000_000_000_000_000 + i, {"event_id": f"e{i}", "n": i, "pad": "x" * pad})
            for i in range(start, start + n)]


def read_all(spool, max_events=1000):
    out, pos = [], spool.cursor
    while True:
        batch = spool.read(pos, max_events=max_events)
        if not batch.events:
            return out, pos
        out.extend(msgpack.unpackb(ev.record)["n"] for ev in batch.events)
        pos = batch.end


def test_append_read_ack_in_order(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=4096).open()
    assert spool.append(events(100)) == 100
    assert spool.depth_events == 100
    batch = spool.read(max_events=30)
    assert [msgpack.unpackb(e.record)["n"] for e in batch.events] == list(range(30))
    assert batch.events[0].tag == "ocpp.meter" and batch.events[0].time_ns == 1_700_000_000_000_000_000
    assert spool.ack(batch.end) == 30
    assert spool.depth_events == 70
    got, _ = read_all(spool)
    assert got == list(range(30, 100))
    spool.close()


def test_acknowledged_segments_are_deleted(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=2048).open()
    spool.append(events(200))
    assert len(list(tmp_path.glob("*.seg"))) > 3
    pos = spool.cursor
    while True:
        batch = spool.read(pos, max_events=50)
        if not batch.events:
            break
        spool.ack(batch.end)
        pos = batch.end
    assert spool.depth_events == 0 and spool.depth_bytes == 0
    assert len(list(tmp_path.glob("*.seg"))) == 1
    spool.close()


def test_restart_resumes_after_cursor(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=2048).open()
    spool.append(events(120), fsync=True)
    pos, acked = spool.cursor, 0
    for _ in range(3):  # batches stop at segment ends, so these are up to 25 each
        batch = spool.read(pos, max_events=25)
        acked += spool.ack(batch.end)
        pos = batch.end
    assert acked > 25
    spool.close()
    reopened = Spool(tmp_path, max_bytes=1 << 20, segment_bytes=2048).open()
    assert reopened.recovered_events == 120 - acked
    got, _ = read_all(reopened)
    assert got == list(range(acked, 120))
    reopened.append(events(5, start=120))
    assert read_all(reopened)[0] == list(range(acked, 125))
    reopened.close()


def test_stale_cursor_only_replays(tmp_path):
    """An acknowledgement not yet in the cursor file (crash) means duplicates, never a loss."""
    spool = Spool(tmp_path, max_bytes=1 << 20, cursor_interval=3600).open()
    spool.append(events(10), fsync=True)
    spool.ack(spool.read(max_events=4).end)  # persisted lazily: not yet on disk
    # simulate SIGKILL: no close(), just drop the object and release its lock
    os.close(spool._lock_fd)
    reopened = Spool(tmp_path, max_bytes=1 << 20).open()
    assert read_all(reopened)[0] == list(range(10))
    reopened.close()


def test_torn_tail_is_truncated(tmp_path, caplog):
    spool = Spool(tmp_path, max_bytes=1 << 20).open()
    spool.append(events(10), fsync=True)
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    size = segment.stat().st_size
    with open(segment, "ab") as f:  # half a frame, as a SIGKILL in the middle of write() leaves
        f.write(HEADER.pack(100, 0) + b"\x93\xa3abc")
    with caplog.at_level(logging.WARNING):
        reopened = Spool(tmp_path, max_bytes=1 << 20).open()
    assert "torn tail" in caplog.text
    assert segment.stat().st_size == size
    reopened.append(events(2, start=10))
    assert read_all(reopened)[0] == list(range(12))
    reopened.close()


def test_bad_crc_tail_is_truncated(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20).open()
    spool.append(events(10), fsync=True)
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[-3] ^= 0xFF  # last frame's payload damaged
    segment.write_bytes(bytes(data))
    reopened = Spool(tmp_path, max_bytes=1 << 20).open()
    assert read_all(reopened)[0] == list(range(9))
    reopened.close()


def test_drop_newest_refuses_and_counts(tmp_path, caplog):
    spool = Spool(tmp_path, max_bytes=8192, overflow="drop_newest", segment_bytes=2048).open()
    with caplog.at_level(logging.WARNING):
        written = sum(spool.append(events(1, start=i, pad=50)) for i in range(200))
    assert written < 200
    assert spool.dropped == 200 - written
    assert spool.disk_bytes <= 8192
    got, _ = read_all(spool)
    assert got == list(range(written))  # the oldest are kept, the newest refused
    assert 1 <= caplog.text.count("dropped") <= 3  # first drop, maybe a summary: never one line per event
    spool.close()


def test_drop_oldest_deletes_head_segments_and_counts(tmp_path, caplog):
    spool = Spool(tmp_path, max_bytes=8192, overflow="drop_oldest", segment_bytes=2048).open()
    with caplog.at_level(logging.WARNING):
        for i in range(200):
            spool.append(events(1, start=i, pad=50))
    assert spool.disk_bytes <= 8192
    got, _ = read_all(spool)
    assert got == list(range(200 - len(got), 200))  # the newest are kept, in order
    assert spool.dropped == 200 - len(got)
    assert spool.depth_events == len(got)
    assert caplog.text.count("dropped") <= 3
    spool.close()


def test_block_keeps_everything_and_reports_full(tmp_path):
    spool = Spool(tmp_path, max_bytes=8192, overflow="block", segment_bytes=2048).open()
    for i in range(200):
        spool.append(events(1, start=i, pad=50))
    assert spool.blocking
    assert spool.dropped == 0
    assert read_all(spool)[0] == list(range(200))
    pos = spool.cursor
    while spool.blocking:  # acknowledgements drain it: connections accepted again
        batch = spool.read(pos, max_events=20)
        spool.ack(batch.end)
        pos = batch.end
    assert spool.disk_bytes < 8192
    spool.close()


def test_second_process_cannot_open_the_same_spool(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20).open()
    with pytest.raises(SpoolLocked):
        Spool(tmp_path, max_bytes=1 << 20).open()
    spool.close()
    Spool(tmp_path, max_bytes=1 << 20).open().close()


def test_inspect_is_read_only(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20).open()
    spool.append(events(10), fsync=True)
    spool.ack(spool.read(max_events=3).end)
    spool.flush_cursor()
    info = inspect_spool(tmp_path)
    assert info.events == 7
    assert info.oldest_time_ns == 1_700_000_000_000_000_003
    assert [r["n"] for _, _, r in iter_events(tmp_path)] == list(range(3, 10))
    spool.close()


def test_a_failed_write_raises_and_leaves_no_partial_frame(tmp_path):
    from levity.audit.spool import SpoolWriteError

    spool = Spool(tmp_path, max_bytes=1 << 20).open()
    assert spool.append(events(3)) == 3
    good_fd = spool._write_fd
    spool._write_fd = os.open(tmp_path / "lock", os.O_RDONLY)  # a descriptor that cannot be written
    try:
        with pytest.raises(SpoolWriteError) as failure:
            spool.append(events(2, start=3))
        assert failure.value.written == 0
    finally:
        os.close(spool._write_fd)
        spool._write_fd = good_fd
    assert spool.append(events(2, start=3)) == 2  # the next write works
    assert read_all(spool)[0] == list(range(5))
    spool.close()
