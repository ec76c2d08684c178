"""Which Fluentd server gets the events (FLUENTD_SERVERS): order, backoff, probing, counters.

The delivery sender asks this pool for a connection and reports what happened to each batch;
the pool decides. Rules (the audit event contract):

- Servers are tried in order of preference; the first one that connects (TLS and shared-key
  handshake included) gets the events.
- A server that refuses, closes, or does not acknowledge within FLUENTD_TIMEOUT is down: it is
  not tried again before its own backoff (doubling up to a cap) has passed, so the next server
  takes over at once. What the failed server was not seen to acknowledge is re-sent from the
  spool to the next one (the sender's cursor only moves on an ack).
- While a less preferred server has the events, the more preferred ones are probed every
  probe_interval (a connection with the handshake, in the background); the first that answers
  gets the events again, between two batches, so nothing is in flight during the switch.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field

from levity.audit.forward import Endpoint, ForwardConnection, ForwardError

log = logging.getLogger(__name__)

PROBE_INTERVAL = 2.0


@dataclass
class ServerState:
    endpoint: Endpoint
    backoff: float
    up: bool = False  # the last contact worked (connect, handshake, ack); False after a failure
    acknowledged: int = 0  # events this server acknowledged
    failures: int = 0  # connects and batches that failed
    failovers_away: int = 0  # times this server failed while it had the events
    last_error: str | None = None
    retry_at: float = field(default=0.0)


class ServerPool:
    def __init__(self, endpoints: list[Endpoint], *, backoff_initial: float, backoff_max: float,
                 probe_interval: float = PROBE_INTERVAL, clock=time.monotonic):
        self.backoff_initial, self.backoff_max = backoff_initial, backoff_max
        self.probe_interval = probe_interval
        self.servers = [ServerState(e, backoff_initial) for e in endpoints]
        self._clock = clock
        self._next_probe = 0.0
        self.active: int | None = None  # the server that has the events (set by the sender)

    def describe(self) -> str:
        return ", ".join(s.endpoint.describe() for s in self.servers)

    async def connect(self, below: int | None = None) -> tuple[int, ForwardConnection] | None:
        """A connection to the most preferred server that is not in its backoff (only servers
        before index `below` when given), or None when none of them answers."""
        for index, server in enumerate(self.servers[:below]):
            if server.retry_at > self._clock():
                continue
            try:
                conn = await ForwardConnection.open(server.endpoint)
            except ForwardError as exc:
                self.failed(index, exc)
                continue
            server.up = True
            return index, conn
        return None

    def failed(self, index: int, exc: Exception) -> None:
        server = self.servers[index]
        if index == self.active:
            server.failovers_away += 1
            self.active = None
        server.up = False
        server.failures += 1
        server.last_error = str(exc)
        server.retry_at = self._clock() + server.backoff * random.uniform(0.8, 1.2)
        server.backoff = min(server.backoff * 2, self.backoff_max)

    def acknowledged(self, index: int, count: int) -> None:
        server = self.servers[index]
        server.acknowledged += count
        server.up = True
        server.last_error = None
        server.backoff = self.backoff_initial

    def probe_due(self, active: int) -> bool:
        """Time to try the servers preferred to the active one again?"""
        now = self._clock()
        if active == 0 or now < self._next_probe:
            return False
        self._next_probe = now + self.probe_interval
        return any(s.retry_at <= now for s in self.servers[:active])

    def seconds_until_retry(self) -> float:
        """How long until some server may be tried again (all are in their backoff)."""
        return max(0.01, min(s.retry_at for s in self.servers) - self._clock())

    def errors(self) -> str:
        return "; ".join(f"{s.endpoint.label}: {s.last_error}" for s in self.servers if s.last_error)

    def metric_lines(self) -> list[str]:
        """Per-server lines for the metrics text (Prometheus exposition format)."""
        lines = []
        for i, s in enumerate(self.servers):
            label = f'{{server="{s.endpoint.label}"}}'
            lines += [f"levity_fluentd_up{label} {int(s.up)}",
                      f"levity_fluentd_active{label} {int(i == self.active)}",
                      f"levity_fluentd_acknowledged_events{label} {s.acknowledged}",
                      f"levity_fluentd_failures{label} {s.failures}",
                      f"levity_fluentd_failovers_away{label} {s.failovers_away}"]
        return lines
