"""LEVITY_PROXY_PROTOCOL on a real `levity serve`, over raw sockets: a PROXY protocol header
(version 1 or 2) from a trusted balancer names the charger in audit events and logs; a LOCAL
header (HAProxy's health checks) reaches /health; a malformed, truncated or missing header from
the balancer, or any header from an untrusted address, drops the connection unanswered and is
counted. Here 127.0.0.1 is the balancer and 127.0.0.2 a charger connecting directly."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
import websockets

from tests.conftest import read_audit_file
from tests.integration.test_postgres_instances import until
from tests.support.levity_process import PROXY_V2_LOCAL, get_behind_proxy_header

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
UNTRUSTED = "127.0.0.2"
BOOT = '[2,"b1","BootNotification",{"chargePointVendor":"V","chargePointModel":"M"}]'


def v2_header(source: str, port: int, command: int = 0x1) -> bytes:
    family, packed = (0x21, socket.inet_pton(socket.AF_INET6, source)) if ":" in source else \
        (0x11, socket.inet_aton(source))
    destination = bytes(len(packed))
    block = packed + destination + struct.pack("!HH", port, 9000)
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(block)) + block


@pytest.fixture
def behind_balancer(levity):
    def start(**env):
        server = levity({"LEVITY_PROXY_PROTOCOL": "true", "LEVITY_TRUSTED_PROXIES": "127.0.0.1", **env},
                        start=False)
        server.proxy_local = True
        return server.start()
    return start


def audit(server, event_type):
    records = [line["record"] for path in sorted(server.workdir.glob("**/audit*.jsonl"))
               for line in read_audit_file(path)]
    return [record for record in records if record["event_type"] == event_type]


async def boot_behind(server, header: bytes, charge_point_id: str, source: str = "127.0.0.1") -> str:
    """A charger's WebSocket on a socket that starts with `header`; the answer to its boot."""
    sock = socket.create_connection(("127.0.0.1", server.port), source_address=(source, 0))
    sock.sendall(header)
    async with websockets.connect(f"{server.url}/{charge_point_id}", sock=sock, subprotocols=["ocpp1.6"]) as ws:
        await ws.send(BOOT)
        return await asyncio.wait_for(ws.recv(), 10)


def refused(server) -> dict[str, float]:
    return {key.split('"')[1]: value for key, value in server.metrics().items()
            if key.startswith("levity_proxy_headers_refused_total")}


async def test_version_1_and_2_headers_name_the_charger_in_audit_events_and_logs(behind_balancer):
    server = behind_balancer()
    assert (await boot_behind(server, b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 9000\r\n", "CP-V1")).startswith("[3,")
    assert (await boot_behind(server, v2_header("2001:db8::5", 40002), "CP-V2")).startswith("[3,")
    await until(lambda: len(audit(server, "websocket_connect")) == 2, "both connections audited")
    addresses = {r["charge_point_id"]: r["remote_address"] for r in audit(server, "websocket_connect")}
    assert addresses == {"CP-V1": "192.0.2.7:40001", "CP-V2": "[2001:db8::5]:40002"}
    await until(lambda: len(audit(server, "websocket_disconnect")) == 2, "both disconnections audited")
    assert {r["remote_address"] for r in audit(server, "websocket_disconnect")} == set(addresses.values())
    assert "CP-V1 connected from 192.0.2.7:40001" in server.log()


async def test_local_and_unknown_headers_reach_health_as_the_balancer(behind_balancer):
    server = behind_balancer()
    local_with_addresses = v2_header("192.0.2.9", 1234, command=0x0)  # LOCAL: addresses skipped, not used
    unspecified = V2_SIGNATURE + b"\x21\x00\x00\x04abcd"  # PROXY over an unspecified family: the peer's own
    for header in (PROXY_V2_LOCAL, local_with_addresses, unspecified, b"PROXY UNKNOWN\r\n",
                   b"PROXY UNKNOWN ffff::1 ffff::2 65535 65535\r\n"):
        assert get_behind_proxy_header(server.port, "/health", header) == (200, b"ok\n"), header
    assert refused(server) == {}


@pytest.mark.parametrize("header", [
    b"PROXY TCP4 192.0.2.07 127.0.0.1 40001 9000\r\n",  # heading zero in an address
    b"PROXY TCP4 192.0.2.7 127.0.0.1 040001 9000\r\n",  # ... in a port
    b"PROXY TCP4 2001:db8::5 ::1 40001 9000\r\n",  # IPv6 addresses announced as TCP4
    b"PROXY TCP4 192.0.2.7  127.0.0.1 40001 9000\r\n",  # two spaces
    b"PROXY TCP4 192.0.2.7 127.0.0.1 65536 9000\r\n",  # port out of range
    b"PROXY TCP4 " + b"1" * 100 + b"\r\n",  # no CRLF in the first 107 bytes
    V2_SIGNATURE + b"\x11\x11\x00\x0c" + bytes(12),  # version 1 in a version 2 header
    V2_SIGNATURE + b"\x22\x11\x00\x0c" + bytes(12),  # command 2
    V2_SIGNATURE + b"\x21\x41\x00\x0c" + bytes(12),  # address family 4
    V2_SIGNATURE + b"\x21\x11\x00\x04" + bytes(4),  # IPv4 address block of 4 bytes
], ids=["v1-heading-zero", "v1-port-zero", "v1-family", "v1-spaces", "v1-port-range", "v1-long",
        "v2-version", "v2-command", "v2-family", "v2-short-block"])
async def test_a_malformed_header_drops_the_connection_unanswered(behind_balancer, header):
    server = behind_balancer()
    assert get_behind_proxy_header(server.port, "/health", header) == (0, b"")
    assert refused(server) == {"malformed": 1}
    assert "malformed PROXY protocol header" in server.log()
    assert (await boot_behind(server, v2_header("192.0.2.8", 40003), "CP-AFTER")).startswith("[3,")


async def test_a_truncated_or_missing_header_from_the_balancer_is_refused(behind_balancer):
    server = behind_balancer()
    for part in (V2_SIGNATURE[:7], v2_header("192.0.2.7", 40001)[:20], b"PROXY TCP4 192.0.2.7"):
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(part)
            sock.shutdown(socket.SHUT_WR)
            assert sock.recv(100) == b""  # closed, nothing answered
    assert get_behind_proxy_header(server.port, "/health", b"") == (0, b"")  # no header at all
    with pytest.raises((websockets.InvalidHandshake, OSError, EOFError)):
        async with websockets.connect(f"{server.url}/CP-PLAIN", subprotocols=["ocpp1.6"], open_timeout=5):
            pass
    await until(lambda: refused(server) == {"truncated": 3, "missing": 2}, "the refusals counted")
    assert audit(server, "websocket_connect") == []


async def test_an_untrusted_address_may_connect_directly_but_not_with_a_header(behind_balancer):
    server = behind_balancer()
    for header in (b"PROXY TCP4 192.0.2.7 127.0.0.1 40001 9000\r\n", v2_header("192.0.2.7", 40001), PROXY_V2_LOCAL):
        assert get_behind_proxy_header(server.port, "/health", header, source=UNTRUSTED) == (0, b"")
    assert refused(server) == {"untrusted": 3}
    assert "not in LEVITY_TRUSTED_PROXIES" in server.log()
    assert get_behind_proxy_header(server.port, "/health", b"", source=UNTRUSTED) == (200, b"ok\n")
    assert (await boot_behind(server, b"", "CP-DIRECT", source=UNTRUSTED)).startswith("[3,")
    await until(lambda: audit(server, "websocket_connect"), "the direct connection audited")
    assert audit(server, "websocket_connect")[0]["remote_address"].startswith(f"{UNTRUSTED}:")


async def test_with_workers_the_supervisor_routes_after_the_header(behind_balancer):
    server = behind_balancer(LEVITY_WORKERS="2")
    names = [f"CP-W{i}" for i in range(4)]  # spread over both workers
    for i, name in enumerate(names):
        assert (await boot_behind(server, v2_header("192.0.2.7", 41000 + i), name)).startswith("[3,")
    await until(lambda: len(audit(server, "websocket_connect")) == len(names), "every connection audited")
    assert {r["charge_point_id"]: r["remote_address"] for r in audit(server, "websocket_connect")} == \
        {name: f"192.0.2.7:{41000 + i}" for i, name in enumerate(names)}
    assert get_behind_proxy_header(server.port, "/health", b"") == (0, b"")
    assert get_behind_proxy_header(server.port, "/health", v2_header("192.0.2.7", 1), source=UNTRUSTED) == (0, b"")
    assert refused(server) == {"missing": 1, "untrusted": 1}


def test_the_setting_needs_trusted_proxies_and_plain_connections(levity):
    """A configuration error (exit status 2, as every other), naming the setting."""
    alone = levity({"LEVITY_PROXY_PROTOCOL": "true"}, start=False).levity_command("serve")
    assert alone.returncode == 2 and "LEVITY_PROXY_PROTOCOL needs LEVITY_TRUSTED_PROXIES" in alone.stderr
    with_tls = levity({"LEVITY_PROXY_PROTOCOL": "true", "LEVITY_TRUSTED_PROXIES": "127.0.0.1",
                       "LEVITY_SECURITY_PROFILE": "2"}, start=False).levity_command("serve")
    assert with_tls.returncode == 2 and "terminate TLS at the balancer" in with_tls.stderr
