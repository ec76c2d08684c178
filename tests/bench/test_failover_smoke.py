"""The failover benchmark on a tiny configuration: it completes and reports every number.

No timing thresholds: the benchmark prints numbers, the test only checks they are there."""

import json

from benchmarks import failover


def test_failover_benchmark_reports_each_phase_and_the_switch_times(tmp_path, capsys):
    out = tmp_path / "failover.json"
    assert failover.main(["--chargers", "10", "--phase", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["chargers"] == 10
    assert set(result["phases"]) == {"before", "during", "after"}
    for phase in result["phases"].values():
        assert phase["calls_per_second"] > 0 and phase["audit_acknowledged_per_second"] > 0
    # The standby acknowledged after the primary died. (The primary's return can take longer than
    # this short phase: its backoff, up to 5 s, plus the probe interval; null then.)
    assert result["death_to_standby_first_ack_seconds"] is not None
    assert "restart_to_primary_first_ack_seconds" in result
    assert result["errors"] == 0 and result["timeouts"] == 0
    assert json.loads(capsys.readouterr().out) == result
