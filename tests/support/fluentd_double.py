#!/usr/bin/python3
"""A test double of the `fluentd` command, for hosts where the real Fluentd cannot be installed.

It behaves as Fluentd 1.16 does where the fluentd Ansible role and fluent-package's unit depend
on it, and nowhere else:

- `fluentd --dry-run -c FILE` reads the config and exits 1, saying why, when a file it names
  (cert_path, private_key_path, ca_path) cannot be read by the user running it, as Fluentd's
  in_forward does when it loads its certificate; 0 otherwise.
- `fluentd --log FILE --daemon PIDFILE` (fluent-package's ExecStart; the config comes from -c or
  FLUENT_CONF) checks the config the same way before it daemonises (exit 1, nothing started),
  then forks, writes PIDFILE and serves the forward input (Forward Protocol v1, with TLS and the
  shared-key handshake when configured) through the suite's own ForwardReceiver.
- Events matched by a `<match>` with `@type stdout` are written to the log as out_stdout does
  (`TIME TAG: JSON`), after the `<filter>`s with `@type record_transformer` (static values only).
- SIGUSR2 re-reads the config ("Reloading new config", the same process); SIGTERM stops it.

It does not parse anything else in fluent.conf: outputs other than stdout are accepted and
ignored. Run with python3 and python3-msgpack; forward_receiver.py sits beside it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import sys
import threading
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
from forward_receiver import ForwardReceiver  # noqa: E402  (beside this file, not a package)

_ENV = re.compile(r"""^"#\{ENV\['([A-Za-z_][A-Za-z0-9_]*)'\]\}"$""")
_FILE_PARAMS = ("cert_path", "private_key_path", "ca_path")


@dataclass
class Section:
    name: str
    arg: str
    params: dict[str, str] = field(default_factory=dict)
    children: list["Section"] = field(default_factory=list)

    def find(self, name: str) -> list["Section"]:
        return [child for child in self.children if child.name == name]


def parse(text: str) -> Section:
    root, stack = Section("ROOT", ""), []
    stack.append(root)
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("</"):
            stack.pop()
        elif line.startswith("<"):
            name, _, arg = line[1:-1].strip().partition(" ")
            section = Section(name, arg.strip())
            stack[-1].children.append(section)
            stack.append(section)
        else:
            key, _, value = line.partition(" ")
            value = value.strip()
            if env := _ENV.match(value):
                value = os.environ.get(env.group(1), "")
            elif len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            stack[-1].params[key] = value
    return root


def _walk(section: Section):
    yield section
    for child in section.children:
        yield from _walk(child)


class ConfigError(Exception):
    pass


def check(root: Section) -> None:
    """Raise ConfigError where Fluentd's configure would fail for the reasons this double knows."""
    for section in _walk(root):
        for key in _FILE_PARAMS:
            if key in section.params:
                path = section.params[key]
                try:
                    with open(path, "rb"):
                        pass
                except OSError as exc:
                    raise ConfigError(f"{type(exc).__name__}: {exc.strerror} @ rb_sysopen - {path}") from None


def tag_regexp(pattern: str) -> re.Pattern:
    """Fluentd's match pattern: `*` one tag part, `**` zero or more parts, `{a,b}` alternatives."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            if out.endswith(r"\."):  # a.** also matches a
                out = out[:-2] + r"(?:\..*)?"
            else:
                out += ".*"
            i += 2
        elif pattern[i] == "*":
            out, i = out + r"[^.]+", i + 1
        elif pattern[i] == "{":
            end = pattern.index("}", i)
            out += "(?:" + "|".join(tag_regexp(p).pattern[:-1] for p in pattern[i + 1:end].split(",")) + ")"
            i = end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out + "$")


def _matches(section: Section, tag: str) -> bool:
    return any(tag_regexp(p).match(tag) for p in (section.arg or "**").split())


class Pipeline:
    """The routing this double knows: record_transformer filters, then the first matching <match>."""

    def __init__(self, root: Section):
        self.root = root

    def route(self, tag: str, record: dict, label: Section | None = None) -> dict | None:
        """The record as out_stdout would print it, or None when no stdout output gets it."""
        for section in (label or self.root).children:
            if section.name == "filter" and _matches(section, tag):
                if section.params.get("@type") == "record_transformer":
                    for fields in section.find("record"):
                        record = {**record, **fields.params}
            elif section.name == "match" and _matches(section, tag):
                outputs = section.find("store") if section.params.get("@type") == "copy" else [section]
                printed = [self._output(output, tag, record) for output in outputs]
                return next((r for r in printed if r is not None), None)
        return None

    def _output(self, output: Section, tag: str, record: dict) -> dict | None:
        kind = output.params.get("@type")
        if kind == "relabel":
            target = next((s for s in self.root.find("label") if s.arg == output.params.get("@label")), None)
            return self.route(tag, record, target) if target else None
        return record if kind == "stdout" else None


def _log(stream, level: str, message: str) -> None:
    stream.write(f"{time.strftime('%Y-%m-%d %H:%M:%S +0000', time.gmtime())} [{level}]: {message}\n")
    stream.flush()


def _read(path: str) -> Section:
    with open(path, encoding="utf-8") as handle:
        return parse(handle.read())


def _receiver(root: Section) -> ForwardReceiver:
    source = next((s for s in root.find("source") if s.params.get("@type") == "forward"), None)
    if source is None:
        raise ConfigError("the double serves only a forward <source>")
    context = None
    for transport in source.find("transport"):
        if transport.arg == "tls":
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(transport.params["cert_path"], transport.params["private_key_path"])
    security = source.find("security")
    shared_key = security[0].params.get("shared_key") if security else None
    hostname = security[0].params.get("self_hostname", "fluentd") if security else "fluentd"
    return ForwardReceiver(source.params.get("bind", "0.0.0.0"), int(source.params.get("port", "24224")),
                           shared_key=shared_key, server_hostname=hostname, ssl_context=context)


def serve(config_path: str, log, ready=lambda: None) -> None:
    state = {"root": _read(config_path), "reload": False, "stop": False}
    receiver = _receiver(state["root"]).start()
    ready()
    signal.signal(signal.SIGUSR2, lambda *_: state.update(reload=True))
    signal.signal(signal.SIGTERM, lambda *_: state.update(stop=True))
    signal.signal(signal.SIGINT, lambda *_: state.update(stop=True))
    _log(log, "info", f"starting fluentd-double pid={os.getpid()}")
    seen = 0
    while not state["stop"]:
        if state["reload"]:
            state["reload"] = False
            _log(log, "info", "Reloading new config")
            try:
                root = _read(config_path)
                check(root)
            except (OSError, ConfigError) as exc:  # Fluentd keeps the running config
                _log(log, "error", f"failed to reload config: {exc}")
            else:
                state["root"] = root
                receiver.stop()
                receiver = _receiver(root).start()
                seen = 0
        events = receiver.events
        pipeline = Pipeline(state["root"])
        for event in events[seen:]:
            record = pipeline.route(event.tag, event.record)
            if record is not None:
                stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(event.time_ns / 1e9))
                log.write(f"{stamp}.{event.time_ns % 1_000_000_000:09d} +0000 {event.tag}: "
                          f"{json.dumps(record, separators=(',', ':'))}\n")
        log.flush()
        seen = len(events)
        time.sleep(0.1)
    _log(log, "info", "shutting down fluentd-double")
    receiver.stop()


def daemonize(config_path: str, log_path: str | None, pid_path: str) -> int:
    ready_read, ready_write = os.pipe()
    if os.fork():  # the process systemd started: wait until the daemon has written its pid file
        os.close(ready_write)
        ok = os.read(ready_read, 1) == b"1"
        return 0 if ok else 1
    os.close(ready_read)
    os.setsid()
    if os.fork():
        os._exit(0)
    log = open(log_path, "a", encoding="utf-8") if log_path else sys.stdout
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    def ready() -> None:  # listening: now systemd may read the pid file
        with open(pid_path, "w", encoding="ascii") as handle:
            handle.write(f"{os.getpid()}\n")
        os.write(ready_write, b"1")
        os.close(ready_write)

    try:
        serve(config_path, log, ready)
    except Exception as exc:  # noqa: BLE001 (the daemon's last word goes to its log)
        _log(log, "error", f"unexpected error {exc!r}")
        os._exit(1)
    os._exit(0)


def main(argv: list[str]) -> int:
    args = {"-c": os.environ.get("FLUENT_CONF", "/etc/fluent/fluentd.conf"), "--log": None, "--daemon": None}
    dry_run, rest = False, list(argv)
    while rest:
        arg = rest.pop(0)
        if arg == "--dry-run":
            dry_run = True
        elif arg in args and rest:
            args[arg] = rest.pop(0)
        elif arg == "--version":
            print("fluentd-double (test double of fluentd 1.16)")
            return 0
        else:
            print(f"fluentd-double: unsupported argument {arg!r}", file=sys.stderr)
            return 2
    config_path = args["-c"]
    log = open(args["--log"], "a", encoding="utf-8") if args["--log"] and not dry_run else sys.stdout
    try:
        root = _read(config_path)
        check(root)
        _receiver(root)
    except (OSError, ConfigError) as exc:
        _log(log, "error", f'config error file="{config_path}" error="{exc}"')
        if log is not sys.stdout:
            print(f"config error: {exc}", file=sys.stderr)
        return 1
    if dry_run:
        _log(log, "info", "finished dry run mode")
        return 0
    if args["--daemon"]:
        return daemonize(config_path, args["--log"], args["--daemon"])
    serve(config_path, log)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
