"""The sender paces batches by the flush interval once it has caught up, instead of sending a
batch (and waiting for an ack) per group commit: under load that is one per few transaction
events, and the batches cost more CPU than their events."""

import time

from levity.audit.delivery import ForwardSink
from tests.delivery.test_forward_sink import wait_until

FLUSH_INTERVAL = 0.2


async def test_durable_events_one_after_another_share_batches(receiver, settings_for, factory):
    sink = ForwardSink(settings_for(receiver, flush_interval=FLUSH_INTERVAL, batch_size=1000), backoff_max=0.5)
    await sink.start()
    try:
        started = time.monotonic()
        sent = []
        for i in range(60):  # each returns after its own fsync: 60 group commits
            event = factory.make("transaction_start", f"CP{i}", connector_id=1, id_tag="T", meter_start=0,
                                 transaction_id=i, transaction_timestamp="2024-01-15T10:00:00Z")
            await sink.emit_durable(event)
            sent.append(event)
        got = await receiver.wait_for_async(60, timeout=30)
        elapsed = time.monotonic() - started
        assert [e.record["event_id"] for e in got] == [e.record["event_id"] for e in sent]
        acked = [b for b in receiver.batches if b.chunk]
        # One batch when the sender was idle, then at most one per flush interval.
        assert len(acked) <= elapsed / FLUSH_INTERVAL + 2, (len(acked), elapsed)
        await wait_until(lambda: sink.spool.depth_events == 0, what="everything acknowledged")
    finally:
        await sink.close(5)
