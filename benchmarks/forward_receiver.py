"""A minimal Fluentd Forward Protocol v1 receiver that counts events, for the bench.

It decodes Message, Forward, PackedForward and CompressedPackedForward (gzip) modes,
answers `{"ack": chunk}` whenever the option map carries `chunk`, and keeps only counts
(per tag), so a long run does not pile events up in memory. It runs in its own process
(see `start_in_process`) so decoding does not share a GIL with the bench's measurements.
No shared-key handshake: the bench does not configure one.
"""

from __future__ import annotations

import asyncio
import gzip
import multiprocessing
import threading
from collections import Counter

import msgpack


class CountingForwardReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host, self.port = host, port
        self.events = 0
        self.by_tag: Counter[str] = Counter()
        self.acks = 0
        self.connections = 0
        self.decode_errors = 0
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> "CountingForwardReceiver":
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def snapshot(self) -> dict:
        return {"events": self.events, "by_tag": dict(self.by_tag), "acks": self.acks,
                "connections": self.connections, "decode_errors": self.decode_errors}

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        unpacker = msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", strict_map_key=False)
        try:
            while data := await reader.read(1 << 16):
                unpacker.feed(data)
                for message in unpacker:
                    chunk = self._count(message)
                    if chunk is not None:
                        writer.write(msgpack.packb({"ack": chunk}))
                        self.acks += 1
                await writer.drain()
        except (ConnectionError, ValueError, msgpack.UnpackException):
            self.decode_errors += 1
        finally:
            writer.close()

    def _count(self, message) -> str | None:
        if not isinstance(message, (list, tuple)) or len(message) < 2:
            self.decode_errors += 1
            return None
        tag, second = message[0], message[1]
        option = None
        if isinstance(second, (bytes, str)):  # PackedForward / CompressedPackedForward
            option = message[2] if len(message) > 2 and isinstance(message[2], dict) else {}
            entries = second.encode("utf-8", "surrogateescape") if isinstance(second, str) else second
            if option.get("compressed") == "gzip":
                entries = gzip.decompress(entries)
            count = _count_stream(entries)
        elif isinstance(second, (list, tuple)) and not isinstance(second, msgpack.ExtType):
            # Forward: [tag, [[time, record], ...], option?] (EventTime is an ExtType, a tuple too)
            count = len(second)
            option = message[2] if len(message) > 2 and isinstance(message[2], dict) else None
        else:  # Message: [tag, time, record, option?]
            count = 1
            option = message[3] if len(message) > 3 and isinstance(message[3], dict) else None
        self.events += count
        self.by_tag[tag] += count
        return option.get("chunk") if option else None


def _count_stream(entries: bytes) -> int:
    unpacker = msgpack.Unpacker(raw=True, strict_map_key=False)
    unpacker.feed(entries)
    return sum(1 for _ in unpacker)


# Running in a child process ----------------------------------------------------------------

def _child(conn, host: str, kind: str = "counting") -> None:
    if kind == "tests":
        return _child_tests(conn, host)

    async def main():
        receiver = await CountingForwardReceiver(host).start()
        conn.send(receiver.port)
        loop = asyncio.get_running_loop()
        while True:
            command = await loop.run_in_executor(None, conn.recv)
            if command == "stop":
                await receiver.stop()
                conn.send(receiver.snapshot())
                return
            conn.send(receiver.snapshot())

    try:
        asyncio.run(main())
    except (EOFError, KeyboardInterrupt):
        pass


def _child_tests(conn, host: str) -> None:
    """The test suite's full Forward receiver (tests/support/forward_receiver.py): it decodes and
    keeps every event; a cross-check of the counting receiver, at a higher CPU cost."""
    from tests.support.forward_receiver import ForwardReceiver

    receiver = ForwardReceiver(host).start()
    conn.send(receiver.port)

    def snapshot() -> dict:
        events = receiver.events
        by_tag = Counter(event.tag for event in events)
        batches = receiver.batches
        return {"events": len(events), "by_tag": dict(by_tag), "acks": sum(1 for b in batches if b.acked),
                "connections": None, "decode_errors": 0}

    try:
        while True:
            command = conn.recv()
            if command == "stop":
                result = snapshot()
                receiver.stop()
                conn.send(result)
                return
            conn.send({"events": len(receiver.events)} if command == "count-fast" else snapshot())
    except (EOFError, KeyboardInterrupt):
        receiver.stop()


def tests_receiver_available() -> bool:
    try:
        import tests.support.forward_receiver  # noqa: F401
    except ImportError:
        return False
    return True


class ReceiverProcess:
    """A Forward receiver in a child process: .port, .snapshot(), .stop().

    kind "counting": CountingForwardReceiver (counts only); "tests": the suite's ForwardReceiver."""

    def __init__(self, host: str = "127.0.0.1", kind: str = "counting"):
        context = multiprocessing.get_context("spawn")
        self._conn, child_conn = context.Pipe()
        self._lock = threading.Lock()
        self.process = context.Process(target=_child, args=(child_conn, host, kind), daemon=True,
                                       name="bench-forward-receiver")
        self.process.start()
        if not self._conn.poll(30):
            self.process.kill()
            raise RuntimeError("the Forward receiver did not start")
        self.port: int = self._conn.recv()
        self.pid = self.process.pid

    def snapshot(self, fast: bool = False) -> dict:
        """Counts so far; fast: just {"events": n}."""
        with self._lock:
            self._conn.send("count-fast" if fast else "count")
            return self._conn.recv()

    def stop(self) -> dict:
        with self._lock:
            try:
                self._conn.send("stop")
                result = self._conn.recv() if self._conn.poll(10) else {}
            except (EOFError, BrokenPipeError):
                result = {}
        self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
        return result
