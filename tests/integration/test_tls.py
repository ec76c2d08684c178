"""OCPP security profiles 2 (TLS + Basic auth) and 3 (TLS + client certificates), with
certificates the tests make themselves."""

import base64
import ssl
import subprocess

import pytest
import websockets

from levity.cli import main as levity_cli
from tests.support.certs import make_certs
from tests.support.ocpp_client import raw_charge_point

KEY = "0123456789abcdef0123"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_client_ca(directory, *common_names):
    """A charger CA and one client certificate per common name (charge point id)."""
    directory.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "ca.key",
            "-out", "ca.pem", "-days", "2", "-subj", "/CN=Charger CA", cwd=directory)
    for name in common_names:
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "2", cwd=directory)
    return directory


def wss(server):
    return f"wss://127.0.0.1:{server.port}"


async def test_profile_2_tls_and_basic_auth(levity, tmp_path):
    certs = make_certs(tmp_path / "certs")
    server = levity({"LEVITY_SECURITY_PROFILE": "2", "LEVITY_TLS_CERT": str(certs.server_cert),
                     "LEVITY_TLS_KEY": str(certs.server_key)}, start=False)
    # /health over TLS is what LevityProcess polls; the test client trusts the throwaway CA.
    server.health_ssl = certs.client_context()
    server.start()
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    assert levity_cli(["charge-points", "set-password", "CP-TLS", "--password-file", str(key_file),
                       "--database", server.env["LEVITY_DATABASE"]]) == 0
    auth = {"Authorization": "Basic " + base64.b64encode(f"CP-TLS:{KEY}".encode()).decode()}
    async with raw_charge_point(wss(server), "CP-TLS", ssl=certs.client_context(), additional_headers=auth) as cp:
        assert (await cp.call("1", "Heartbeat", {}))[0] == 3
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with raw_charge_point(wss(server), "CP-TLS", ssl=certs.client_context()):
            pass
    assert refused.value.response.status_code == 401
    with pytest.raises((OSError, websockets.InvalidMessage, websockets.InvalidHandshake)):
        async with raw_charge_point(server.url, "CP-TLS", additional_headers=auth, open_timeout=3):
            pass  # plain ws:// to a TLS port does not complete


async def test_profile_3_client_certificate_bound_to_charge_point_id(levity, tmp_path):
    certs = make_certs(tmp_path / "certs")
    chargers = make_client_ca(tmp_path / "chargers", "CP-CERT", "CP-OTHER")
    server = levity({"LEVITY_SECURITY_PROFILE": "3", "LEVITY_TLS_CERT": str(certs.server_cert),
                     "LEVITY_TLS_KEY": str(certs.server_key), "LEVITY_TLS_CLIENT_CA": str(chargers / "ca.pem")},
                    start=False)

    def client(name):
        context = certs.client_context()
        context.load_cert_chain(chargers / f"{name}.pem", chargers / f"{name}.key")
        return context

    server.health_ssl = client("CP-CERT")
    server.start()
    async with raw_charge_point(wss(server), "CP-CERT", ssl=client("CP-CERT")) as cp:
        assert (await cp.call("1", "Heartbeat", {}))[0] == 3
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with raw_charge_point(wss(server), "CP-CERT", ssl=client("CP-OTHER")):
            pass
    assert refused.value.response.status_code == 403
    with pytest.raises((ssl.SSLError, OSError, websockets.InvalidMessage)):
        async with raw_charge_point(wss(server), "CP-CERT", ssl=certs.client_context(), open_timeout=3):
            pass  # no client certificate: the TLS handshake fails
