"""GET /metrics after real sessions, with one and two workers: parsed with prometheus_client's
own parser and compared with what the chargers sent; scrapes while a worker restarts, while
Levity shuts down, and next to a metrics file nobody can read."""

import asyncio
import os
import signal
import threading
import urllib.error
import urllib.request

import pytest
import websockets

from levity.workers import worker_index
from tests.integration.test_lossless_delivery import fluentd_env
from tests.integration.test_workers import eventually, worker_pids
from tests.support.forward_receiver import ForwardReceiver
from tests.support.levity_process import parse_metrics
from tests.support.ocpp_client import raw_charge_point

BOOT = {"chargePointVendor": "V", "chargePointModel": "M"}
IDS = [f"CP-M{n:02d}" for n in range(8)]  # spread over both workers (checked below)


def calls(metrics, action, outcome="result"):
    return metrics.get(f'levity_calls_total{{action="{action}",outcome="{outcome}"}}', 0)


def audit(metrics, state):
    return metrics.get(f'levity_audit_events_total{{state="{state}"}}', 0)


async def session(url: str, charge_point_id: str, meter_start: int, energy: int) -> None:
    """Boot, 2 heartbeats, a transaction with one meter value, one call Levity does not know and
    one StatusNotification with a status OCPP does not have (both answered with CALLERROR)."""
    async with raw_charge_point(url, charge_point_id) as cp:
        assert (await cp.call("b", "BootNotification", BOOT))[0] == 3
        for n in range(2):
            assert (await cp.call(f"h{n}", "Heartbeat", {}))[0] == 3
        start = await cp.call("s", "StartTransaction", {"connectorId": 1, "idTag": "TAG", "meterStart": meter_start,
                                                        "timestamp": "2024-01-15T10:10:00Z"})
        transaction_id = start[2]["transactionId"]
        assert (await cp.call("m", "MeterValues", {"connectorId": 1, "transactionId": transaction_id, "meterValue": [
            {"timestamp": "2024-01-15T10:20:00Z", "sampledValue": [{"value": str(meter_start + 1)}]}]}))[0] == 3
        assert (await cp.call("e", "StopTransaction", {"transactionId": transaction_id,
                                                       "meterStop": meter_start + energy,
                                                       "timestamp": "2024-01-15T11:00:00Z"}))[0] == 3
        assert (await cp.call("x", "MadeUpAction", {}))[0] == 4
        assert (await cp.call("z", "StatusNotification", {"connectorId": 1, "errorCode": "NoError",
                                                          "status": "Sleeping"}))[0] == 4


async def open_transaction(url: str, charge_point_id: str) -> None:
    async with raw_charge_point(url, charge_point_id) as cp:
        await cp.call("s", "StartTransaction", {"connectorId": 2, "idTag": "TAG", "meterStart": 0,
                                                "timestamp": "2024-01-15T10:10:00Z"})


async def refused_handshake(url: str) -> None:
    with pytest.raises(websockets.InvalidStatus):
        async with raw_charge_point(url, "bad!id"):
            pass


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_metrics_count_what_the_chargers_sent(levity, workers):
    receiver = ForwardReceiver().start()
    try:
        server = levity({"LEVITY_WORKERS": workers, **fluentd_env(receiver.port)})
        assert {worker_index(cp, 2) for cp in IDS} == {0, 1}
        await asyncio.gather(*(session(server.url, cp, 1000 * n, 10 + n) for n, cp in enumerate(IDS)))
        await open_transaction(server.url, IDS[0])
        await refused_handshake(server.url)
        # Per session: connect, boot, 2 heartbeats, start, meter values, stop, 2 call errors,
        # disconnect; the open transaction: connect, start, disconnect.
        events = 10 * len(IDS) + 3
        receiver.wait_for(events)
        await eventually(lambda: audit(server.metrics(), "acknowledged") == events, 10, "not acknowledged", server)
        async with raw_charge_point(server.url, IDS[1]):  # one connected while scraped
            metrics = server.metrics()
    finally:
        receiver.stop()

    n = len(IDS)
    assert calls(metrics, "BootNotification") == n
    assert calls(metrics, "Heartbeat") == 2 * n
    assert calls(metrics, "StartTransaction") == n + 1
    assert calls(metrics, "MeterValues") == n
    assert calls(metrics, "StopTransaction") == n
    assert calls(metrics, "other", "call_error") == n, "an unknown action is counted without its own label"
    assert calls(metrics, "StatusNotification", "call_error") == n
    assert not any("MadeUpAction" in key for key in metrics)
    assert metrics['levity_call_duration_seconds_count{action="Heartbeat"}'] == 2 * n
    assert metrics['levity_call_duration_seconds_bucket{action="Heartbeat",le="+Inf"}'] == 2 * n
    assert metrics['levity_call_duration_seconds_sum{action="Heartbeat"}'] > 0
    assert metrics["levity_energy_delivered_wh_total"] == sum(10 + k for k in range(n))
    assert metrics["levity_transactions_active"] == 1
    assert metrics['levity_connected_charge_points{ocpp_version="1.6"}'] == 1
    assert metrics['levity_handshakes_refused_total{status="404"}'] == 1
    assert audit(metrics, "emitted") == events + 1  # and the connect of the charger connected now
    assert audit(metrics, "acknowledged") == events
    assert audit(metrics, "dropped") == 0
    assert metrics["levity_audit_unacknowledged_events"] <= 1
    assert metrics[f'levity_fluentd_up{{server="127.0.0.1:{receiver.port}"}}'] == 1
    assert metrics["levity_workers"] == metrics["levity_workers_up"] == int(workers)
    assert metrics["levity_worker_restarts_total"] == 0
    assert metrics["levity_audit_spool_limit_bytes"] > 0
    assert metrics['levity_build_info{version="0.1.0"}'] == 1
    assert not any(cp in key for key in metrics for cp in IDS), "no charge point id as a label"


def scrape(port: int) -> dict[str, float] | None:
    """One scrape: the parsed metrics, or None when nobody listens (any other answer fails)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            assert response.status == 200
            return parse_metrics(response.read().decode())
    except urllib.error.HTTPError:  # an answer, and not a 200: the test fails on it
        raise
    except (urllib.error.URLError, ConnectionError):
        return None


class Scraper:
    """Scrapes /metrics in a loop on a thread, as Prometheus would, keeping every answer."""

    def __init__(self, port: int):
        self.port = port
        self.results: list[dict[str, float] | None] = []
        self.errors: list[BaseException] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.results.append(scrape(self.port))
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                self.errors.append(exc)
            self._stop.wait(0.02)

    def __enter__(self) -> "Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


async def test_a_killed_workers_counts_stay_in_the_sums_across_its_restart(levity):
    server = levity({"LEVITY_WORKERS": "2"})
    victims = [cp for cp in IDS if worker_index(cp, 2) == 1]
    for cp in victims:
        async with raw_charge_point(server.url, cp) as client:
            for n in range(3):
                assert (await client.call(f"h{n}", "Heartbeat", {}))[0] == 3
    before = server.metrics()
    assert calls(before, "Heartbeat") == 3 * len(victims)
    with Scraper(server.port) as scraper:
        os.kill(worker_pids(server)[1], signal.SIGKILL)  # workers start in index order
        await eventually(lambda: server.metrics()["levity_worker_restarts_total"] == 1
                         and server.metrics()["levity_workers_up"] == 2, 10, "worker not restarted", server)
    assert not scraper.errors, scraper.errors
    answered = [m for m in scraper.results if m is not None]
    assert answered, "the supervisor kept answering while its worker was down"
    for metrics in answered:  # no false counter reset in any scrape
        assert calls(metrics, "Heartbeat") == 3 * len(victims)
        assert audit(metrics, "emitted") >= audit(before, "emitted")
    async with raw_charge_point(server.url, victims[0]) as client:  # the restarted worker counts on
        assert (await client.call("h", "Heartbeat", {}))[0] == 3
    after = server.metrics()
    assert calls(after, "Heartbeat") == 3 * len(victims) + 1
    assert after['levity_connected_charge_points{ocpp_version="1.6"}'] == 0


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_scrapes_during_shutdown_answer_whole_or_not_at_all(levity, workers):
    server = levity({"LEVITY_WORKERS": workers})
    async with raw_charge_point(server.url, IDS[0]) as client:
        assert (await client.call("b", "BootNotification", BOOT))[0] == 3
    with Scraper(server.port) as scraper:
        await eventually(lambda: len(scraper.results) >= 3, 10, "no scrapes", server)
        server.process.send_signal(signal.SIGTERM)
        await asyncio.get_running_loop().run_in_executor(None, server.process.wait, 30)
    assert server.process.returncode == 0
    assert not scraper.errors, scraper.errors
    answered = [m for m in scraper.results if m is not None]
    assert answered and all(calls(m, "BootNotification") == 1 for m in answered)
    assert "Traceback" not in server.log()


async def test_an_unreadable_metrics_file_does_not_break_the_sums(levity):
    server = levity({"LEVITY_WORKERS": "2"})  # TMPDIR is its work directory
    [directory] = list(server.workdir.glob("levity-metrics-*"))
    assert directory.stat().st_mode & 0o077 == 0, "the metrics directory is the supervisor's alone"
    (directory / "counter_999999.db").write_bytes(b"")  # a file a worker is just creating
    (directory / "histogram_999998.db").write_bytes(b"\xff\xff\x00\x00garbage")  # one cut short
    async with raw_charge_point(server.url, IDS[0]) as client:
        assert (await client.call("b", "BootNotification", BOOT))[0] == 3
    metrics = server.metrics()
    assert calls(metrics, "BootNotification") == 1
    assert metrics["levity_workers_up"] == 2
    assert "skipping unreadable file" in server.log()
    assert server.stop() == 0
    assert not directory.exists(), "the supervisor removes its metrics directory when it stops"
