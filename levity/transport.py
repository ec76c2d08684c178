"""One charger's WebSocket connection, driven by websockets' Sans-I/O protocol.

Written by hand on top of `websockets.server.ServerProtocol` rather than with
`websockets.asyncio.server` because the asyncio layer costs a task, a receive queue and a
task switch per message and about 20 KB per connection; OCPP calls are small and answered
at once, so here a frame is parsed, handled and answered inside `data_received`, and only a
call that really waits (a transaction event's fsync, a slow password check) continues in a
task. That is what lets one process hold 10,000 chargers and answer several times faster
than a plain `ocpp` library server. The HTTP handshake, framing, UTF-8 and size checks,
ping/pong and close handshake all remain websockets' own code.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import deque
from typing import Any, Awaitable, Callable, Coroutine, Protocol

from websockets.frames import CloseCode, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import CLOSED, CONNECTING, OPEN
from websockets.server import ServerProtocol

from levity import metrics
from levity.framing import CallError, Reply, parse_frame
from levity.proxy import is_trusted, read_proxy_header
from levity.proxy_protocol import ProxyHeaderError

log = logging.getLogger("levity.transport")

# A CALLRESULT [3, ...] or CALLERROR [4, ...]: looked for only while a call of ours is pending.
_REPLY_FRAME = re.compile(r"\s*\[\s*[34]\s*,")

CLOSE_TIMEOUT = 10.0


def format_address(address: Any) -> str:
    """host:port ([host]:port for IPv6), as remote_address in the audit trail."""
    if not address:
        return "unknown"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Resume:
    """Lets a task take over a coroutine that was started eagerly and then suspended:
    it hands each awaited future to the task and feeds results back (what Task.__step does)."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine, yielded: Any):
        self.coro = coro
        self.yielded = yielded

    def __await__(self):
        yielded = self.yielded
        while True:
            try:
                value = yield yielded
            except BaseException as exc:  # noqa: BLE001 - delivered into the coroutine, as a task would
                try:
                    yielded = self.coro.throw(exc)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    yielded = self.coro.send(value)
                except StopIteration as done:
                    return done.value


def run_eagerly(coro: Coroutine, on_done: Callable[[Any, BaseException | None], None]) -> asyncio.Task | None:
    """Run `coro` now, up to its first real suspension; finish it in a task only if needed.
    `on_done(result, error)` is called exactly once, synchronously when possible."""
    try:
        yielded = coro.send(None)
    except StopIteration as done:
        on_done(done.value, None)
        return None
    except Exception as exc:  # noqa: BLE001 - reported to the caller
        on_done(None, exc)
        return None

    async def finish():
        try:
            result = await _Resume(coro, yielded)
        except Exception as exc:  # noqa: BLE001 - reported to the caller
            on_done(None, exc)
        else:
            on_done(result, None)

    return asyncio.ensure_future(finish())


class ConnectionHost(Protocol):
    """What a connection needs from the server above it (levity.server.CentralSystem): the
    handshake decisions and the hold on reading; passed in, never imported from up there."""

    settings: Any
    reading_pauses: dict[str, int]
    subprotocols: list[str]

    def select_subprotocol(self, offered: list[str]) -> str | None: ...

    async def check_request(self, connection: "OcppConnection", request: Request) -> Response | None: ...

    def prepare_response(self, connection: "OcppConnection", response: Response) -> None: ...

    def opened(self, connection: "OcppConnection") -> None: ...

    def holding(self, connection: "OcppConnection") -> bool: ...


class OcppConnection(asyncio.Protocol):
    """The transport side of one charger. The server decides about the handshake and
    handles each text message; this class moves bytes, in order, with backpressure."""

    def __init__(self, central: ConnectionHost):
        self.central = central
        settings = central.settings
        self.protocol = ServerProtocol(subprotocols=central.subprotocols,
                                       select_subprotocol=lambda _, offered: central.select_subprotocol(offered),
                                       max_size=settings.max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self.request: Request | None = None
        self.remote_address: Any = None  # the charger's, also when a PROXY protocol header names it
        self.proxy_address: Any = None  # the balancer's, when its PROXY protocol header named the charger
        # LEVITY_PROXY_PROTOCOL: bytes read before the header is complete (None: no header to read).
        self._proxy_prefix: bytes | None = None
        self.last_seen = time.monotonic()
        self.on_message: Callable[[str], Awaitable[None]] | None = None  # set once open
        self.on_close: Callable[["OcppConnection"], None] | None = None
        self._queue: deque[str | bytes] = deque()
        self._queued_bytes = 0  # characters of text frames, bytes of binary ones
        self._max_queued_frames = settings.max_queued_frames
        self._max_queued_bytes = settings.max_queued_bytes
        self.paused: set[str] = set()  # why reading is paused: handshake, send, queue, spool
        self._waiting = False  # a message's handling continues in a task
        self._fragments: list[bytes] = []
        self._message_opcode = Opcode.TEXT
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        # Calls Levity sent to this charger, by unique id, each waiting for its Reply
        # (levity/commands.py); ended with ConnectionError when the connection goes.
        self.pending_calls: dict[str, asyncio.Future] = {}

    # asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=self.central.settings.max_send_buffer_bytes)
        self.remote_address = transport.get_extra_info("peername")
        if self.central.settings.proxy_protocol:
            self._proxy_prefix = b""
        self._timer = asyncio.get_running_loop().call_later(
            self.central.settings.handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        if self._proxy_prefix is not None:
            data = self._read_proxy_header(data)
            if not data:
                return
        self.protocol.receive_data(data)
        self._process_events()

    def eof_received(self) -> bool | None:
        if self._proxy_prefix is not None:
            self._refuse_proxy_header(ProxyHeaderError(
                "truncated", "the connection ended inside its PROXY protocol header"))
            return None
        self.protocol.receive_eof()
        self._process_events()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if self._timer:
            self._timer.cancel()
        if self.protocol.state is not CLOSED:
            self.protocol.state = CLOSED
        if self.pending_calls:
            pending, self.pending_calls = self.pending_calls, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("the charger disconnected"))
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close(self)

    def pause_writing(self) -> None:
        # The charger does not read its answers: stop reading its calls until it does.
        self.pause("send")

    def resume_writing(self) -> None:
        self.resume("send")

    # Backpressure: several reasons can hold reading paused at once; the socket is read
    # again only when the last one is gone (the kernel's buffers then push back on the charger).

    def pause(self, reason: str) -> None:
        if reason in self.paused:
            return
        if not self.paused and self.transport is not None:
            self.transport.pause_reading()
        self.paused.add(reason)
        pauses = self.central.reading_pauses
        pauses[reason] = pauses.get(reason, 0) + 1

    def resume(self, reason: str) -> None:
        if reason in self.paused:
            self.paused.discard(reason)
            if not self.paused and not self._closed:
                self.transport.resume_reading()

    # PROXY protocol header (LEVITY_PROXY_PROTOCOL) --------------------------------------------

    def _read_proxy_header(self, data: bytes) -> bytes:
        """The bytes after the header once it is complete; b"" while it is not (or was refused)."""
        prefix = self._proxy_prefix + data
        peer = self.remote_address
        try:
            header = read_proxy_header(prefix, is_trusted(peer[0] if peer else None,
                                                          self.central.settings.trusted_proxies))
        except ProxyHeaderError as exc:
            self._refuse_proxy_header(exc)
            return b""
        if header is None:
            self._proxy_prefix = prefix
            return b""
        self._proxy_prefix = None
        if header.source is not None:
            self.proxy_address, self.remote_address = peer, header.source
        return prefix[header.length:]

    def _refuse_proxy_header(self, error: ProxyHeaderError) -> None:
        self._proxy_prefix = None
        metrics.record_proxy_refused(error.reason)
        log.warning("dropped a connection from %s: %s", format_address(self.remote_address), error)
        self.transport.abort()

    # Events from websockets ---------------------------------------------------------------

    def _process_events(self) -> None:
        events = self.protocol.events_received()
        # websockets parses a whole read at once: a call and the close that followed it in the
        # same TCP segment arrive together, the protocol already CLOSING. The call came first,
        # so it is handled (stored and audited; its answer cannot be sent after the close).
        before_close = self.protocol.state is not OPEN and any(
            getattr(event, "opcode", None) is Opcode.CLOSE for event in events)
        for event in events:
            if isinstance(event, Request):
                self._start_handshake(event)
                continue
            opcode = event.opcode
            if opcode is Opcode.TEXT or opcode is Opcode.BINARY:
                self._message_opcode = opcode
            elif opcode is Opcode.CLOSE:
                before_close = False
                continue
            elif opcode is not Opcode.CONT:
                continue  # ping and pong are websockets' business
            self._fragments.append(event.data)
            if event.fin:
                data = b"".join(self._fragments)
                self._fragments = []
                if not self._deliver(data, self._message_opcode is Opcode.TEXT, before_close):
                    before_close = False
        self._flush()

    def _deliver(self, data: bytes, is_text: bool, before_close: bool = False) -> bool:
        """Queue one message for the handlers; False when it failed the connection."""
        if not is_text:
            message: str | bytes = data
        else:
            try:
                message = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.protocol.fail(CloseCode.INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return False
        if self.on_message is None or not (self.protocol.state is OPEN or before_close):
            return True
        if self.pending_calls and type(message) is str and _REPLY_FRAME.match(message) and self._take_reply(message):
            return True
        self._queue.append(message)
        self._queued_bytes += len(message)
        if len(self._queue) >= self._max_queued_frames or self._queued_bytes >= self._max_queued_bytes:
            self.pause("queue")  # frames already read still queue: at most one read more
        if not self._waiting:
            self._drain()
        return True

    def _take_reply(self, message: str) -> bool:
        """Hand an answer to the call of ours it belongs to at once: it must not wait behind
        (or be throttled with) this charger's own calls, one of which may be waiting for it."""
        try:
            reply = parse_frame(message)
        except CallError:
            return False  # broken: the handlers answer it as usual
        future = self.pending_calls.pop(reply.unique_id, None) if isinstance(reply, Reply) else None
        if future is None:
            return False  # not ours: the handlers log it
        if not future.done():
            future.set_result(reply)
        return True

    def _drain(self) -> None:
        """Handle queued messages in order, each answered before the next is read."""
        while self._queue and not self._closed:
            if self.central.holding(self):
                return  # the central system calls drain_again() when the hold ends
            message = self._queue.popleft()
            self._queued_bytes -= len(message)
            if "queue" in self.paused and len(self._queue) <= self._max_queued_frames // 2 \
                    and self._queued_bytes <= self._max_queued_bytes // 2:
                self.resume("queue")
            task = run_eagerly(self.on_message(message), self._message_done)
            if task is not None:
                self._waiting = True  # _message_done carries on when the task ends
                return

    def drain_again(self) -> None:
        if not self._waiting:
            self._drain()

    @property
    def queued_frames(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        return self._queued_bytes

    @property
    def send_buffer_bytes(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None and not transport.is_closing() else 0

    def _message_done(self, result: Any, error: BaseException | None) -> None:
        if error is not None:
            log.error("message handler failed", exc_info=error)
        if self._waiting:  # finished in a task: carry on with what queued up meanwhile
            self._waiting = False
            self._drain()

    # Handshake -----------------------------------------------------------------------------

    def _start_handshake(self, request: Request) -> None:
        self.request = request
        self.pause("handshake")
        run_eagerly(self.central.check_request(self, request), self._finish_handshake)

    def _finish_handshake(self, refusal: Response | None, error: BaseException | None) -> None:
        if self._closed:
            return
        if error is not None:
            log.error("handshake check failed", exc_info=error)
            refusal = self.protocol.reject(500, "Internal error\n")
        response = refusal if refusal is not None else self.protocol.accept(self.request)
        self.central.prepare_response(self, response)
        self.protocol.send_response(response)
        self._flush()
        if self._timer:
            self._timer.cancel()
            self._timer = None
        if self.protocol.state is OPEN:
            self.central.opened(self)
        self.resume("handshake")

    def _handshake_expired(self) -> None:
        if self.protocol.state is CONNECTING:
            log.info("handshake from %s not finished in time: closing", self.remote_address)
            self.transport.abort()

    # Sending and closing -------------------------------------------------------------------

    async def send(self, message: str) -> None:
        """Queue a text message; the ocpp ChargePoint's connection interface."""
        self.send_now(message)

    def send_now(self, message: str) -> None:
        if self.protocol.state is OPEN:
            self.protocol.send_text(message.encode("utf-8"))
            self._flush()

    def ping(self) -> None:
        if self.protocol.state is OPEN:
            self.protocol.send_ping(b"levity")
            self._flush()

    def close(self, code: int = 1000, reason: str = "") -> None:
        if self.protocol.state is OPEN:
            self.protocol.send_close(code, reason)
            self._flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    @property
    def close_code(self) -> int | None:
        return self.protocol.close_code

    @property
    def close_reason(self) -> str:
        return self.protocol.close_reason or ""

    @property
    def subprotocol(self) -> str | None:
        return self.protocol.subprotocol

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
        if self.protocol.eof_sent:
            # Closing handshake done (or handshake refused): close once the buffer is out.
            transport.close()
        elif self.protocol.close_expected() and self._timer is None:
            # We sent a close frame: give the charger a moment to answer, then drop it.
            self._timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, transport.abort)
