"""One error line per episode of failing audit writes (the spool's and the file sink's).

A nearly full disk lets small writes through between failures (they land in blocks the file
already has), so "failing" and "working" can alternate from one batch to the next; logging
each change would give the operator a pair of lines per call. An episode therefore ends only
once writes have worked for RECOVERED_AFTER_SECONDS with no failure in between.
"""

from __future__ import annotations

import logging
import time

RECOVERED_AFTER_SECONDS = 5.0


class WriteFailures:
    def __init__(self, log: logging.Logger, recovered_message: str):
        self._log = log
        self._recovered_message = recovered_message
        self.failing = False
        self._last_failure = 0.0

    def failed(self, message: str, *args) -> None:
        """A write failed: the first failure of an episode is logged (message % args)."""
        self._last_failure = time.monotonic()
        if not self.failing:
            self.failing = True
            self._log.error(message, *args)

    def worked(self) -> None:
        """A write worked: ends the episode once nothing failed for RECOVERED_AFTER_SECONDS."""
        if self.failing and time.monotonic() - self._last_failure >= RECOVERED_AFTER_SECONDS:
            self.failing = False
            self._log.info(self._recovered_message)
