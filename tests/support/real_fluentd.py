"""A real Fluentd for the tests that need one: found through FLUENTD_BIN or `fluentd` on PATH.

Neither PyPI nor Debian packages Fluentd, so the tests that use it skip (with the reason) where
it is not installed. FluentdProcess runs one as an aggregator would: in_forward on a loopback
port, events written as JSON lines through a file buffer (which survives a SIGKILL), each with the
tag it arrived with as `fluentd_tag`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest


def fluentd_binary() -> str | None:
    return os.environ.get("FLUENTD_BIN") or shutil.which("fluentd")


def require_fluentd() -> str:
    binary = fluentd_binary()
    if binary is None:
        pytest.skip("no Fluentd here: set FLUENTD_BIN or put `fluentd` on PATH (no PyPI or Debian package has it)")
    return binary


def run_dry_run(binary: str, config: Path, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([binary, "--dry-run", "-c", str(config)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **env}, cwd=config.parent)


AGGREGATOR_CONF = """\
<system>
  log_level info
</system>
<source>
  @type forward
  bind 127.0.0.1
  port {port}
</source>
<match ocpp.**>
  @type file
  path {out}/events
  append true
  <format>
    @type json
  </format>
  <inject>
    tag_key fluentd_tag
  </inject>
  <buffer>
    @type file
    path {out}/buffer
    flush_mode interval
    flush_interval 1s
    flush_at_shutdown true
  </buffer>
</match>
"""


class FluentdProcess:
    def __init__(self, binary: str, workdir: Path, port: int):
        self.binary, self.workdir, self.port = binary, Path(workdir), port
        self.out = self.workdir / "out"
        self.config = self.workdir / "fluent.conf"
        self.log_path = self.workdir / "fluentd.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "FluentdProcess":
        self.out.mkdir(parents=True, exist_ok=True)
        self.config.write_text(AGGREGATOR_CONF.format(port=self.port, out=self.out))
        log = open(self.log_path, "a")
        # Its own session: the supervisor and its worker are killed together.
        self.process = subprocess.Popen([self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.workdir, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"fluentd exited with {self.process.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"fluentd did not listen on {self.port} within {timeout}s:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL, supervisor and worker: a crash. The file buffer keeps what it had accepted."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM: flushes its buffer at shutdown."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def records(self) -> list[dict]:
        records = []
        for path in sorted(self.out.glob("events*")):
            for line in path.read_text().splitlines():
                if line.strip():
                    records.append(json.loads(line))
        return records
