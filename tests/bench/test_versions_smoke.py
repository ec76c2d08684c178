"""benchmarks/versions.py end to end on a tiny run: one line per version, every call answered.

No timing thresholds: the benchmark prints numbers, the test only checks they are all there.
"""

import json
import subprocess
import sys


def test_versions_benchmark_reports_both_versions():
    done = subprocess.run([sys.executable, "-m", "benchmarks.versions", "--chargers", "2", "--sessions", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert [line["ocpp_version"] for line in lines] == ["1.6", "2.0.1"]
    for line in lines:
        assert line["calls"] == 2 * 2 * 9  # chargers x sessions x calls per session, all answered
        assert line["server_cpu_s"] >= 0 and line["server_cpu_us_per_call"] >= 0
