"""The supervisor-worker channel: messages by request id, in parts, over a real SOCK_SEQPACKET pair."""

import asyncio
import socket

from levity.workers import ANSWER, PART_BYTES, REQUEST, Reassembly, message_parts, send_on_channel


async def test_large_messages_travel_in_parts_and_interleaved_ids_are_told_apart():
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    big = [{"id": f"CP{n:05d}", "connected": True} for n in range(20000)]  # far beyond one socket buffer
    small = {"result": "levity_info 1\n"}
    parts_big, parts_small = message_parts(ANSWER, 7, big), message_parts(REQUEST, 8, small)
    assert len(parts_big) > 10 and all(len(p) <= PART_BYTES + 10 for p in parts_big)
    interleaved = parts_big[:3] + parts_small + parts_big[3:]
    received: list = []
    reassembly = Reassembly()

    def read() -> None:
        while len(received) < 2:
            try:
                data = theirs.recv(PART_BYTES + 64)
            except BlockingIOError:
                return
            message = reassembly.feed(data)
            if message is not None:
                received.append(message)

    theirs.setblocking(False)
    loop = asyncio.get_running_loop()
    loop.add_reader(theirs.fileno(), read)
    try:
        await asyncio.wait_for(send_on_channel(ours, interleaved), 10)  # waits while the reader is behind
        for _ in range(200):
            if len(received) == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        loop.remove_reader(theirs.fileno())
        ours.close()
        theirs.close()
    assert received == [(REQUEST, 8, small), (ANSWER, 7, big)]
