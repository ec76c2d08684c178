"""ForwardSink against the suite's Forward receiver: real sockets, faults injected."""

import asyncio
import json

import pytest

from levity.audit.delivery import ForwardSink
from levity.audit.sink import make_sink
from levity.audit.spool import inspect_spool
from tests.support import certs
from tests.support.forward_receiver import ForwardReceiver

WAIT = 30.0


def make_events(factory, n, prefix="CP"):
    """A mix of tags; every 10th one a transaction event (durable)."""
    out = []
    for i in range(n):
        if i % 10 == 0:
            out.append(factory.make("transaction_start", f"{prefix}{i % 7}", connector_id=1, id_tag="T",
                                    meter_start=i, transaction_id=i, transaction_timestamp="2024-01-15T10:00:00Z"))
        elif i % 3 == 0:
            out.append(factory.make("heartbeat", f"{prefix}{i % 7}"))
        else:
            out.append(factory.make("meter_values", f"{prefix}{i % 7}", connector_id=1, transaction_id=i,
                                    samples_count=1, measurands=["Energy.Active.Import.Register"], n=i))
    return out


async def emit_durable(sink, event):
    await sink.emit_durable(event)


async def emit_all(sink, events):
    durable = []
    for ev in events:
        if ev.durable:
            durable.append(asyncio.create_task(emit_durable(sink, ev)))
        else:
            sink.emit(ev)
    await asyncio.gather(*durable)


async def wait_until(predicate, timeout=WAIT, what="condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def assert_complete_and_ordered(sent, received):
    """Every event arrived; per tag in emission order once duplicates (same event_id) are removed;
    a duplicate is exactly the event first received under that event_id."""
    first: dict[str, dict] = {}
    for ev in received:
        known = first.setdefault(ev.record["event_id"], ev.record)
        assert json.dumps(known, sort_keys=True) == json.dumps(ev.record, sort_keys=True)
    assert set(first) == {ev.record["event_id"] for ev in sent}
    by_tag_sent: dict[str, list[str]] = {}
    for ev in sent:
        by_tag_sent.setdefault(ev.tag, []).append(ev.record["event_id"])
    by_tag_received: dict[str, list[str]] = {}
    seen = set()
    for ev in received:
        if ev.record["event_id"] not in seen:
            seen.add(ev.record["event_id"])
            by_tag_received.setdefault(ev.tag, []).append(ev.record["event_id"])
    assert by_tag_received == by_tag_sent


async def started(settings, **kwargs):
    sink = ForwardSink(settings, backoff_max=0.5, **kwargs)
    await sink.start()
    return sink


async def test_make_sink_gives_the_forward_sink(receiver, settings_for):
    assert isinstance(make_sink(settings_for(receiver)), ForwardSink)


async def test_events_are_acknowledged_and_arrive_in_order(receiver, settings_for, factory):
    sink = await started(settings_for(receiver))
    events = make_events(factory, 1000)
    await emit_all(sink, events)
    await wait_until(lambda: sink.stats()["acknowledged"] >= 1000, what="acks")
    await sink.close(5)
    received = receiver.events
    assert_complete_and_ordered(events, received)
    assert all(ev.mode == "packed_forward" for ev in received)
    batches = receiver.batches
    # One ack per batch: the chunk option is on a batch's last message, and every one is acked
    chunked = [b for b in batches if b.chunk]
    assert chunked and batches[-1].chunk and all(b.acked for b in chunked)
    assert len({b.chunk for b in chunked}) == len(chunked)  # chunk ids are unique
    assert sum(b.count for b in batches) == 1000
    # EventTime keeps the nanoseconds (compared by event_id: durable events are emitted from tasks, later).
    sent_time = {ev.record["event_id"]: ev.time_ns for ev in events}
    assert all(ev.time_ns == sent_time[ev.record["event_id"]] for ev in received)
    stats = sink.stats()
    assert stats["emitted"] == stats["acknowledged"] == 1000
    assert stats["spooled"] == stats["dropped"] == stats["send_failures"] == 0


async def test_late_acks_are_waited_for(receiver, settings_for, factory):
    receiver.ack_delay = 0.3
    sink = await started(settings_for(receiver, fluentd_timeout=5.0))
    events = make_events(factory, 300)
    await emit_all(sink, events)
    await wait_until(lambda: sink.stats()["acknowledged"] >= 300, what="late acks")
    await sink.close(5)
    assert_complete_and_ordered(events, receiver.events)


async def test_missing_acks_time_out_and_resend_with_same_event_ids(receiver, settings_for, factory):
    receiver.send_acks = False
    sink = await started(settings_for(receiver, fluentd_timeout=0.5))
    events = make_events(factory, 200)
    await emit_all(sink, events)
    await wait_until(lambda: sink.stats()["send_failures"] >= 2, what="ack timeouts")
    assert sink.stats()["acknowledged"] == 0
    receiver.send_acks = True
    await wait_until(lambda: sink.stats()["acknowledged"] >= 200, what="acks after resend")
    await sink.close(5)
    received = receiver.events
    assert len(received) > 200  # resent: duplicates...
    assert_complete_and_ordered(events, received)  # ...only of events already seen, same content


async def test_stall_then_resume_delivers_everything(receiver, settings_for, factory):
    receiver.stall = True
    sink = await started(settings_for(receiver, fluentd_timeout=0.5))
    events = make_events(factory, 300)
    await emit_all(sink, events)
    await wait_until(lambda: sink.stats()["send_failures"] >= 1, what="a timeout while stalled")
    receiver.stall = False
    await wait_until(lambda: sink.stats()["acknowledged"] >= 300, what="delivery after the stall")
    await sink.close(5)
    assert_complete_and_ordered(events, receiver.events)


async def test_connection_dropped_mid_batch_is_resent(receiver, settings_for, factory):
    receiver.drop_after_bytes = 3000
    sink = await started(settings_for(receiver))
    events = make_events(factory, 500)
    await emit_all(sink, events)
    await wait_until(lambda: sink.stats()["acknowledged"] >= 500, what="delivery after the drop")
    await sink.close(5)
    assert sink.stats()["send_failures"] >= 1
    assert receiver.connections >= 2
    assert_complete_and_ordered(events, receiver.events)


async def test_refused_then_back_everything_arrives_in_order(receiver, settings_for, factory):
    receiver.refuse = True
    sink = await started(settings_for(receiver))
    first = make_events(factory, 400, prefix="A")
    await emit_all(sink, first)  # durable ones return: they are on disk, not in Fluentd
    await wait_until(lambda: sink.stats()["spooled"] == 400, what="the spool to hold everything")
    assert sink.stats()["fluentd_connected"] == 0 and sink.stats()["acknowledged"] == 0
    receiver.refuse = False
    second = make_events(factory, 100, prefix="B")
    await emit_all(sink, second)
    await wait_until(lambda: sink.stats()["acknowledged"] >= 500, what="replay")
    assert sink.stats()["fluentd_connected"] == 1
    await sink.close(5)
    assert_complete_and_ordered(first + second, receiver.events)
    assert sink.stats()["spooled"] == 0


async def test_shared_key_handshake(settings_for, factory):
    with ForwardReceiver(shared_key="s3cret") as receiver:
        sink = await started(settings_for(receiver, fluentd_shared_key="s3cret"))
        events = make_events(factory, 50)
        await emit_all(sink, events)
        await wait_until(lambda: sink.stats()["acknowledged"] >= 50, what="delivery with a shared key")
        await sink.close(5)
        assert_complete_and_ordered(events, receiver.events)
        assert receiver.handshake_failures == 0


async def test_wrong_shared_key_delivers_nothing_and_keeps_the_events(settings_for, factory):
    with ForwardReceiver(shared_key="s3cret") as receiver:
        sink = await started(settings_for(receiver, fluentd_shared_key="wrong"))
        await emit_all(sink, make_events(factory, 20))
        await wait_until(lambda: receiver.handshake_failures >= 1, what="a refused handshake")
        await sink.close(1)
        assert receiver.events == []
        assert inspect_spool(sink.settings.spool_dir).events == 20


async def test_tls_with_shared_key(tmp_path, settings_for, factory):
    bundle = certs.make_certs(tmp_path / "certs")
    with ForwardReceiver(shared_key="k", ssl_context=bundle.server_context()) as receiver:
        sink = await started(settings_for(receiver, fluentd_tls=True, fluentd_tls_ca=str(bundle.ca_cert),
                                          fluentd_shared_key="k"))
        events = make_events(factory, 100)
        await emit_all(sink, events)
        await wait_until(lambda: sink.stats()["acknowledged"] >= 100, what="delivery over TLS")
        await sink.close(5)
        assert_complete_and_ordered(events, receiver.events)


async def test_tls_with_an_unknown_ca_is_refused(tmp_path, settings_for, factory):
    bundle = certs.make_certs(tmp_path / "certs")
    other = certs.make_certs(tmp_path / "other")
    with ForwardReceiver(ssl_context=bundle.server_context()) as receiver:
        sink = await started(settings_for(receiver, fluentd_tls=True, fluentd_tls_ca=str(other.ca_cert)))
        await emit_all(sink, make_events(factory, 10))
        await wait_until(lambda: "CERTIFICATE_VERIFY_FAILED" in (sink.last_error or ""), what="a refused certificate")
        await sink.close(1)
        assert receiver.events == []


async def test_close_leaves_unacknowledged_events_for_the_next_start(receiver, settings_for, factory):
    receiver.refuse = True
    settings = settings_for(receiver)
    sink = await started(settings)
    events = make_events(factory, 250)
    await emit_all(sink, events)
    await sink.close(0.5)
    assert inspect_spool(settings.spool_dir).events == 250
    receiver.refuse = False
    again = await started(settings)
    assert again.stats()["replayed"] == 250
    await wait_until(lambda: again.stats()["acknowledged"] >= 250, what="replay after restart")
    await again.close(5)
    assert_complete_and_ordered(events, receiver.events)
    assert inspect_spool(settings.spool_dir).events == 0


async def test_block_policy_refuses_new_connections_until_drained(receiver, settings_for, factory):
    receiver.refuse = True
    sink = await started(settings_for(receiver, spool_max_bytes=16384, spool_overflow="block"),
                         segment_bytes=2048)
    events = make_events(factory, 300)
    await emit_all(sink, events)
    await wait_until(lambda: not sink.accepting, what="the block policy")
    receiver.refuse = False
    await wait_until(lambda: sink.accepting and sink.stats()["acknowledged"] >= 300, what="draining")
    await sink.close(5)
    assert sink.stats()["dropped"] == 0
    assert_complete_and_ordered(events, receiver.events)


async def test_drop_oldest_counts_what_it_drops(receiver, settings_for, factory):
    receiver.refuse = True
    sink = await started(settings_for(receiver, spool_max_bytes=16384, spool_overflow="drop_oldest"),
                         segment_bytes=2048)
    events = make_events(factory, 300)
    await emit_all(sink, events)
    await wait_until(lambda: sink.stats()["spooled"] + sink.stats()["dropped"] == 300, what="spooling")
    dropped = sink.stats()["dropped"]
    assert dropped > 0
    receiver.refuse = False
    await wait_until(lambda: sink.stats()["spooled"] == 0, what="delivery")
    await sink.close(5)
    received = {ev.record["event_id"] for ev in receiver.events}
    assert len(received) == 300 - dropped
    for tag in {ev.tag for ev in events}:  # per tag, what arrived is the newest part: the oldest went
        sent = [ev.record["event_id"] for ev in events if ev.tag == tag]
        kept = [i for i in sent if i in received]
        assert kept == sent[len(sent) - len(kept):]


async def test_order_is_kept_across_tags(receiver, settings_for, factory):
    sink = await started(settings_for(receiver))
    events = [factory.make("heartbeat", "CP1") if i % 3 else factory.make("websocket_connect", "CP1",
                                                                          remote_address="127.0.0.1:1")
              for i in range(300)]
    for ev in events:
        sink.emit(ev)
    await wait_until(lambda: sink.stats()["acknowledged"] >= 300, what="acks")
    await sink.close(5)
    assert [ev.record["event_id"] for ev in receiver.events] == [ev.record["event_id"] for ev in events]


async def test_durable_events_refused_by_drop_newest_raise_not_durable(receiver, settings_for, factory):
    from levity.audit.sink import NotDurable

    receiver.refuse = True
    sink = await started(settings_for(receiver, spool_max_bytes=16 << 10, spool_overflow="drop_newest"))
    try:
        for i in range(2000):  # more than the spool holds
            sink.emit(factory.make("heartbeat", f"CP{i}"))
        await wait_until(lambda: sink.spool.dropped > 0, what="the spool to be full")
        with pytest.raises(NotDurable):
            await sink.emit_durable(make_events(factory, 1)[0])
        assert sink.stats()["durable_failed"] == 1
    finally:
        await sink.close(0.5)


async def test_durable_event_after_close_raises_not_durable(receiver, settings_for, factory):
    from levity.audit.sink import NotDurable

    sink = await started(settings_for(receiver))
    await sink.close(1.0)
    with pytest.raises(NotDurable):
        await sink.emit_durable(make_events(factory, 1)[0])
