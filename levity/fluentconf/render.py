"""Rendering a validated profile with the Jinja2 templates, and writing the result atomically."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import jinja2

from levity.fluentconf.profile import Profile, load_profile
from levity.fluentconf.schema import SecretRef
from levity.fluentconf.units import integer_at_least_regexp
from levity.resources import resource_dir

_PLAIN = re.compile(r"^[A-Za-z0-9_./@:%+=,-]+$")


def format_value(value: object) -> str:
    """A Python value as a Fluentd parameter value (booleans true/false, quoted when needed)."""
    if isinstance(value, SecretRef):
        return value.ruby()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if _PLAIN.match(text):
        return text
    # Single quotes: Fluentd evaluates no embedded Ruby ("#{...}") in them; only \' and \\ escape.
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_CONTROL = re.compile(r"[\x00-\x1f\x7f\x85\u2028\u2029]")


def comment_text(value: object) -> str:
    """Text for a `#` comment line: control characters (a newline in a profile's path or name
    would end the comment and start a directive) shown as \\xNN escapes instead."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(value))


def _secret(value: object) -> str:
    if not isinstance(value, SecretRef):
        raise TypeError("a secret parameter must come from {env: NAME} or {file: /path}")
    return value.ruby()


def template_dir() -> Path:
    return resource_dir("templates") / "fluentd"


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(template_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["fv"] = format_value
    env.filters["secret"] = _secret
    env.filters["comment"] = comment_text
    env.filters["at_least_regexp"] = integer_at_least_regexp
    return env


def render(profile: Profile) -> str:
    """The fluent.conf text for a validated profile (deterministic: same profile, same bytes)."""
    used = {name for route in profile.doc.routes for name in route.outputs}
    labels = sorted((output for output in profile.outputs if output.name in used), key=lambda o: o.name)
    text = environment().get_template("fluent.conf.j2").render(
        profile=profile, doc=profile.doc, routes=profile.doc.routes, labels=labels)
    # Collapse runs of blank lines left by optional blocks; end with exactly one newline.
    text = re.sub(r"\n{3,}", "\n\n", text).strip("\n") + "\n"
    return text


def render_file(path: str | os.PathLike) -> str:
    """Load, validate and render a profile file (the entry point for Ansible and compose)."""
    return render(load_profile(path))


def write_atomic(text: str, out_path: str | os.PathLike, mode: int = 0o640) -> None:
    """Write `text` to `out_path` through a temporary file in the same directory and os.replace.

    Readers see the old file or the new one, never a partial or empty file. The file gets
    `mode` (0640), or keeps an existing file's mode when that is tighter.
    """
    if not text or not text.strip():
        raise ValueError("refusing to write an empty fluent.conf")
    out = Path(out_path)
    directory = out.parent if str(out.parent) else Path(".")
    try:
        mode &= os.stat(out).st_mode & 0o777
    except FileNotFoundError:
        pass
    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, out)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)
