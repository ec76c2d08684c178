"""A process answered for durable events while Fluentd was down, then was SIGKILLed: the next
process delivers every one of them."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.forward_receiver import ForwardReceiver

SCRIPT = Path(__file__).with_name("emitter_process.py")
ROOT = Path(__file__).resolve().parents[2]


def run(mode, spool, port, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(SCRIPT), mode, str(spool), str(port)], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_sigkill_then_restart_delivers_every_answered_durable_event(tmp_path):
    spool = tmp_path / "spool"
    with ForwardReceiver() as receiver:
        receiver.refuse = True
        emitter = run("emit", spool, receiver.port)
        answered = []
        try:
            for line in emitter.stdout:
                answered.append(line.strip())
                if len(answered) >= 500:
                    break
        finally:
            emitter.send_signal(signal.SIGKILL)  # mid-stream: more events are being written
            emitter.wait(10)
        assert len(answered) == 500, emitter.stderr.read()
        assert receiver.events == []

        receiver.refuse = False
        deliverer = run("deliver", spool, receiver.port)
        out, err = deliverer.communicate(timeout=60)
        assert deliverer.returncode == 0, err
        received = {ev.record["event_id"] for ev in receiver.events}
        assert set(answered) <= received
        durable = [ev for ev in receiver.events if ev.record["event_type"] == "transaction_start"]
        assert {ev.record["event_id"] for ev in durable} >= set(answered)
