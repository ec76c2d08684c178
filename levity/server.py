"""The WebSocket side: accept chargers, keep one connection per charge point id, shut down
cleanly.

The handshake follows OCPP-J 1.6 rather than `websockets` defaults:
- the charge point id is the last segment of the URL path; a request without a valid id is
  refused before the upgrade with HTTP 404;
- a charger chooses its OCPP version with the subprotocol it offers: `ocpp2.0.1` or `ocpp1.6`;
  one offering both gets LEVITY_PREFERRED_OCPP_VERSION (default 2.0.1). Each connection is
  handled by its version's package (levity/ocpp16/, levity/ocpp201/); everything else here
  (security profiles, limits, throttling, keepalive, newest-connection-wins) is the same for both;
- a charger that offers neither gets a completed handshake without a Sec-WebSocket-Protocol
  header, then an immediate close (1002), as OCPP-J says, instead of the HTTP 400
  `websockets` would send;
- when an id reconnects while its old socket is still open, the newest connection wins and
  the old one is closed with 1000.
Plain HTTP GET /health and /metrics on the same port serve load balancers and operators.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import re
import resource
import signal
import sqlite3
import ssl
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from urllib.parse import unquote, urlsplit

from websockets.http11 import Request, Response

from levity import __version__, metrics
from levity.api.local import LocalOperations
from levity.audit.events import EventFactory, IdTagPolicy
from levity.auth import (CredentialCache, FailureLimiter, certificate_common_name, parse_basic_auth,
                         verify_password)
from levity.audit.sink import AuditSink, make_sink, wait_closed
from levity.handling import Authorizer, CentralSystemContext
from levity.ocpp16 import validation as ocpp16
from levity.ocpp16.handlers import ChargePoint
from levity.ocpp201 import validation as ocpp201
from levity.ocpp201.handlers import ChargingStation
from levity.commands import CallSender, CommandSchemas
from levity.config import ConfigError, Settings, StartupError
from levity.database import DatabaseStartupError, is_postgres, open_store
from levity.proxy import forwarded_client
from levity.store import StorageError
from levity.transactions import send_pending_closes_forever
from levity.transport import OcppConnection, format_address

log = logging.getLogger("levity")

SUBPROTOCOL = ocpp16.SUBPROTOCOL  # kept for callers that named the 1.6 one
# Subprotocol -> (OCPP version, the class that handles a connection of it).
VERSIONS = {ocpp201.SUBPROTOCOL: (ocpp201.VERSION, ChargingStation), ocpp16.SUBPROTOCOL: (ocpp16.VERSION, ChargePoint)}
# OCPP 2.0.1's identifierString, max 48 characters as chargeBoxIdentity in OCPP 1.6.
CHARGE_POINT_ID = re.compile(r"[A-Za-z0-9*\-_=:+|@.]{1,48}")
SHUTDOWN_FLUSH_SECONDS = 10.0
# Password checks (scrypt: ~16 MiB and tens of milliseconds each) run on a small executor of
# their own, so that a flood of wrong passwords cannot take the default executor or memory
# from the rest; beyond this many waiting checks a handshake is answered 503 at once.
PASSWORD_CHECK_THREADS = 2
MAX_WAITING_PASSWORD_CHECKS = 64
SPOOL_HOLD_POLL_SECONDS = 0.1


def charge_point_id_from_path(path: str) -> str | None:
    """The last path segment, or None when the path is not a plain one: an id must never name
    another place (a decoded '/', a '.' or '..' segment, '..' inside the id)."""
    segments = [unquote(s) for s in urlsplit(path).path.split("/") if s]
    if not segments or any(s in (".", "..") or "/" in s or "\\" in s for s in segments):
        return None
    candidate = segments[-1]
    return candidate if CHARGE_POINT_ID.fullmatch(candidate) and ".." not in candidate else None


@dataclass
class Session:
    charge_point_id: str
    connection: OcppConnection
    remote_address: str
    connected_at: float = field(default_factory=time.monotonic)
    replaced: bool = False
    sender: CallSender | None = None  # calls Levity sends it (operator API), made on the first
    generation: int = 0  # with several instances: its claim in connection_owners (levity/cluster.py)
    ocpp_version: str = ocpp16.VERSION


class CentralSystem:
    def __init__(self, settings: Settings, sink: AuditSink | None = None,
                 transaction_ids: tuple[int, int] = (1, 1)):
        self.settings = settings
        try:
            self.store = open_store(settings, transaction_ids)
        except DatabaseStartupError as exc:
            raise StartupError(str(exc)) from None
        except (sqlite3.Error, OSError) as exc:
            raise StartupError(f"cannot open the database {settings.database}: {exc}") from None
        try:
            self.sink = sink or make_sink(settings)
        except OSError as exc:
            raise StartupError(f"cannot open the audit file: {exc}") from None
        try:
            authorizer = Authorizer.from_file(settings.id_tags_file)
            id_tags = IdTagPolicy(settings.id_tag_mode, settings.secret("id_tag_key"))
        except (OSError, ValueError) as exc:
            raise ConfigError(str(exc)) from None
        self.events = EventFactory(settings.tag_prefix, id_tags)
        # The database going away and coming back is in the audit stream (`ocpp.store`).
        self.store.outage.listener = lambda fields: self.sink.emit(self.events.store_state(**fields))
        self.context = CentralSystemContext(
            store=self.store, sink=self.sink, events=self.events, authorizer=authorizer,
            validator=ocpp16.PayloadValidator(lenient_measurands=settings.lenient_measurands,
                                              lenient_timestamps=settings.lenient_timestamps),
            boot_policy=settings.boot_policy, heartbeat_interval=settings.heartbeat_interval,
            max_calls_per_second=settings.max_calls_per_second,
        )
        self.context.validator_201 = ocpp201.PayloadValidator(lenient_timestamps=settings.lenient_timestamps)
        # Offered subprotocols, the preferred version first (LEVITY_PREFERRED_OCPP_VERSION).
        self.subprotocols = sorted(VERSIONS, key=lambda name: VERSIONS[name][0] != settings.preferred_ocpp_version)
        self.sessions: dict[str, Session] = {}
        self.credentials = CredentialCache()
        self.auth_failures_by_id = FailureLimiter(settings.auth_failures_per_minute)
        self.auth_failures_by_address = FailureLimiter(settings.auth_failures_per_address_per_minute)
        self._password_checks: ThreadPoolExecutor | None = None  # created on the first check
        self._waiting_password_checks = 0
        self.auth_stats = {"password_checks": 0, "refused_rate_limited": 0, "refused_busy": 0}
        self.reading_pauses: dict[str, int] = {}  # why a connection stopped reading -> times
        self._held: set[OcppConnection] = set()  # stopped while the spool is full (overflow=block)
        self._release_task: asyncio.Task | None = None
        self.ssl_context = self._ssl_context()
        self._server: asyncio.Server | None = None
        self.accepting_connections = True
        self._keepalive_task: asyncio.Task | None = None
        self.command_schemas = CommandSchemas()
        self.operations = LocalOperations(self)  # what the operator API asks of this process
        self.api_listener = None
        self._closes_task: asyncio.Task | None = None
        self.cluster = None  # several instances on PostgreSQL: created at start
        if is_postgres(settings.database):
            from levity.cluster import InstanceCluster

            self.cluster = InstanceCluster(self.store, settings.database, settings.secret("database_password"),
                                           self._replaced_elsewhere)

    def _ssl_context(self) -> ssl.SSLContext | None:
        settings = self.settings
        if settings.security_profile < 2 and not settings.tls_cert:
            return None
        if not (settings.tls_cert and settings.tls_key):
            raise ConfigError(f"security profile {settings.security_profile} needs LEVITY_TLS_CERT and LEVITY_TLS_KEY")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2  # OCPP 1.6 security: TLS 1.2 or higher
        try:
            context.load_cert_chain(settings.tls_cert, settings.tls_key)
            if settings.security_profile == 3:
                if not settings.tls_client_ca:
                    raise ConfigError("security profile 3 needs LEVITY_TLS_CLIENT_CA")
                context.load_verify_locations(settings.tls_client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"TLS: {exc}") from None
        return context

    # Handshake ----------------------------------------------------------------------------

    def select_subprotocol(self, offered) -> str | None:
        # The preferred version when offered, else the other; None completes the handshake
        # without a subprotocol, and opened() then closes (OCPP-J).
        return next((name for name in self.subprotocols if name in offered), None)

    async def check_request(self, connection: OcppConnection, request: Request) -> Response | None:
        """None to accept the upgrade, or the HTTP response that refuses it."""
        if "upgrade" not in request.headers.get("Connection", "").lower():
            return self._http(connection, request)
        charge_point_id = charge_point_id_from_path(request.path)
        if charge_point_id is None:
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "No valid charge point id in the path: "
                                "connect to ws://host:port/<charge_point_id>")
        if len(self.sessions) >= self.settings.max_connections and charge_point_id not in self.sessions:
            return self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE, "Too many connections")
        if not self.sink.accepting:
            return self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE, "Audit spool full; try again later")
        if self.settings.unknown_charge_points == "refuse" and not self.store.is_registered(charge_point_id):
            return self._refuse(connection, HTTPStatus.NOT_FOUND, "Unknown charge point")
        profile = self.settings.security_profile
        if profile in (1, 2):
            refusal = await self._basic_auth_refusal(connection, charge_point_id, request)
            if refusal is not None:
                return refusal
        if profile == 3:
            common_name = certificate_common_name(connection.transport.get_extra_info("peercert"))
            if common_name != charge_point_id:
                log.warning("%s: client certificate is for %r: refused", charge_point_id, common_name)
                return self._refuse(connection, HTTPStatus.FORBIDDEN, "Certificate does not match the charge point id")
        return None

    def prepare_response(self, connection: OcppConnection, response: Response) -> None:
        response.headers["Server"] = f"Levity/{__version__}"

    def _refuse(self, connection: OcppConnection, status: HTTPStatus, text: str) -> Response:
        metrics.record_refused(status.value)
        return connection.protocol.reject(status, text + "\n")

    async def _basic_auth_refusal(self, connection: OcppConnection, charge_point_id: str,
                                  request: Request) -> Response | None:
        """None when the Basic auth credentials are right; else the 401, 429 or 503 to answer."""
        credentials = parse_basic_auth(request.headers.get("Authorization"))
        stored = self.store.password_hash(charge_point_id)
        if credentials is not None and credentials[0] == charge_point_id and stored is not None \
                and self.credentials.known(charge_point_id, credentials[1], stored):
            return None  # proven before against this very hash: no scrypt, no rate limit
        address = self._client_host(connection)
        for limiter, key in ((self.auth_failures_by_id, charge_point_id), (self.auth_failures_by_address, address)):
            if limiter.blocked(key):
                self.auth_stats["refused_rate_limited"] += 1
                response = self._refuse(connection, HTTPStatus.TOO_MANY_REQUESTS,
                                        "Too many failed authentication attempts; try again later")
                response.headers["Retry-After"] = str(limiter.retry_after(key))
                return response
        if credentials is None or credentials[0] != charge_point_id:
            log.warning("%s: refused: missing or mismatched Basic auth user", charge_point_id)
            ok = False
        elif stored is None:
            log.warning("%s: refused: no password set", charge_point_id)
            ok = False
        elif self._waiting_password_checks >= MAX_WAITING_PASSWORD_CHECKS:
            self.auth_stats["refused_busy"] += 1
            return self._refuse(connection, HTTPStatus.SERVICE_UNAVAILABLE, "Busy checking passwords; try again later")
        else:
            ok = await self._check_password(credentials[1], stored)
            if ok:
                self.credentials.remember(charge_point_id, credentials[1], stored)
            else:
                log.warning("%s: refused: wrong password", charge_point_id)
        if ok:
            return None
        self.auth_failures_by_id.failed(charge_point_id)
        self.auth_failures_by_address.failed(address)
        response = self._refuse(connection, HTTPStatus.UNAUTHORIZED, "Authentication required")
        response.headers["WWW-Authenticate"] = 'Basic realm="Levity OCPP", charset="UTF-8"'
        return response

    async def _check_password(self, password: str, stored: str) -> bool:
        if self._password_checks is None:
            self._password_checks = ThreadPoolExecutor(PASSWORD_CHECK_THREADS, thread_name_prefix="levity-password")
        self._waiting_password_checks += 1
        self.auth_stats["password_checks"] += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self._password_checks, verify_password, password, stored)
        finally:
            self._waiting_password_checks -= 1

    def _http(self, connection: OcppConnection, request: Request) -> Response:
        path = urlsplit(request.path).path
        reject = connection.protocol.reject
        if path == "/health":
            return reject(HTTPStatus.OK, "ok\n")
        if path == "/metrics":
            self.refresh_metrics()
            response = reject(HTTPStatus.OK, metrics.render().decode())
            response.headers["Content-Type"] = metrics.CONTENT_TYPE
            return response
        return reject(HTTPStatus.UPGRADE_REQUIRED, "This is an OCPP-J endpoint: "
                      "connect with WebSocket to /<charge_point_id>\n")

    def refresh_metrics(self) -> None:
        """Set the state gauges from this process' state, before a scrape (levity/metrics.py).
        Never raises: a scrape during shutdown (database closed) gets the last values."""
        try:
            by_version: dict[str, int] = {}
            for session in self.sessions.values():
                version = (session.connection.subprotocol or SUBPROTOCOL).removeprefix("ocpp")
                by_version[version] = by_version.get(version, 0) + 1
            try:
                active = self.store.open_transaction_count()
            except (sqlite3.Error, StorageError):  # the database is away: the store's own gauges still show
                active = None
            fluentd = self.settings.fluentd_enabled
            servers = getattr(getattr(self.sink, "servers", None), "servers", None) if fluentd else None
            metrics.set_state(
                connected_by_version=by_version, transactions_active=active, audit_stats=self.sink.stats(),
                fluentd_servers={server.endpoint.label: bool(server.up) for server in servers or ()},
                spool_limit_bytes=self.settings.spool_max_bytes if fluentd else None,
                calls_throttled=self.context.throttled)
            metrics.set_anomalies(self.events.anomalies)
            metrics.set_commands(self.operations.commands)
            # Per-connection bounds, authentication limits, per-Fluentd-server delivery: kept as
            # plain values by their modules and published under their own names.
            store_lines = [f"levity_store_{name} {value}" for name, value in sorted(self.store.stats().items())]
            metrics.set_plain_lines(self._limit_lines() + getattr(self.sink, "metric_lines", list)() + store_lines
                                    + [f"levity_calls_not_stored {self.context.not_stored}",
                                       f"levity_audit_durable_failed {self.sink.stats().get('durable_failed', 0)}"])
        except Exception:  # noqa: BLE001 - metrics must not break the endpoint that serves them
            log.exception("metrics: refreshing the gauges failed")

    def _limit_lines(self) -> list[str]:
        """Per-connection bounds, what they hold now, and the authentication limits."""
        settings = self.settings
        connections = [session.connection for session in self.sessions.values()]
        paused: dict[str, int] = {}
        for connection in connections:
            for reason in connection.paused:
                paused[reason] = paused.get(reason, 0) + 1
        lines = [
            f"levity_limit_max_queued_frames {settings.max_queued_frames}",
            f"levity_limit_max_queued_bytes {settings.max_queued_bytes}",
            f"levity_limit_max_send_buffer_bytes {settings.max_send_buffer_bytes}",
            f"levity_queued_frames {sum(c.queued_frames for c in connections)}",
            f"levity_queued_frames_max {max((c.queued_frames for c in connections), default=0)}",
            f"levity_queued_bytes {sum(c.queued_bytes for c in connections)}",
            f"levity_send_buffer_bytes {sum(c.send_buffer_bytes for c in connections)}",
        ]
        for reason in ("queue", "send", "spool"):
            lines.append(f'levity_connections_reading_paused{{reason="{reason}"}} {paused.get(reason, 0)}')
            lines.append(f'levity_reading_pauses_total{{reason="{reason}"}} {self.reading_pauses.get(reason, 0)}')
        for name, value in sorted(self.auth_stats.items()):
            lines.append(f"levity_auth_{name} {value}")
        entries = len(self.auth_failures_by_id) + len(self.auth_failures_by_address)
        lines.append(f"levity_auth_failure_table_entries {entries}")
        return lines

    # Backpressure from the audit spool ------------------------------------------------------

    def holding(self, connection: OcppConnection) -> bool:
        """True while the audit spool is full under LEVITY_SPOOL_OVERFLOW=block: the connection
        stops reading and its next call waits, so connected chargers stop growing the spool
        as new ones are refused. The audit sender keeps draining the spool meanwhile."""
        if self.sink.accepting or not self.accepting_connections:
            return False
        if connection not in self._held:
            self._held.add(connection)
            connection.pause("spool")
            if self._release_task is None:
                self._release_task = asyncio.ensure_future(self._release_when_spool_drains())
        return True

    async def _release_when_spool_drains(self) -> None:
        # Polled: the spool has no "drained" callback, and this runs only while it is full.
        try:
            while not self.sink.accepting and self.accepting_connections:
                await asyncio.sleep(SPOOL_HOLD_POLL_SECONDS)
        finally:
            self._release_task = None
            held, self._held = self._held, set()
            for connection in held:
                connection.resume("spool")
                connection.drain_again()

    # Connections --------------------------------------------------------------------------

    def opened(self, connection: OcppConnection) -> None:
        charge_point_id = charge_point_id_from_path(connection.request.path)
        remote = self._client_address(connection)
        if connection.subprotocol not in VERSIONS:
            log.warning("%s from %s offered neither %s subprotocol: closing", charge_point_id, remote,
                        " nor ".join(VERSIONS))
            connection.close(1002, f"{' or '.join(VERSIONS)} subprotocol required")
            return
        version, handler_class = VERSIONS[connection.subprotocol]

        session = Session(charge_point_id, connection, remote, ocpp_version=version)
        previous = self.sessions.get(charge_point_id)
        self.sessions[charge_point_id] = session
        if previous is not None:
            previous.replaced = True
            log.info("%s reconnected from %s: closing its previous connection from %s",
                     charge_point_id, remote, previous.remote_address)
            previous.connection.close(1000, "replaced by a newer connection")
        if self.cluster is not None:
            session.generation = self.cluster.claim(charge_point_id)
        else:
            self.store.claim_connection(charge_point_id)

        charge_point = handler_class(charge_point_id, connection, self.context)
        connection.on_message = charge_point.handle_frame
        connection.on_close = lambda _: self._closed(session)
        self.store.record_ocpp_version(charge_point_id, version)
        self.sink.emit(self.events.make("websocket_connect", charge_point_id, remote_address=remote,
                                        ocpp_version=version))
        log.info("%s connected from %s (OCPP %s)", charge_point_id, remote, version)

    def _forwarded(self, connection: OcppConnection) -> str | None:
        """The charger's address as a trusted balancer reports it (levity/proxy.py)."""
        peer = connection.remote_address[0] if connection.remote_address else None
        headers = connection.request.headers if connection.request is not None else None
        return forwarded_client(peer, headers, self.settings.trusted_proxies)

    def _client_host(self, connection: OcppConnection) -> str:
        peer = connection.remote_address[0] if connection.remote_address else None
        return self._forwarded(connection) or peer or "unknown"

    def _client_address(self, connection: OcppConnection) -> str:
        """As remote_address in the audit trail: the charger's, also behind a trusted balancer
        (which does not pass the charger's port on)."""
        forwarded = self._forwarded(connection)
        if forwarded:
            return f"[{forwarded}]" if ":" in forwarded else forwarded
        return format_address(connection.remote_address)

    def _replaced_elsewhere(self, charge_point_id: str, generation: int) -> None:
        """The charger connected to another instance after it connected here: this one is stale."""
        session = self.sessions.get(charge_point_id)
        if session is not None and session.generation < generation:
            session.replaced = True
            self.cluster.replaced_elsewhere += 1
            self.store.release_connection(charge_point_id)  # its transactions now change elsewhere
            log.info("%s reconnected to another instance: closing its connection here from %s",
                     charge_point_id, session.remote_address)
            session.connection.close(1000, "replaced by a newer connection")

    def _closed(self, session: Session) -> None:
        if self.sessions.get(session.charge_point_id) is session:
            del self.sessions[session.charge_point_id]
            self.store.release_connection(session.charge_point_id)  # what it kept while the charger was here
        connection = session.connection
        duration = round(time.monotonic() - session.connected_at, 3)
        self.sink.emit(self.events.make(
            "websocket_disconnect", session.charge_point_id, remote_address=session.remote_address,
            close_code=connection.close_code, close_reason=connection.close_reason,
            duration_seconds=duration, replaced=session.replaced, ocpp_version=session.ocpp_version))
        log.info("%s disconnected (code %s, %.1fs)", session.charge_point_id, connection.close_code, duration)

    async def _keepalive(self) -> None:
        """Ping chargers that have been quiet for ping_interval; drop those that stay silent
        for ping_timeout more. One sweep for all connections instead of a task each."""
        interval, timeout = self.settings.ping_interval, self.settings.ping_timeout
        while True:
            await asyncio.sleep(min(interval, timeout) / 2)
            now = time.monotonic()
            for session in list(self.sessions.values()):
                if "queue" in session.connection.paused or "spool" in session.connection.paused:
                    continue  # Levity stopped reading it, not the charger: not idle
                idle = now - session.connection.last_seen
                if idle > interval + timeout:
                    log.warning("%s: no pong within %.0fs: closing", session.charge_point_id, timeout)
                    session.connection.close(1011, "keepalive ping timeout")
                    session.connection.abort()
                elif idle > interval:
                    session.connection.ping()

    # Lifecycle ----------------------------------------------------------------------------

    async def start(self, listen: bool = True) -> None:
        """listen=False: a worker (levity/workers.py); its supervisor hands it the connections."""
        self.context.validator.compile(ChargePoint.routes())
        metrics.set_known_actions({*ChargePoint.routes(), *ChargingStation.routes()})
        self.context.validator_201.compile(ocpp201.HOT_ACTIONS)
        self._compile_in_background(self.context.validator_201,
                                    set(ChargingStation.routes()) - set(ocpp201.HOT_ACTIONS))
        self.command_schemas.compile_all()
        try:
            await self.sink.start()
        except OSError as exc:
            raise StartupError(f"cannot open the audit spool: {exc}") from None
        self._keepalive_task = asyncio.create_task(self._keepalive())
        # Transactions an operator closed with `levity transactions close`: their anomaly events.
        self._closes_task = asyncio.create_task(send_pending_closes_forever(self.store, self.sink, self.events))
        # Before the first charger (a worker's too: instances on other hosts take chargers over
        # from it), so every claim of a connection reaches the others.
        if self.cluster is not None:
            try:
                await self.cluster.start()
            except DatabaseStartupError as exc:
                raise StartupError(str(exc)) from None
        if not listen:
            return
        settings = self.settings
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(
                lambda: OcppConnection(self), settings.host, settings.port, ssl=self.ssl_context,
                ssl_handshake_timeout=settings.handshake_timeout if self.ssl_context else None, backlog=4096,
            )
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StartupError(f"cannot listen on {settings.host}:{settings.port}: {reason}") from None
        sockets = self._server.sockets or []
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.port
        scheme = "wss" if self.ssl_context else "ws"
        log.info("Levity %s listening on %s://%s:%d/<charge_point_id> (security profile %d)", __version__, scheme,
                 settings.host, self.port, settings.security_profile)
        if settings.api_port:
            from levity.api import serve_api
            from levity.api.tokens import TokenStore

            self.api_listener = await serve_api(settings, self.operations, TokenStore(self.store),
                                                self.command_schemas)

    @staticmethod
    def _compile_in_background(validator, actions) -> None:
        """One schema per turn of the event loop, so no charger waits behind more than one
        (a schema still missing when its first call comes is compiled for that call)."""
        pending = sorted(actions)
        loop = asyncio.get_running_loop()

        def step() -> None:
            if pending:
                validator.compile([pending.pop()])
                loop.call_later(0.01, step)

        loop.call_soon(step)

    async def stop(self) -> None:
        log.info("shutting down: closing %d charger connections", len(self.sessions))
        self.accepting_connections = False
        if self.api_listener is not None:
            await self.api_listener.stop()
        if self._server is not None:
            self._server.close()  # stop accepting
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
        if self._closes_task is not None:
            self._closes_task.cancel()
        if self.cluster is not None:
            await self.cluster.stop()
        if self._release_task is not None:
            self._release_task.cancel()
        for session in list(self.sessions.values()):
            session.connection.close(1001, "server shutting down")
        for _ in range(50):  # chargers answer the close frame within milliseconds
            if not self.sessions:
                break
            await asyncio.sleep(0.02)
        for session in list(self.sessions.values()):
            session.connection.abort()
        await wait_closed(self.sink, SHUTDOWN_FLUSH_SECONDS)
        await self.store.drain()
        self.store.close()
        if self._password_checks is not None:
            self._password_checks.shutdown(wait=False, cancel_futures=True)
        log.info("stopped")


async def serve_until_signalled(settings: Settings) -> None:
    central = CentralSystem(settings)
    await central.start()
    freeze_startup_objects()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, central.sink.reopen)  # logrotate's postrotate
    await stop.wait()
    await central.stop()


def freeze_startup_objects() -> None:
    """Move what exists after start (modules, compiled validators, settings: tens of thousands
    of objects that live forever) out of the garbage collector's reach. Under load its full
    collections scanned them all, tens of milliseconds each, about 10% of the CPU."""
    gc.collect()
    gc.freeze()


def configure_logging(level: str, prefix: str = "") -> None:
    logging.basicConfig(level=level, stream=sys.stderr,
                        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
    # Both libraries log whole frames or per-connection chatter at INFO.
    logging.getLogger("ocpp").setLevel(logging.WARNING)
    logging.getLogger("websockets").setLevel(logging.WARNING)


OPEN_FILES_MARGIN = 256  # descriptors besides the chargers': database, spool, Fluentd, listeners


def raise_open_files_limit(max_connections: int) -> None:
    """Lift the soft limit on open files up to what LEVITY_MAX_CONNECTIONS needs (shells
    start with 1024, so the 1,000th charger would otherwise be refused), within the hard limit."""
    needed = max_connections + OPEN_FILES_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (OSError, ValueError) as exc:  # e.g. a seccomp filter without @resources
            log.warning("cannot raise the open files limit from %d: %s", soft, exc)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("the open files limit (%d) is below LEVITY_MAX_CONNECTIONS (%d) + %d: chargers beyond about "
                    "%d get no connection; raise it (ulimit -n, systemd LimitNOFILE=) or lower "
                    "LEVITY_MAX_CONNECTIONS", soft, max_connections, OPEN_FILES_MARGIN,
                    max(0, soft - OPEN_FILES_MARGIN))
