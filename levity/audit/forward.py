"""An asyncio client of the Fluentd Forward Protocol v1, with acknowledgements.

Why hand-written: fluent-logger has no `chunk`/ack option and no spool, so it cannot tell
which events Fluentd really has. This module implements
only what lossless delivery needs from the spec (fluent/fluentd wiki, "Forward Protocol
Specification v1"):

- PackedForward mode: ``[tag, bin(entries), {"size": n, "chunk": id}]`` where entries is the
  concatenated msgpack of ``[EventTime, record]`` pairs; EventTime is msgpack ext type 0
  (seconds and nanoseconds, two big-endian uint32). The spool holds each event as such an entry
  (spool.forward_entry), so a batch is its entries with a header around each run.
- ``chunk`` asks the server for ``{"ack": id}`` once it has the events; the id is the base64 of
  16 random bytes, unique per batch (it is on the batch's last message, see encode_batch).
- The optional handshake for a shared key: the server sends ``["HELO", {nonce, auth,
  keepalive}]``, the client ``["PING", self_hostname, salt, sha512_hex(salt + self_hostname +
  nonce + shared_key), username, password_digest]``, the server ``["PONG", ok, reason,
  server_hostname, sha512_hex(salt + server_hostname + nonce + shared_key)]``, which the client
  verifies.
- TLS is a plain TLS layer under the same protocol.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import socket
import ssl
from dataclasses import dataclass

import msgpack

from levity.config import Settings

HANDSHAKE_USERNAME = ""  # username/password auth (HELO `auth`) is not configured by Levity


class ForwardError(Exception):
    """The connection cannot be used (refused, closed, timed out, protocol error)."""


class HandshakeError(ForwardError):
    """The shared-key handshake failed: wrong key, no key where one is needed, or a bad PONG."""


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int
    timeout: float = 3.0
    ssl_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    shared_key: bytes | None = None
    self_hostname: str = "levity"

    @classmethod
    def from_settings(cls, settings: Settings) -> "Endpoint":
        """The first (preferred) server; endpoints_from_settings gives all of them."""
        return endpoints_from_settings(settings)[0]

    @property
    def label(self) -> str:
        """host:port, as metrics and logs name the server."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def describe(self) -> str:
        return f"{'tls' if self.ssl_context else 'tcp'}://{self.label}"


def endpoints_from_settings(settings: Settings) -> list[Endpoint]:
    """One Endpoint per Fluentd server, in order of preference (FLUENTD_SERVERS, else FLUENTD_HOST).
    TLS and the shared key apply to every server; TLS checks each one's certificate against its
    own host name."""
    context = ssl_context_from(settings)
    shared_key = settings.secret("fluentd_shared_key")
    return [Endpoint(host=host, port=port, timeout=settings.fluentd_timeout, ssl_context=context,
                     server_hostname=host if settings.fluentd_tls else None, shared_key=shared_key,
                     self_hostname=settings.fluentd_self_hostname)
            for host, port in settings.fluentd_server_list()]


def ssl_context_from(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context FLUENTD_TLS* asks for (None: plain TCP)."""
    if not settings.fluentd_tls:
        return None
    context = ssl.create_default_context(cafile=settings.fluentd_tls_ca)
    if not settings.fluentd_tls_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def new_chunk_id() -> str:
    return base64.b64encode(os.urandom(16)).decode("ascii")


def _sha512_hex(*parts: str | bytes) -> str:
    digest = hashlib.sha512()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
    return digest.hexdigest()


class ForwardConnection:
    """One connection to Fluentd. Messages are pipelined; each waits for its own ack."""

    def __init__(self, endpoint: Endpoint, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.endpoint = endpoint
        self._reader = reader
        self._writer = writer
        self._unpacker = msgpack.Unpacker(raw=False)
        self._pending: dict[str, asyncio.Future] = {}
        self._reader_task: asyncio.Task | None = None
        self._error: ForwardError | None = None
        self.server_hostname: str | None = None

    @classmethod
    async def open(cls, endpoint: Endpoint) -> "ForwardConnection":
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(
                endpoint.host, endpoint.port, ssl=endpoint.ssl_context,
                server_hostname=endpoint.server_hostname if endpoint.ssl_context else None,
                ssl_handshake_timeout=endpoint.timeout if endpoint.ssl_context else None,
            ), endpoint.timeout)
        except asyncio.TimeoutError:
            raise ForwardError(f"connect to {endpoint.describe()} timed out after {endpoint.timeout:g}s") from None
        except ssl.SSLError as exc:
            raise ForwardError(f"TLS with {endpoint.describe()} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise ForwardError(f"cannot connect to {endpoint.describe()}: {exc.strerror or exc}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        conn = cls(endpoint, reader, writer)
        try:
            if endpoint.shared_key is not None:
                await conn._handshake()
        except BaseException:
            conn.close()
            raise
        conn._reader_task = asyncio.create_task(conn._read_acks())
        return conn

    # Handshake ---------------------------------------------------------------------------

    async def _next_message(self, what: str):
        while True:
            for message in self._unpacker:
                return message
            try:
                data = await asyncio.wait_for(self._reader.read(65536), self.endpoint.timeout)
            except asyncio.TimeoutError:
                raise HandshakeError(f"no {what} from {self.endpoint.describe()} within "
                                     f"{self.endpoint.timeout:g}s (is <security> configured in its in_forward?)") from None
            except (OSError, ssl.SSLError) as exc:
                raise ForwardError(f"connection to {self.endpoint.describe()} failed: {exc}") from None
            if not data:
                raise HandshakeError(f"{self.endpoint.describe()} closed the connection during the handshake "
                                     f"(waiting for {what})")
            self._unpacker.feed(data)

    async def _handshake(self) -> None:
        endpoint = self.endpoint
        helo = await self._next_message("HELO")
        if not (isinstance(helo, list) and len(helo) == 2 and helo[0] == "HELO" and isinstance(helo[1], dict)):
            raise HandshakeError(f"expected HELO from {endpoint.describe()}, got {str(helo)[:80]}")
        options = helo[1]
        nonce = options.get("nonce") or b""
        auth = options.get("auth") or b""
        salt = os.urandom(16).hex()
        digest = _sha512_hex(salt, endpoint.self_hostname, nonce, endpoint.shared_key)
        password_digest = _sha512_hex(auth, HANDSHAKE_USERNAME, "") if auth else ""
        self._writer.write(msgpack.packb(["PING", endpoint.self_hostname, salt, digest,
                                          HANDSHAKE_USERNAME, password_digest]))
        pong = await self._next_message("PONG")
        if not (isinstance(pong, list) and len(pong) == 5 and pong[0] == "PONG"):
            raise HandshakeError(f"expected PONG from {endpoint.describe()}, got {str(pong)[:80]}")
        _, ok, reason, server_hostname, server_digest = pong
        if not ok:
            raise HandshakeError(f"{endpoint.describe()} refused the handshake: {reason}")
        if server_hostname == endpoint.self_hostname:
            raise HandshakeError(f"Fluentd announces the same hostname as Levity ({server_hostname!r}): "
                                 "set FLUENTD_SELF_HOSTNAME to a different name")
        expected = _sha512_hex(salt, server_hostname, nonce, endpoint.shared_key)
        if not isinstance(server_digest, str) or not hmac.compare_digest(server_digest, expected):
            raise HandshakeError(f"{endpoint.describe()} answered with a different shared key")
        self.server_hostname = server_hostname

    # Sending -----------------------------------------------------------------------------

    async def _read_acks(self) -> None:
        error: ForwardError
        try:
            while True:
                data = await self._reader.read(65536)
                if not data:
                    error = ForwardError(f"{self.endpoint.describe()} closed the connection")
                    break
                self._unpacker.feed(data)
                for message in self._unpacker:
                    if isinstance(message, dict) and "ack" in message:
                        future = self._pending.pop(message["ack"], None)
                        if future is not None and not future.done():
                            future.set_result(None)
                    elif isinstance(message, list) and message and message[0] == "HELO":
                        error = HandshakeError(f"{self.endpoint.describe()} asks for a shared-key handshake: "
                                               "set FLUENTD_SHARED_KEY (or FLUENTD_SHARED_KEY_FILE)")
                        raise _Stop
        except _Stop:
            pass
        except (OSError, ssl.SSLError) as exc:
            error = ForwardError(f"connection to {self.endpoint.describe()} failed: {exc}")
        except (ValueError, msgpack.UnpackException) as exc:
            error = ForwardError(f"unreadable answer from {self.endpoint.describe()}: {exc}")
        except asyncio.CancelledError:
            error = ForwardError("connection closed")
        self._fail(error)

    def _fail(self, error: ForwardError) -> None:
        if self._error is None:
            self._error = error
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._error)
        self._pending.clear()

    async def send(self, data: bytes, chunk: str) -> None:
        """Send encoded PackedForward messages (see encode_batch) and wait for the ack of `chunk`,
        the option of the last one. Raises ForwardError when it does not come within the timeout;
        the connection is then unusable (close it and resend on a new one)."""
        if self._error is not None:
            raise self._error
        future = asyncio.get_running_loop().create_future()
        self._pending[chunk] = future
        self._writer.write(data)
        try:
            await asyncio.wait_for(self._writer.drain(), self.endpoint.timeout)
            await asyncio.wait_for(future, self.endpoint.timeout)
        except asyncio.TimeoutError:
            self._fail(ForwardError(f"no ack from {self.endpoint.describe()} within {self.endpoint.timeout:g}s"))
            raise self._error from None
        except (OSError, ssl.SSLError) as exc:
            self._fail(ForwardError(f"connection to {self.endpoint.describe()} failed: {exc}"))
            raise self._error from None
        finally:
            self._pending.pop(chunk, None)
            if future.done() and not future.cancelled():
                future.exception()  # retrieved: nobody else looks at it

    @property
    def usable(self) -> bool:
        return self._error is None

    def close(self) -> None:
        if self._reader_task is not None:
            self._reader_task.cancel()
        self._fail(ForwardError("connection closed"))
        try:
            self._writer.close()
        except (OSError, RuntimeError):
            pass


class _Stop(Exception):
    pass


def encode_batch(events) -> tuple[bytes, str]:
    """The wire bytes of a batch of events with .tag and .entry (the PackedForward entry
    ``[EventTime, record]`` as msgpack, as the spool holds it), and the chunk id whose ack
    confirms all of them. The entries go on the wire as they are: only a message header is
    encoded per run.

    A PackedForward message has one tag, so each run of consecutive events with the same tag is
    one message: sent in order on one connection, they keep the exact emission order across
    tags. Only the last message carries the `chunk` option: Fluentd's in_forward handles the
    messages of a connection one after the other and answers an ack after the events of its
    message were emitted, so that one ack covers the whole batch (one ack instead of one per
    run, which under a mixed load is one per two events)."""
    runs: list[tuple[str, list[bytes]]] = []
    tag, entries = None, None
    for ev in events:
        if ev.tag != tag:
            tag, entries = ev.tag, []
            runs.append((tag, entries))
        entries.append(ev.entry)
    return encode_runs(runs)


def encode_runs(runs: list[tuple[str, list[bytes]]]) -> tuple[bytes, str]:
    """encode_batch() for events already grouped: (tag, entries) per run of consecutive events
    with the same tag, in emission order."""
    chunk = new_chunk_id()
    parts: list[bytes] = []
    last = len(runs) - 1
    for i, (tag, entries) in enumerate(runs):
        # With a mixed load the tag changes at almost every event, so this is per event: the
        # tag's msgpack is cached and the {"size": n} option written out (the same bytes).
        packed_tag = _packed_tags.get(tag)
        if packed_tag is None:
            packed_tag = _packed_tags[tag] = msgpack.packb(tag)
        size = len(entries)
        if i != last:
            option = _SIZE_OPTIONS[size] if size < 256 else msgpack.packb({"size": size})
        else:
            option = msgpack.packb({"size": size, "chunk": chunk})
        body = entries[0] if size == 1 else b"".join(entries)
        # [tag, bin(entries), option] with the entries copied once, not packed again.
        parts += (b"\x93", packed_tag, _bin_header(len(body)), body, option)
    return b"".join(parts), chunk


_packed_tags: dict[str, bytes] = {}
_SIZE_OPTIONS = [msgpack.packb({"size": size}) for size in range(256)]
_BIN8_HEADERS = [b"\xc4" + bytes([length]) for length in range(256)]


def _bin_header(length: int) -> bytes:
    if length < 1 << 8:
        return _BIN8_HEADERS[length]
    if length < 1 << 16:
        return b"\xc5" + length.to_bytes(2, "big")
    return b"\xc6" + length.to_bytes(4, "big")
