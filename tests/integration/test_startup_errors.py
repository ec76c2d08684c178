"""`levity serve` that cannot use its files says which one and why in one line, and exits 1."""

import os
import subprocess
import sys

import pytest


def serve(tmp_path, **env):
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LEVITY_", "FLUENTD_"))}
    environ.update({"LEVITY_PORT": "0", "LEVITY_HOST": "127.0.0.1", "LEVITY_DATABASE": str(tmp_path / "levity.db"),
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
