"""The supervisor's side of the multiprocess metrics (levity.metrics.WorkerMetrics) with real
worker processes writing their files: sums over live and dead workers, gauges of dead ones
gone, one file per type however many workers died, the directory removed at the end."""

import subprocess
import sys
from pathlib import Path

from levity.metrics import WorkerMetrics
from tests.support.levity_process import parse_metrics

WORKER = """
import sys
from levity import metrics
metrics.set_known_actions(["Heartbeat"])
for _ in range(int(sys.argv[1])):
    metrics.record_call("Heartbeat", False, 0.01)
metrics.record_call("Nope", True, 2.0)
metrics.record_refused(404)
metrics.set_state(connected_by_version={"1.6": 3}, transactions_active=1, audit_stats={"emitted": 5},
                  fluentd_servers={"tcp://f:24224": True}, spool_limit_bytes=100, calls_throttled=0)
print("ready", flush=True)
sys.stdin.read()  # a live worker until its stdin closes
"""


def start_worker(files: WorkerMetrics, calls: int) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", WORKER, str(calls)], env=files.worker_environment(),
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "ready\n"
    return process


def end(process: subprocess.Popen) -> int:
    process.stdin.close()
    process.wait(10)
    return process.pid


def test_dead_workers_counts_stay_and_fold_into_one_file_per_type():
    files = WorkerMetrics(lambda: (2, 1, 4))
    directory = Path(files.path)
    try:
        for calls in (1, 2, 3, 4):  # four lives of one worker, each dying
            files.worker_died(end(start_worker(files, calls)))
        assert sorted(p.name for p in directory.iterdir()) == ["counter_retired.db", "histogram_retired.db"]
        live = start_worker(files, 10)

        metrics = parse_metrics(files.render().decode())
        assert metrics['levity_calls_total{action="Heartbeat",outcome="result"}'] == 1 + 2 + 3 + 4 + 10
        assert metrics['levity_calls_total{action="other",outcome="call_error"}'] == 5
        assert metrics['levity_call_duration_seconds_count{action="Heartbeat"}'] == 20
        assert metrics['levity_call_duration_seconds_bucket{action="Heartbeat",le="0.01"}'] == 20
        assert metrics['levity_call_duration_seconds_bucket{action="other",le="1.0"}'] == 0
        assert metrics['levity_call_duration_seconds_bucket{action="other",le="2.5"}'] == 5
        assert abs(metrics['levity_call_duration_seconds_sum{action="Heartbeat"}'] - 0.2) < 1e-9
        assert metrics['levity_handshakes_refused_total{status="404"}'] == 5
        assert metrics['levity_audit_events_total{state="emitted"}'] == 25
        # Gauges: the live worker only.
        assert metrics['levity_connected_charge_points{ocpp_version="1.6"}'] == 3
        assert metrics['levity_fluentd_up{server="tcp://f:24224"}'] == 1
        assert metrics["levity_workers_up"] == 1 and metrics["levity_worker_restarts_total"] == 4

        files.worker_died(end(live))
        after = parse_metrics(files.render().decode())
        assert after['levity_calls_total{action="Heartbeat",outcome="result"}'] == 20
        assert 'levity_connected_charge_points{ocpp_version="1.6"}' not in after
    finally:
        files.close()
    assert not directory.exists()


def test_a_file_that_cannot_be_folded_is_still_summed(caplog):
    files = WorkerMetrics(lambda: (1, 1, 0))
    try:
        pid = end(start_worker(files, 3))
        (Path(files.path) / "counter_retired.db").write_bytes(b"\x00")  # unreadable: the fold fails
        files.worker_died(pid)
        assert (Path(files.path) / f"counter_{pid}.db").exists()
        metrics = parse_metrics(files.render().decode())
        assert metrics['levity_calls_total{action="Heartbeat",outcome="result"}'] == 3
        assert "could not fold the counter file" in caplog.text
    finally:
        files.close()
