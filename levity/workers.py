"""Several worker processes behind one port, each owning the charge points whose id hashes to it.

Why not plain SO_REUSEPORT: the kernel spreads connections by address and port, so a charger
that reconnects can land on another worker, away from its open transaction, and "newest
connection wins" would need the workers to talk to each other. Here the supervisor accepts
each connection, peeks (MSG_PEEK, nothing consumed) at the request line for the charge point
id, and hands the socket over (SCM_RIGHTS) to the worker that owns the id; the worker reads
the untouched request and carries on exactly as `levity serve` with one process does.

State is partitioned the same way: worker k of N keeps its own SQLite file
(`levity.shard<k>-of-<N>.db`) and audit spool (`<spool>/shard<k>-of-<N>/`), issues transaction
ids congruent to k+1 modulo N (unique across workers), and delivers its own events. Because
the id -> worker mapping depends on N, Levity refuses to start when the files on disk were
made with another number of workers. The supervisor answers /health and /metrics (the workers'
metrics merged from their files, prometheus_client's multiprocess mode: levity/metrics.py) and
restarts a worker that dies.

The operator API (levity/api/) listens in the supervisor: it checks tokens (in the unsharded
database, which holds nothing else then), validates the request, and forwards it over the same
channel to the worker that owns the charge point (lists go to every worker and are merged).
Requests and answers on the channel carry a request id, and large ones travel in parts, so
concurrent requests (a slow call next to a metrics scrape) never get each other's answers.

TLS cannot be peeked at, so more than one worker needs plain ws:// (TLS terminated in front).
Written by hand: no library routes connections by a field of the HTTP request to processes
that keep their own state; the pieces (socket.send_fds, MSG_PEEK) are the standard library's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import re
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

from levity import __version__, metrics
from levity.commands import Unavailable
from levity.config import ConfigError, Settings, StartupError
from levity.database import is_postgres, redact
from levity.metrics import WorkerMetrics
from levity.proxy import is_trusted, read_proxy_header
from levity.proxy_protocol import ProxyHeaderError

log = logging.getLogger("levity.workers")

MAX_HEAD_BYTES = 16384  # a request head larger than this is the worker's to refuse
RESTART_DELAY = 1.0  # before the first restart of a worker that died
RESTART_DELAY_MAX = 30.0  # doubling per failure in a row: a worker that cannot start is retried this often
STABLE_SECONDS = 60.0  # a worker that ran this long before dying starts again from RESTART_DELAY
SHUTDOWN_SECONDS = 20.0  # a worker's own flush is bounded to 10 s (server.SHUTDOWN_FLUSH_SECONDS)
CONNECTION = b"C"  # supervisor -> worker: a charger's socket (SCM_RIGHTS)
REQUEST, ANSWER = b"R", b"A"  # supervisor -> worker, worker -> supervisor: one part of a JSON message
_PART_HEAD = struct.Struct("!cQ?")  # kind, request id, last part
PART_BYTES = 32768  # below the smallest socket buffer a SOCK_SEQPACKET message must fit in
CHANNEL_RECEIVE_BYTES = PART_BYTES + _PART_HEAD.size
_SHARD_RE = re.compile(r"shard(\d+)-of-(\d+)")


# Partitioning ---------------------------------------------------------------------------------

def worker_index(charge_point_id: str, workers: int) -> int:
    """The worker that owns a charge point: stable across restarts and machines (CRC-32)."""
    return zlib.crc32(charge_point_id.encode()) % workers


def shard_name(index: int, workers: int) -> str:
    return f"shard{index}-of-{workers}"


def shard_workers(name: str, prefix: str = "", suffix: str = "") -> int | None:
    """N when `name` is prefix + shard_name(k, N) + suffix, else None."""
    if len(name) > len(prefix) + len(suffix) and name.startswith(prefix) and name.endswith(suffix):
        match = _SHARD_RE.fullmatch(name[len(prefix):len(name) - len(suffix)])
        if match:
            return int(match.group(2))
    return None


def shard_database(database: str, index: int, workers: int) -> str:
    if workers == 1 or database == ":memory:" or is_postgres(database):
        return database  # PostgreSQL: one database for every worker and instance
    path = Path(database)
    return str(path.with_name(f"{path.stem}.{shard_name(index, workers)}{path.suffix}"))


def shard_spool(spool_dir: str, index: int, workers: int) -> str:
    return spool_dir if workers == 1 else str(Path(spool_dir) / shard_name(index, workers))


def worker_settings(settings: Settings, index: int) -> Settings:
    """What one worker runs with: its shard of the files, its share of the limits."""
    workers = settings.workers
    return dataclasses.replace(
        settings, workers=1, database=shard_database(settings.database, index, workers),
        spool_dir=shard_spool(settings.spool_dir, index, workers),
        spool_max_bytes=settings.spool_max_bytes // workers,
        max_connections=math.ceil(settings.max_connections / workers))


def transaction_ids(index: int, workers: int) -> tuple[int, int]:
    return index + 1, workers


def check_layout(settings: Settings) -> None:
    """Refuse to start on files made with another number of workers: their charge points
    (and open transactions, and unsent audit events) would belong to the wrong worker."""
    workers = settings.workers
    found: set[int] = set()
    if settings.database != ":memory:" and not is_postgres(settings.database):
        database = Path(settings.database)
        if database.exists() and _holds_charge_point_state(database):
            found.add(1)
        if database.parent.is_dir():
            for entry in database.parent.iterdir():
                if (n := shard_workers(entry.name, f"{database.stem}.", database.suffix)) is not None:
                    found.add(n)
    spool = Path(settings.spool_dir)
    if spool.is_dir():
        for entry in spool.iterdir():
            if entry.is_dir() and (n := shard_workers(entry.name)) is not None and any(entry.iterdir()):
                found.add(n)
            elif entry.name.endswith(".seg"):
                found.add(1)
    others = sorted(found - {workers})
    if others:
        raise ConfigError(
            f"LEVITY_WORKERS: {settings.database} / {settings.spool_dir} hold state made with "
            f"{' and '.join(map(str, others))} worker(s), not {workers}: charge points are assigned to workers "
            f"by id, so start with LEVITY_WORKERS={others[0]} (or move those files away first)")


def _holds_charge_point_state(database: Path) -> bool:
    """The unsharded database is one worker's state when it holds charge points or transactions;
    with several workers the supervisor keeps only the operator API's tokens in it."""
    try:
        with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            return any(db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone()
                       for table in ("charge_points", "connectors", "transactions") if table in tables)
    except sqlite3.Error:
        return True  # unreadable: assume it matters


# Channel messages -----------------------------------------------------------------------------

def message_parts(kind: bytes, request_id: int, payload: object) -> list[bytes]:
    data = json.dumps(payload).encode()
    chunks = [data[i:i + PART_BYTES] for i in range(0, len(data), PART_BYTES)] or [b""]
    return [_PART_HEAD.pack(kind, request_id, n == len(chunks) - 1) + chunk for n, chunk in enumerate(chunks)]


class Reassembly:
    """Joins the parts of channel messages, which may interleave between request ids."""

    def __init__(self) -> None:
        self._parts: dict[int, list[bytes]] = {}

    def feed(self, message: bytes) -> tuple[bytes, int, object] | None:
        """(kind, request id, payload) once the last part of a message arrived, else None."""
        kind, request_id, last = _PART_HEAD.unpack_from(message)
        data = message[_PART_HEAD.size:]
        if not last:
            self._parts.setdefault(request_id, []).append(data)
            return None
        data = b"".join(self._parts.pop(request_id, [])) + data
        return kind, request_id, json.loads(data)


async def send_on_channel(channel: socket.socket, parts: list[bytes], fds: list[int] | None = None) -> None:
    """Send messages on a non-blocking channel, waiting while the peer is behind on reading.
    Callers hold the channel's send lock, so parts of one message stay together and in order."""
    loop = asyncio.get_running_loop()
    for part in parts:
        while True:
            try:
                if fds:
                    socket.send_fds(channel, [part], fds)
                else:
                    channel.send(part)
                break
            except BlockingIOError:
                ready = loop.create_future()
                loop.add_writer(channel.fileno(), lambda: ready.done() or ready.set_result(None))
                try:
                    await ready
                finally:
                    loop.remove_writer(channel.fileno())


class WorkerUnavailable(Unavailable):
    """The worker did not answer (restarting, or died while handling the request)."""


def check_settings(settings: Settings) -> None:
    if settings.workers > 1 and (settings.security_profile >= 2 or settings.tls_cert):
        raise ConfigError("LEVITY_WORKERS > 1 routes connections by the request path, which TLS hides: "
                          "terminate TLS in front of Levity or run one worker")
    check_layout(settings)


# Supervisor side ------------------------------------------------------------------------------

def restart_delay(failures_in_a_row: int) -> float:
    """Seconds before restarting a worker that died; failures_in_a_row counts deaths within
    STABLE_SECONDS of their start (0 for one that had been running fine)."""
    return min(RESTART_DELAY * 2 ** max(0, failures_in_a_row - 1), RESTART_DELAY_MAX)


class Worker:
    """One worker process and the channel that hands it connections."""

    def __init__(self, settings: Settings, index: int, environment: dict[str, str] | None = None):
        self.settings = settings
        self.index = index
        self.environment = environment
        self.process: subprocess.Popen | None = None
        self.channel: socket.socket | None = None
        self.restarts = -1
        self.started_at = 0.0
        self.failures_in_a_row = 0
        self.restart_at: float | None = None  # when a dead worker is started again
        self._requests: dict[int, asyncio.Future] = {}  # by request id
        self._request_ids = iter(range(1, 2**63))
        self._reassembly = Reassembly()
        self._send_lock = asyncio.Lock()

    def start(self) -> None:
        self.restarts += 1
        self.started_at = time.monotonic()
        self.restart_at = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (ours, theirs):
            end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        # Settings travel on stdin, so secrets given as flags never show in the process list.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "levity.workers", str(theirs.fileno()), str(self.index)],
            stdin=subprocess.PIPE, pass_fds=[theirs.fileno()], env=self.environment)
        self.process.stdin.write(json.dumps(dataclasses.asdict(self.settings), default=str).encode())
        self.process.stdin.close()
        theirs.close()
        ours.setblocking(False)
        self.channel = ours
        self._fail_requests()
        self._reassembly = Reassembly()
        asyncio.get_running_loop().add_reader(ours.fileno(), self._read_answers)

    def _fail_requests(self) -> None:
        requests, self._requests = self._requests, {}
        for future in requests.values():
            if not future.done():
                future.set_exception(WorkerUnavailable(f"worker {self.index} stopped before it answered"))

    def _read_answers(self) -> None:
        while True:
            try:
                data = self.channel.recv(CHANNEL_RECEIVE_BYTES)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # the worker is gone; the supervisor's watch restarts it
                asyncio.get_running_loop().remove_reader(self.channel.fileno())
                self._fail_requests()
                return
            try:
                message = self._reassembly.feed(data)
            except (struct.error, ValueError):
                log.error("worker %d sent a malformed answer", self.index)
                continue
            if message is not None:
                _kind, request_id, answer = message
                future = self._requests.pop(request_id, None)
                if future is not None and not future.done():
                    future.set_result(answer)

    async def hand_over(self, sock: socket.socket) -> None:
        # The worker may be behind on adopting: send_on_channel waits until it takes more.
        async with self._send_lock:
            await send_on_channel(self.channel, [CONNECTION], [sock.fileno()])

    async def request(self, op: str, args: dict | None = None, timeout: float = 10.0):
        """The worker's answer to one operation (levity.api.local.LocalOperations.handle, or
        metrics); WorkerUnavailable when it does not come."""
        if self.channel is None:
            raise WorkerUnavailable(f"worker {self.index} is restarting")
        request_id = next(self._request_ids)
        future = asyncio.get_running_loop().create_future()
        self._requests[request_id] = future
        try:
            async with self._send_lock:
                await send_on_channel(self.channel, message_parts(REQUEST, request_id, {"op": op, "args": args or {}}))
            answer = await asyncio.wait_for(future, timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            raise WorkerUnavailable(f"worker {self.index} did not answer: {exc or 'timeout'}") from None
        finally:
            self._requests.pop(request_id, None)
        if "error" in answer:
            raise WorkerUnavailable(f"worker {self.index} failed: {answer['error']}")
        return answer["result"]

    async def refresh_metrics(self, timeout: float = 2.0) -> str | None:
        """Ask the worker to bring its gauges up to date; None when it cannot (its files keep
        the values it wrote last)."""
        try:
            return await self.request("metrics", timeout=timeout)
        except WorkerUnavailable:
            return None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def close_channel(self) -> None:
        if self.channel is not None:
            try:
                asyncio.get_running_loop().remove_reader(self.channel.fileno())
            except (RuntimeError, ValueError):
                pass
            self.channel.close()
            self.channel = None
        self._fail_requests()


class WorkerOperations:
    """The operator API's backend in the supervisor: each request goes to the worker that owns
    the charge point; lists are gathered from every worker and merged."""

    FORWARD_MARGIN = 5.0  # seconds a worker gets beyond the call's own timeout to answer

    def __init__(self, workers: list[Worker]):
        self.workers = workers

    def _owner(self, charge_point_id: str) -> Worker:
        return self.workers[worker_index(charge_point_id, len(self.workers))]

    async def _all(self, op: str, charge_point_key: str, args: dict | None = None) -> list:
        """Every worker's answer, each item from the worker that owns its charge point: on a
        shared database (PostgreSQL) every worker lists every row, but only the owner knows
        whether its charger is connected."""
        answers = await asyncio.gather(*(w.request(op, args) for w in self.workers))
        return [item for index, answer in enumerate(answers) for item in answer
                if worker_index(item[charge_point_key], len(self.workers)) == index]

    async def charge_points(self) -> list[dict]:
        return sorted(await self._all("charge_points", "id"), key=lambda item: item["id"])

    async def charge_point(self, charge_point_id: str) -> dict | None:
        return await self._owner(charge_point_id).request("charge_point", {"charge_point_id": charge_point_id})

    async def transactions(self, charge_point_id: str | None, open_only: bool | None, limit: int) -> list[dict]:
        args = {"charge_point_id": charge_point_id, "open_only": open_only, "limit": limit}
        if charge_point_id is not None:
            return await self._owner(charge_point_id).request("transactions", args)
        items = await self._all("transactions", "charge_point_id", args)
        return sorted(items, key=lambda item: item["transaction_id"], reverse=True)[:limit]

    async def call(self, charge_point_id: str, action: str, payload: dict, requested_by: str, timeout: float) -> dict:
        args = {"charge_point_id": charge_point_id, "action": action, "payload": payload,
                "requested_by": requested_by, "timeout": timeout}
        return await self._owner(charge_point_id).request("call", args, timeout + self.FORWARD_MARGIN)


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = WorkerMetrics(self._worker_counts)
        self.workers = [Worker(settings, i, self.metrics.worker_environment()) for i in range(settings.workers)]
        self.listener: socket.socket | None = None
        self.stopping = False
        self._tasks: set[asyncio.Task] = set()
        self.api_listener = None
        self._token_store = None

    async def start(self) -> None:
        settings = self.settings
        family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
        self.listener = socket.create_server((settings.host, settings.port), family=family, backlog=4096)
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        for worker in self.workers:
            worker.start()
        asyncio.get_running_loop().add_reader(self.listener.fileno(), self._accept)
        self._spawn(self._watch())
        log.info("Levity %s listening on ws://%s:%d/<charge_point_id> with %d workers", __version__,
                 settings.host, self.port, len(self.workers))
        if settings.api_port:
            await self._start_api()

    async def _start_api(self) -> None:
        from levity.api import serve_api
        from levity.api.tokens import TokenStore
        from levity.commands import CommandSchemas
        from levity.database import open_store

        # The tokens live in the unsharded database; the workers keep their state in the shards.
        self._token_store = open_store(self.settings)
        schemas = CommandSchemas()
        schemas.compile_all()
        self.api_listener = await serve_api(self.settings, WorkerOperations(self.workers),
                                            TokenStore(self._token_store), schemas)

    def _spawn(self, coro) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _accept(self) -> None:
        for _ in range(256):  # then let the loop route what was accepted
            try:
                sock, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors, ...: keep serving those connected
                log.error("accept failed: %s", exc)
                return
            sock.setblocking(False)
            self._spawn(self._route(sock))

    async def _route(self, sock: socket.socket) -> None:
        try:
            proxy_check = self._proxy_check(sock) if self.settings.proxy_protocol else None
            try:
                header_length, head = await asyncio.wait_for(_peek_head(sock, proxy_check),
                                                             self.settings.handshake_timeout)
            except ProxyHeaderError:
                header_length, head = 0, b""  # a worker drops it the same way, and logs and counts it
            path = _request_path(head)
            if path in ("/health", "/metrics") and not _is_upgrade(head):
                await asyncio.wait_for(self._answer_http(sock, path, header_length), self.settings.handshake_timeout)
                return
            from levity.server import charge_point_id_from_path

            charge_point_id = charge_point_id_from_path(path or "/")
            # No id: any worker refuses it the same way (HTTP 404 / 426).
            index = worker_index(charge_point_id, len(self.workers)) if charge_point_id else 0
            worker = self.workers[index]
            if worker.channel is not None:
                await worker.hand_over(sock)
        except (OSError, asyncio.TimeoutError, EOFError):
            pass
        except Exception:  # noqa: BLE001 - one connection's failure must not stop the routing
            log.exception("routing a connection failed")
        finally:
            sock.close()  # the worker holds its own descriptor now

    def _proxy_check(self, sock: socket.socket):
        """LEVITY_PROXY_PROTOCOL: the rule for this peer. The worker reads the header again
        itself (it is only peeked here), so the charger's address reaches its audit events."""
        peer = _peer(sock)
        trusted = is_trusted(peer[0] if peer else None, self.settings.trusted_proxies)
        return lambda data: read_proxy_header(data, trusted)

    async def _answer_http(self, sock: socket.socket, path: str, header_length: int = 0) -> None:
        loop = asyncio.get_running_loop()
        await _consume(sock, header_length)
        await _consume_head(sock)
        if path == "/health":
            alive = all(w.alive for w in self.workers)
            status, body, kind = ("200 OK", "ok\n", "text/plain") if alive else \
                ("503 Service Unavailable", "a worker is down\n", "text/plain")
        else:
            status, body, kind = "200 OK", await self.metrics_text(), metrics.CONTENT_TYPE
        data = body if isinstance(body, bytes) else body.encode()
        await loop.sock_sendall(sock, (
            f"HTTP/1.1 {status}\r\nServer: Levity/{__version__}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode() + data)

    def _worker_counts(self) -> tuple[int, int, int]:
        up = sum(w.alive and w.channel is not None for w in self.workers)
        return len(self.workers), up, sum(w.restarts for w in self.workers)

    async def metrics_text(self) -> bytes:
        """The workers' metrics merged from their files, after each running worker refreshed
        its gauges (one that does not answer in time is shown with its last values)."""
        await asyncio.gather(*(w.refresh_metrics() for w in self.workers))
        return await asyncio.get_running_loop().run_in_executor(None, self.metrics.render)

    async def _watch(self) -> None:
        """Restart a worker that died; its chargers reconnect to the new one. One that keeps
        dying (a broken shard file, a full disk) is retried less and less often, so its log
        stays readable, while the other workers go on serving their chargers."""
        while not self.stopping:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for worker in self.workers:
                if worker.alive or self.stopping:
                    continue
                if worker.restart_at is None:  # found dead just now
                    ran = now - worker.started_at
                    worker.failures_in_a_row = 0 if ran >= STABLE_SECONDS else worker.failures_in_a_row + 1
                    delay = restart_delay(worker.failures_in_a_row)
                    worker.restart_at = now + delay
                    worker.close_channel()
                    self.metrics.worker_died(worker.process.pid)
                    log.error("worker %d exited with %s after %.1fs: restarting it in %.0fs%s", worker.index,
                              worker.process.returncode, ran, delay,
                              f" ({worker.failures_in_a_row} failures in a row)" if worker.failures_in_a_row > 1 else "")
                elif now >= worker.restart_at:
                    worker.start()

    def signal_workers(self, signum: int) -> None:
        for worker in self.workers:
            if worker.alive:
                worker.process.send_signal(signum)

    async def stop(self) -> int:
        self.stopping = True
        loop = asyncio.get_running_loop()
        if self.api_listener is not None:
            await self.api_listener.stop()
        if self._token_store is not None:
            self._token_store.close()
        loop.remove_reader(self.listener.fileno())
        self.listener.close()
        self.signal_workers(signal.SIGTERM)
        deadline = time.monotonic() + SHUTDOWN_SECONDS
        while any(w.alive for w in self.workers) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        failed = 0
        for worker in self.workers:
            if worker.alive:
                log.error("worker %d did not stop within %.0fs: killing it", worker.index, SHUTDOWN_SECONDS)
                worker.process.kill()
                worker.process.wait()
            failed |= worker.process.returncode not in (0, -signal.SIGTERM)
            worker.close_channel()
        for task in list(self._tasks):
            task.cancel()
        log.info("stopped")
        return 1 if failed else 0


async def _peek_head(sock: socket.socket, proxy_check=None) -> tuple[int, bytes]:
    """The request head as far as needed, without consuming it: up to the end of the request
    line for a charger, the whole head for /health and /metrics; after the PROXY protocol
    header, whose length comes first, when `proxy_check` (LEVITY_PROXY_PROTOCOL) reads one."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = sock.recv(MAX_HEAD_BYTES, socket.MSG_PEEK)
        except BlockingIOError:
            data = None
        if data == b"":
            raise EOFError
        if data is not None:
            header = proxy_check(data) if proxy_check is not None else None
            if proxy_check is not None and header is None:
                await asyncio.sleep(0.005)  # the rest of the header is on its way
                continue
            skip = header.length if header is not None else 0
            peeked, data = len(data), data[skip:]
            line_end = data.find(b"\r\n")
            if b"\r\n\r\n" in data or peeked >= MAX_HEAD_BYTES:
                return skip, data
            if line_end >= 0 and _request_path(data) not in ("/health", "/metrics"):
                return skip, data
            await asyncio.sleep(0.005)  # the rest is on its way; peeked data stays readable
            continue
        ready = loop.create_future()
        loop.add_reader(sock.fileno(), ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())


async def _consume(sock: socket.socket, count: int) -> None:
    loop = asyncio.get_running_loop()
    while count > 0:
        chunk = await loop.sock_recv(sock, count)
        if not chunk:
            raise EOFError
        count -= len(chunk)


def _peer(sock: socket.socket):
    try:
        return sock.getpeername()
    except OSError:
        return None


async def _consume_head(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    data = b""
    while b"\r\n\r\n" not in data and len(data) < MAX_HEAD_BYTES:
        chunk = await loop.sock_recv(sock, MAX_HEAD_BYTES)
        if not chunk:
            raise EOFError
        data += chunk


def _request_path(head: bytes) -> str | None:
    parts = head.split(b"\r\n", 1)[0].split(b" ")
    if len(parts) != 3:
        return None
    return urlsplit(parts[1].decode("latin-1")).path


def _is_upgrade(head: bytes) -> bool:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"connection" and b"upgrade" in value.lower():
            return True
    return False


async def _supervise(settings: Settings) -> int:
    supervisor = Supervisor(settings)
    try:
        try:
            await supervisor.start()
        except StartupError as exc:
            log.error("%s", exc)
            await supervisor.stop()
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, supervisor.signal_workers, signal.SIGHUP)
        await stop.wait()
        log.info("shutting down %d workers", len(supervisor.workers))
        return await supervisor.stop()
    finally:
        supervisor.metrics.close()


def run_supervisor(settings: Settings) -> int:
    check_settings(settings)
    try:
        return asyncio.run(_supervise(settings))
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc.strerror or exc)
        return 1


# Worker side ----------------------------------------------------------------------------------

class ConnectionChannel:
    """A worker's end of the channel: adopts the sockets handed over, answers metrics requests."""

    def __init__(self, channel: socket.socket, central, on_lost):
        self.channel = channel
        self.central = central
        self.on_lost = on_lost
        self._reassembly = Reassembly()
        self._send_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task] = set()

    def start(self) -> None:
        self.channel.setblocking(False)
        asyncio.get_running_loop().add_reader(self.channel.fileno(), self._read)

    def stop(self) -> None:
        try:
            asyncio.get_running_loop().remove_reader(self.channel.fileno())
        except ValueError:
            pass

    def _read(self) -> None:
        from levity.transport import OcppConnection

        loop = asyncio.get_running_loop()
        for _ in range(256):
            try:
                message, fds, _flags, _address = socket.recv_fds(self.channel, CHANNEL_RECEIVE_BYTES, 4)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message:  # the supervisor is gone: stop like on SIGTERM
                self.stop()
                self.on_lost()
                return
            if message[:1] == REQUEST:
                try:
                    request = self._reassembly.feed(message)
                except (struct.error, ValueError):
                    log.error("malformed request from the supervisor")
                    request = None
                if request is not None:
                    task = loop.create_task(self._answer(request[1], request[2]))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            for fd in fds:
                sock = socket.socket(fileno=fd)
                if self.central.accepting_connections:
                    loop.create_task(loop.connect_accepted_socket(lambda: OcppConnection(self.central), sock))
                else:
                    sock.close()


    async def _answer(self, request_id: int, request: dict) -> None:
        """Answer one request of the supervisor, under its id (answers may overtake each other)."""
        try:
            if request["op"] == "metrics":  # bring the gauges in the metrics files up to date
                self.central.refresh_metrics()
                answer = {"result": "ok"}
            else:
                answer = {"result": await self.central.operations.handle(request["op"], request["args"])}
        except Exception as exc:  # noqa: BLE001 - reported to the supervisor, which answers 503
            log.exception("operator API request %s failed", request.get("op"))
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        try:
            async with self._send_lock:
                await send_on_channel(self.channel, message_parts(ANSWER, request_id, answer))
        except OSError:  # the supervisor went away: it gets no answer
            pass


async def _work(settings: Settings, index: int, workers: int, channel: socket.socket) -> None:
    from levity.server import CentralSystem, freeze_startup_objects

    central = CentralSystem(settings, transaction_ids=transaction_ids(index, workers))
    stop = asyncio.Event()
    await central.start(listen=False)
    freeze_startup_objects()
    connections = ConnectionChannel(channel, central, stop.set)
    connections.start()
    log.info("worker %d of %d serving (database %s)", index, workers, redact(settings.database))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, central.sink.reopen)
    await stop.wait()
    connections.stop()
    await central.stop()


def worker_main(argv: list[str]) -> int:
    from levity.server import configure_logging

    fd, index = int(argv[0]), int(argv[1])
    parent = Settings(**json.loads(sys.stdin.read()))
    settings = worker_settings(parent, index)
    configure_logging(settings.log_level, prefix=f"[worker {index}] ")
    os.umask(0o077)
    channel = socket.socket(fileno=fd)
    try:
        asyncio.run(_work(settings, index, parent.workers, channel))
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
