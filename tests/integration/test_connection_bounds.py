"""Per-connection bounds against a real `levity serve`: a client that floods frames faster
than they are handled is stopped by TCP backpressure instead of filling the server's memory,
and a full spool under overflow=block holds connected chargers instead of growing."""

import asyncio
import json
import time

from tests.support.forward_receiver import ForwardReceiver
from tests.support.ocpp_client import raw_charge_point

FLOOD_FRAMES = 4000
FLOOD_DATA = "x" * 60_000  # each frame about 60 KB, under the 64 KiB frame limit
# Generous: the bounds keep about 1 MiB of frames and one socket read per connection; the
# unbounded server grew by over 200 MB under this flood.
RSS_GROWTH_BOUND = 64 << 20


def proc_status_bytes(pid: int, field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def wait_until(condition, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def test_flood_client_is_paused_memory_stays_bounded_and_others_are_served(levity):
    # Throttled to 5 calls/s, the flood's frames wait for their handler: the case that queued
    # every frame the socket delivered.
    server = levity({"LEVITY_MAX_CALLS_PER_SECOND": "5"})
    pid = server.process.pid
    baseline = proc_status_bytes(pid, "VmRSS")
    async with raw_charge_point(server.url, "CP-FLOOD", max_size=None) as flood, \
            raw_charge_point(server.url, "CP-GOOD") as good:
        sent = 0

        async def send_all():
            nonlocal sent
            for i in range(FLOOD_FRAMES):
                await flood.ws.send(json.dumps([2, str(i), "DataTransfer", {"vendorId": "V", "data": FLOOD_DATA}]))
                sent += 1

        sender = asyncio.create_task(send_all())
        paused = 'levity_connections_reading_paused{reason="queue"}'
        # Either the server read the whole flood (unbounded) or it stopped reading this socket.
        await wait_until(lambda: sender.done() or server.metrics().get(paused, 0) >= 1, "the flood to be held")
        grown = proc_status_bytes(pid, "VmHWM") - baseline
        assert grown < RSS_GROWTH_BOUND and not sender.done(), \
            f"the server read {sent} frames and grew {grown >> 20} MiB from {baseline >> 20} MiB"
        metrics = server.metrics()
        assert metrics[paused] == 1
        assert metrics["levity_queued_bytes"] <= metrics["levity_limit_max_queued_bytes"] + (1 << 20)
        # Everyone else is still served while the flood is held.
        for i in range(20):
            assert (await good.call(f"g{i}", "Heartbeat", {}))[:2] == [3, f"g{i}"]
        # The flood is slowed, not dropped: its answers come, in order.
        for i in range(3):
            answer = json.loads(await asyncio.wait_for(flood.ws.recv(), 10))
            assert answer[:2] == [3, str(i)]
        peak = proc_status_bytes(pid, "VmHWM")
        assert peak - baseline < RSS_GROWTH_BOUND, f"RSS grew {(peak - baseline) >> 20} MiB from {baseline >> 20} MiB"
        assert sent < FLOOD_FRAMES
        print(f"flood: {sent} frames sent before TCP backpressure held the client; "
              f"server RSS {baseline >> 20} MiB -> peak {peak >> 20} MiB")
        sender.cancel()
        flood.ws.transport.abort()  # the server is not reading it: no closing handshake
    assert server.metrics()['levity_reading_pauses_total{reason="queue"}'] >= 1


async def test_block_policy_holds_connected_chargers_until_the_spool_drains(levity):
    receiver = ForwardReceiver().start()
    receiver.refuse = True  # Fluentd down: every event stays in the spool
    try:
        server = levity({"FLUENTD_ENABLED": "true", "FLUENTD_HOST": "127.0.0.1", "FLUENTD_PORT": str(receiver.port),
                         "FLUENTD_TIMEOUT": "1", "LEVITY_SPOOL_OVERFLOW": "block",
                         "LEVITY_SPOOL_MAX_BYTES": "1m", "LEVITY_FLUSH_INTERVAL": "0.05",
                         "LEVITY_MAX_CALLS_PER_SECOND": "100000"})
        held = 'levity_connections_reading_paused{reason="spool"}'
        async with raw_charge_point(server.url, "CP-BUSY") as cp:
            answered = 0
            # Each call is an audit event of a few hundred bytes: the spool fills after some thousands.
            for i in range(20000):
                await cp.ws.send(json.dumps([2, str(i), "DataTransfer", {"vendorId": "V", "data": "d" * 4000}]))
                try:
                    answer = json.loads(await asyncio.wait_for(cp.ws.recv(), 2))
                except asyncio.TimeoutError:
                    break  # held: the answer waits for the spool
                assert answer[:2] == [3, str(i)]
                answered += 1
            assert answered < 20000, "the charger was never held while the spool was full"
            metrics = server.metrics()
            assert metrics[held] == 1
            # Held, not growing: the spool stays near its bound while the charger waits.
            await cp.ws.send(json.dumps([2, "more", "DataTransfer", {"vendorId": "V", "data": "d" * 4000}]))
            assert server.metrics()["levity_audit_spool_bytes"] <= (1 << 20) + (64 << 10)
            receiver.refuse = False  # Fluentd is back: the spool drains and the charger is answered
            answer = json.loads(await asyncio.wait_for(cp.ws.recv(), 30))
            assert answer[:2] == [3, str(answered)]
            answer = json.loads(await asyncio.wait_for(cp.ws.recv(), 30))
            assert answer[:2] == [3, "more"]
            assert (await cp.call("after", "Heartbeat", {}))[:2] == [3, "after"]
        metrics = server.metrics()
        assert metrics[held] == 0 and metrics['levity_reading_pauses_total{reason="spool"}'] >= 1
        assert metrics['levity_audit_events_total{state="dropped"}'] == 0
    finally:
        receiver.stop()
