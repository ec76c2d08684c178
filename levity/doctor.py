"""`levity doctor`: the integration guide's troubleshooting questions in one command.

Loads the settings exactly as `levity serve` does (flags over environment) and checks:
configuration consistency, the spool (writable, depth, age of the oldest event), Fluentd
(TCP/TLS connect and shared-key handshake), an acknowledged test event (tag `<prefix>.doctor`,
event_type `doctor_probe`) and, with --profile, that a fluent.conf profile's forward source
matches the settings. One line per check (OK/WARN/FAIL), then a verdict.

Exit status: 0 healthy, 1 warnings only, 2 at least one failure (or unusable settings).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path


from levity.config import ConfigError, Settings, add_arguments, is_loopback_host, load_settings

OK, WARN, FAIL = "OK", "WARN", "FAIL"
EXIT = {OK: 0, WARN: 1, FAIL: 2}
VERDICT = {OK: "healthy", WARN: "working, with warnings", FAIL: "not working"}


@dataclass
class Check:
    name: str
    status: str
    detail: str


class Report:
    def __init__(self) -> None:
        self.checks: list[Check] = []

    def add(self, name: str, status: str, detail: str) -> Check:
        check = Check(name, status, detail)
        self.checks.append(check)
        return check

    @property
    def worst(self) -> str:
        statuses = {c.status for c in self.checks}
        return FAIL if FAIL in statuses else WARN if WARN in statuses else OK


# Configuration -----------------------------------------------------------------------------

def check_configuration(settings: Settings, report: Report) -> bytes | None:
    """Consistency of the settings; returns the shared key (None when unset or unreadable)."""
    if not settings.fluentd_enabled:
        report.add("fluentd enabled", WARN, f"FLUENTD_ENABLED is false: `levity serve` sends audit events to "
                                            f"--audit-sink {settings.audit_sink}, not Fluentd (checked anyway)")
    else:
        servers = ", ".join(f"{host}:{port}" for host, port in settings.fluentd_server_list())
        report.add("fluentd enabled", OK, f"events go to {servers}"
                   + (" (in this order of preference)" if len(settings.fluentd_server_list()) > 1 else ""))
    shared_key = None
    try:
        shared_key = settings.secret("fluentd_shared_key")
    except ConfigError as exc:
        report.add("shared key", FAIL, str(exc))
    if shared_key is not None and not settings.fluentd_tls:
        report.add("shared key without TLS", WARN, "the shared key authenticates both ends, but events (with "
                                                   "id_tag, personal data) travel unencrypted: set FLUENTD_TLS=true")
    if settings.fluentd_tls:
        if settings.fluentd_tls_ca and not Path(settings.fluentd_tls_ca).is_file():
            report.add("tls ca", FAIL, f"FLUENTD_TLS_CA {settings.fluentd_tls_ca} is not a readable file")
        if not settings.fluentd_tls_verify:
            report.add("tls verify", WARN, "FLUENTD_TLS_VERIFY=false: Fluentd's certificate is not checked "
                                           "(anyone on the path can read the events)")
    elif settings.fluentd_tls_ca:
        report.add("tls ca", WARN, "FLUENTD_TLS_CA is set but FLUENTD_TLS is false: it is not used")
    try:
        id_key = settings.secret("id_tag_key")
    except ConfigError as exc:
        report.add("id_tag key", FAIL, str(exc))
        id_key = None
    else:
        if settings.id_tag_mode == "pseudonymize" and not id_key:
            report.add("id_tag privacy", FAIL, "LEVITY_ID_TAG_MODE=pseudonymize needs LEVITY_ID_TAG_KEY or "
                                               "LEVITY_ID_TAG_KEY_FILE (`levity serve` refuses to start)")
        elif settings.id_tag_mode != "pseudonymize" and id_key:
            report.add("id_tag privacy", WARN, f"a pseudonymization key is set but LEVITY_ID_TAG_MODE is "
                                               f"{settings.id_tag_mode}: the key is not used")
        else:
            report.add("id_tag privacy", OK, f"id_tag mode {settings.id_tag_mode}")
    check_charger_authentication(settings, report)
    if settings.batch_size < 1:
        report.add("batch size", FAIL, f"LEVITY_BATCH_SIZE must be at least 1, not {settings.batch_size}")
    return shared_key


def check_charger_authentication(settings: Settings, report: Report) -> None:
    """Profile 0 on a listener other hosts reach lets anyone connect as any charge point."""
    if settings.security_profile == 0 and not is_loopback_host(settings.host):
        report.add("charger authentication", WARN,
                   f"LEVITY_HOST {settings.host} is reachable from other hosts and LEVITY_SECURITY_PROFILE is 0: "
                   f"anyone who reaches port {settings.port} can connect as any charge point (the newest "
                   f"connection wins) and inject transactions; use profile 2 or 3 (docs/security.md)")
    else:
        report.add("charger authentication", OK,
                   f"security profile {settings.security_profile} on {settings.host}:{settings.port}")


def check_spool(settings: Settings, report: Report) -> None:
    from levity.audit.spool import SpoolInfo, inspect_spool

    directory = Path(settings.spool_dir)
    existing = directory if directory.exists() else next((p for p in directory.resolve().parents if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        report.add("spool writable", FAIL, f"{directory} cannot be created or written by this user "
                                           f"(uid {os.getuid()})")
        return
    report.add("spool writable", OK, f"{directory.resolve()}" + ("" if directory.exists() else " (created at start)"))
    from levity.workers import check_layout, shard_spool

    try:
        check_layout(settings)
    except ConfigError as exc:
        report.add("workers", FAIL, str(exc))
    # With several workers each has its own spool under the directory: their depths add up.
    directories = [Path(shard_spool(settings.spool_dir, i, settings.workers)) for i in range(settings.workers)]
    try:
        infos = [inspect_spool(d) for d in directories]
    except OSError as exc:
        report.add("spool depth", FAIL, f"cannot read {directory}: {exc}")
        return
    oldest = [i.oldest_time_ns for i in infos if i.oldest_time_ns]
    info = SpoolInfo(events=sum(i.events for i in infos), bytes=sum(i.bytes for i in infos),
                     oldest_time_ns=min(oldest) if oldest else None, segments=sum(i.segments for i in infos))
    if not info.events:
        report.add("spool depth", OK, "empty: Fluentd has acknowledged every event")
        return
    age = max(0.0, time.time() - info.oldest_time_ns / 1e9) if info.oldest_time_ns else 0.0
    used = info.bytes / settings.spool_max_bytes if settings.spool_max_bytes else 0
    detail = (f"{info.events} unacknowledged event(s), {info.bytes} bytes ({used:.0%} of "
              f"{settings.spool_max_bytes}), oldest {age:.0f}s old")
    report.add("spool depth", WARN if used >= 0.8 or age > 60 else OK, detail)


# Fluentd -----------------------------------------------------------------------------------

async def check_fluentd(settings: Settings, shared_key: bytes | None, report: Report) -> None:
    """Each Fluentd server: reachable (TCP/TLS and handshake), then acknowledges a test event.
    With several servers (FLUENTD_SERVERS) a failing one is a warning as long as another one
    acknowledges: failover covers it."""
    from levity.audit.forward import endpoints_from_settings

    try:
        endpoints = endpoints_from_settings(settings)
    except (ConfigError, OSError, ValueError) as exc:
        report.add("fluentd reachable", FAIL, f"cannot build the connection settings: {exc}")
        return
    if len(endpoints) == 1:
        await check_server(settings, endpoints[0], shared_key, report, "")
        return
    working = []
    for endpoint in endpoints:
        server_report = Report()
        if await check_server(settings, endpoint, shared_key, server_report, f" {endpoint.label}"):
            working.append(endpoint.label)
        for check in server_report.checks:
            report.add(check.name, WARN if check.status == FAIL else check.status, check.detail)
    if not working:
        report.add("fluentd servers", FAIL, f"none of the {len(endpoints)} servers acknowledges: events stay in "
                                            "the spool")
    else:
        report.add("fluentd servers", OK, f"{len(working)} of {len(endpoints)} acknowledge; events go to "
                                          f"{working[0]}")


async def check_server(settings: Settings, endpoint, shared_key: bytes | None, report: Report, suffix: str) -> bool:
    """The checks of one server, named with `suffix`; True when it acknowledged the test event."""
    from levity.audit.events import iso_utc
    from levity.audit.forward import ForwardConnection, ForwardError, HandshakeError, encode_batch
    from levity.audit.spool import SpooledEvent

    what = endpoint.describe() + (" with shared-key handshake" if shared_key else "")
    started = time.monotonic()
    try:
        conn = await ForwardConnection.open(endpoint)
    except HandshakeError as exc:
        report.add("fluentd reachable" + suffix, FAIL, f"connected, but the handshake failed: {exc}")
        report.add("fluentd acknowledges" + suffix, FAIL, "not tried (no connection)")
        return False
    except ForwardError as exc:
        report.add("fluentd reachable" + suffix, FAIL,
                   f"{exc} (is Fluentd running, with a forward source on this port?)")
        report.add("fluentd acknowledges" + suffix, FAIL, "not tried (no connection)")
        return False
    report.add("fluentd reachable" + suffix, OK, f"{what} in {1000 * (time.monotonic() - started):.0f} ms"
               + (f" (server {conn.server_hostname})" if conn.server_hostname else ""))
    now = time.time_ns()
    record = {"event_type": "doctor_probe", "charge_point_id": "levity-doctor", "timestamp": iso_utc(now),
              "event_id": uuid.uuid4().hex, "host": socket.gethostname()}
    tag = f"{settings.tag_prefix}.doctor"
    started = time.monotonic()
    try:
        await conn.send(*encode_batch([SpooledEvent.of(tag, now, record)]))
    except HandshakeError as exc:
        report.add("fluentd acknowledges" + suffix, FAIL, str(exc))
    except ForwardError as exc:
        report.add("fluentd acknowledges" + suffix, FAIL, f"test event {tag} not acknowledged: {exc}")
    else:
        report.add("fluentd acknowledges" + suffix, OK, f"test event {tag} (event_id {record['event_id']}) "
                                                        f"acknowledged in {1000 * (time.monotonic() - started):.0f} ms")
        return True
    finally:
        conn.close()
    return False


# Profile -----------------------------------------------------------------------------------

def check_profile(settings: Settings, shared_key: bytes | None, spec: str, report: Report) -> None:
    try:
        from levity import fluentconf
        load_profile = fluentconf.load_profile
    except (ImportError, AttributeError):
        report.add("profile", WARN, "this Levity has no fluent.conf generator (levity.fluentconf): not compared")
        return
    try:
        path = fluentconf.find_profile(spec) if hasattr(fluentconf, "find_profile") else Path(spec)
        profile = load_profile(path)
        if hasattr(fluentconf, "render"):
            fluentconf.render(profile)
    except (fluentconf.ProfileError, OSError, ValueError) as exc:
        report.add("profile", FAIL, f"{spec} does not render: {str(exc).splitlines()[0]}")
        return
    report.add("profile", OK, f"{profile.label} renders")
    source = profile.doc.sources.forward
    if source.port != settings.fluentd_port:
        report.add("profile port", FAIL, f"the profile's forward source listens on {source.port}, "
                                         f"FLUENTD_PORT is {settings.fluentd_port}")
    else:
        report.add("profile port", OK, f"both {source.port}")
    tls = bool(source.tls and source.tls.enabled)
    if tls != settings.fluentd_tls:
        report.add("profile tls", FAIL, f"the profile's forward source {'uses' if tls else 'does not use'} TLS, "
                                        f"FLUENTD_TLS is {str(settings.fluentd_tls).lower()}")
    else:
        report.add("profile tls", OK, "both " + ("TLS" if tls else "plain TCP"))
    security = source.security
    if bool(security) != bool(shared_key):
        report.add("profile shared key", FAIL,
                   "the profile's forward source has a <security> shared key but FLUENTD_SHARED_KEY is unset"
                   if security else "FLUENTD_SHARED_KEY is set but the profile's forward source has no <security>")
    elif security and security.self_hostname == settings.fluentd_self_hostname:
        report.add("profile shared key", FAIL, f"Fluentd's self_hostname and FLUENTD_SELF_HOSTNAME are both "
                                               f"{security.self_hostname!r}: the handshake rejects that")
    else:
        report.add("profile shared key", OK, "both set (values not compared: the profile only names where "
                                              "Fluentd reads the key)" if security else "neither uses one")


# Command -----------------------------------------------------------------------------------

def run_checks(settings: Settings, profile: str | None = None) -> Report:
    report = Report()
    shared_key = check_configuration(settings, report)
    check_spool(settings, report)
    asyncio.run(check_fluentd(settings, shared_key, report))
    if profile:
        check_profile(settings, shared_key, profile, report)
    return report


def _doctor(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args)
    except ConfigError as exc:
        report = Report()
        report.add("settings", FAIL, str(exc))
    else:
        report = run_checks(settings, args.profile)
    worst = report.worst
    if args.json:
        print(json.dumps({"checks": [asdict(c) for c in report.checks], "verdict": VERDICT[worst],
                          "status": worst, "exit_code": EXIT[worst]}, indent=2))
    else:
        width = max(len(c.name) for c in report.checks)
        for c in report.checks:
            print(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
        print(f"verdict: {VERDICT[worst]} ({worst})")
    return EXIT[worst]


def register(commands) -> None:
    doctor = commands.add_parser(
        "doctor", help="check the Fluentd connection, acknowledgements, spool and configuration",
        description="Answer the troubleshooting questions in one command: is Fluentd reachable (TCP/TLS, "
                    "handshake), does it acknowledge a test event (tag <prefix>.doctor), how deep is the "
                    "spool, is the configuration consistent. Settings are read like `levity serve` reads "
                    "them. Exit status: 0 healthy, 1 warnings only, 2 failures.",
    )
    add_arguments(doctor)
    doctor.add_argument("--profile", metavar="FILE",
                        help="a fluent.conf profile (file or shipped name): compare its forward source "
                             "(port, TLS, shared key) with these settings")
    doctor.add_argument("--json", action="store_true", help="machine-readable output")
    doctor.set_defaults(func=_doctor)


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="levity")
    register(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    sys.exit(ns.func(ns))
