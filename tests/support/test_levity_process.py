"""The test harness's own promises: a free port is free and out of the outgoing connections' way,
and a `levity serve` whose port was taken meanwhile starts on another."""

from __future__ import annotations

import socket

from benchmarks.targets import ephemeral_port_range, free_port
from tests.support.levity_process import LevityProcess


def test_free_ports_are_bindable_and_outside_theephemeral_port_range():
    low, high = ephemeral_port_range()
    for _ in range(20):
        port = free_port()
        assert not low <= port <= high
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_taken_before_start_is_replaced(tmp_path):
    server = LevityProcess(tmp_path)
    taken = server.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))
        squatter.listen()
        server.start()
        try:
            assert server.port != taken
            assert "Address already in use" in server.log()
        finally:
            server.stop()
