"""OCPP security profile 1 (Basic auth), refusing unknown chargers, and the limits."""

import asyncio
import base64

import pytest
import websockets

from levity.cli import main as levity_cli
from tests.support.ocpp_client import raw_charge_point

KEY = "0123456789abcdef0123"


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"additional_headers": {"Authorization": f"Basic {token}"}}


def set_password(server, charge_point_id, tmp_path, key=KEY):
    key_file = tmp_path / f"{charge_point_id}.key"
    key_file.write_text(key)
    assert levity_cli(["charge-points", "set-password", charge_point_id, "--password-file", str(key_file),
                       "--database", server.env["LEVITY_DATABASE"]]) == 0


async def expect_refused(url, charge_point_id, status, **kwargs):
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with raw_charge_point(url, charge_point_id, **kwargs):
            pass
    assert refused.value.response.status_code == status
    return refused.value.response


async def test_profile_1_basic_auth(levity, tmp_path):
    server = levity({"LEVITY_SECURITY_PROFILE": "1"})
    set_password(server, "CP-AUTH", tmp_path)
    async with raw_charge_point(server.url, "CP-AUTH", **basic("CP-AUTH", KEY)) as cp:
        assert (await cp.call("1", "Heartbeat", {}))[0] == 3
    # Reconnect (served from the credential cache) still checks the password.
    async with raw_charge_point(server.url, "CP-AUTH", **basic("CP-AUTH", KEY)) as cp:
        assert (await cp.call("2", "Heartbeat", {}))[0] == 3
    response = await expect_refused(server.url, "CP-AUTH", 401)
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    await expect_refused(server.url, "CP-AUTH", 401, **basic("CP-AUTH", KEY + "x"))
    await expect_refused(server.url, "CP-AUTH", 401, **basic("CP-OTHER", KEY))
    await expect_refused(server.url, "CP-NOPASS", 401, **basic("CP-NOPASS", KEY))
    await expect_refused(server.url, "CP-AUTH", 401, additional_headers={"Authorization": "Basic !!!notbase64"})
    server.stop()
    log = server.log()
    assert KEY not in log and base64.b64encode(f"CP-AUTH:{KEY}".encode()).decode() not in log
    stored = (server.workdir / "levity.db").read_bytes()
    assert KEY.encode() not in stored


async def test_unknown_charge_points_refused_before_upgrade(levity):
    server = levity({"LEVITY_UNKNOWN_CHARGE_POINTS": "refuse"})
    await expect_refused(server.url, "CP-STRANGER", 404)
    assert levity_cli(["charge-points", "register", "CP-KNOWN", "--database", server.env["LEVITY_DATABASE"]]) == 0
    async with raw_charge_point(server.url, "CP-KNOWN") as cp:
        assert (await cp.call("1", "Heartbeat", {}))[0] == 3
    assert server.metrics()['levity_handshakes_refused_total{status="404"}'] == 1


async def test_oversized_frame_closes_with_1009_and_others_are_served(levity):
    server = levity({"LEVITY_MAX_FRAME_BYTES": "4096"})
    async with raw_charge_point(server.url, "CP-OK") as good:
        async with raw_charge_point(server.url, "CP-BIG") as big:
            await big.ws.send('[2,"1","DataTransfer",{"vendorId":"V","data":"' + "x" * 5000 + '"}]')
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(big.ws.recv(), 5)
            assert closed.value.rcvd.code == 1009
        assert (await good.call("1", "Heartbeat", {}))[0] == 3


async def test_connection_limit_answers_503(levity):
    server = levity({"LEVITY_MAX_CONNECTIONS": "2"})
    async with raw_charge_point(server.url, "CP-1"), raw_charge_point(server.url, "CP-2"):
        await expect_refused(server.url, "CP-3", 503)
        # The same id reconnecting is not a new connection: newest wins.
        async with raw_charge_point(server.url, "CP-2") as again:
            assert (await again.call("1", "Heartbeat", {}))[0] == 3


async def test_flooding_charger_is_slowed_not_dropped(levity):
    server = levity({"LEVITY_MAX_CALLS_PER_SECOND": "20"})
    async with raw_charge_point(server.url, "CP-FLOOD") as cp:
        for i in range(60):
            await cp.ws.send(f'[2,"{i}","Heartbeat",{{}}]')
        answers = [await asyncio.wait_for(cp.ws.recv(), 10) for _ in range(60)]
    assert len(answers) == 60 and all(a.startswith("[3,") for a in answers)
    assert server.metrics()["levity_calls_throttled_total"] >= 1


async def test_tls_profile_without_certificate_is_a_configuration_error(levity):
    server = levity({"LEVITY_SECURITY_PROFILE": "2"}, start=False)
    with pytest.raises(AssertionError, match="needs LEVITY_TLS_CERT"):
        server.start()
