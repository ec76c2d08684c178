"""A real Fluentd as the bench's audit receiver: in_forward on a loopback port, every event to
the null output (it acknowledges and throws away), so the bench measures what Levity pays to
deliver to a real Fluentd, not what Fluentd pays to store.

Found through FLUENTD_BIN or `fluentd` on PATH (neither PyPI nor Debian packages it). It does
not count events: the bench reads how many Fluentd acknowledged from Levity's /metrics.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

NULL_CONF = """\
<system>
  log_level warn
</system>
<source>
  @type forward
  bind 127.0.0.1
  port {port}
</source>
<match **>
  @type null
</match>
"""


def fluentd_binary() -> str | None:
    return os.environ.get("FLUENTD_BIN") or shutil.which("fluentd")


class FluentdNullReceiver:
    """.port, .pid, .stop(): the interface of benchmarks.forward_receiver.ReceiverProcess
    (snapshot() comes from the caller, who knows where to read the acknowledged count)."""

    kind = "fluentd"

    def __init__(self, binary: str, workdir: Path, port: int, cpus: list[int] | None = None,
                 timeout: float = 60.0):
        self.port = port
        workdir.mkdir(parents=True, exist_ok=True)
        config = workdir / "fluent-null.conf"
        config.write_text(NULL_CONF.format(port=port))
        self.log_path = workdir / "fluentd.log"
        with open(self.log_path, "ab") as log:
            # Its own session: supervisor and worker are stopped together. Pinned before exec:
            # the worker it spawns inherits the CPU set.
            self.process = subprocess.Popen(
                [binary, "-c", str(config), "--no-supervisor"], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=workdir, start_new_session=True,
                preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        self.pid = self.process.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fluentd exited with {self.process.returncode}: {self._log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fluentd did not listen on port {port} within {timeout:.0f}s: {self._log_tail()}")

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> dict:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return {}
