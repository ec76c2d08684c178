"""FLUENTD_SERVERS: failover between several Forward receivers (refuse, stall, die mid-batch,
come back). Every event must arrive in the union of the servers, the spool must empty, and the
first server must get the events again once it is back."""

import asyncio
import logging

import pytest

from levity.audit.delivery import ForwardSink
from levity.config import Settings
from tests.delivery.test_forward_sink import assert_complete_and_ordered, emit_all, make_events, wait_until
from tests.support.forward_receiver import ForwardReceiver


@pytest.fixture
def receivers():
    with ForwardReceiver() as primary, ForwardReceiver() as standby:
        yield primary, standby


def settings_for_servers(tmp_path, *receivers, **overrides) -> Settings:
    values = dict(fluentd_enabled=True, fluentd_servers=",".join(f"127.0.0.1:{r.port}" for r in receivers),
                  fluentd_timeout=1.0, spool_dir=str(tmp_path / "spool"), flush_interval=0.05, batch_size=100)
    values.update(overrides)
    return Settings(**values)


async def started_sink(settings, **kwargs) -> ForwardSink:
    sink = ForwardSink(settings, backoff_max=0.5, probe_interval=0.2, **kwargs)
    await sink.start()
    return sink


def union(*receivers):
    return [ev for r in receivers for ev in r.events]


def assert_union_complete(sent, *receivers):
    """Every sent event is in the union, once deduplicated by event_id, each copy identical."""
    received = {}
    for ev in union(*receivers):
        assert received.setdefault(ev.record["event_id"], ev.record) == ev.record
    assert set(received) == {ev.record["event_id"] for ev in sent}


def server_metrics(sink) -> dict[str, float]:
    return {name: float(value) for name, _, value in (line.rpartition(" ") for line in sink.metric_lines())}


async def test_a_refusing_primary_sends_everything_to_the_standby(tmp_path, receivers, factory):
    primary, standby = receivers
    primary.refuse = True
    sink = await started_sink(settings_for_servers(tmp_path, primary, standby))
    events = make_events(factory, 500)
    await emit_all(sink, events)
    await wait_until(lambda: sink.stats()["acknowledged"] >= 500 and sink.stats()["spooled"] == 0, what="delivery")
    assert primary.events == []
    assert_complete_and_ordered(events, standby.events)
    metrics = server_metrics(sink)
    assert metrics[f'levity_fluentd_acknowledged_events{{server="127.0.0.1:{standby.port}"}}'] == 500
    assert metrics[f'levity_fluentd_up{{server="127.0.0.1:{primary.port}"}}'] == 0
    assert metrics[f'levity_fluentd_failures{{server="127.0.0.1:{primary.port}"}}'] >= 1
    await sink.close(5)


async def test_a_stalled_primary_is_down_after_the_ack_timeout_and_its_batch_goes_to_the_standby(
        tmp_path, receivers, factory):
    primary, standby = receivers
    primary.stall = True  # accepts connections, never reads or acknowledges
    sink = await started_sink(settings_for_servers(tmp_path, primary, standby))
    events = make_events(factory, 300)
    await emit_all(sink, events)
    await wait_until(lambda: sink.stats()["acknowledged"] >= 300 and sink.stats()["spooled"] == 0, what="failover")
    assert sink.stats()["send_failures"] >= 1
    assert_union_complete(events, primary, standby)
    assert_complete_and_ordered(events, standby.events)
    await sink.close(5)


async def test_an_unacknowledging_primary_has_its_events_resent_to_the_standby(tmp_path, receivers, factory):
    primary, standby = receivers
    primary.send_acks = False  # reads and records everything, acknowledges nothing
    sink = await started_sink(settings_for_servers(tmp_path, primary, standby))
    events = make_events(factory, 300)
    await emit_all(sink, events)
    await wait_until(lambda: sink.stats()["acknowledged"] >= 300 and sink.stats()["spooled"] == 0, what="failover")
    assert primary.events, "the primary received the first batch before it was given up"
    assert_complete_and_ordered(events, standby.events)  # what the primary never acknowledged is re-sent
    await sink.close(5)


async def test_primary_dies_mid_batch_then_comes_back_and_is_preferred_again(tmp_path, receivers, factory):
    primary, standby = receivers
    sink = await started_sink(settings_for_servers(tmp_path, primary, standby))
    first = make_events(factory, 200, prefix="A")
    await emit_all(sink, first)
    await wait_until(lambda: sink.stats()["acknowledged"] >= 200, what="delivery to the primary")
    assert len(primary.events) == 200 and standby.events == []

    primary.drop_after_bytes = 3000  # the connection is cut inside the next batch ...
    second = make_events(factory, 400, prefix="B")
    await emit_all(sink, second)
    await wait_until(lambda: sink.stats()["send_failures"] >= 1, what="the cut")
    primary.refuse = True  # ... and the server is gone
    await wait_until(lambda: sink.stats()["acknowledged"] >= 600 and sink.stats()["spooled"] == 0,
                     what="failover to the standby")
    assert_union_complete(first + second, primary, standby)

    primary.drop_after_bytes = None
    primary.refuse = False  # back
    await wait_until(lambda: server_metrics(sink)[f'levity_fluentd_active{{server="127.0.0.1:{primary.port}"}}'] == 1,
                     what="the probe to find the primary again")
    before = len(standby.events)
    third = make_events(factory, 300, prefix="C")
    await emit_all(sink, third)
    await wait_until(lambda: sink.stats()["acknowledged"] >= 900 and sink.stats()["spooled"] == 0,
                     what="delivery after the primary's return")
    assert_union_complete(first + second + third, primary, standby)
    third_ids = {ev.record["event_id"] for ev in third}
    assert third_ids <= {ev.record["event_id"] for ev in primary.events}
    assert not third_ids & {ev.record["event_id"] for ev in standby.events[before:]}
    metrics = server_metrics(sink)
    assert metrics[f'levity_fluentd_failovers_away{{server="127.0.0.1:{primary.port}"}}'] >= 1
    assert metrics[f'levity_fluentd_active{{server="127.0.0.1:{standby.port}"}}'] == 0
    await sink.close(5)


async def test_all_servers_down_keeps_events_in_the_spool_and_logs_once(tmp_path, receivers, factory, caplog):
    primary, standby = receivers
    primary.refuse = standby.refuse = True
    caplog.set_level(logging.INFO, logger="levity.audit")
    sink = await started_sink(settings_for_servers(tmp_path, primary, standby))
    events = make_events(factory, 400)
    await emit_all(sink, events)
    await wait_until(lambda: sink.stats()["spooled"] == 400, what="the spool to hold everything")
    await wait_until(lambda: server_metrics(sink)[f'levity_fluentd_failures{{server="127.0.0.1:{standby.port}"}}']
                     >= 3, what="several rounds of reconnects")
    outage_lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(outage_lines) == 1 and "no Fluentd server available" in outage_lines[0].getMessage()
    assert sink.stats()["acknowledged"] == 0 and sink.stats()["dropped"] == 0

    standby.refuse = False
    await wait_until(lambda: sink.stats()["spooled"] == 0, what="replay to the standby")
    assert_complete_and_ordered(events, standby.events)
    assert any("acknowledges events again" in r.getMessage() for r in caplog.records)
    await sink.close(5)


async def test_shared_key_and_tls_apply_to_every_server(tmp_path, factory):
    certs = pytest.importorskip("tests.support.certs").make_certs(tmp_path / "certs")
    with ForwardReceiver(shared_key="k", ssl_context=certs.server_context()) as primary, \
            ForwardReceiver(shared_key="k", ssl_context=certs.server_context()) as standby:
        primary.refuse = True
        settings = settings_for_servers(tmp_path, primary, standby, fluentd_shared_key="k", fluentd_tls=True,
                                        fluentd_tls_ca=str(certs.ca_cert))
        sink = await started_sink(settings)
        events = make_events(factory, 100)
        await emit_all(sink, events)
        await wait_until(lambda: sink.stats()["spooled"] == 0, what="delivery over TLS to the standby")
        assert_complete_and_ordered(events, standby.events)
        primary.refuse = False
        await wait_until(lambda: primary.connections >= 1 and primary.handshake_failures == 0
                         and server_metrics(sink)[f'levity_fluentd_up{{server="127.0.0.1:{primary.port}"}}'] == 1,
                         what="TLS and handshake with the returning primary")
        await sink.close(5)


async def test_a_primary_that_never_acknowledges_is_retried_but_logged_once(tmp_path, receivers, factory, caplog):
    primary, standby = receivers
    primary.stall = True
    caplog.set_level(logging.DEBUG, logger="levity.audit")
    sink = await started_sink(settings_for_servers(tmp_path, primary, standby, fluentd_timeout=0.5))
    label = f'server="127.0.0.1:{primary.port}"'
    for round_ in range(3):  # each probe moves the events back to the primary, which times out again
        await wait_until(lambda: server_metrics(sink)[f"levity_fluentd_active{{{label}}}"] == 1
                         or round_ == 0, what="the probe to try the primary again")
        await emit_all(sink, make_events(factory, 50, prefix=f"R{round_}"))
        await wait_until(lambda: sink.stats()["spooled"] == 0, what="delivery by the standby")
    assert server_metrics(sink)[f"levity_fluentd_failures{{{label}}}"] >= 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings  # the primary failed; the events go to the standby
    assert len({ev.record["event_id"] for ev in standby.events}) == 150
    await sink.close(5)
