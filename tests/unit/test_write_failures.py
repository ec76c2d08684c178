"""One error line per episode of failing audit writes, however the writes alternate
(levity/audit/write_failures.py)."""

import logging

from levity.audit import write_failures
from levity.audit.write_failures import RECOVERED_AFTER_SECONDS, WriteFailures


def test_writes_that_alternate_on_a_nearly_full_disk_log_one_episode(monkeypatch, caplog):
    clock = [100.0]
    monkeypatch.setattr(write_failures.time, "monotonic", lambda: clock[0])
    failures = WriteFailures(logging.getLogger("test"), "writing works again")
    with caplog.at_level(logging.INFO, logger="test"):
        for _ in range(10):  # a small write fits in the last block, the next one does not
            failures.failed("cannot write: %s", "No space left on device")
            clock[0] += 0.2
            failures.worked()
        assert [r.getMessage() for r in caplog.records] == ["cannot write: No space left on device"]
        clock[0] += RECOVERED_AFTER_SECONDS
        failures.worked()
        failures.failed("cannot write: %s", "No space left on device")  # a new episode
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("ERROR", "cannot write: No space left on device"), ("INFO", "writing works again"),
        ("ERROR", "cannot write: No space left on device")]
