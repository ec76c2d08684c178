"""Levity's settings: read once at start from the environment and the command line.

Every option has an environment variable (the contract fixes FLUENTD_ENABLED, FLUENTD_HOST
and FLUENTD_PORT; the rest are LEVITY_*) and a flag; a flag wins over the environment.
Nothing below the entry point reads the environment: it gets a Settings.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from levity.database import redact
from levity.proxy import parse_networks


class ConfigError(ValueError):
    """A setting has a value Levity cannot use; the message names the setting."""


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):  # also refuses nan
        raise ValueError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"expected a whole number of at least 0, got {text!r}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError(f"expected a port 0-65535, got {text!r}")
    return value


def _servers(text: str) -> tuple[tuple[str, int | None], ...]:
    """FLUENTD_SERVERS: comma-separated host[:port] ([v6addr]:port for IPv6); port None = FLUENTD_PORT."""
    if not text.strip():
        raise ValueError("empty (unset it to use FLUENTD_HOST alone, or list host[:port],host[:port],...)")
    entries = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            raise ValueError(f"empty entry in {text!r} (expected host[:port],host[:port],...)")
        if item.startswith("["):
            host, sep, rest = item[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"malformed entry {item!r} (IPv6 is written [address]:port)")
            port_text = rest[1:] if rest else None
        elif item.count(":") == 1:
            host, port_text = item.split(":")
        elif ":" in item:
            raise ValueError(f"malformed entry {item!r} (write an IPv6 address as [address]:port)")
        else:
            host, port_text = item, None
        if not host or any(c.isspace() or c in "/@" for c in host):
            raise ValueError(f"malformed host in {item!r}")
        port = None
        if port_text is not None:
            if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
                raise ValueError(f"port out of range in {item!r} (expected 1-65535)")
            port = int(port_text)
        entries.append((host.lower(), port))
    return tuple(entries)


def _size(text: str) -> int:
    """Bytes from '512MB', '64k', '1g' or a plain number."""
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    cleaned = text.strip().lower().removesuffix("b").removesuffix("i")
    if cleaned and cleaned[-1] in units:
        value = int(float(cleaned[:-1]) * units[cleaned[-1]])
    else:
        value = int(cleaned)
    if value < 1:
        raise ValueError(f"expected a positive size such as 64k or 1MB, got {text!r}")
    return value


def is_loopback_host(host: str) -> bool:
    """True for addresses only this machine reaches (a host name may resolve anywhere: False)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def opt(env: str, default: Any, help: str, *, parse=str, choices: tuple[str, ...] | None = None,
        secret: bool = False, metavar: str | None = None) -> Any:
    return field(default=default, repr=not secret, metadata={
        "env": env, "help": help, "parse": parse, "choices": choices, "secret": secret, "metavar": metavar,
    })


@dataclass(frozen=True)
class Settings:
    # Serving
    host: str = opt("LEVITY_HOST", "0.0.0.0", "address to listen on")
    port: int = opt("LEVITY_PORT", 9000, "WebSocket port chargers connect to", parse=_port)
    api_host: str = opt("LEVITY_API_HOST", "127.0.0.1",
                        "address of the operator HTTP API (docs/operator-api.md); loopback by default")
    api_port: int = opt("LEVITY_API_PORT", 9001, "port of the operator HTTP API; 0 turns it off", parse=_port)
    database: str = opt("LEVITY_DATABASE", "levity.db",
                        "SQLite database file (':memory:' keeps nothing), or a postgresql://user@host:port/db URL "
                        "shared by several instances (docs/scaling.md)")
    trusted_proxies: tuple = opt(
        "LEVITY_TRUSTED_PROXIES", (),
        "addresses or networks of balancers in front (e.g. HAProxy): from them, the charger's address is the "
        "last X-Forwarded-For entry (logged as remote_address, used by the authentication limits)",
        parse=parse_networks)
    proxy_protocol: bool = opt(
        "LEVITY_PROXY_PROTOCOL", False,
        "the balancers in LEVITY_TRUSTED_PROXIES open every connection to the chargers' port with a PROXY "
        "protocol header, version 1 or 2 (HAProxy send-proxy-v2): its address is the charger's; a connection "
        "from them without one is dropped, and so is one from anyone else that starts with one",
        parse=_bool, metavar="BOOL")
    database_password: str | None = opt("LEVITY_DATABASE_PASSWORD", None,
                                        "password of the PostgreSQL database (also PGPASSWORD or ~/.pgpass)",
                                        secret=True)
    database_password_file: str | None = opt("LEVITY_DATABASE_PASSWORD_FILE", None,
                                             "file holding the PostgreSQL password")
    workers: int = opt(
        "LEVITY_WORKERS", 1,
        "worker processes sharing the port; each owns the charge points whose id hashes to it, with its "
        "own database file and spool (docs/workers.md). More than 1 needs plain ws:// (TLS in front)",
        parse=_positive_int)
    boot_policy: str = opt(
        "LEVITY_BOOT_POLICY", "accept",
        "BootNotification answer for chargers not registered in the database: accept them "
        "(and register), or answer pending/rejected", choices=("accept", "pending", "rejected"))
    preferred_ocpp_version: str = opt(
        "LEVITY_PREFERRED_OCPP_VERSION", "2.0.1",
        "the OCPP version a charger offering both subprotocols (ocpp2.0.1 and ocpp1.6) gets (docs/ocpp201.md)",
        choices=("2.0.1", "1.6"))
    heartbeat_interval: int = opt("LEVITY_HEARTBEAT_INTERVAL", 300,
                                  "heartbeat interval (s) sent in the BootNotification answer",
                                  parse=_positive_int)
    id_tags_file: str | None = opt(
        "LEVITY_ID_TAGS_FILE", None,
        "YAML/JSON mapping of id tag to status (Accepted, Blocked, Expired, Invalid); "
        "when set, tags not listed are Invalid. Unset: every tag is Accepted")
    lenient_measurands: bool = opt(
        "LEVITY_LENIENT_MEASURANDS", False,
        "accept out-of-spec measurand/unit/phase/context/location values in MeterValues and "
        "StopTransaction (for chargers known to send them)", parse=_bool, metavar="BOOL")
    lenient_timestamps: bool = opt(
        "LEVITY_LENIENT_TIMESTAMPS", False,
        "accept timestamps that are not RFC 3339 date-times with an offset (e.g. no time zone) instead of "
        "answering PropertyConstraintViolation (for chargers known to send them)", parse=_bool, metavar="BOOL")
    # Limits and security (OCPP 1.6 security whitepaper profiles)
    max_frame_bytes: int = opt("LEVITY_MAX_FRAME_BYTES", 65536,
                               "largest WebSocket message accepted; bigger ones close the connection (1009)",
                               parse=_size)
    max_calls_per_second: float = opt("LEVITY_MAX_CALLS_PER_SECOND", 50.0,
                                      "calls per second per charger before Levity slows its answers "
                                      "(bursts of twice that are allowed)", parse=_positive_float)
    max_connections: int = opt("LEVITY_MAX_CONNECTIONS", 20000,
                               "concurrent charger connections; more are refused with HTTP 503",
                               parse=_positive_int)
    max_queued_frames: int = opt(
        "LEVITY_MAX_QUEUED_FRAMES", 32,
        "frames of one charger waiting for its handler (throttled, waiting for an fsync) before Levity stops "
        "reading its socket (TCP backpressure) until half of them are handled", parse=_positive_int)
    max_queued_bytes: int = opt(
        "LEVITY_MAX_QUEUED_BYTES", 1 << 20,
        "size of the frames of one charger waiting for its handler before Levity stops reading its socket",
        parse=_size)
    max_send_buffer_bytes: int = opt(
        "LEVITY_MAX_SEND_BUFFER_BYTES", 256 << 10,
        "answers buffered for a charger that does not read them before Levity stops reading its calls",
        parse=_size)
    auth_failures_per_minute: int = opt(
        "LEVITY_AUTH_FAILURES_PER_MINUTE", 10,
        "failed Basic auth attempts per charge point id per minute (bursts of as many) before further "
        "attempts are answered 429 without checking the password", parse=_positive_int)
    auth_failures_per_address_per_minute: int = opt(
        "LEVITY_AUTH_FAILURES_PER_ADDRESS_PER_MINUTE", 60,
        "the same per remote address (higher: chargers behind one NAT share an address)", parse=_positive_int)
    ping_interval: float = opt("LEVITY_PING_INTERVAL", 60.0,
                               "seconds between WebSocket pings to each charger", parse=_positive_float)
    ping_timeout: float = opt("LEVITY_PING_TIMEOUT", 60.0,
                              "seconds without a pong before a charger's connection is closed", parse=_positive_float)
    handshake_timeout: float = opt("LEVITY_HANDSHAKE_TIMEOUT", 10.0,
                                   "seconds a client has to finish the TLS and WebSocket handshakes",
                                   parse=_positive_float)
    security_profile: int = opt(
        "LEVITY_SECURITY_PROFILE", 0,
        "OCPP security profile: 0 none, 1 HTTP Basic auth, 2 TLS + Basic auth, 3 TLS + client certificates",
        parse=int, choices=(0, 1, 2, 3))
    unknown_charge_points: str = opt(
        "LEVITY_UNKNOWN_CHARGE_POINTS", "allow",
        "refuse: charge points not registered in the database are refused before the upgrade (HTTP 404)",
        choices=("allow", "refuse"))
    tls_cert: str | None = opt("LEVITY_TLS_CERT", None, "server certificate (PEM) for wss:// (profiles 2, 3)")
    tls_key: str | None = opt("LEVITY_TLS_KEY", None, "server private key (PEM)")
    tls_client_ca: str | None = opt("LEVITY_TLS_CLIENT_CA", None,
                                    "CA that signs charger certificates (profile 3: certificate CN = charge point id)")
    log_level: str = opt("LEVITY_LOG_LEVEL", "INFO", "log level", parse=str.upper,
                           choices=("DEBUG", "INFO", "WARNING", "ERROR"))

    # Audit events
    tag_prefix: str = opt("LEVITY_TAG_PREFIX", "ocpp", "Fluentd tag prefix of audit events")
    audit_sink: str = opt(
        "LEVITY_AUDIT_SINK", "stdout",
        "where audit events go when Fluentd is disabled: JSON lines on stdout, to --audit-file, or nowhere",
        choices=("stdout", "file", "none"))
    audit_file: str = opt("LEVITY_AUDIT_FILE", "levity-audit.jsonl", "JSON lines file for --audit-sink file")
    id_tag_mode: str = opt("LEVITY_ID_TAG_MODE", "plain",
                           "id_tag in audit events: as is, keyed hash (HMAC-SHA256), or omitted (null)",
                           choices=("plain", "pseudonymize", "omit"))
    id_tag_key: str | None = opt("LEVITY_ID_TAG_KEY", None, "key for --id-tag-mode pseudonymize", secret=True)
    id_tag_key_file: str | None = opt("LEVITY_ID_TAG_KEY_FILE", None, "file holding the pseudonymization key")

    # Fluentd (names fixed by the audit event contract)
    fluentd_enabled: bool = opt("FLUENTD_ENABLED", False, "send audit events to Fluentd (true/false)",
                                parse=_bool, metavar="BOOL")
    fluentd_host: str = opt("FLUENTD_HOST", "localhost", "Fluentd forward input host")
    fluentd_port: int = opt("FLUENTD_PORT", 24224, "Fluentd forward input port", parse=_port)
    fluentd_servers: tuple = opt(
        "FLUENTD_SERVERS", (),
        "several Fluentd servers for failover, host[:port],host[:port] (port defaults to FLUENTD_PORT): "
        "tried in order, the first one that acknowledges gets the events, the first is preferred again "
        "once it is back. Replaces FLUENTD_HOST when set", parse=_servers, metavar="LIST")
    fluentd_timeout: float = opt("FLUENTD_TIMEOUT", 3.0, "seconds to connect or wait for an ack",
                                 parse=_positive_float)
    fluentd_tls: bool = opt("FLUENTD_TLS", False, "connect to Fluentd over TLS", parse=_bool, metavar="BOOL")
    fluentd_tls_ca: str | None = opt("FLUENTD_TLS_CA", None, "CA bundle to verify Fluentd's certificate")
    fluentd_tls_verify: bool = opt("FLUENTD_TLS_VERIFY", True, "verify Fluentd's certificate and host name",
                                   parse=_bool, metavar="BOOL")
    fluentd_shared_key: str | None = opt("FLUENTD_SHARED_KEY", None,
                                         "shared key of Fluentd's <security> section", secret=True)
    fluentd_shared_key_file: str | None = opt("FLUENTD_SHARED_KEY_FILE", None, "file holding the shared key")
    fluentd_self_hostname: str = opt("FLUENTD_SELF_HOSTNAME", "levity", "hostname announced in the handshake")
    spool_dir: str = opt("LEVITY_SPOOL_DIR", "levity-spool", "directory of the audit spool (unacknowledged events)")
    spool_max_bytes: int = opt("LEVITY_SPOOL_MAX_BYTES", 512 << 20, "spool size bound, e.g. 512MB", parse=_size)
    spool_overflow: str = opt("LEVITY_SPOOL_OVERFLOW", "drop_oldest",
                              "what happens when the spool is full", choices=("block", "drop_oldest", "drop_newest"))
    flush_interval: float = opt("LEVITY_FLUSH_INTERVAL", 0.2,
                                "longest wait (s) before a batch of non-transaction events is written",
                                parse=_positive_float)
    batch_size: int = opt("LEVITY_BATCH_SIZE", 5000, "most events per Forward batch", parse=_positive_int)

    def __post_init__(self) -> None:
        if self.trusted_proxies and not isinstance(self.trusted_proxies[0], (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            # Given as text (in code, or as the workers receive their settings): parsed as the variable is.
            text = self.trusted_proxies if isinstance(self.trusted_proxies, str) else ",".join(self.trusted_proxies)
            try:
                object.__setattr__(self, "trusted_proxies", parse_networks(text))
            except ValueError as exc:
                raise ConfigError(f"LEVITY_TRUSTED_PROXIES: {exc}") from None
        if self.proxy_protocol and not self.trusted_proxies:
            raise ConfigError("LEVITY_PROXY_PROTOCOL needs LEVITY_TRUSTED_PROXIES: the balancers allowed to send "
                              "the header")
        if self.proxy_protocol and (self.security_profile >= 2 or self.tls_cert):
            raise ConfigError("LEVITY_PROXY_PROTOCOL reads the header before any TLS: terminate TLS at the balancer, "
                              "or pass the address with X-Forwarded-For (LEVITY_TRUSTED_PROXIES alone)")
        if isinstance(self.fluentd_servers, str):  # Settings(fluentd_servers="a,b:24225") in code and tests
            try:
                object.__setattr__(self, "fluentd_servers", _servers(self.fluentd_servers))
            except ValueError as exc:
                raise ConfigError(f"FLUENTD_SERVERS: {exc}") from None
        servers = self.fluentd_server_list()
        seen = set()
        for server in servers:
            if server in seen:
                raise ConfigError(f"FLUENTD_SERVERS: duplicate entry {_host_port(*server)}")
            seen.add(server)

    def fluentd_server_list(self) -> list[tuple[str, int]]:
        """The Fluentd servers in order of preference: FLUENTD_SERVERS, else FLUENTD_HOST alone."""
        if not self.fluentd_servers:
            return [(self.fluentd_host, self.fluentd_port)]
        return [(host, port or self.fluentd_port) for host, port in self.fluentd_servers]

    def secret(self, name: str) -> bytes | None:
        """The value of a secret setting, from its variable or its *_file companion."""
        value = getattr(self, name)
        path = getattr(self, name + "_file", None)
        if value:
            return value.encode()
        if path:
            try:
                return Path(path).read_bytes().strip()
            except OSError as exc:
                raise ConfigError(f"{name}_file: cannot read {path}: {exc.strerror}") from exc
        return None

    def redacted(self) -> dict[str, Any]:
        """The settings for logs and doctor: secrets shown as set/unset, never their value."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = ("<set>" if value else None) if f.metadata["secret"] else value
        out["database"] = redact(self.database)  # a URL may carry a password
        return out


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting; help shows the variable and its default."""
    for f in fields(Settings):
        meta = f.metadata
        secret_note = " (secret: prefer the variable or a file)" if meta["secret"] else ""
        parser.add_argument(
            "--" + f.name.replace("_", "-"), dest=f.name, default=None, choices=meta["choices"],
            metavar=meta["metavar"], type=meta["parse"] if meta["parse"] is not _bool else str,
            help=f"{meta['help']} [env {meta['env']}, default {f.default!r}]{secret_note}",
        )


def load_settings(args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags over environment over defaults; ConfigError names what is wrong."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(Settings):
        meta = f.metadata
        flag = getattr(args, f.name, None) if args is not None else None
        raw, source = (flag, "--" + f.name.replace("_", "-")) if flag is not None else (environ.get(meta["env"]), meta["env"])
        if raw is None or (isinstance(raw, str) and raw == "" and f.default is None):
            continue
        try:
            value = meta["parse"](raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        if meta["choices"] and value not in meta["choices"]:
            raise ConfigError(f"{source}: expected one of {', '.join(map(str, meta['choices']))}, got {raw!r}")
        values[f.name] = value
    return Settings(**values)


class StartupError(Exception):
    """Levity cannot start (database, audit files or port unusable): one clear log line, exit 1."""
