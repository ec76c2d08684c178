"""What the metrics cost per answered call: `python -m benchmarks.metrics_cost`.

Times levity.metrics.record_call (one counter increment and one histogram observation on
children bound once) in one process, and in the multiprocess mode the workers use (values in
memory-mapped files), next to a bare function call for scale. Prints nanoseconds per call.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import timeit

N = 200_000


def measure() -> dict[str, float]:
    from levity import metrics

    metrics.set_known_actions(["Heartbeat"])
    record = metrics.record_call
    record("Heartbeat", False, 0.001)  # bind the children first
    results = {
        "bare function call": min(timeit.repeat(lambda: None, number=N, repeat=5)) / N,
        "record_call": min(timeit.repeat(lambda: record("Heartbeat", False, 0.0012), number=N, repeat=5)) / N,
        "record_call, unknown action": min(timeit.repeat(lambda: record("Nope", True, 0.0012), number=N,
                                                         repeat=5)) / N,
    }
    return {name: seconds * 1e9 for name, seconds in results.items()}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        for name, ns in measure().items():
            print(f"  {name:32} {ns:7.0f} ns")
        return
    with tempfile.TemporaryDirectory() as directory:
        for mode, env in (("one process", {}), ("multiprocess mode (workers)", {"PROMETHEUS_MULTIPROC_DIR": directory})):
            print(mode)
            subprocess.run([sys.executable, "-m", "benchmarks.metrics_cost", "--child"], check=True,
                           env={**os.environ, **env})


if __name__ == "__main__":
    main()
