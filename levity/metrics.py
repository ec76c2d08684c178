"""Prometheus metrics, with `prometheus_client`.

One process (`LEVITY_WORKERS=1`): the metrics live in this process and `GET /metrics` renders
REGISTRY, with the process' own CPU, memory and file descriptor metrics.

Several workers: the library's multiprocess mode. The supervisor creates a private directory
and starts each worker with PROMETHEUS_MULTIPROC_DIR pointing to it; every counter and
histogram a worker touches is a memory-mapped file there (one per process and metric type).
The supervisor's `/metrics` merges the files (MultiProcessCollector), so the sums need no
answer from the workers, and the counts of a worker that died, even by SIGKILL, stay in the
sums after its restart: a rate() over them never sees a false reset. Gauges of a dead worker
are removed with mark_process_dead ("live" gauges). Chosen over summing the workers' own
expositions in the supervisor because that needs hand-written merging of histograms and
carrying a dead worker's last counts over its restart, which the library already does.

Gauges that describe state (connected charge points, open transactions, the audit spool) are
set from that state when a scrape asks for them (`set_state`); counts the audit sink keeps as
plain totals are turned into counter increments there too (`CounterFromTotal`). Calls are
counted where they are answered, through children bound once per action (`record_call`).
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import struct
import tempfile
import threading
from typing import Callable, Iterable

from prometheus_client import (CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import REGISTRY as _DEFAULT_REGISTRY

from levity import __version__

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus version scrapes
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER_ACTION = "other"  # calls whose action Levity does not know share one label value
CALL_OUTCOMES = ("result", "call_error")
AUDIT_STATES = ("emitted", "acknowledged", "dropped", "replayed")
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# The default registry already holds the process, platform and GC collectors: one process
# renders it as is. (In multiprocess mode nothing renders it; the supervisor has its own.)
REGISTRY = _DEFAULT_REGISTRY
disable_created_metrics()  # no *_created series: the multiprocess mode has none either

CALLS = Counter("levity_calls", "Calls from charge points answered, by action and outcome "
                "(result: CALLRESULT, call_error: CALLERROR).", ["action", "outcome"], registry=REGISTRY)
CALL_DURATION = Histogram("levity_call_duration_seconds", "Time from receiving a charge point's call to "
                          "sending its answer.", ["action"], buckets=DURATION_BUCKETS, registry=REGISTRY)
COMMANDS = Counter("levity_commands", "Calls Levity sent to charge points (operator commands), by action "
                   "and outcome.", ["action", "outcome"], registry=REGISTRY)
HANDSHAKES_REFUSED = Counter("levity_handshakes_refused", "WebSocket handshakes refused, by HTTP status.",
                             ["status"], registry=REGISTRY)
CALLS_THROTTLED = Counter("levity_calls_throttled", "Calls delayed because a charge point exceeded "
                          "LEVITY_MAX_CALLS_PER_SECOND.", registry=REGISTRY)
ENERGY_DELIVERED = Counter("levity_energy_delivered_wh", "Energy of stopped transactions (meterStop - "
                           "meterStart), in Wh.", registry=REGISTRY)
AUDIT_EVENTS = Counter("levity_audit_events", "Audit events by state: emitted by Levity, acknowledged by "
                       "Fluentd, dropped (lost), replayed (sent again after a failure or restart).",
                       ["state"], registry=REGISTRY)
ANOMALIES = Counter("levity_anomalies", "ocpp.anomaly events sent (repeated starts and stops, abandoned "
                    "transactions...), by kind.", ["kind"], registry=REGISTRY)
FLUENTD_SEND_FAILURES = Counter("levity_fluentd_send_failures", "Batches of audit events Fluentd did not "
                                "acknowledge (sent again later).", registry=REGISTRY)
PROXY_HEADERS_REFUSED = Counter("levity_proxy_headers_refused", "Connections dropped for their PROXY protocol "
                                "header (LEVITY_PROXY_PROTOCOL), by reason: missing, malformed, truncated, "
                                "untrusted (from an address not in LEVITY_TRUSTED_PROXIES).",
                                ["reason"], registry=REGISTRY)
# "livesum": the sum over running workers; "livemin": 1 only while every worker is connected.
CONNECTED = Gauge("levity_connected_charge_points", "Charge points connected, by OCPP version.",
                  ["ocpp_version"], multiprocess_mode="livesum", registry=REGISTRY)
TRANSACTIONS_ACTIVE = Gauge("levity_transactions_active", "Transactions started and not stopped.",
                            multiprocess_mode="livesum", registry=REGISTRY)
AUDIT_UNACKNOWLEDGED = Gauge("levity_audit_unacknowledged_events", "Audit events not yet acknowledged by "
                             "Fluentd (spooled or about to be).", multiprocess_mode="livesum", registry=REGISTRY)
AUDIT_SPOOL_BYTES = Gauge("levity_audit_spool_bytes", "Bytes of unacknowledged audit events in the spool.",
                          multiprocess_mode="livesum", registry=REGISTRY)
AUDIT_SPOOL_LIMIT = Gauge("levity_audit_spool_limit_bytes", "The spool's bound (LEVITY_SPOOL_MAX_BYTES).",
                          multiprocess_mode="livesum", registry=REGISTRY)
FLUENTD_UP = Gauge("levity_fluentd_up", "1 while Levity (every worker) is connected to this Fluentd server.",
                   ["server"], multiprocess_mode="livemin", registry=REGISTRY)


# Hot path: children bound once ---------------------------------------------------------------

_call_children: dict[str, tuple] = {}
_known_actions: frozenset[str] = frozenset()
_command_children: dict[tuple[str, str], object] = {}
_refused_children: dict[int, object] = {}


def set_known_actions(actions: Iterable[str]) -> None:
    """The actions that get their own label value; any other is counted as OTHER_ACTION, so a
    charger sending made-up action names cannot create new time series."""
    global _known_actions
    _known_actions = frozenset(actions)


def _call_child(action: str) -> tuple:
    label = action if action in _known_actions else OTHER_ACTION
    children = _call_children.get(label)
    if children is None:
        children = (CALLS.labels(label, "result"), CALLS.labels(label, "call_error"), CALL_DURATION.labels(label))
        _call_children[label] = children
    return children


def record_call(action: str, call_error: bool, seconds: float) -> None:
    """One call from a charge point answered (CALLRESULT, or CALLERROR when call_error)."""
    children = _call_children.get(action) or _call_child(action)
    children[1 if call_error else 0].inc()
    children[2].observe(seconds)


def record_command(action: str, outcome: str) -> None:
    """One call Levity sent to a charge point, e.g. record_command("RemoteStartTransaction",
    "Accepted"); outcome is the answer's status, "call_error" or "timeout"."""
    key = (action, outcome)
    child = _command_children.get(key)
    if child is None:
        child = _command_children[key] = COMMANDS.labels(action, outcome)
    child.inc()


def record_refused(status: int) -> None:
    child = _refused_children.get(status)
    if child is None:
        child = _refused_children[status] = HANDSHAKES_REFUSED.labels(str(status))
    child.inc()


def record_proxy_refused(reason: str) -> None:
    PROXY_HEADERS_REFUSED.labels(reason).inc()  # rare: no child cache needed


def record_energy(wh: int | float) -> None:
    if wh > 0:  # a meter that went backwards is the event's to report, not a counter's
        ENERGY_DELIVERED.inc(wh)


# State read at scrape time --------------------------------------------------------------------

class CounterFromTotal:
    """Increments a counter by what a running total (kept elsewhere as a plain int) grew by."""

    def __init__(self, counter):
        self.counter = counter
        self.seen = 0

    def update(self, total: int | float) -> None:
        if total > self.seen:
            self.counter.inc(total - self.seen)
        self.seen = total


_audit_totals = {state: CounterFromTotal(AUDIT_EVENTS.labels(state)) for state in AUDIT_STATES}
_send_failures = CounterFromTotal(FLUENTD_SEND_FAILURES)
_throttled = CounterFromTotal(CALLS_THROTTLED)
_versions_seen: set[str] = {"1.6"}
_servers_seen: set[str] = set()


def set_state(*, connected_by_version: dict[str, int], transactions_active: int | None,
              audit_stats: dict[str, int], fluentd_servers: dict[str, bool], spool_limit_bytes: int | None,
              calls_throttled: int) -> None:
    """Bring the state gauges and total-derived counters up to date (before a scrape)."""
    _versions_seen.update(connected_by_version)
    for version in _versions_seen:
        CONNECTED.labels(version).set(connected_by_version.get(version, 0))
    if transactions_active is not None:
        TRANSACTIONS_ACTIVE.set(transactions_active)
    for state, total in _audit_totals.items():
        total.update(audit_stats.get(state, 0))
    _send_failures.update(audit_stats.get("send_failures", 0))
    _throttled.update(calls_throttled)
    AUDIT_UNACKNOWLEDGED.set(audit_stats.get("spooled", 0))
    AUDIT_SPOOL_BYTES.set(audit_stats.get("spooled_bytes", 0))
    if spool_limit_bytes is not None:
        AUDIT_SPOOL_LIMIT.set(spool_limit_bytes)
    _servers_seen.update(fluentd_servers)
    for server in _servers_seen:
        FLUENTD_UP.labels(server).set(1 if fluentd_servers.get(server) else 0)


_anomaly_totals: dict[str, CounterFromTotal] = {}
_command_totals: dict[tuple[str, str], CounterFromTotal] = {}


def set_anomalies(counts: dict[str, int]) -> None:
    """Anomaly events by kind, from the running totals the event factory keeps."""
    for kind, total in counts.items():
        if kind not in _anomaly_totals:
            _anomaly_totals[kind] = CounterFromTotal(ANOMALIES.labels(kind))
        _anomaly_totals[kind].update(total)


def set_commands(counts: dict[tuple[str, str], int]) -> None:
    """Operator commands by (action, outcome), from the running totals the operator API keeps
    (record_command is the direct way for code that keeps none)."""
    for key, total in counts.items():
        if key not in _command_totals:
            _command_totals[key] = CounterFromTotal(COMMANDS.labels(*key))
        _command_totals[key].update(total)


# Values other modules keep as plain numbers and publish as `name{labels} value` lines (limits
# and queues of the connections, authentication limits, per-Fluentd-server delivery): each name
# becomes a gauge of its own, summed over the workers. Names this module defines are skipped.
_PLAIN_LINE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_PLAIN_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
_plain_gauges: dict[str, Gauge | None] = {"levity_fluentd_up": None}


def set_plain_lines(lines: Iterable[str]) -> None:
    for line in lines:
        match = _PLAIN_LINE.fullmatch(line.strip())
        if not match:
            continue
        name, label_text, value = match.groups()
        labels = dict(_PLAIN_LABEL.findall(label_text or ""))
        if name not in _plain_gauges:
            try:
                _plain_gauges[name] = Gauge(name, "Reported by Levity as a plain value.", sorted(labels),
                                            multiprocess_mode="livesum", registry=REGISTRY)
            except ValueError:  # a name this module already defines
                _plain_gauges[name] = None
        gauge = _plain_gauges[name]
        if gauge is None:
            continue
        try:
            (gauge.labels(**labels) if labels else gauge).set(float(value))
        except ValueError:  # labels other than the first line's, or not a number
            log.debug("metrics: ignoring the line %r", line)


# Exposition -----------------------------------------------------------------------------------

class LevityCollector:
    """levity_build_info, and the worker gauges (1/1/0 for one process, the supervisor's own
    numbers with several)."""

    def __init__(self, workers: Callable[[], tuple[int, int, int]]):
        self.workers = workers

    def collect(self):
        info = InfoMetricFamily("levity_build", "Levity's version.")
        info.add_metric([], {"version": __version__})
        yield info
        configured, up, restarts = self.workers()
        yield GaugeMetricFamily("levity_workers", "Worker processes configured (LEVITY_WORKERS).", configured)
        yield GaugeMetricFamily("levity_workers_up", "Worker processes running.", up)
        yield CounterMetricFamily("levity_worker_restarts", "Worker processes restarted after they died.",
                                  restarts)


REGISTRY.register(LevityCollector(lambda: (1, 1, 0)))


def render(registry: CollectorRegistry = REGISTRY) -> bytes:
    return generate_latest(registry)


class WorkerFilesCollector(MultiProcessCollector):
    """MultiProcessCollector that skips a file it cannot read (one a worker is creating at this
    instant, or one cut short) instead of failing the whole scrape; the next scrape reads it."""

    def collect(self):
        readable = []
        for path in glob.glob(os.path.join(self._path, "*.db")):
            try:
                for _ in MmapedDict.read_all_values_from_file(path):
                    pass
            except FileNotFoundError:  # a dead worker's live gauges, removed just now
                continue
            except (OSError, struct.error, RuntimeError, UnicodeDecodeError, ValueError) as exc:
                log.warning("metrics: skipping unreadable file %s: %s", os.path.basename(path), exc)
                continue
            readable.append(path)
        return self.merge(readable, accumulate=True)


RETIRED = "retired"  # in place of a pid: the counts of every worker that died, in one file per type


class WorkerMetrics:
    """The supervisor's side of multiprocess mode: the private directory and its registry."""

    def __init__(self, workers: Callable[[], tuple[int, int, int]]):
        self.path = tempfile.mkdtemp(prefix="levity-metrics-")  # mode 0700: ours alone
        self.registry = CollectorRegistry()
        WorkerFilesCollector(self.registry, path=self.path)
        self.registry.register(LevityCollector(workers))
        self._files_lock = threading.Lock()  # a scrape (executor thread) never sees a half-retired worker

    def worker_environment(self) -> dict[str, str]:
        return {**os.environ, MULTIPROC_ENV: self.path}

    def worker_died(self, pid: int) -> None:
        """Its gauges leave the sums; its counters stay. They are added into one file per type
        (`counter_retired.db`, ...), so a worker restarted again and again does not leave a file
        per life for every scrape to read."""
        with self._files_lock:
            mark_process_dead(pid, self.path)
            for kind in ("counter", "histogram"):
                try:
                    self._retire(kind, pid)
                except Exception:  # noqa: BLE001 - its file then stays, and is still summed
                    log.exception("metrics: could not fold the %s file of worker process %d", kind, pid)

    def _retire(self, kind: str, pid: int) -> None:
        dead = os.path.join(self.path, f"{kind}_{pid}.db")
        if not os.path.exists(dead):
            return
        retired = os.path.join(self.path, f"{kind}_{RETIRED}.db")
        merged = MultiProcessCollector.merge([p for p in (retired, dead) if os.path.exists(p)], accumulate=False)
        staging = os.path.join(self.path, f"{kind}_{RETIRED}.new")  # not *.db: no scrape reads it
        if os.path.exists(staging):  # left by a supervisor that died while writing it
            os.unlink(staging)
        values = MmapedDict(staging)
        try:
            for metric in merged:
                for sample in metric.samples:
                    key = mmap_key(metric.name, sample.name, list(sample.labels), list(sample.labels.values()),
                                   metric.documentation)
                    values.write_value(key, sample.value, 0.0)
        finally:
            values.close()
        os.replace(staging, retired)
        os.unlink(dead)

    def render(self) -> bytes:
        with self._files_lock:
            return generate_latest(self.registry)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
