"""The local compose stack (examples/fluentd) and the Levity image.

Registry images (fluent/fluentd, Elasticsearch, Kibana) cannot be pulled here, so the
compose file is validated offline with Debian's docker-compose, the setup script runs
against a stand-in Elasticsearch/Kibana on 127.0.0.1, and the Levity image is built with
podman on the locally built Debian base (scripts/test-host-setup.sh), started, and asked a
real BootNotification.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import websockets
import yaml

from tests.support.levity_process import free_port

ROOT = Path(__file__).resolve().parents[2]
STACK = ROOT / "examples" / "fluentd"
COMPOSE_FILE = STACK / "docker-compose.yml"
ENV_EXAMPLE = STACK / ".env.example"
SETUP_SCRIPT = STACK / "setup" / "setup.sh"
FLUENTD_DOCKERFILE = STACK / "fluentd" / "Dockerfile"
SHARE = ROOT / "share"
BASE_IMAGE = "localdebian:bookworm"

# Plugins that ship with Fluentd itself; anything else must be installed in fluentd/Dockerfile.
CORE_PLUGINS = {
    # inputs, outputs and filters
    "forward", "stdout", "file", "copy", "relabel", "null", "secondary_file", "grep",
    "record_transformer", "monitor_agent", "exec", "exec_filter", "http", "tail", "sample", "dummy",
    "tcp", "udp", "roundrobin", "parser",
    # buffers, formatters and parsers
    "memory", "json", "msgpack", "ltsv", "csv", "none", "regexp", "single_value", "hash",
}
# Plugins -> gems that provide them.
PLUGIN_GEMS = {"elasticsearch": "fluent-plugin-elasticsearch", "elasticsearch_data_stream": "fluent-plugin-elasticsearch",
               "s3": "fluent-plugin-s3", "cloudwatch_logs": "fluent-plugin-cloudwatch-logs",
               "prometheus": "fluent-plugin-prometheus", "prometheus_monitor": "fluent-plugin-prometheus",
               "prometheus_output_monitor": "fluent-plugin-prometheus",
               "rewrite_tag_filter": "fluent-plugin-rewrite-tag-filter"}


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value
    return values


def compose_environ() -> dict[str, str]:
    """This process's environment without anything the stack's variables could pick up."""
    return {k: v for k, v in os.environ.items() if k not in env_example() and not k.startswith("COMPOSE_")}


def docker_compose(*args: str, env_file: Path) -> subprocess.CompletedProcess:
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (scripts/test-host-setup.sh installs it)")
    return subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *args],
        cwd=STACK, env=compose_environ(), capture_output=True, text=True, timeout=60)


@pytest.fixture(params=["defaults", "env-example"])
def env_file(request, tmp_path) -> Path:
    """An empty env file (the defaults written in the compose file) or .env.example itself."""
    if request.param == "env-example":
        return ENV_EXAMPLE
    empty = tmp_path / "empty.env"
    empty.write_text("")
    return empty


# Offline checks ---------------------------------------------------------------------------

def test_compose_file_validates_offline(env_file):
    result = docker_compose("config", "-q", env_file=env_file)
    assert result.returncode == 0, result.stderr


def test_compose_config_rejects_a_broken_file(tmp_path):
    """The validation above means something: docker-compose 1.29 refuses unknown keys."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("    healthcheck:\n", "    healthchek:\n", 1))
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (scripts/test-host-setup.sh installs it)")
    result = subprocess.run(["docker-compose", "-f", str(broken), "config", "-q"], cwd=STACK,
                            env=compose_environ(), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "healthchek" in result.stderr


def resolved_config(env_file: Path) -> dict:
    result = docker_compose("--profile", "elastic", "config", env_file=env_file)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_compose_services_are_wired_as_documented(env_file):
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    assert "version" not in raw, "the version key is obsolete in the Compose specification"
    config = resolved_config(env_file)
    services = config["services"]
    # (docker-compose 1.29 prints the services of every profile; the "ha" ones: test_compose_ha.py,
    # the "cluster" ones: test_compose_cluster.py)
    cluster = {"postgres", "levity-db-upgrade", "levity-a", "levity-b", "haproxy"}
    assert set(services) - cluster == {"fluentd-config", "fluentd", "elasticsearch", "kibana", "setup", "levity",
                                       "fluentd-aggregator-1", "fluentd-aggregator-2", "prometheus", "grafana"}

    one_shots = {"fluentd-config", "setup", "levity-db-upgrade"}
    for name, service in services.items():
        if name not in one_shots:
            assert "healthcheck" in service, f"{name} has no healthcheck"
    for name in ("elasticsearch", "kibana", "setup"):
        assert services[name]["profiles"] == ["elastic"]
    for name in ("prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"]

    def conditions(name):
        return {dep: spec["condition"] for dep, spec in services[name].get("depends_on", {}).items()}

    assert conditions("fluentd") == {"fluentd-config": "service_completed_successfully"}
    assert conditions("levity") == {"fluentd": "service_healthy"}
    assert conditions("kibana") == {"elasticsearch": "service_healthy"}
    assert conditions("setup") == {"elasticsearch": "service_healthy", "kibana": "service_healthy"}
    assert conditions("grafana") == {"prometheus": "service_healthy"}

    levity = services["levity"]
    environment = levity["environment"]
    assert environment["FLUENTD_ENABLED"] == "true"
    assert environment["FLUENTD_HOST"] == "fluentd"
    assert environment["FLUENTD_PORT"] == "24224"
    assert Path(levity["build"]["context"]) == ROOT
    assert {_port(p) for p in levity["ports"]} == {("127.0.0.1", 9000, "tcp"), ("127.0.0.1", 9001, "tcp")}
    fluentd_ports = {_port(p) for p in services["fluentd"]["ports"]}
    assert fluentd_ports == {("127.0.0.1", 24224, "tcp"), ("127.0.0.1", 24224, "udp"), ("127.0.0.1", 24220, "tcp")}
    # Elasticsearch and Kibana run without security: local ports only, unless BIND_ADDRESS says so.
    for name in ("elasticsearch", "kibana", "prometheus", "grafana"):
        assert all(_port(p)[0] == "127.0.0.1" for p in services[name]["ports"])

    # The setup service mounts the one copy of the data files, read-only.
    mounts = {m["target"]: m for m in (_mount(v) for v in services["setup"]["volumes"])}
    assert Path(mounts["/share"]["source"]) == SHARE and mounts["/share"]["read_only"]

    # Named volumes for every piece of state.
    assert {"fluentd-etc", "fluentd-buffer", "elasticsearch-data", "kibana-data", "levity-data"} <= set(config["volumes"])


def _port(port) -> tuple[str, int, str]:
    """(host address, container port, protocol) from 'ip:published:target/proto' or a mapping."""
    if isinstance(port, dict):
        return port.get("host_ip", ""), int(port["target"]), port.get("protocol", "tcp")
    spec, _, protocol = port.partition("/")
    host_ip, _, target = spec.rpartition(":")
    return host_ip.rsplit(":", 1)[0], int(target), protocol or "tcp"


def _mount(volume) -> dict:
    """docker-compose 1.29 prints volumes as 'source:target[:mode]' strings."""
    if isinstance(volume, dict):
        return {"source": volume.get("source"), "target": volume["target"], "read_only": volume.get("read_only", False)}
    parts = volume.split(":")
    return {"source": parts[0], "target": parts[1], "read_only": len(parts) > 2 and "ro" in parts[2].split(",")}


def test_env_example_names_exactly_the_variables_the_compose_file_uses():
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    documented = set(env_example()) - {"COMPOSE_PROFILES"}
    assert used == documented


def test_setup_script_refers_to_the_ilm_policy_the_template_names():
    template = json.loads((SHARE / "elasticsearch" / "ocpp-events-index-template.json").read_text())
    policy_name = template["template"]["settings"]["index.lifecycle.name"]
    assert f"ILM_POLICY=${{ILM_POLICY:-{policy_name}}}" in SETUP_SCRIPT.read_text()
    subprocess.run(["bash", "-n", str(SETUP_SCRIPT)], check=True)


class _FakeElastic(BaseHTTPRequestHandler):
    """Answers like Elasticsearch and Kibana 8 do to what setup.sh asks; records the requests."""

    requests: list = []

    def _answer(self, status: int, body: dict | str) -> None:
        # Compact, as Elasticsearch answers.
        data = (body if isinstance(body, str) else json.dumps(body, separators=(",", ":"))).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        self.requests.append(("GET", self.path, dict(self.headers), b""))
        if self.path.startswith("/_cluster/health"):
            self._answer(200, {"status": "green"})
        elif "/_mapping/field/charge_point_id" in self.path:
            self._answer(200, {"ocpp_events-2024.01.15": {"mappings": {"charge_point_id": {
                "full_name": "charge_point_id", "mapping": {"charge_point_id": {"type": "text"}}}}}})
        elif self.path.startswith("/_cat/indices"):
            self._answer(200, "ocpp_events-2024.01.15\n")
        elif self.path == "/api/status":
            self._answer(200, {"status": {"overall": {"level": "available"}}})
        else:
            self._answer(404, {"error": "not found"})

    def _with_body(self, method):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.requests.append((method, self.path, dict(self.headers), body))
        if self.path.startswith("/api/saved_objects/_import"):
            self._answer(200, {"success": True, "successCount": body.count(b'"type":')})
        else:
            self._answer(200, {"acknowledged": True})

    def do_PUT(self):  # noqa: N802
        self._with_body("PUT")

    def do_POST(self):  # noqa: N802
        self._with_body("POST")

    def log_message(self, *args):
        pass


def test_setup_script_installs_the_shared_files_through_the_apis():
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    _FakeElastic.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeElastic)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        result = subprocess.run(
            ["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=60,
            env={"PATH": os.environ["PATH"], "ELASTICSEARCH_URL": url, "KIBANA_URL": url, "SHARE_DIR": str(SHARE)})
    finally:
        server.shutdown()
    assert result.returncode == 0, result.stderr
    writes = {(m, path): (headers, body) for m, path, headers, body in _FakeElastic.requests if m != "GET"}
    assert writes[("PUT", "/_ilm/policy/ocpp-events-retention")][1] == \
        (SHARE / "elasticsearch" / "ocpp-events-ilm-policy.json").read_bytes()
    assert writes[("PUT", "/_index_template/ocpp-events")][1] == \
        (SHARE / "elasticsearch" / "ocpp-events-index-template.json").read_bytes()
    headers, body = writes[("POST", "/api/data_views/data_view")]
    assert body == (SHARE / "kibana" / "ocpp-events-data-view.json").read_bytes()
    assert headers.get("kbn-xsrf") == "true"
    headers, body = writes[("POST", "/api/saved_objects/_import?overwrite=true")]
    assert headers["Content-Type"].startswith("multipart/form-data") and headers.get("kbn-xsrf") == "true"
    assert (SHARE / "kibana" / "levity-dashboard.ndjson").read_bytes() in body
    # The fake index maps charge_point_id as text: the script says how to fix it, by index name.
    assert "curl -X DELETE http://localhost:9200/ocpp_events-2024.01.15" in result.stderr


def run_setup_against(handler) -> subprocess.CompletedProcess:
    """setup.sh against a stand-in of Elasticsearch and Kibana answering with `handler`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        return subprocess.run(["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, timeout=60,
                              env={"PATH": os.environ["PATH"], "ELASTICSEARCH_URL": url, "KIBANA_URL": url,
                                   "SHARE_DIR": str(SHARE)})
    finally:
        server.shutdown()


def test_setup_script_fails_loudly_when_elasticsearch_refuses():
    class Refusing(_FakeElastic):
        def do_PUT(self):  # noqa: N802
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self._answer(400, {"error": {"type": "x_content_parse_exception"}})

    result = run_setup_against(Refusing)
    assert result.returncode != 0
    assert "HTTP 400" in result.stderr and "x_content_parse_exception" in result.stderr


def test_setup_script_fails_when_kibana_imports_the_dashboard_only_in_part():
    """Kibana answers an import with 200 and "success": false when objects fail: setup says so."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")

    class PartialImport(_FakeElastic):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.path.startswith("/api/saved_objects/_import"):
                errors = [{"id": "levity-overview", "error": {"type": "conflict"}}]
                self._answer(200, {"success": False, "errors": errors})
            else:
                self.requests.append(("POST", self.path, dict(self.headers), body))
                self._answer(200, {"acknowledged": True})

    result = run_setup_against(PartialImport)
    assert result.returncode != 0
    assert "did not import the dashboard" in result.stderr and "conflict" in result.stderr


# The compose profile of the generator ----------------------------------------------------

def render_compose_profile() -> str:
    """fluent.conf as the fluentd-config service renders it: the shipped `compose` profile."""
    try:
        from levity.fluentconf import find_profile, render_file
    except ImportError:
        pytest.skip("levity.fluentconf cannot be imported")
    try:
        path = find_profile("compose")
    except FileNotFoundError as exc:
        pytest.skip(f"the generator ships no `compose` profile yet: {exc}")
    return render_file(path)


def test_compose_profile_matches_the_stack():
    """fluent.conf is rendered at `docker compose up` (fluentd-config service), so nothing is
    committed to drift; what can drift is the stack around it: ports, host names, the index
    the template covers, and the plugins the Fluentd image installs."""
    conf = render_compose_profile()
    assert re.search(r"@type\s+forward", conf) and re.search(r"\bport\s+24224\b", conf)
    assert re.search(r"\bhost\s+\"?elasticsearch\"?", conf)
    assert re.search(r"\bport\s+9200\b", conf)
    assert not re.search(r"^\s*type_name\b", conf, re.M), "type_name is gone from Elasticsearch 8"
    # The compose file publishes the monitor agent for the README's troubleshooting.
    assert re.search(r"@type\s+monitor_agent[^<]*\bport\s+24220\b", conf)
    index = re.search(r"\b(?:index_name|logstash_prefix)\s+\"?([\w.-]+)", conf)
    assert index, "no index_name/logstash_prefix in the elasticsearch output"
    assert index.group(1).startswith("ocpp_events"), "the index template covers ocpp_events* only"

    dockerfile = FLUENTD_DOCKERFILE.read_text()
    for plugin in set(re.findall(r"@type\s+\"?([\w-]+)", conf)) - CORE_PLUGINS:
        gem = PLUGIN_GEMS.get(plugin, f"fluent-plugin-{plugin.replace('_', '-')}")
        assert gem in dockerfile, f"plugin {plugin!r} needs {gem} in {FLUENTD_DOCKERFILE}"
    for path in re.findall(r"^\s*path\s+\"?(/[^\s\"]+)", conf, re.M):
        assert path.startswith(("/fluentd/buffer", "/fluentd/log")), \
            f"{path}: Fluentd's user writes only below /fluentd/buffer (a volume) and /fluentd/log"


# Containers ------------------------------------------------------------------------------

def podman(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, check=check)


def ca_bundle_args() -> list[str]:
    """pip inside the build trusts what pip on this host trusts (a TLS-intercepting proxy's CA)."""
    candidates = [os.environ.get(name) for name in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]
    for path in [*candidates, "/etc/ssl/certs/ca-certificates.crt"]:
        if path and Path(path).is_file():
            return ["-v", f"{Path(path).resolve()}:/run/host-ca.crt:ro", "--build-arg", "PIP_CA_BUNDLE=/run/host-ca.crt"]
    return []


@pytest.fixture(scope="module")
def levity_image():
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed: run scripts/test-host-setup.sh")
    if podman("image", "exists", BASE_IMAGE, check=False).returncode != 0:
        pytest.skip(f"{BASE_IMAGE} is missing: run scripts/test-host-setup.sh")
    tag = f"localhost/levity-test:{uuid.uuid4().hex[:8]}"
    dangling_before = dangling_images()
    started = time.monotonic()
    # --format docker keeps the HEALTHCHECK instruction (the OCI format has none).
    build = subprocess.run(
        ["podman", "build", "--format", "docker", "--build-arg", f"BASE_IMAGE={BASE_IMAGE}",
         *ca_bundle_args(), "-t", tag, str(ROOT)],
        capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    print(f"\nlevity image build: {time.monotonic() - started:.1f}s")
    yield tag
    podman("rmi", "-f", tag, check=False)
    # The builder stage stays behind untagged (about 400 MB a run): remove what this build left.
    left = dangling_images() - dangling_before
    if left:
        podman("rmi", *sorted(left), check=False)


def dangling_images() -> set[str]:
    listed = podman("images", "--quiet", "--no-trunc", "--filter", "dangling=true", check=False)
    return set(listed.stdout.split())


@pytest.fixture
def container(levity_image):
    names = []

    def run(*args: str) -> str:
        name = f"levity-test-{uuid.uuid4().hex[:8]}"
        names.append(name)
        podman("run", "-d", "--name", name, *args, levity_image)
        return name

    yield run
    for name in names:
        podman("rm", "-f", "-v", "-t", "2", name, check=False)


async def boot_notification(port: int, timeout: float = 30.0) -> list:
    deadline = time.monotonic() + timeout
    while True:
        try:
            async with websockets.connect(f"ws://127.0.0.1:{port}/CP-CONTAINER", subprotocols=["ocpp1.6"],
                                          open_timeout=5) as ws:
                assert ws.subprotocol == "ocpp1.6"
                await ws.send(json.dumps([2, "1", "BootNotification",
                                          {"chargePointVendor": "V", "chargePointModel": "M"}]))
                return json.loads(await asyncio.wait_for(ws.recv(), 10))
        except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed):
            # The published port accepts before the server inside listens.
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.3)


@pytest.mark.deploy
async def test_levity_image_answers_a_boot_notification(container):
    port = free_port()
    started = time.monotonic()
    name = container("-p", f"127.0.0.1:{port}:9000")
    answer = await boot_notification(port)
    print(f"\nlevity container: first BootNotification answered after {time.monotonic() - started:.1f}s")
    assert answer[:2] == [3, "1"]
    assert answer[2]["status"] == "Accepted"
    assert answer[2]["interval"] > 0

    # Non-root, state in the volume, and its healthcheck passes.
    uid = podman("exec", name, "id", "-u").stdout.strip()
    assert uid != "0"
    assert podman("exec", name, "sh", "-c", "test -f /var/lib/levity/levity.db").returncode == 0
    health = podman("healthcheck", "run", name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr
    logs = podman("logs", name).stdout + podman("logs", name).stderr
    assert "boot_notification" in logs  # FLUENTD_ENABLED unset: audit events on stdout


@pytest.mark.deploy
def test_levity_image_declares_its_contract(levity_image):
    image = json.loads(podman("image", "inspect", levity_image).stdout)[0]
    config = image["Config"]
    assert config["User"] == "levity"
    assert {"9000/tcp", "9001/tcp"} <= set(config["ExposedPorts"])
    assert "/var/lib/levity" in config["Volumes"]
    assert config["Cmd"] == ["levity", "serve"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["LEVITY_API_HOST"] == "0.0.0.0"  # the API reachable where the port is published
    assert env["LEVITY_DATABASE"] == "/var/lib/levity/levity.db"
    assert env["LEVITY_SPOOL_DIR"] == "/var/lib/levity/spool"
    # podman shows the Docker-format HEALTHCHECK beside Config, docker inside it.
    healthcheck = image.get("Healthcheck") or config.get("Healthcheck")
    assert healthcheck and healthcheck["Test"][0] == "CMD" and "/health" in healthcheck["Test"][-1]


@pytest.mark.deploy
def test_fluentd_config_service_renders_into_a_volume(levity_image, tmp_path):
    """The compose stack's fluentd-config one-shot, run as the compose file says."""
    render_compose_profile()  # skips while the generator is not there
    service = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["fluentd-config"]
    volume = f"levity-test-etc-{uuid.uuid4().hex[:8]}"
    podman("volume", "create", volume)
    try:
        result = podman("run", "--rm", "--user", service["user"], "-v", f"{volume}:/fluentd/etc",
                        levity_image, *service["command"], check=False)
        assert result.returncode == 0, result.stdout + result.stderr
        listing = podman("run", "--rm", "-v", f"{volume}:/fluentd/etc:ro", levity_image,
                         "sh", "-c", "stat -c %a /fluentd/etc/fluent.conf && cat /fluentd/etc/fluent.conf").stdout
        mode, _, conf = listing.partition("\n")
        assert mode == "644"
        assert conf.strip() == render_compose_profile().strip()
    finally:
        podman("volume", "rm", "-f", volume, check=False)



@pytest.fixture
def podman_socket():
    """podman's Docker-compatible API on a private socket, for docker-compose."""
    if shutil.which("docker-compose") is None:
        pytest.skip("docker-compose is not installed (scripts/test-host-setup.sh installs it)")
    directory = Path(tempfile.mkdtemp(prefix="levity-podman-"))  # short: socket paths are limited
    socket_path = directory / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{socket_path}"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            assert service.poll() is None and time.monotonic() < deadline, "podman system service did not start"
            time.sleep(0.1)
        yield f"unix://{socket_path}"
    finally:
        service.terminate()
        service.wait(timeout=20)
        shutil.rmtree(directory, ignore_errors=True)


@pytest.mark.deploy
async def test_compose_runs_the_levity_services_on_podman(levity_image, podman_socket, tmp_path):
    """docker-compose runs this file's fluentd-config one-shot and levity service as written
    (Fluentd, Elasticsearch and Kibana images cannot be pulled here, so levity starts --no-deps)."""
    render_compose_profile()  # skips while the generator is not there
    override = tmp_path / "override.yml"
    override.write_text(yaml.safe_dump({"services": {name: {"image": levity_image}
                                                     for name in ("fluentd-config", "levity")}}))
    port = free_port()
    env_file = tmp_path / "test.env"
    env_file.write_text(f"LEVITY_PORT={port}\n")
    project = f"levitytest{uuid.uuid4().hex[:8]}"
    environ = {**compose_environ(), "DOCKER_HOST": podman_socket}

    def compose(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        return subprocess.run(["docker-compose", "-p", project, "-f", str(COMPOSE_FILE), "-f", str(override),
                               "--env-file", str(env_file), *args],
                              cwd=STACK, env=environ, capture_output=True, text=True, timeout=timeout)

    try:
        rendered = compose("run", "--rm", "fluentd-config")
        assert rendered.returncode == 0, rendered.stdout + rendered.stderr
        conf = podman("run", "--rm", "-v", f"{project}_fluentd-etc:/etc/fluent:ro", BASE_IMAGE,
                      "cat", "/etc/fluent/fluent.conf").stdout
        assert conf.strip() == render_compose_profile().strip()

        started = compose("up", "-d", "--no-deps", "--no-build", "levity")
        assert started.returncode == 0, started.stdout + started.stderr
        answer = await boot_notification(port)
        assert answer[:2] == [3, "1"] and answer[2]["status"] == "Accepted"
        container_id = compose("ps", "-q", "levity").stdout.strip()
        # The compose file's healthcheck (podman without systemd does not schedule it: run it once).
        health = podman("healthcheck", "run", container_id, check=False)
        assert health.returncode == 0, health.stdout + health.stderr + \
            podman("inspect", "--format", "{{json .State.Health}}", container_id, check=False).stdout
        env = dict(item.split("=", 1) for item in json.loads(
            podman("inspect", container_id).stdout)[0]["Config"]["Env"])
        assert env["FLUENTD_ENABLED"] == "true" and env["FLUENTD_HOST"] == "fluentd"
    finally:
        compose("down", "-v", "--remove-orphans", timeout=120)

# The guide -------------------------------------------------------------------------------

README = STACK / "README.md"


def test_readme_query_bodies_are_valid_json():
    bodies = re.findall(r"-d '\n(.*?)'\n", README.read_text(), re.S)
    assert len(bodies) >= 2
    queries = [json.loads(body) for body in bodies]
    text = json.dumps(queries)
    # The fields queried exist with the types the queries need.
    mapping = json.loads((SHARE / "elasticsearch" / "ocpp-events-index-template.json").read_text())
    properties = mapping["template"]["mappings"]["properties"]
    assert properties["charge_point_id"]["type"] == "keyword" and '"term": {"charge_point_id"' in text
    assert properties["energy_delivered"]["type"] == "long" and '"sum": {"field": "energy_delivered"}' in text
    assert properties["timestamp"]["type"] == "date" and '"range": {"timestamp"' in text


def test_readme_names_services_files_and_indices_that_exist():
    text = README.read_text()
    services = set(yaml.safe_load(COMPOSE_FILE.read_text())["services"])
    for service in re.findall(r"docker compose (?:logs(?: -f)?|run --rm|exec -T|build) ([\w-]+)", text):
        assert service in services, service
    for path in re.findall(r"`((?:share|profiles)/[\w./-]+|(?:setup|fluentd)/[\w.]+)`", text):
        base = ROOT if path.startswith(("share/", "profiles/")) else STACK
        assert (base / path).exists(), path
    template = json.loads((SHARE / "elasticsearch" / "ocpp-events-index-template.json").read_text())
    assert template["index_patterns"] == ["ocpp_events*"] and "localhost:9200/ocpp_events/" in text
    view = json.loads((SHARE / "kibana" / "ocpp-events-data-view.json").read_text())["data_view"]
    assert view["name"] in text and view["timeFieldName"] == "timestamp"


# The monitoring profile -------------------------------------------------------------------

def test_monitoring_profile_provisions_the_shared_rules_and_dashboard(env_file, tmp_path):
    """Prometheus and Grafana read share/ (read-only) through provisioning files that point where
    the mounts put them; Prometheus' configuration and the rules it loads pass promtool."""
    services = resolved_config(env_file)["services"]
    prometheus = {m["target"]: m for m in (_mount(v) for v in services["prometheus"]["volumes"])}
    assert Path(prometheus["/etc/prometheus/rules"]["source"]) == SHARE / "prometheus"
    assert prometheus["/etc/prometheus/rules"]["read_only"]
    config_file = Path(prometheus["/etc/prometheus/prometheus.yml"]["source"])
    config = yaml.safe_load(config_file.read_text())
    jobs = {job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]}
    assert jobs == {"levity": ["levity:9000"], "fluentd": ["fluentd:24231"]}
    assert re.search(r"@type\s+prometheus\b[^<]*\bport\s+24231\b", render_compose_profile())
    for rule_file in config["rule_files"]:
        assert (SHARE / "prometheus" / Path(rule_file).relative_to("rules")).is_file()

    grafana = {m["target"]: m for m in (_mount(v) for v in services["grafana"]["volumes"])}
    assert Path(grafana["/etc/grafana/dashboards/levity"]["source"]) == SHARE / "grafana"
    providers = yaml.safe_load(Path(grafana["/etc/grafana/provisioning/dashboards/levity.yml"]["source"]).read_text())
    assert providers["providers"][0]["options"]["path"] == "/etc/grafana/dashboards/levity"
    sources = yaml.safe_load(Path(grafana["/etc/grafana/provisioning/datasources/levity.yml"]["source"]).read_text())
    assert sources["datasources"][0]["url"] == "http://prometheus:9090"

    promtool = os.environ.get("PROMTOOL") or shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not found (Debian package prometheus; scripts/test-host-setup.sh installs it)")
    # As mounted in the container: the configuration beside rules/ holding share/prometheus.
    shutil.copy(config_file, tmp_path / "prometheus.yml")
    shutil.copytree(SHARE / "prometheus", tmp_path / "rules")
    result = subprocess.run([promtool, "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout
