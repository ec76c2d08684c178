"""benchmarks/versions.py end to end on a tiny run: one line per run, a summary per version,
every call answered, and no session taken for a repeat (each one is a new transaction).

No timing thresholds: the benchmark prints numbers, the test only checks they are all there.
"""

import json
import subprocess
import sys


def test_versions_benchmark_reports_both_versions():
    done = subprocess.run([sys.executable, "-m", "benchmarks.versions", "--chargers", "2", "--sessions", "2",
                           "--rounds", "2"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    runs = [line for line in lines if "ocpp_version" in line]
    # Interleaved: 1.6 first in the first round, 2.0.1 first in the second.
    assert [line["ocpp_version"] for line in runs] == ["1.6", "2.0.1", "2.0.1", "1.6"]
    for line in runs:
        assert line["calls"] == 2 * 2 * 9  # chargers x sessions x calls per session, all answered
        assert line["server_cpu_s"] >= 0 and line["server_cpu_us_per_call"] >= 0
    summaries = {line["summary"]: line for line in lines if "summary" in line}
    assert set(summaries) == {"1.6", "2.0.1"} and all(s["runs"] == 2 for s in summaries.values())
    # Every session started and stopped a transaction of its own: no repeat, no anomaly.
    assert lines[-1] == {"anomalies": 0}
