"""Runs a real `levity serve` in a subprocess for tests: free port, own database and spool."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from benchmarks.targets import free_port


def api_env() -> dict[str, str]:
    """Settings that turn the operator API on, on a free port."""
    return {"LEVITY_API_PORT": str(free_port())}


class PortTaken(AssertionError):
    """`levity serve` could not listen: another process took its port first."""


class LevityProcess:
    """`levity serve` as a chargers' Central System would see it."""

    def __init__(self, workdir: Path, env: dict[str, str] | None = None, port: int | None = None,
                 stdout: int | None = None):
        self.workdir = Path(workdir)
        self.port = port or free_port()
        self.port_chosen_here = port is None  # a port taken meanwhile is replaced on start
        self.env = {
            "LEVITY_HOST": "127.0.0.1",
            "LEVITY_PORT": str(self.port),
            "LEVITY_DATABASE": str(self.workdir / "levity.db"),
            "LEVITY_SPOOL_DIR": str(self.workdir / "spool"),
            "LEVITY_AUDIT_SINK": "file",
            "LEVITY_AUDIT_FILE": str(self.workdir / "audit.jsonl"),
            "FLUENTD_ENABLED": "false",
            "TMPDIR": str(self.workdir),  # the supervisor's metrics directory, even after a SIGKILL
            "LEVITY_API_PORT": "0",  # the operator API only where a test asks for it (api_env())
            **(env or {}),
        }
        self.process: subprocess.Popen | None = None
        self.health_ssl = None  # an ssl.SSLContext when Levity serves TLS
        # LEVITY_PROXY_PROTOCOL with 127.0.0.1 trusted: the test's own requests (health, metrics)
        # come as the balancer's health checks do, behind a PROXY protocol v2 LOCAL header.
        self.proxy_local = False
        self.log_path = self.workdir / "levity.log"
        self.stdout = stdout  # where its standard output goes (default: the log file)
        self.starts = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.env['LEVITY_API_PORT']}"

    def levity_command(self, *args: str, env: dict[str, str] | None = None,
                       input: str | None = None) -> subprocess.CompletedProcess:
        """Another `levity` command run against this server's files (e.g. api-tokens, call)."""
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("LEVITY_", "FLUENTD_"))}
        return subprocess.run([sys.executable, "-m", "levity.cli", *args], cwd=self.workdir, input=input,
                              env={**environ, **self.env, **(env or {})}, capture_output=True, text=True, timeout=60)

    def start(self, timeout: float = 15.0) -> "LevityProcess":
        for _ in range(2):
            try:
                return self._start(timeout)
            except PortTaken:
                if not self.port_chosen_here:
                    raise
                self.port = free_port()
                self.env["LEVITY_PORT"] = str(self.port)
        return self._start(timeout)

    def _start(self, timeout: float) -> "LevityProcess":
        self.starts += 1
        logged_before = len(self.log())
        log = open(self.log_path, "a")
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("LEVITY_", "FLUENTD_"))}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "levity.cli", "serve"], cwd=self.workdir,
            env={**environ, **self.env}, stdout=log if self.stdout is None else self.stdout, stderr=log,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.log()
                if output[logged_before:].rstrip().endswith(
                        f"cannot listen on 127.0.0.1:{self.port}: Address already in use"):
                    raise PortTaken(output)
                raise AssertionError(f"levity serve exited with {self.process.returncode}:\n{output}")
            scheme = "https" if self.health_ssl else "http"
            try:
                if self.proxy_local:
                    if get_behind_proxy_header(self.port, "/health")[0] == 200:
                        return self
                    time.sleep(0.05)
                    continue
                with urllib.request.urlopen(f"{scheme}://127.0.0.1:{self.port}/health", timeout=1,
                                            context=self.health_ssl) as response:
                    if response.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"levity serve did not become healthy:\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the clean shutdown path."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: nothing gets a chance to flush."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def restart(self) -> "LevityProcess":
        self.stop()
        return self.start()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def metrics(self) -> dict[str, float]:
        """/metrics read with prometheus_client's own parser: {'name{label="value",...}': value}."""
        if self.proxy_local:
            return parse_metrics(get_behind_proxy_header(self.port, "/metrics")[1].decode())
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as response:
            return parse_metrics(response.read().decode())


PROXY_V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"  # what HAProxy's health checks send


def get_behind_proxy_header(port: int, path: str, header: bytes = PROXY_V2_LOCAL,
                            source: str = "127.0.0.1") -> tuple[int, bytes]:
    """GET path over a plain socket that starts with `header`: (status, body); status 0 when
    the server closed the connection without an answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as sock:
        sock.sendall(header + f"GET {path} HTTP/1.1\r\nHost: levity\r\nConnection: close\r\n\r\n".encode())
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    if not data:
        return 0, b""
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def parse_metrics(text: str) -> dict[str, float]:
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            values[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return values
