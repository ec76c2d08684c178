"""`levity doctor` against the suite's Forward receiver."""

import json

from levity.audit.spool import Spool
from levity.cli import main
from tests.support.forward_receiver import ForwardReceiver


def doctor(capsys, receiver_port, tmp_path, *extra):
    code = main(["doctor", "--host", "127.0.0.1", "--fluentd-enabled", "true", "--fluentd-host", "127.0.0.1",
                 "--fluentd-port", str(receiver_port), "--fluentd-timeout", "2",
                 "--spool-dir", str(tmp_path / "spool"), "--json", *extra])
    return code, json.loads(capsys.readouterr().out)


def statuses(out):
    return {c["name"]: c["status"] for c in out["checks"]}


def test_healthy_and_the_probe_is_acknowledged(capsys, tmp_path, receiver):
    code, out = doctor(capsys, receiver.port, tmp_path)
    assert code == 0, out
    assert out["verdict"] == "healthy"
    (probe,) = receiver.events
    assert probe.tag == "ocpp.doctor" and probe.record["event_type"] == "doctor_probe"
    assert statuses(out)["fluentd acknowledges"] == "OK"


def test_fluentd_down_fails(capsys, tmp_path, receiver):
    receiver.refuse = True
    code, out = doctor(capsys, receiver.port, tmp_path)
    assert code == 2
    assert statuses(out)["fluentd reachable"] == "FAIL"


def test_no_acks_fails(capsys, tmp_path, receiver):
    receiver.send_acks = False
    code, out = doctor(capsys, receiver.port, tmp_path)
    assert code == 2
    assert statuses(out)["fluentd reachable"] == "OK"
    assert statuses(out)["fluentd acknowledges"] == "FAIL"


def test_shared_key_without_tls_is_a_warning(capsys, tmp_path):
    with ForwardReceiver(shared_key="k") as receiver:
        code, out = doctor(capsys, receiver.port, tmp_path, "--fluentd-shared-key", "k")
    assert code == 1, out
    assert statuses(out)["shared key without TLS"] == "WARN"
    assert statuses(out)["fluentd acknowledges"] == "OK"


def test_wrong_shared_key_fails_the_handshake(capsys, tmp_path):
    with ForwardReceiver(shared_key="k") as receiver:
        code, out = doctor(capsys, receiver.port, tmp_path, "--fluentd-shared-key", "other")
    assert code == 2
    detail = next(c["detail"] for c in out["checks"] if c["name"] == "fluentd reachable")
    assert "handshake" in detail


def test_pseudonymize_without_key_fails(capsys, tmp_path, receiver):
    code, out = doctor(capsys, receiver.port, tmp_path, "--id-tag-mode", "pseudonymize")
    assert code == 2
    assert statuses(out)["id_tag privacy"] == "FAIL"


def test_spool_depth_is_reported(capsys, tmp_path, receiver):
    spool = Spool(tmp_path / "spool", max_bytes=1 << 20).open()
    spool.append([("ocpp.heartbeat", 1_700_000_000_000_000_000, {"event_type": "heartbeat"})] * 3, fsync=True)
    spool.close()
    code, out = doctor(capsys, receiver.port, tmp_path)
    detail = next(c["detail"] for c in out["checks"] if c["name"] == "spool depth")
    assert detail.startswith("3 unacknowledged event(s)")
    assert statuses(out)["spool depth"] == "WARN"  # years old


def test_profile_is_compared(capsys, tmp_path, receiver):
    code, out = doctor(capsys, receiver.port, tmp_path, "--profile", "production")
    checks = statuses(out)
    assert checks["profile"] == "OK"
    assert checks["profile port"] == "FAIL"  # the receiver's random port vs 24224
    assert code == 2


def test_text_output(capsys, tmp_path, receiver):
    code = main(["doctor", "--host", "127.0.0.1", "--fluentd-enabled", "true", "--fluentd-host", "127.0.0.1",
                 "--fluentd-port", str(receiver.port), "--spool-dir", str(tmp_path / "spool")])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[-1] == "verdict: healthy (OK)"
    assert all(line.split()[0] in ("OK", "WARN", "FAIL") for line in lines[:-1])


def test_spool_depth_adds_up_the_workers_spools(capsys, tmp_path, receiver):
    for index, count in ((0, 2), (1, 3)):
        spool = Spool(tmp_path / "spool" / f"shard{index}-of-2", max_bytes=1 << 20).open()
        spool.append([("ocpp.heartbeat", 1_700_000_000_000_000_000, {"event_type": "heartbeat"})] * count,
                     fsync=True)
        spool.close()
    code, out = doctor(capsys, receiver.port, tmp_path, "--workers", "2", "--database", str(tmp_path / "levity.db"))
    detail = next(c["detail"] for c in out["checks"] if c["name"] == "spool depth")
    assert detail.startswith("5 unacknowledged event(s)")
    assert "workers" not in statuses(out)
    # The same files read with another worker count: the events would never be sent.
    code, out = doctor(capsys, receiver.port, tmp_path, "--workers", "3", "--database", str(tmp_path / "levity.db"))
    assert statuses(out)["workers"] == "FAIL" and code == 2


def test_warns_when_a_reachable_listener_runs_security_profile_0(capsys, tmp_path, receiver):
    code, out = doctor(capsys, receiver.port, tmp_path, "--host", "0.0.0.0")
    assert code == 1 and statuses(out)["charger authentication"] == "WARN"
    [check] = [c for c in out["checks"] if c["name"] == "charger authentication"]
    assert "LEVITY_SECURITY_PROFILE is 0" in check["detail"]
    code, out = doctor(capsys, receiver.port, tmp_path, "--host", "0.0.0.0", "--security-profile", "1")
    assert code == 0 and statuses(out)["charger authentication"] == "OK"
    code, out = doctor(capsys, receiver.port, tmp_path, "--host", "::1")
    assert code == 0 and statuses(out)["charger authentication"] == "OK"
