"""The integration guide's example server, started as the guide says."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.support.forward_receiver import ForwardReceiver
from tests.support.levity_process import free_port
from tests.support.ocpp_client import raw_charge_point

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "server_with_fluentd.py"


async def test_server_with_fluentd_example_sends_events_to_fluentd(tmp_path):
    port = free_port()
    with ForwardReceiver() as receiver:
        environ = {**os.environ, "FLUENTD_ENABLED": "true", "FLUENTD_HOST": "127.0.0.1",
                   "FLUENTD_PORT": str(receiver.port), "LEVITY_PORT": str(port), "LEVITY_HOST": "127.0.0.1",
                   "LEVITY_DATABASE": str(tmp_path / "db.sqlite"), "LEVITY_SPOOL_DIR": str(tmp_path / "spool")}
        process = subprocess.Popen([sys.executable, str(EXAMPLE)], env=environ, cwd=tmp_path,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 15
            while True:
                try:
                    async with raw_charge_point(f"ws://127.0.0.1:{port}", "CP-EXAMPLE") as cp:
                        answer = await cp.call("1", "BootNotification",
                                               {"chargePointVendor": "V", "chargePointModel": "M"})
                    break
                except OSError:
                    assert time.monotonic() < deadline and process.poll() is None, "example did not start"
                    time.sleep(0.1)
            assert answer[2]["status"] == "Accepted"
            events = sorted(await receiver.wait_for_async(3), key=lambda e: e.record["event_id"])
            assert [e.record["event_type"] for e in events[:3]] == [
                "websocket_connect", "boot_notification", "websocket_disconnect"]
        finally:
            process.send_signal(signal.SIGTERM)
            output = process.communicate(timeout=20)[0]
        assert process.returncode == 0, output
