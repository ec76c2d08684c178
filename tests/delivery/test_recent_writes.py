"""The sender takes the spool thread's latest writes from memory (levity/audit/recent.py): the
same events, positions and wire bytes as reading them back from the spool, and the spool
whenever the position is not among what is kept."""

import asyncio

import msgpack

from levity.audit.delivery import ForwardSink
from levity.audit.forward import encode_batch, encode_runs
from levity.audit.recent import RecentWrites
from levity.audit.spool import Spool, encode_frame
from tests.delivery.test_forward_sink import assert_complete_and_ordered, emit_all, make_events, wait_until

TAGS = ("ocpp.heartbeat", "ocpp.meter_values", "ocpp.transaction", "ocpp.a_tag_longer_than_thirty_one_bytes")


def batch(start, n):
    tags = [TAGS[(start + i) // 3 % len(TAGS)] for i in range(n)]
    frames = [encode_frame(tag, 1_700_000_000_000_000_000 + start + i, {"n": start + i}) for i, tag in
              enumerate(tags)]
    return frames, tags


def write(spool, recent, start, n, keep=True):
    frames, tags = batch(start, n)
    before = spool.end
    assert spool.append_frames(frames) == n
    if keep:
        recent.add(before, spool.end, frames, tags)


def runs_of(events):
    runs = []
    for ev in events:
        if not runs or runs[-1][0] != ev.tag:
            runs.append((ev.tag, []))
        runs[-1][1].append(ev.entry)
    return runs


def numbers(runs):
    return [msgpack.unpackb(entry[11:])["n"] for _, entries in runs for entry in entries]


def test_taken_from_memory_as_the_spool_reads_it(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 24).open()
    recent = RecentWrites(max_events=1000)
    for start, n in ((0, 40), (40, 25), (65, 50)):
        write(spool, recent, start, n)
    positions = [spool.cursor, spool.read(max_events=7).end, spool.read(max_events=40).end,
                 spool.read(max_events=100).end]
    assert numbers(recent.take(positions[1], 5)[2]) == [7, 8, 9, 10, 11]
    for pos in positions:  # forward, as the sender goes
        for limit in (1, 13, 60, 500):
            count, end, runs = recent.take(pos, limit)
            read = spool.read(pos, limit)
            assert (count, end) == (len(read.events), read.end)
            assert runs == runs_of(read.events)
            assert encode_runs(runs)[0].split(b"chunk")[0] == encode_batch(read.events)[0].split(b"chunk")[0]
    # Writes before a position taken from are forgotten: going back (a resend from the cursor
    # after a failure) reads the spool.
    assert recent.take(positions[1], 5) is None
    assert recent.take(spool.end, 10) is None  # nothing after the last write
    spool.close()


def test_the_spool_when_the_position_is_older_than_what_is_kept(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 24).open()
    recent = RecentWrites(max_events=60)
    for start in (0, 30, 60):  # three writes of 30: the first is forgotten
        write(spool, recent, start, 30)
    assert recent.take(spool.cursor, 100) is None
    behind = spool.read(max_events=30).end
    assert numbers(recent.take(behind, 100)[2]) == list(range(30, 90))
    spool.close()


def test_a_write_not_kept_clears_what_was(tmp_path):
    spool = Spool(tmp_path, max_bytes=1 << 24).open()
    recent = RecentWrites(max_events=1000)
    write(spool, recent, 0, 10)
    write(spool, recent, 10, 10, keep=False)  # as when a write fails or drop_newest cut it
    after_gap = spool.end
    write(spool, recent, 20, 10)
    assert recent.take(spool.cursor, 100) is None  # the spool has the gap: it is read there
    assert numbers(recent.take(after_gap, 100)[2]) == list(range(20, 30))
    spool.close()


async def test_caught_up_sends_from_memory_and_an_outage_replays_from_the_spool(receiver, settings_for, factory):
    sink = ForwardSink(settings_for(receiver, batch_size=20), backoff_max=0.5)
    await sink.start()
    try:
        steady = make_events(factory, 200, prefix="A")
        for i in range(0, 200, 10):  # a steady trickle: the sender keeps up
            await emit_all(sink, steady[i:i + 10])
            await asyncio.sleep(0.01)
        await wait_until(lambda: sink.stats()["acknowledged"] >= 200, what="acks")
        from_memory = sink.sent_from_memory
        assert from_memory >= 150, from_memory  # caught up, it reads (almost) nothing back
        receiver.refuse = True
        await wait_until(lambda: not sink.connected, what="the sink to notice the outage")
        outage = make_events(factory, 300, prefix="B")  # far more than the 80 events kept
        await emit_all(sink, outage)
        await wait_until(lambda: sink.stats()["spooled"] == 300, what="the spool to hold the outage's events")
        receiver.refuse = False
        await wait_until(lambda: sink.stats()["acknowledged"] >= 500, what="replay")
        assert sink.sent_from_memory - from_memory < 300  # the replay read the spool
        assert_complete_and_ordered(steady + outage, receiver.events)
    finally:
        await sink.close(5)
