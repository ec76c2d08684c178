"""The shipped HAProxy configuration (roles/haproxy/templates/haproxy.cfg.j2) in front of two
`levity serve` instances on one real PostgreSQL: chargers are balanced by charge point id, an
operator API call reaches the instance holding the charger, the charger's own address is
audited, and the chargers of an instance that dies reconnect to the other."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
import urllib.request
from pathlib import Path

import httpx
import jinja2
import pytest
import websockets

from tests.integration.test_operator_api import charger, client, create_token
from tests.integration.test_postgres_instances import audit, until
from tests.support.levity_process import api_env, free_port

TEMPLATE = Path(__file__).parents[2] / "roles" / "haproxy" / "templates" / "haproxy.cfg.j2"
CLIENT_ADDRESS = "127.0.0.3"  # chargers connect from here; HAProxy itself reaches Levity from 127.0.0.1


def render(servers, ocpp_port: int, api_port: int, **overrides) -> str:
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                                     trim_blocks=True, lstrip_blocks=True)
    environment.filters["comment"] = lambda text: f"# {text}"  # Ansible's filter
    return environment.from_string(TEMPLATE.read_text()).render(
        ansible_managed="rendered by the tests", haproxy_log_target="stdout format raw", haproxy_maxconn=4000,
        haproxy_tunnel_timeout="1h", haproxy_bind_address="127.0.0.1",
        haproxy_ocpp_port=ocpp_port, haproxy_api_bind_address="127.0.0.1", haproxy_api_port=api_port,
        haproxy_check_interval="500ms", haproxy_levity_servers=servers, **{"haproxy_levity_tls_ca": "", "haproxy_tls_certificate": "", "haproxy_proxy_protocol": "", **overrides})


@pytest.fixture
def haproxy(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.skip("HAProxy is not installed (apt-get install haproxy; scripts/test-host-setup.sh does)")
    started = []

    def start(servers, **overrides):
        ports = free_port(), free_port()
        config = tmp_path / "haproxy.cfg"
        config.write_text(render(servers, *ports, **overrides))
        check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        process = subprocess.Popen(["haproxy", "-db", "-f", str(config)], stdout=open(tmp_path / "haproxy.log", "w"),
                                   stderr=subprocess.STDOUT)
        started.append(process)
        return ports

    yield start
    for process in started:
        process.terminate()
        process.wait(10)


def servers_of(levity_processes):
    return [{"name": f"levity{i}", "address": "127.0.0.1", "port": server.port,
             "api_port": int(server.env["LEVITY_API_PORT"])} for i, server in enumerate(levity_processes)]


async def wait_until_serving(ocpp_port: int):
    def healthy():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{ocpp_port}/health", timeout=1) as response:
                return response.status == 200
        except OSError:
            return False
    await until(healthy, "HAProxy serves /health")


@contextlib.asynccontextmanager
async def connect_from_client_address(url: str, charge_point_id: str):
    async with websockets.connect(f"{url}/{charge_point_id}", subprotocols=["ocpp1.6"],
                                  local_addr=(CLIENT_ADDRESS, 0)) as ws:
        yield ws


def test_the_shipped_configuration_is_valid_with_tls(tmp_path):
    if shutil.which("haproxy") is None:
        pytest.skip("HAProxy is not installed (apt-get install haproxy; scripts/test-host-setup.sh does)")
    from tests.support.certs import make_certs

    pki = make_certs(tmp_path)
    pem = tmp_path / "haproxy.pem"
    pem.write_bytes(Path(pki.server_cert).read_bytes() + Path(pki.server_key).read_bytes())
    text = render([{"name": "a", "address": "10.0.0.1"}, {"name": "b", "address": "10.0.0.2"}], 443, 9443,
                  haproxy_tls_certificate=str(pem), haproxy_levity_tls_ca=str(pki.ca_cert))
    config = tmp_path / "haproxy.cfg"
    config.write_text(text)
    check = subprocess.run(["haproxy", "-c", "-f", str(config)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"bind 127.0.0.1:443 ssl crt {pem}" in text and "ssl verify required ca-file" in text
    assert "hash-type consistent" in text and "option httpchk GET /health" in text


async def test_calls_reach_the_charger_through_haproxy_whichever_instance_holds_it(instances, haproxy):
    env = {"LEVITY_TRUSTED_PROXIES": "127.0.0.1"}
    first, second = instances(1, {**env, **api_env()}) + instances(1, {**env, **api_env()})
    ocpp_port, api_port = haproxy(servers_of([first, second]))
    await wait_until_serving(ocpp_port)
    token = create_token(first, "ops-bob", "operate")
    names = [f"CP-H{i}" for i in range(8)]
    async with contextlib.AsyncExitStack() as stack:
        chargers = [await stack.enter_async_context(charger(f"ws://127.0.0.1:{ocpp_port}", name)) for name in names]
        api = await stack.enter_async_context(client(first, token))
        api.base_url = f"http://127.0.0.1:{api_port}/api/v1"
        for name in names:
            response = await api.post(f"/charge-points/{name}/calls/Reset", json={"type": "Soft"})
            assert response.status_code == 200, (name, response.text)
            assert response.json() == {"status": "Accepted"}
        assert all(cp.received == [("Reset", {"type": "Soft"})] for cp in chargers)
    holders = {server: {r["charge_point_id"] for r in audit(server, "websocket_connect")} for server in (first, second)}
    assert holders[first] and holders[second], "the balancer used both instances"
    await until(lambda: len(audit(first, "command")) + len(audit(second, "command")) == len(names),
                "every call audited")
    for server in (first, second):
        assert {r["charge_point_id"] for r in audit(server, "command")} == holders[server]


async def test_the_chargers_address_is_audited_and_an_instance_loss_moves_its_chargers(instances, haproxy):
    first, second = instances(2, {"LEVITY_TRUSTED_PROXIES": "127.0.0.1"})
    ocpp_port, _ = haproxy(servers_of([first, second]))
    await wait_until_serving(ocpp_port)
    url = f"ws://127.0.0.1:{ocpp_port}"
    names = [f"CP-A{i}" for i in range(6)]
    for name in names:
        async with connect_from_client_address(url, name) as ws:
            await ws.send(f'[2,"b","BootNotification",{{"chargePointVendor":"V","chargePointModel":"M"}}]')
            assert (await asyncio.wait_for(ws.recv(), 10)).startswith("[3,")
    connects = audit(first, "websocket_connect") + audit(second, "websocket_connect")
    assert {r["remote_address"] for r in connects} == {CLIENT_ADDRESS}
    on_first = {r["charge_point_id"] for r in audit(first, "websocket_connect")}
    assert on_first and on_first != set(names)
    first.kill()
    for name in sorted(on_first):  # they reconnect through the same address, once HAProxy saw the loss
        async def booted():
            async with connect_from_client_address(url, name) as ws:
                await ws.send(f'[2,"b","BootNotification",{{"chargePointVendor":"V","chargePointModel":"M"}}]')
                return (await asyncio.wait_for(ws.recv(), 10)).startswith("[3,")
        for _ in range(100):
            with contextlib.suppress(OSError, websockets.WebSocketException, asyncio.TimeoutError):
                if await booted():
                    break
            await asyncio.sleep(0.1)
    await until(lambda: on_first <= {r["charge_point_id"] for r in audit(second, "websocket_connect")},
                "the killed instance's chargers booted on the other")


async def test_with_send_proxy_v2_the_chargers_address_and_port_are_audited(levity, haproxy):
    """HAProxy's send-proxy-v2 (haproxy_proxy_protocol v2) in front of LEVITY_PROXY_PROTOCOL: the
    charger's address and port from the header in the audit trail, the health checks of both
    backends (chargers' and operator API's, LOCAL headers) passing."""
    env = {"LEVITY_PROXY_PROTOCOL": "true", "LEVITY_TRUSTED_PROXIES": "127.0.0.1"}
    servers = []
    for _ in range(2):
        server = levity({**env, **api_env()}, start=False)
        server.proxy_local = True  # the test's own health checks come as HAProxy's do
        servers.append(server.start())
    ocpp_port, api_port = haproxy(servers_of(servers), haproxy_proxy_protocol="v2")
    await wait_until_serving(ocpp_port)
    names = [f"CP-P{i}" for i in range(6)]
    ports = {}
    for name in names:
        async with connect_from_client_address(f"ws://127.0.0.1:{ocpp_port}", name) as ws:
            ports[name] = ws.local_address[1]
            await ws.send(f'[2,"b","BootNotification",{{"chargePointVendor":"V","chargePointModel":"M"}}]')
            assert (await asyncio.wait_for(ws.recv(), 10)).startswith("[3,")
    await until(lambda: len(audit(servers[0], "websocket_connect") + audit(servers[1], "websocket_connect")) == 6,
                "every connection audited")
    connects = audit(servers[0], "websocket_connect") + audit(servers[1], "websocket_connect")
    assert {r["charge_point_id"]: r["remote_address"] for r in connects} == \
        {name: f"{CLIENT_ADDRESS}:{port}" for name, port in ports.items()}
    assert all(server.metrics().get('levity_proxy_headers_refused_total{reason="missing"}', 0) == 0
               for server in servers)
    async with client(servers[0], None) as api:  # through HAProxy: its API backend is up
        api.base_url = f"http://127.0.0.1:{api_port}/api/v1"
        await until_answered(lambda: api.get("/charge-points"), 401, "Levity's refusal through HAProxy (not its 503)")


async def until_answered(request, status: int, what: str, seconds: float = 15.0):
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        with contextlib.suppress(OSError, httpx.HTTPError):
            if (await request()).status_code == status:
                return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        await asyncio.sleep(0.1)
