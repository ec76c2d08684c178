"""The load client: one process drives a slice of the simulated charge points.

Each charge point is an asyncio.Protocol speaking just enough RFC 6455 (client frames with a
zero mask, unmasked server frames, ping/pong, close) over its own TCP connection: no
coroutine, task or JSON encoding per call. An answer is recognised by its prefix
(`[3,"<uid>"`); only the StartTransaction answer is searched for its transactionId.

Phases, driven by the parent over a Pipe:
  connect + BootNotification -> ("ready", ...)   parent measures idle RSS
  ("go", measure_start, measure_end)            load: warm-up until measure_start, then recorded
  -> ("result", ...)                             after measure_end and a short drain
  ("close",) -> connections closed, ("closed",)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import resource
import socket
import time
from array import array

from benchmarks import frames

# Workload steps: one step is one call, except a transaction (Authorize, StartTransaction,
# MeterValues x k, StopTransaction).
STEPS = ("heartbeat", "status", "meter", "transaction")
KEYS = ("BootNotification", "Heartbeat", "StatusNotification", "StatusNotificationCharging", "Authorize",
        "StartTransaction", "MeterValues", "TxMeterValues", "StopTransaction")
KEY_INDEX = {key: i for i, key in enumerate(KEYS)}
BOOT = KEY_INDEX["BootNotification"]
START_TRANSACTION = KEY_INDEX["StartTransaction"]
TRANSACTION_ID = re.compile(rb'"transactionId"\s*:\s*(-?\d+)')
PLAN_STEPS = 4096


def build_plan(mix: dict[str, float], tx_meter_values: int, seed: int) -> tuple[list[int], list[int]]:
    """A cyclic list of frame keys (indices in KEYS), and the offsets where a step begins."""
    rng = random.Random(seed)
    names = [s for s in STEPS if mix.get(s, 0) > 0]
    weights = [mix[s] for s in names]
    plan: list[int] = []
    starts: list[int] = []
    for step in rng.choices(names, weights, k=PLAN_STEPS):
        starts.append(len(plan))
        if step == "heartbeat":
            plan.append(KEY_INDEX["Heartbeat"])
        elif step == "status":
            plan.append(KEY_INDEX["StatusNotification"])
        elif step == "meter":
            plan.append(KEY_INDEX["MeterValues"])
        else:
            plan += [KEY_INDEX["Authorize"], KEY_INDEX["StartTransaction"]]
            plan += [KEY_INDEX["TxMeterValues"]] * tx_meter_values
            plan.append(KEY_INDEX["StopTransaction"])
    return plan, starts


class Charger(asyncio.Protocol):
    """One simulated charge point."""

    def __init__(self, worker: "Worker", number: int, cp_id: str, plan_offset: int):
        self.w = worker
        self.cp_id = cp_id
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        self.closed = False
        self.ready: asyncio.Future = worker.loop.create_future()
        self.counter = 0
        self.uid = b""
        self.expect = b""
        self.key = -1
        self.started_at = 0.0
        self.outstanding = False
        self.plan_pos = plan_offset
        self.transaction_id: int | None = None
        self.local_tx = number * 1_000_000
        self.meter = frames.METER_START  # this charger's energy register, Wh
        self.next_due = 0.0
        self.timer = None
        self.fragments: bytearray | None = None
        # A mixed fleet (bench --mixed-versions): every other charge point speaks OCPP 2.0.1.
        self.ocpp201 = bool(worker.cfg.get("mixed_versions")) and number % 2 == 0

    # Transport ------------------------------------------------------------------------------

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(frames.handshake_request(self.w.host, self.w.port, "/" + self.cp_id,
                                                 "ocpp2.0.1" if self.ocpp201 else "ocpp1.6"))

    def connection_lost(self, exc):
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost before boot: {exc}"))
        elif not self.w.closing:
            self.w.disconnects += 1

    def data_received(self, data: bytes):
        if not self.upgraded:
            self.buffer += data
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(self.buffer[:end]).split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                if not self.ready.done():
                    self.ready.set_exception(ConnectionError(f"handshake refused: {status.decode(errors='replace')}"))
                self.transport.close()
                return
            self.upgraded = True
            rest = bytes(self.buffer[end + 4:])
            self.buffer = bytearray()
            self.send_call(KEY_INDEX["BootNotification"], time.monotonic())
            if not rest:
                return
            data = rest
        buf = self.buffer
        if not buf:
            # Fast path: one whole small frame, as nearly every answer arrives.
            n = len(data)
            if n >= 2 and data[0] == 0x81 and data[1] < 126 and n == 2 + data[1]:
                self.on_message(data[2:])
                return
        buf += data
        while len(buf) >= 2:
            b0, b1 = buf[0], buf[1]
            length = b1 & 0x7F
            pos = 2
            if length == 126:
                if len(buf) < 4:
                    return
                length = int.from_bytes(buf[2:4], "big")
                pos = 4
            elif length == 127:
                if len(buf) < 10:
                    return
                length = int.from_bytes(buf[2:10], "big")
                pos = 10
            if b1 & 0x80:  # a masked server frame (not expected)
                if len(buf) < pos + 4 + length:
                    return
                key = buf[pos:pos + 4]
                pos += 4
                payload = bytes(b ^ key[i % 4] for i, b in enumerate(buf[pos:pos + length]))
            else:
                if len(buf) < pos + length:
                    return
                payload = bytes(buf[pos:pos + length])
            del buf[:pos + length]
            self.on_frame(b0 & 0x80, b0 & 0x0F, payload)

    def on_frame(self, fin: int, opcode: int, payload: bytes):
        if opcode in (0x1, 0x2):
            if fin:
                self.on_message(payload)
            else:
                self.fragments = bytearray(payload)
        elif opcode == 0x0 and self.fragments is not None:
            self.fragments += payload
            if fin:
                message, self.fragments = bytes(self.fragments), None
                self.on_message(message)
        elif opcode == 0x9:
            self.transport.write(frames.pong_frame(payload))
        elif opcode == 0x8:
            if not self.closed and not self.transport.is_closing():
                self.transport.write(frames.CLOSE_FRAME)
                self.transport.close()

    # OCPP -------------------------------------------------------------------------------------

    def send_call(self, key: int, started_at: float):
        self.counter += 1
        uid = b"%010d" % self.counter
        self.uid = uid
        self.expect = self.w.answer_type + uid + b'"'
        self.key = key
        self.started_at = started_at
        self.outstanding = True
        name = KEYS[key]
        if name == "StartTransaction":
            frame = frames.START_TRANSACTION.build(uid, self.meter, frames.now_timestamp())
        elif name == "TxMeterValues":
            frame = frames.TX_METER_VALUES.build(uid, self._transaction(), frames.now_timestamp(),
                                                 self.meter + frames.SESSION_WH // 2)
        elif name == "StopTransaction":
            self.meter += frames.SESSION_WH
            frame = frames.STOP_TRANSACTION.build(uid, self._transaction(), self.meter, frames.now_timestamp())
            self.transaction_id = None
        elif key == BOOT and self.ocpp201:
            frame = frames.BOOT_201.build(uid)
        else:
            frame = self.w.static[key].build(uid)
        self.transport.write(frame)

    def _transaction(self) -> int:
        return self.transaction_id if self.transaction_id is not None else -1

    def on_message(self, message: bytes):
        now = time.monotonic()
        w = self.w
        if not self.outstanding:
            w.unexpected += 1
            return
        ok = message.startswith(self.expect)
        if not ok:
            kind, uid = _classify(message)
            if uid != self.uid.decode():
                w.unexpected += 1  # an answer to a call that already timed out, or a server CALL
                return
            if kind == 2 and w.echo:
                ok = True
            else:
                w.record_error(KEYS[self.key], message)
        self.outstanding = False
        key = self.key
        if key == START_TRANSACTION and ok:  # StartTransaction: the id for MeterValues and StopTransaction
            match = TRANSACTION_ID.search(message)
            if match is not None and not w.echo:
                self.transaction_id = int(match.group(1))
            else:
                self.local_tx += 1
                self.transaction_id = self.local_tx
        if key == BOOT:
            if not self.ready.done():
                if ok:
                    w.boot_latencies.append(int((now - self.started_at) * 1e6))
                    self.ready.set_result(True)
                else:
                    self.ready.set_exception(ConnectionError(f"BootNotification answered {message[:120]!r}"))
            return
        if w.measure_start <= now < w.measure_end:
            if ok:
                w.latencies[key].append(int((now - self.started_at) * 1e6))
            w.answered_in_window += 1
        self.next_call(now)

    def next_call(self, now: float):
        w = self.w
        if not w.sending or self.closed:
            return
        if w.interval:  # open loop: calls at a fixed rate per charger, whatever the answers do
            if now < self.next_due:
                self.timer = w.loop.call_at(self.next_due, self.tick)
                return
            started = self.next_due  # a late call counts its wait (no coordinated omission)
            self.next_due += w.interval
        else:
            started = now
        plan = w.plan
        key = plan[self.plan_pos]
        self.plan_pos = (self.plan_pos + 1) % len(plan)
        self.send_call(key, started)

    def tick(self):
        self.timer = None
        if not self.outstanding:
            self.next_call(time.monotonic())

    def timed_out(self, now: float) -> bool:
        if self.outstanding and now - self.started_at > self.w.call_timeout:
            self.outstanding = False
            if self.w.measure_start <= now < self.w.measure_end:
                self.w.timeouts += 1
            self.next_call(now)
            return True
        return False


def _classify(message: bytes) -> tuple[int, str]:
    try:
        frame = json.loads(message)
        return int(frame[0]), str(frame[1])
    except (ValueError, TypeError, IndexError, KeyError):
        return -1, ""


class Worker:
    def __init__(self, cfg: dict, conn):
        self.cfg = cfg
        self.conn = conn
        self.host, self.port = cfg["host"], cfg["port"]
        self.echo = cfg["echo"]
        # The echo server's answer is the CALL itself.
        self.answer_type = b'[2,"' if self.echo else b'[3,"'
        self.call_timeout = cfg["call_timeout"]
        rate = cfg.get("rate") or 0
        self.interval = 1.0 / rate if rate else 0.0
        self.static = [frames.STATIC.get(key) for key in KEYS]
        self.plan, self.plan_starts = build_plan(cfg["mix"], cfg["tx_meter_values"], cfg["seed"])
        self.latencies = [array("l") for _ in KEYS]
        self.boot_latencies = array("l")
        self.errors: dict[str, int] = {}
        self.error_samples: list[str] = []
        self.unexpected = 0
        self.timeouts = 0
        self.disconnects = 0
        self.answered_in_window = 0
        self.measure_start = float("inf")
        self.measure_end = float("inf")
        self.sending = False
        self.closing = False
        self.chargers: list[Charger] = []
        self.connect_failures: dict[str, int] = {}

    def record_error(self, action: str, message: bytes):
        if self.measure_start <= time.monotonic() < self.measure_end:
            self.errors[action] = self.errors.get(action, 0) + 1
        if len(self.error_samples) < 5:
            self.error_samples.append(f"{action}: {message[:200].decode(errors='replace')}")

    async def recv(self):
        return await self.loop.run_in_executor(None, self.conn.recv)

    async def connect_one(self, number: int, cp_id: str, gate: asyncio.Semaphore):
        rng = random.Random(self.cfg["seed"] * 1_000_003 + number)
        offset = self.plan_starts[rng.randrange(len(self.plan_starts))]
        charger = Charger(self, number, cp_id, offset)
        async with gate:
            try:
                await asyncio.wait_for(self.loop.create_connection(lambda: charger, self.host, self.port),
                                       self.cfg["connect_timeout"])
                await asyncio.wait_for(charger.ready, self.cfg["connect_timeout"])
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                reason = type(exc).__name__ + (f": {exc}" if str(exc) else "")
                reason = reason[:160]
                self.connect_failures[reason] = self.connect_failures.get(reason, 0) + 1
                if charger.transport is not None:
                    charger.transport.abort()
                return
        self.chargers.append(charger)

    async def sweep_timeouts(self):
        while True:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for charger in self.chargers:
                if charger.outstanding:
                    charger.timed_out(now)

    async def run(self):
        self.loop = asyncio.get_running_loop()
        cfg = self.cfg
        gate = asyncio.Semaphore(cfg["connect_concurrency"])
        started = time.monotonic()
        await asyncio.gather(*(self.connect_one(n, cp_id, gate) for n, cp_id in cfg["charge_points"]))
        self.conn.send(("ready", {"connected": len(self.chargers), "connect_seconds": time.monotonic() - started,
                                  "connect_failures": self.connect_failures,
                                  "boot_latencies": self.boot_latencies.tobytes()}))
        message = await self.recv()
        if message[0] != "go":
            return await self.close()
        _, self.measure_start, self.measure_end = message
        sweeper = asyncio.create_task(self.sweep_timeouts())
        cpu_start = None
        self.sending = True
        rng = random.Random(cfg["seed"])
        now = time.monotonic()
        for charger in self.chargers:
            if self.interval:
                charger.next_due = now + rng.random() * self.interval
                charger.timer = self.loop.call_at(charger.next_due, charger.tick)
            else:
                charger.next_call(now)
        await asyncio.sleep(max(0.0, self.measure_start - time.monotonic()))
        cpu_start = os.times()
        await asyncio.sleep(max(0.0, self.measure_end - time.monotonic()))
        cpu_end = os.times()
        self.sending = False
        # Drain: answers to calls still outstanding (they are not counted).
        drain_until = time.monotonic() + min(self.call_timeout, 5.0)
        while time.monotonic() < drain_until and any(c.outstanding for c in self.chargers):
            await asyncio.sleep(0.05)
        sweeper.cancel()
        window = self.measure_end - self.measure_start
        cpu = (cpu_end.user + cpu_end.system - cpu_start.user - cpu_start.system) / window * 100
        self.conn.send(("result", {
            "latencies": {KEYS[i]: lat.tobytes() for i, lat in enumerate(self.latencies) if lat},
            "answered_in_window": self.answered_in_window,
            "errors": self.errors, "error_samples": self.error_samples,
            "timeouts": self.timeouts, "unexpected": self.unexpected, "disconnects": self.disconnects,
            "open_at_end": sum(1 for c in self.chargers if not c.closed),
            "client_cpu_percent": cpu,
        }))
        message = await self.recv()
        await self.close()

    async def close(self):
        self.closing = True
        for charger in self.chargers:
            if not charger.closed and charger.transport is not None:
                charger.transport.write(frames.CLOSE_FRAME)
        await asyncio.sleep(0.2)
        for charger in self.chargers:
            if charger.transport is not None:
                charger.transport.close()
        await asyncio.sleep(0.1)
        self.conn.send(("closed",))


def worker_main(cfg: dict, conn) -> None:
    if cfg.get("cpus"):
        os.sched_setaffinity(0, cfg["cpus"])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        asyncio.run(Worker(cfg, conn).run())
    except (EOFError, BrokenPipeError, KeyboardInterrupt):
        pass
    finally:
        conn.close()
