"""When the store's writes stop working and when they work again, for both engines
(levity/store.py, levity/store_pg.py): one `ocpp.store` audit event for each change
(docs/audit-events.md), so the audit stream says the database was away and for how long.

The stores call failed() on every commit their database could not take and recovered() on
every commit it took; only a change of state reaches the listener, so an outage of an hour
retried every second is two events, not thousands. The listener (set by the server) turns the
fields into an audit event; the stores know nothing about audit.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from levity.audit.events import iso_utc

log = logging.getLogger("levity.store")

Listener = Callable[[dict[str, Any]], None]


class OutageTracker:
    def __init__(self, engine: str, database: str):
        """engine: `sqlite` or `postgresql`; database: its name as logs may show it (a path, or a
        URL without its password: levity.database.redact)."""
        self.engine = engine
        self.database = database
        self.listener: Listener | None = None
        self.outages = 0  # outages begun since start (levity_store_outages on /metrics)
        self._since_ns: int | None = None
        self._since_monotonic = 0.0

    @property
    def down(self) -> bool:
        return self._since_ns is not None

    def failed(self, error: str, writes_waiting: int) -> None:
        """A commit failed; the first failure after working commits starts an outage."""
        if self._since_ns is not None:
            return
        self._since_ns = time.time_ns()
        self._since_monotonic = time.monotonic()
        self.outages += 1
        self._tell(state="down", duration_seconds=None, writes_waiting=writes_waiting, error=error)

    def recovered(self, writes_waiting: int) -> None:
        """A commit worked; ends the outage if there was one. writes_waiting: the writes that
        waited through it and this commit stored."""
        if self._since_ns is None:
            return
        duration = round(time.monotonic() - self._since_monotonic, 3)
        self._tell(state="up", duration_seconds=duration, writes_waiting=writes_waiting, error=None)
        self._since_ns = None

    def _tell(self, **fields: Any) -> None:
        if self.listener is None:
            return
        try:
            self.listener({"engine": self.engine, "database": self.database, "since": iso_utc(self._since_ns),
                           **fields})
        except Exception:  # noqa: BLE001 - reporting an outage must never break the commit path
            log.exception("database %s: could not report the store's state", self.database)
