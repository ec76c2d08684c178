"""`levity doctor` with FLUENTD_SERVERS: one set of checks per server."""

import json

from levity.cli import main
from tests.support.forward_receiver import ForwardReceiver


def doctor(capsys, servers, tmp_path, *extra):
    code = main(["doctor", "--fluentd-enabled", "true", "--fluentd-servers", servers, "--fluentd-timeout", "1",
                 "--spool-dir", str(tmp_path / "spool"), "--json", *extra])
    return code, {c["name"]: c for c in json.loads(capsys.readouterr().out)["checks"]}


def test_every_server_is_checked_and_one_down_is_a_warning(capsys, tmp_path):
    with ForwardReceiver() as up, ForwardReceiver() as down, ForwardReceiver() as silent:
        down.refuse = True
        silent.send_acks = False
        servers = f"127.0.0.1:{down.port},127.0.0.1:{silent.port},127.0.0.1:{up.port}"
        code, checks = doctor(capsys, servers, tmp_path)
        assert code == 1, checks
        assert checks[f"fluentd reachable 127.0.0.1:{down.port}"]["status"] == "WARN"
        assert checks[f"fluentd reachable 127.0.0.1:{silent.port}"]["status"] == "OK"
        assert checks[f"fluentd acknowledges 127.0.0.1:{silent.port}"]["status"] == "WARN"
        assert checks[f"fluentd acknowledges 127.0.0.1:{up.port}"]["status"] == "OK"
        assert checks["fluentd servers"]["status"] == "OK"
        assert f"127.0.0.1:{up.port}" in checks["fluentd servers"]["detail"]
        assert [e.record["event_type"] for e in up.events] == ["doctor_probe"]


def test_all_servers_down_fails(capsys, tmp_path):
    with ForwardReceiver() as a, ForwardReceiver() as b:
        a.refuse = b.refuse = True
        code, checks = doctor(capsys, f"127.0.0.1:{a.port},127.0.0.1:{b.port}", tmp_path)
    assert code == 2
    assert checks["fluentd servers"]["status"] == "FAIL"


def test_the_shared_key_handshake_is_checked_on_every_server(capsys, tmp_path):
    with ForwardReceiver(shared_key="k") as right, ForwardReceiver(shared_key="other") as wrong:
        code, checks = doctor(capsys, f"127.0.0.1:{right.port},127.0.0.1:{wrong.port}", tmp_path,
                              "--fluentd-shared-key", "k")
    assert checks[f"fluentd acknowledges 127.0.0.1:{right.port}"]["status"] == "OK"
    assert "handshake" in checks[f"fluentd reachable 127.0.0.1:{wrong.port}"]["detail"]
    assert wrong.handshake_failures == 1


def test_a_malformed_list_is_one_failing_check_naming_the_setting(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("FLUENTD_SERVERS", "a:1,a:1")
    code = main(["doctor", "--spool-dir", str(tmp_path / "spool"), "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 2
    assert out["checks"][0]["detail"].startswith("FLUENTD_SERVERS: duplicate entry a:1")
