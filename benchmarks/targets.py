"""The servers under test, each started as a subprocess on a free 127.0.0.1 port, and the
psutil view of their process tree (CPU seconds, RSS)."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TargetSpec:
    name: str
    kind: str  # levity | plain | echo
    audit: str = ""  # levity: fluentd | none | down
    description: str = ""
    workers: int = 1  # levity: LEVITY_WORKERS; 0 = one per CPU


TARGETS: dict[str, TargetSpec] = {t.name: t for t in (
    TargetSpec("levity", "levity", "fluentd", "levity serve, schema validation and audit on (Fluentd Forward receiver)"),
    TargetSpec("levity-workers", "levity", "fluentd", "the same with LEVITY_WORKERS = CPUs (connections routed "
               "to workers by charge point id)", workers=0),
    TargetSpec("levity-audit-off", "levity", "none", "levity serve, FLUENTD_ENABLED=false, LEVITY_AUDIT_SINK=none"),
    TargetSpec("levity-fluentd-down", "levity", "down", "levity serve, audit on, FLUENTD_PORT a closed port"),
    TargetSpec("plain-ocpp", "plain", description="ocpp library ChargePoint, default validation (the baseline)"),
    TargetSpec("echo", "echo", description="raw websockets echo server (the ceiling)"),
)}
DEFAULT_TARGETS = ("levity", "levity-workers", "plain-ocpp", "echo")

# The bench drives each charger far beyond a real charger's rate (closed loop: as fast as
# answers come), so Levity's per-charger abuse throttle (50 calls/s by default) would measure
# itself rather than the server; its bookkeeping still runs.
LEVITY_BENCH_ENV = {"LEVITY_MAX_CALLS_PER_SECOND": "1000000", "LEVITY_API_PORT": "0"}  # no operator API: parallel runs would share its port


STACK_PORTS = range(24220, 24240)  # Fluentd's forward and monitoring ports, as the stack uses them


def ephemeral_port_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A port nothing listens on, outside the kernel's ephemeral range: a port the kernel picks
    (bind to 0) can be taken by any outgoing connection before the server binds it, which made
    `levity serve` fail with "Address already in use" about once per CI run."""
    low, high = ephemeral_port_range()
    candidates = [port for port in range(10000, 65536)
                  if not low <= port <= high and port not in STACK_PORTS]
    for port in random.sample(candidates, 50):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as sock:  # every candidate tried was in use: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServerProcess:
    spec: TargetSpec
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    fluentd_port: int | None = None
    cpus: list[int] | None = None
    source_tree: Path | None = None  # levity: import it from this tree instead of this repository
    port: int = 0
    process: subprocess.Popen | None = None
    env_used: dict[str, str] = field(default_factory=dict)

    def command_and_env(self) -> tuple[list[str], dict[str, str]]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("LEVITY_", "FLUENTD_"))}
        if self.spec.kind == "levity":
            env = {"LEVITY_HOST": "127.0.0.1", "LEVITY_PORT": str(self.port),
                   "LEVITY_DATABASE": str(self.workdir / "levity.db"),
                   "LEVITY_SPOOL_DIR": str(self.workdir / "spool"),
                   "LEVITY_WORKERS": str(self.spec.workers or os.cpu_count() or 1), **LEVITY_BENCH_ENV}
            if self.spec.audit == "none":
                env.update(FLUENTD_ENABLED="false", LEVITY_AUDIT_SINK="none")
            else:
                env.update(FLUENTD_ENABLED="true", FLUENTD_HOST="127.0.0.1", FLUENTD_PORT=str(self.fluentd_port))
            env.update(self.extra_env)
            self.env_used = env
            return [sys.executable, "-m", "levity.cli", "serve"], {**base, **env}
        module = "benchmarks.plain_ocpp_server" if self.spec.kind == "plain" else "benchmarks.echo_server"
        return [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port)], base

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        self.port = free_port()
        command, env = self.command_and_env()
        tree = self.source_tree if self.spec.kind == "levity" and self.source_tree else REPO
        env["PYTHONPATH"] = str(tree) + os.pathsep + env.get("PYTHONPATH", "")
        self.log_path = self.workdir / f"{self.spec.name}.log"
        cpus = self.cpus
        with open(self.log_path, "ab") as log:
            # Pinned before exec: worker processes the server forks inherit the CPU set.
            self.process = subprocess.Popen(command, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"{self.spec.name} did not listen on port {self.port} within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def metrics(self) -> dict[str, float]:
        """Levity's /metrics as {name: value}; {} for the other targets or on failure."""
        if self.spec.kind != "levity":
            return {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
                text = response.read().decode()
        except OSError:
            return {}
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                try:
                    values[name] = float(value)
                except ValueError:
                    pass
        return values

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            for child in _children(self.process.pid):
                try:
                    child.kill()
                except psutil.Error:
                    pass
            self.process.kill()
            self.process.wait(10)


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


class ProcessTree:
    """CPU seconds and RSS of a process and all its descendants (e.g. worker processes)."""

    def __init__(self, pid: int):
        self.root = psutil.Process(pid)
        self._procs: dict[int, psutil.Process] = {pid: self.root}
        self._dead_cpu = 0.0
        self._last_cpu: dict[int, float] = {}

    def _refresh(self) -> list[psutil.Process]:
        try:
            for child in self.root.children(recursive=True):
                self._procs.setdefault(child.pid, child)
        except psutil.Error:
            pass
        return list(self._procs.values())

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self._refresh():
            try:
                times = proc.cpu_times()
                self._last_cpu[proc.pid] = times.user + times.system
            except psutil.Error:
                pass  # gone: its last reading still counts
            total += self._last_cpu.get(proc.pid, 0.0)
        return total

    def rss(self) -> int:
        total = 0
        for proc in self._refresh():
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        return total

    def cpus_used(self) -> list[int]:
        """The CPUs any thread of the tree may run on (the union of their affinities)."""
        cpus: set[int] = set()
        for proc in self._refresh():
            try:
                for thread in proc.threads():
                    cpus |= os.sched_getaffinity(thread.id)
            except (psutil.Error, OSError):
                pass  # gone meanwhile
        return sorted(cpus)

    def num_processes(self) -> int:
        return len([p for p in self._refresh() if p.is_running()])


def ulimit_nofile() -> tuple[int, int]:
    """Raise the soft open-files limit to the hard one (children inherit it)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def ephemeral_ports() -> int | None:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        return high - low + 1
    except (OSError, ValueError):
        return None


def describe_machine() -> dict:
    info = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "platform": sys.platform}
    try:
        info["memory_mb"] = round(psutil.virtual_memory().total / 2**20)
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        pass
    try:
        import websockets
        info["websockets"] = websockets.__version__
        import ocpp  # noqa: F401
        from importlib.metadata import version
        info["ocpp"] = version("ocpp")
        info["levity"] = version("levity")
    except Exception:  # versions are informative only
        pass
    return json.loads(json.dumps(info))
