"""A Fluentd stand-in for tests: a TCP (or TLS) server speaking the Forward Protocol v1.

It follows the Fluentd "Forward Protocol Specification v1" (fluent/fluentd wiki): the Message,
Forward, PackedForward and CompressedPackedForward modes, EventTime (ext type 0), the `option`
map (`size`, `chunk`, `compressed`), `{"ack": chunk}` responses and the shared-key handshake
(HELO / PING / PONG). It records what arrives and can misbehave on purpose (refuse, stall, drop
a connection mid-message, late or missing acks).

The server runs on its own asyncio loop in a background thread, so both sync and async tests
can use it. Every attribute below may be read or set from any thread.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import hmac
import math
import os
import socket
import ssl
import struct
import threading
import time
import zlib
from dataclasses import dataclass, replace

import msgpack

MODES = ("message", "forward", "packed_forward", "compressed_packed_forward")


@dataclass(frozen=True)
class ReceivedEvent:
    tag: str
    time_ns: int
    record: dict
    mode: str


@dataclass(frozen=True)
class ReceivedBatch:
    """One transport message: its mode, tag, number of events, `chunk` option and whether acked."""

    mode: str
    tag: str
    count: int
    chunk: str | None
    acked: bool


@dataclass(frozen=True)
class EventTime:
    """The decoded EventTime ext (type 0): big-endian uint32 seconds + uint32 nanoseconds."""

    seconds: int
    nanoseconds: int


class ProtocolError(Exception):
    """The peer sent something the Forward Protocol v1 does not allow."""


class _Dropped(Exception):
    """drop_after_bytes fired on this connection."""


def _ext_hook(code: int, data: bytes):
    if code == 0 and len(data) == 8:
        return EventTime(*struct.unpack(">II", data))
    return msgpack.ExtType(code, data)


def _unpacker() -> msgpack.Unpacker:
    # surrogateescape: a `str` carrying binary (out_forward's PackedForward entries) round-trips
    # to its exact bytes with .encode("utf-8", "surrogateescape").
    return msgpack.Unpacker(raw=False, unicode_errors="surrogateescape", ext_hook=_ext_hook)


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


def _str_keys(value):
    """Maps anywhere in a record get str keys (bin keys are decoded as UTF-8)."""
    if isinstance(value, dict):
        return {(k.decode("utf-8", "surrogateescape") if isinstance(k, bytes) else k): _str_keys(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_str_keys(v) for v in value]
    return value


def _time_ns(value) -> int:
    if isinstance(value, EventTime):
        if value.nanoseconds >= 1_000_000_000:
            raise ProtocolError(f"EventTime nanoseconds out of range: {value.nanoseconds}")
        return value.seconds * 1_000_000_000 + value.nanoseconds
    if isinstance(value, int) and not isinstance(value, bool):
        return value * 1_000_000_000
    if isinstance(value, float) and math.isfinite(value):
        whole = math.floor(value)
        return whole * 1_000_000_000 + round((value - whole) * 1e9)
    raise ProtocolError(f"time must be EventTime, int or float, not {value!r}")


def _record(value) -> dict:
    if not isinstance(value, dict):
        raise ProtocolError(f"record must be a map, not {value!r}")
    return _str_keys(value)


def _entry(value) -> tuple[int, dict]:
    if not isinstance(value, list) or len(value) != 2:
        raise ProtocolError(f"entry must be [time, record], not {value!r}")
    return _time_ns(value[0]), _record(value[1])


def _option(value) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(f"option must be a map, not {value!r}")
    if "chunk" in value and not isinstance(value["chunk"], str):
        raise ProtocolError(f"chunk option must be a str, not {value['chunk']!r}")
    return value


def _entry_stream(raw: bytes) -> list[tuple[int, dict]]:
    unpacker = _unpacker()
    unpacker.feed(raw)
    entries = [_entry(item) for item in unpacker]
    if unpacker.tell() != len(raw):
        raise ProtocolError(f"entries stream ends mid-entry ({len(raw) - unpacker.tell()} bytes left)")
    return entries


def decode_message(msg) -> tuple[str, str, list[tuple[int, dict]], dict]:
    """(mode, tag, [(time_ns, record)], option) of one transport message, or ProtocolError."""
    if not isinstance(msg, list) or not 2 <= len(msg) <= 4:
        raise ProtocolError(f"a message must be an array of 2 to 4 elements, not {msg!r:.200}")
    tag = msg[0]
    if not isinstance(tag, str):
        raise ProtocolError(f"tag must be a str, not {tag!r}")
    second = msg[1]  # the spec: the carrier mode is told by the second element
    if isinstance(second, list):
        if len(msg) > 3:
            raise ProtocolError("Forward mode is [tag, entries, option?]")
        mode, option = "forward", _option(msg[2] if len(msg) == 3 else None)
        entries = [_entry(e) for e in second]
    elif isinstance(second, (bytes, str)):
        if len(msg) > 3:
            raise ProtocolError("PackedForward mode is [tag, entries, option?]")
        option = _option(msg[2] if len(msg) == 3 else None)
        if option.get("compressed") == "gzip":
            if not isinstance(second, bytes):
                raise ProtocolError("CompressedPackedForward entries MUST be bin")
            try:
                raw = gzip.decompress(second)  # handles several concatenated gzip members
            except (OSError, EOFError, zlib.error) as exc:
                raise ProtocolError(f"entries are not gzip: {exc}") from exc
            mode = "compressed_packed_forward"
        else:  # the spec: other `compressed` values are ignored
            mode, raw = "packed_forward", _as_bytes(second)
        entries = _entry_stream(raw)
    else:
        if len(msg) < 3:
            raise ProtocolError("Message mode is [tag, time, record, option?]")
        mode, option = "message", _option(msg[3] if len(msg) == 4 else None)
        entries = [(_time_ns(second), _record(msg[2]))]
    size = option.get("size")
    if size is not None and (not isinstance(size, int) or size != len(entries)):
        raise ProtocolError(f"size option {size!r} but {len(entries)} entries")
    return mode, tag, entries, option


def _sha512_hex(*parts: str | bytes) -> str:
    digest = hashlib.sha512()
    for part in parts:
        digest.update(_as_bytes(part))
    return digest.hexdigest()


class _Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.unpacker = _unpacker()
        self.budget: int | None = None  # bytes left before drop_after_bytes fires

    def abort(self) -> None:
        sock = self.writer.get_extra_info("socket")
        if sock is not None:  # RST rather than FIN: as abrupt as a crash
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        self.writer.transport.abort()


class ForwardReceiver:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, shared_key: str | None = None,
                 server_hostname: str = "test-fluentd", ssl_context: ssl.SSLContext | None = None,
                 users: dict[str, str] | None = None):
        self.host, self.port = host, port
        self.shared_key, self.server_hostname, self.ssl_context = shared_key, server_hostname, ssl_context
        self.users = users  # username -> password; asks clients for them in the handshake (HELO auth)
        self.ack_delay = 0.0
        self.send_acks = True
        self.connections = 0
        self.handshake_failures = 0
        self.protocol_errors = 0
        self._refuse = False
        self._stall = False
        self._drop_after: int | None = None
        self._cond = threading.Condition()
        self._events: list[ReceivedEvent] = []
        self._batches: list[ReceivedBatch] = []
        self._conns: dict[_Conn, None] = {}  # open connections, in order
        self._tasks: set[asyncio.Task] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self._flowing: asyncio.Event | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> ForwardReceiver:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="forward-receiver", daemon=True)
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    async def _start(self) -> None:
        self._flowing = asyncio.Event()
        if not self._stall:
            self._flowing.set()
        await self._listen(True)
        if self._refuse:
            await self._listen(False)

    def stop(self) -> None:
        if self._loop is None:
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
        self._loop = self._thread = None

    async def _shutdown(self) -> None:
        await self._listen(False)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> ForwardReceiver:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _apply(self, coro) -> None:
        """Run `coro` on the receiver's loop and wait for it (unless called from that loop)."""
        if self._loop is None:
            coro.close()
        elif threading.current_thread() is self._thread:
            self._loop.create_task(coro)
        else:
            asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- what arrived ----------------------------------------------------------------------------
    @property
    def events(self) -> list[ReceivedEvent]:
        with self._cond:
            return list(self._events)

    @property
    def batches(self) -> list[ReceivedBatch]:
        with self._cond:
            return list(self._batches)

    def clear(self) -> None:
        """Forget received events and batches (the counters stay)."""
        with self._cond:
            self._events.clear()
            self._batches.clear()

    def _describe(self, count: int, timeout: float) -> str:
        events = self.events
        return (f"expected at least {count} events within {timeout}s, got {len(events)}: {events[:20]!r}"
                f"{' ...' if len(events) > 20 else ''}; batches={self.batches[:20]!r}; "
                f"connections={self.connections} protocol_errors={self.protocol_errors} "
                f"handshake_failures={self.handshake_failures}")

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedEvent]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self._events) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if len(self._events) >= count:
                return list(self._events)
        raise AssertionError(self._describe(count, timeout))

    async def wait_for_async(self, count: int, timeout: float = 10.0) -> list[ReceivedEvent]:
        deadline = time.monotonic() + timeout
        while True:
            events = self.events
            if len(events) >= count:
                return events
            if time.monotonic() >= deadline:
                raise AssertionError(self._describe(count, timeout))
            await asyncio.sleep(0.01)

    # -- fault injection -------------------------------------------------------------------------
    @property
    def refuse(self) -> bool:
        return self._refuse

    @refuse.setter
    def refuse(self, value: bool) -> None:
        self._refuse = bool(value)
        self._apply(self._listen(not value))

    @property
    def stall(self) -> bool:
        return self._stall

    @stall.setter
    def stall(self, value: bool) -> None:
        self._stall = bool(value)
        self._apply(self._set_flow(not value))

    @property
    def drop_after_bytes(self) -> int | None:
        return self._drop_after

    @drop_after_bytes.setter
    def drop_after_bytes(self, value: int | None) -> None:
        self._drop_after = value

    async def _listen(self, listen: bool) -> None:
        # Accepting by hand rather than with asyncio.start_server: a connection accepted just before
        # the listener closes must still be served (and reset), never left hanging.
        loop = asyncio.get_running_loop()
        if listen and self._listener is None:
            family = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)[0][0]
            self._listener = socket.create_server((self.host, self.port), family=family)
            self._listener.setblocking(False)
            self.port = self._listener.getsockname()[1]
            loop.add_reader(self._listener, self._accept, self._listener)
        elif not listen and self._listener is not None:
            loop.remove_reader(self._listener)
            self._listener.close()  # the kernel resets connections still in its accept queue
            self._listener = None
            for conn in list(self._conns):  # a Fluentd that went away takes its connections along
                conn.abort()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                sock, _ = listener.accept()
            except OSError:  # BlockingIOError: nothing more to accept now
                return
            sock.setblocking(False)
            task = asyncio.get_running_loop().create_task(self._adopt(sock))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _adopt(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        protocol = asyncio.StreamReaderProtocol(reader)
        try:
            transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock, ssl=self.ssl_context)
        except (OSError, ssl.SSLError):  # e.g. a TLS handshake the client gave up on
            sock.close()
            return
        await self._serve(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    async def _set_flow(self, flowing: bool) -> None:
        if flowing:
            self._flowing.set()
        else:
            self._flowing.clear()
        for conn in self._conns:
            if flowing:
                conn.writer.transport.resume_reading()
            else:
                conn.writer.transport.pause_reading()

    # -- one connection --------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        if self._listener is None:  # accepted just before `refuse` closed the listener
            conn.abort()
            return
        self._conns[conn] = None
        self.connections += 1
        if not self._flowing.is_set():
            writer.transport.pause_reading()
        messages = self._messages(conn)
        try:
            if self.shared_key is not None and not await self._handshake(conn, messages):
                return
            async for msg in messages:
                if msg is None:  # heartbeat over TCP: no payload
                    continue
                self._record(conn, *decode_message(msg))
        except (ProtocolError, ValueError, msgpack.UnpackException):
            self.protocol_errors += 1
            conn.abort()
        except (_Dropped, OSError, asyncio.CancelledError):
            conn.abort()
        finally:
            await messages.aclose()
            del self._conns[conn]
            writer.close()

    async def _messages(self, conn: _Conn):
        """Top-level msgpack objects as they complete; raises _Dropped when the byte budget ends."""
        while True:
            await self._flowing.wait()
            data = await conn.reader.read(65536)
            await self._flowing.wait()  # stalled while that read was pending: hold what came in
            if not data:
                return
            if conn.budget is None and self._drop_after is not None:
                conn.budget, self._drop_after = self._drop_after, None
            cut = conn.budget is not None and len(data) >= conn.budget
            if conn.budget is not None:
                data = data[:conn.budget]
                conn.budget -= len(data)
            conn.unpacker.feed(data)
            for obj in conn.unpacker:
                yield obj
            if cut:
                raise _Dropped()

    async def _handshake(self, conn: _Conn, messages) -> bool:
        nonce = os.urandom(16)
        auth = os.urandom(16) if self.users else b""
        conn.writer.write(msgpack.packb(["HELO", {"nonce": nonce, "auth": auth, "keepalive": True}]))
        try:
            ping = await anext(messages)
        except StopAsyncIteration:
            return False
        reason = self._check_ping(ping, nonce, auth)
        if reason:
            self.handshake_failures += 1
            conn.writer.write(msgpack.packb(["PONG", False, reason, self.server_hostname, ""]))
            await conn.writer.drain()
            return False
        digest = _sha512_hex(ping[2], self.server_hostname, nonce, self.shared_key)
        conn.writer.write(msgpack.packb(["PONG", True, "", self.server_hostname, digest]))
        return True

    def _check_ping(self, ping, nonce: bytes, auth: bytes) -> str:
        if not (isinstance(ping, list) and len(ping) == 6 and ping[0] == "PING"):
            return "invalid ping message"
        _, hostname, salt, digest, username, password = ping
        if not (all(isinstance(v, str) for v in (hostname, digest, username, password))
                and isinstance(salt, (str, bytes))):
            return "invalid ping message"
        if not hmac.compare_digest(digest, _sha512_hex(salt, hostname, nonce, self.shared_key)):
            return "shared_key mismatch"
        if self.users:
            expected = self.users.get(username)
            if expected is None or not hmac.compare_digest(password, _sha512_hex(auth, username, expected)):
                return "username/password mismatch"
        return ""

    def _record(self, conn: _Conn, mode: str, tag: str, entries: list, option: dict) -> None:
        chunk = option.get("chunk")
        batch = ReceivedBatch(mode, tag, len(entries), chunk, False)
        with self._cond:
            self._events.extend(ReceivedEvent(tag, t, record, mode) for t, record in entries)
            self._batches.append(batch)
            self._cond.notify_all()
        if chunk is not None and self.send_acks:
            if self.ack_delay > 0:
                asyncio.get_running_loop().call_later(self.ack_delay, self._ack, conn, batch)
            else:
                self._ack(conn, batch)

    def _ack(self, conn: _Conn, batch: ReceivedBatch) -> None:
        if not self.send_acks or conn.writer.is_closing():
            return
        with self._cond:  # marked first: whoever reads the ack sees acked=True
            for i, b in enumerate(self._batches):
                if b is batch:
                    self._batches[i] = replace(batch, acked=True)
                    break
        conn.writer.write(msgpack.packb({"ack": batch.chunk}))
