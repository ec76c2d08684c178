"""benchmarks/bench_durable.py on a tiny run: a row per setting, every transaction event in the
spool, and the answer waited for the loop (the durable steps run on other threads).

No timing thresholds: the benchmark prints numbers, the test only checks they are all there.
"""

import subprocess
import sys


def test_durable_benchmark_reports_every_setting(tmp_path):
    done = subprocess.run([sys.executable, "-m", "benchmarks.bench_durable", "--dir", str(tmp_path), "--calls", "6",
                           "--busy-ms", "0,1", "--chargers", "1,2"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:] if line.strip()]
    assert [(row[0], row[1]) for row in rows] == [("0", "1"), ("0", "2"), ("1", "1"), ("1", "2")]
    for busy, chargers, mean_ms, p50_ms, iterations, spooled in rows:
        assert float(mean_ms) > 0 and float(p50_ms) > 0
        assert float(iterations) >= 1  # the commit and the fsync are waited for, not done on the loop
        assert int(spooled) == 6  # every start's event is on disk in the spool
