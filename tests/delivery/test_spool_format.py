"""The spool holds Forward-ready entries, and still reads what earlier versions wrote.

Earlier versions stored each event as the msgpack of [tag, time_ns, record]; since the
encode-once path it is [tag, [EventTime, record]], the PackedForward entry sent as it lies. A
spool left behind by an earlier version (Levity upgraded while Fluentd was down) is delivered.
"""

import struct
import zlib

import msgpack

from levity.audit.delivery import ForwardSink
from levity.audit.forward import encode_batch
from levity.audit.spool import HEADER, Spool, SpooledEvent, iter_events
from tests.delivery.test_forward_sink import wait_until

T0 = 1_700_000_000_123_456_789


def old_frame(tag: str, time_ns: int, record: dict) -> bytes:
    """A frame as earlier versions wrote it."""
    payload = msgpack.packb([tag, time_ns, record], use_bin_type=True)
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def old_events(n, start=0):
    return [("ocpp.meter" if i % 2 else "ocpp.heartbeat", T0 + i,
             {"event_type": "meter_values" if i % 2 else "heartbeat", "event_id": f"old-{i}", "n": i})
            for i in range(start, start + n)]


def write_old_spool(directory, events):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{1:016d}.seg").write_bytes(b"".join(old_frame(*ev) for ev in events))


def test_a_frame_is_the_forward_entry_as_fluentd_decodes_it(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 20).open()
    spool.append([("ocpp.boot", T0, {"event_id": "e1", "vendor": "V"})])
    [event] = spool.read().events
    time_ext, record = msgpack.unpackb(event.entry, raw=False)
    assert time_ext == msgpack.ExtType(0, struct.pack(">II", T0 // 10**9, T0 % 10**9))
    assert record == {"event_id": "e1", "vendor": "V"}
    assert (event.tag, event.time_ns, msgpack.unpackb(event.record)) == ("ocpp.boot", T0, record)
    # On the wire the entry is copied, not packed again.
    data, chunk = encode_batch([event])
    tag, entries, option = msgpack.unpackb(data, raw=False)
    assert (tag, entries, option) == ("ocpp.boot", event.entry, {"size": 1, "chunk": chunk})
    spool.close()


def test_old_and_new_frames_in_one_segment_read_alike(tmp_path):
    write_old_spool(tmp_path, old_events(5))
    spool = Spool(tmp_path, max_bytes=1 << 20).open()
    assert spool.recovered_events == 5
    spool.append(old_events(5, start=5))  # the new format, after the old frames
    batch = spool.read(max_events=100)
    assert [(e.tag, e.time_ns, msgpack.unpackb(e.record)["n"]) for e in batch.events] == \
           [(tag, t, r["n"]) for tag, t, r in old_events(10)]
    assert [e.entry for e in batch.events[:5]] == [SpooledEvent.of(*ev).entry for ev in old_events(5)]
    assert [r["n"] for _, _, r in iter_events(tmp_path)] == list(range(10))
    spool.close()


async def test_a_spool_left_by_an_earlier_version_is_delivered(tmp_path, receiver, settings_for, factory):
    spool_dir = tmp_path / "spool"
    write_old_spool(spool_dir, old_events(40))
    sink = ForwardSink(settings_for(receiver, spool_dir=str(spool_dir)), backoff_max=0.5)
    await sink.start()
    try:
        assert sink.replayed == 40
        new = factory.make("heartbeat", "CP1")
        sink.emit(new)
        got = await receiver.wait_for_async(41, timeout=30)
        assert [(e.tag, e.time_ns, e.record) for e in got[:40]] == old_events(40)
        assert got[40].record == new.record and got[40].time_ns == new.time_ns
        await wait_until(lambda: sink.spool.depth_events == 0, what="the spool acknowledged")
    finally:
        await sink.close(5)
