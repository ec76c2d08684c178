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
import subprocess
import sys
import time
import zlib
from pathlib import Path
from urllib.parse import urlsplit

from levity import __version__, metrics
from levity.config import ConfigError, Settings
from levity.metrics import WorkerMetrics

log = logging.getLogger("levity.workers")

MAX_HEAD_BYTES = 16384  # a request head larger than this is the worker's to refuse
RESTART_DELAY = 1.0  # before the first restart of a worker that died
RESTART_DELAY_MAX = 30.0  # doubling per failure in a row: a worker that cannot start is retried this often
STABLE_SECONDS = 60.0  # a worker that ran this long before dying starts again from RESTART_DELAY
SHUTDOWN_SECONDS = 20.0  # a worker's own flush is bounded to 10 s (server.SHUTDOWN_FLUSH_SECONDS)
CONNECTION, METRICS = b"C", b"M"  # messages from the supervisor to a worker (METRICS: refresh your gauges)
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
    if workers == 1 or database == ":memory:":
        return database
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
    if settings.database != ":memory:":
        database = Path(settings.database)
        if database.exists():
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
        self._replies: list[asyncio.Future] = []

    def start(self) -> None:
        self.restarts += 1
        self.started_at = time.monotonic()
        self.restart_at = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Settings travel on stdin, so secrets given as flags never show in the process list.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "levity.workers", str(theirs.fileno()), str(self.index)],
            stdin=subprocess.PIPE, pass_fds=[theirs.fileno()], env=self.environment)
        self.process.stdin.write(json.dumps(dataclasses.asdict(self.settings)).encode())
        self.process.stdin.close()
        theirs.close()
        ours.setblocking(False)
        self.channel = ours
        for reply in self._replies:
            reply.cancel()
        self._replies = []
        asyncio.get_running_loop().add_reader(ours.fileno(), self._read_replies)

    def _read_replies(self) -> None:
        while True:
            try:
                data = self.channel.recv(1 << 20)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:  # the worker is gone; the supervisor's watch restarts it
                asyncio.get_running_loop().remove_reader(self.channel.fileno())
                for reply in self._replies:
                    reply.cancel()
                self._replies = []
                return
            if self._replies:
                reply = self._replies.pop(0)
                if not reply.done():
                    reply.set_result(data.decode())

    async def hand_over(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(self.channel, [CONNECTION], [sock.fileno()])
                return
            except BlockingIOError:  # the worker is behind on adopting: wait until it takes more
                ready = loop.create_future()
                loop.add_writer(self.channel.fileno(), ready.set_result, None)
                try:
                    await ready
                finally:
                    loop.remove_writer(self.channel.fileno())

    async def refresh_metrics(self, timeout: float = 2.0) -> str | None:
        """Ask the worker to bring its gauges up to date; None when it cannot (its files keep
        the values it wrote last)."""
        if self.channel is None:  # being restarted
            return None
        reply = asyncio.get_running_loop().create_future()
        self._replies.append(reply)
        try:
            self.channel.send(METRICS)
            return await asyncio.wait_for(reply, timeout)
        except (OSError, asyncio.TimeoutError, asyncio.CancelledError):
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


class Supervisor:
    def __init__(self, settings: Settings):
        self.settings = settings
        self.metrics = WorkerMetrics(self._worker_counts)
        self.workers = [Worker(settings, i, self.metrics.worker_environment()) for i in range(settings.workers)]
        self.listener: socket.socket | None = None
        self.stopping = False
        self._tasks: set[asyncio.Task] = set()

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
            head = await asyncio.wait_for(_peek_head(sock), self.settings.handshake_timeout)
            path = _request_path(head)
            if path in ("/health", "/metrics") and not _is_upgrade(head):
                await asyncio.wait_for(self._answer_http(sock, path), self.settings.handshake_timeout)
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

    async def _answer_http(self, sock: socket.socket, path: str) -> None:
        loop = asyncio.get_running_loop()
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


async def _peek_head(sock: socket.socket) -> bytes:
    """The request head as far as needed, without consuming it: up to the end of the request
    line for a charger, the whole head for /health and /metrics."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data = sock.recv(MAX_HEAD_BYTES, socket.MSG_PEEK)
        except BlockingIOError:
            data = None
        if data == b"":
            raise EOFError
        if data is not None:
            line_end = data.find(b"\r\n")
            if b"\r\n\r\n" in data or len(data) >= MAX_HEAD_BYTES:
                return data
            if line_end >= 0 and _request_path(data) not in ("/health", "/metrics"):
                return data
            await asyncio.sleep(0.005)  # the rest is on its way; peeked data stays readable
            continue
        ready = loop.create_future()
        loop.add_reader(sock.fileno(), ready.set_result, None)
        try:
            await ready
        finally:
            loop.remove_reader(sock.fileno())


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
        await supervisor.start()
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
                message, fds, _flags, _address = socket.recv_fds(self.channel, 16, 4)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message:  # the supervisor is gone: stop like on SIGTERM
                self.stop()
                self.on_lost()
                return
            if message == METRICS:
                self.central.refresh_metrics()
                try:
                    self.channel.send(b"ok")
                except OSError:  # the supervisor went away or is not reading: it gets no answer
                    pass
            for fd in fds:
                sock = socket.socket(fileno=fd)
                if self.central.accepting_connections:
                    loop.create_task(loop.connect_accepted_socket(lambda: OcppConnection(self.central), sock))
                else:
                    sock.close()


async def _work(settings: Settings, index: int, workers: int, channel: socket.socket) -> None:
    from levity.server import CentralSystem, freeze_startup_objects

    central = CentralSystem(settings, transaction_ids=transaction_ids(index, workers))
    stop = asyncio.Event()
    await central.start(listen=False)
    freeze_startup_objects()
    connections = ConnectionChannel(channel, central, stop.set)
    connections.start()
    log.info("worker %d of %d serving (database %s)", index, workers, settings.database)
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
    from levity.server import StartupError

    try:
        asyncio.run(_work(settings, index, parent.workers, channel))
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(worker_main(sys.argv[1:]))
