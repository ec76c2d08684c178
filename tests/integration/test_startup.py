"""Starting `levity serve`: files it cannot use are named in one line (exit 1); the open files
limit is raised to what LEVITY_MAX_CONNECTIONS needs."""

import os
import resource
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.support.levity_process import free_port


def serve(tmp_path, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LEVITY_", "FLUENTD_"))}
    environ.update({"LEVITY_PORT": "0", "LEVITY_API_PORT": "0", "LEVITY_HOST": "127.0.0.1",
                    "LEVITY_DATABASE": str(tmp_path / "levity.db"),
                    "LEVITY_SPOOL_DIR": str(tmp_path / "spool"), **env})
    return subprocess.run([sys.executable, "-m", "levity.cli", "serve"], env=environ, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize("setting, env, expected", [
    ("database", {"LEVITY_DATABASE": "{d}/a-directory"}, "cannot open the database {d}/a-directory"),
    ("spool", {"FLUENTD_ENABLED": "true", "LEVITY_SPOOL_DIR": "{d}/a-file/spool"},
     "cannot open the audit spool: [Errno 20] Not a directory: '{d}/a-file/spool'"),
    ("audit file", {"LEVITY_AUDIT_SINK": "file", "LEVITY_AUDIT_FILE": "{d}/a-directory"},
     "cannot open the audit file: [Errno 21] Is a directory: '{d}/a-directory'"),
])
def test_unusable_files_are_named_without_a_traceback(tmp_path, setting, env, expected):
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "a-file").write_text("")
    result = serve(tmp_path, **{k: v.format(d=tmp_path) for k, v in env.items()})
    assert result.returncode == 1, result.stderr
    assert expected.format(d=tmp_path) in result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot listen" not in result.stderr


def test_a_port_in_use_is_named(tmp_path):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = serve(tmp_path, LEVITY_PORT=str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr


def soft_open_files_limit(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        line = next(line for line in f if line.startswith("Max open files"))
    return int(line.split()[3])


def serve_with_limits(tmp_path, soft: int, hard: int, max_connections: int) -> tuple[int, str]:
    """Start levity serve with the given open files limits: its soft limit once healthy, and its log."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LEVITY_", "FLUENTD_"))}
    environ.update({"LEVITY_PORT": str(port), "LEVITY_HOST": "127.0.0.1", "LEVITY_DATABASE": str(tmp_path / "l.db"),
                    "LEVITY_MAX_CONNECTIONS": str(max_connections), "LEVITY_AUDIT_SINK": "none",
                    "LEVITY_API_PORT": "0"})  # not the default 9001, which another process may hold
    process = subprocess.Popen([sys.executable, "-m", "levity.cli", "serve"], env=environ, stderr=subprocess.PIPE,
                               text=True, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)))
    limit = None
    try:
        deadline = time.monotonic() + 15
        while limit is None and time.monotonic() < deadline and process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    limit = soft_open_files_limit(process.pid)
            except OSError:
                time.sleep(0.05)
    finally:
        process.terminate()
        _, log = process.communicate(timeout=20)
    assert limit is not None, f"levity serve did not start:\n{log}"
    return limit, log


def test_the_open_files_limit_is_raised_for_max_connections(tmp_path):
    limit, log = serve_with_limits(tmp_path, soft=256, hard=4096, max_connections=2000)
    assert limit == 2000 + 256
    assert "open files limit" not in log


def test_a_hard_limit_below_max_connections_is_warned_about(tmp_path):
    limit, log = serve_with_limits(tmp_path, soft=256, hard=1024, max_connections=5000)
    assert limit == 1024
    assert "the open files limit (1024) is below LEVITY_MAX_CONNECTIONS (5000)" in log
