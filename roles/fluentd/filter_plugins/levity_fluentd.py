"""Ansible filters that render fluent.conf with Levity's own generator (levity.fluentconf).

One source of truth: the role holds no copy of the Fluentd templates. The filters run on the
controller and import the `levity` package from the Python running Ansible, or, when it is not
installed there, from the checkout this role lives in (its dependencies, pydantic, Jinja2 and
PyYAML, must then be importable).

    {{ 'production' | levity_fluentd_render }}         # a shipped profile by name
    {{ '/path/to/profile.yaml' | levity_fluentd_render }}
    {{ 'production' | levity_fluentd_profile_info }}   # gems, secrets, files, structural check
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from ansible.errors import AnsibleFilterError

_CHECKOUT = Path(__file__).resolve().parents[3]

# Plugins outside Fluentd's core, and the gems that provide them.
PLUGIN_GEMS = {
    "elasticsearch": "fluent-plugin-elasticsearch",
    "elasticsearch_data_stream": "fluent-plugin-elasticsearch",
    "s3": "fluent-plugin-s3",
    "cloudwatch_logs": "fluent-plugin-cloudwatch-logs",
    "prometheus": "fluent-plugin-prometheus",
    "prometheus_monitor": "fluent-plugin-prometheus",
    "prometheus_output_monitor": "fluent-plugin-prometheus",
    "rewrite_tag_filter": "fluent-plugin-rewrite-tag-filter",
}
_TYPE = re.compile(r"^\s*@type\s+(\S+)", re.MULTILINE)
_ENV = re.compile(r"ENV\['([A-Za-z_][A-Za-z0-9_]*)'\]")
_FILE_PARAM = re.compile(r"^\s*(cert_path|private_key_path|ca_path|ca_file|ca_cert_path|client_cert|client_key)\s+(\S+)",
                         re.MULTILINE)
_FILE_READ = re.compile(r"File\.read\('([^']+)'\)")
# A path component Fluentd fills in at write time: ${tag}, %Y-%m-%d, buffer chunk globs.
_PLACEHOLDER = re.compile(r"[$%*]")


def _fluentconf():
    try:
        import levity.fluentconf as fluentconf
    except ImportError:
        if (_CHECKOUT / "levity" / "fluentconf").is_dir() and str(_CHECKOUT) not in sys.path:
            sys.path.insert(0, str(_CHECKOUT))
        try:
            import levity.fluentconf as fluentconf
        except ImportError as exc:
            raise AnsibleFilterError(
                f"the Levity package is needed on the controller to render fluent.conf: {exc} "
                f"(pip install the checkout into the Python that runs Ansible: {sys.executable})") from exc
    return fluentconf


def _load(profile):
    fluentconf = _fluentconf()
    if not isinstance(profile, (str, Path)) or not str(profile):
        raise AnsibleFilterError(f"a fluentd profile is a shipped profile name or a file path, not {profile!r}")
    try:
        path = fluentconf.find_profile(str(profile))
        return path, fluentconf.load_profile(path)
    except FileNotFoundError as exc:
        raise AnsibleFilterError(str(exc)) from exc
    except fluentconf.ProfileError as exc:
        raise AnsibleFilterError(f"invalid fluentd profile {profile}:\n{exc}") from exc


def _static_prefix(template: str, names_a_file: bool) -> str:
    """The leading directories of TEMPLATE that hold no placeholder: what exists before any event.

    Fluentd creates the rest itself (out_file's mkdir with dir_permission, the buffer's chunk
    directories); creating the template literally would leave a directory named ``${tag}``.
    """
    parts = template.rstrip("/").split("/")
    static = []
    for part in parts:
        if _PLACEHOLDER.search(part):
            break
        static.append(part)
    else:
        if names_a_file:  # out_file's path is a file prefix: its last part is not a directory
            static.pop()
    return "/".join(static) or "/"


def _directories(text: str) -> list[str]:
    """The local directories the rendered config writes to, each cut to its static prefix.

    ``path`` inside <buffer> and ``directory`` (out_secondary_file) name directories; any other
    ``path`` (out_file's, in_tail's) names a file (or file template) inside a directory.
    """
    from levity.fluentconf.lint import parse

    root, _issues = parse(text)
    found = set()
    pending = [root]
    while pending:
        section = pending.pop()
        pending.extend(section.children)
        for key, value, _line in section.params:
            if key in ("path", "directory") and value.startswith("/"):
                names_a_file = key == "path" and section.name != "buffer"
                found.add(_static_prefix(value, names_a_file))
    return sorted(found)


def levity_fluentd_render(profile) -> str:
    """The fluent.conf text the Levity generator renders for PROFILE (name or path)."""
    _path, loaded = _load(profile)
    return _fluentconf().render(loaded)


def levity_fluentd_profile_info(profile) -> dict:
    """What a profile needs on the host, read from its rendered config.

    name, path, description; gems (plugin gems outside Fluentd's core); environment (the
    variables its "#{ENV[...]}" secrets read); files (certificates, keys and secret files it
    reads); directories (the static prefixes of buffer, secondary_file and out_file paths); problems (Levity's structural check
    of the rendered text, empty when it passes).
    """
    path, loaded = _load(profile)
    fluentconf = _fluentconf()
    text = fluentconf.render(loaded)
    from levity.fluentconf.lint import lint

    types = sorted(set(_TYPE.findall(text)))
    files = sorted({value for _name, value in _FILE_PARAM.findall(text)} | set(_FILE_READ.findall(text)))
    return {
        "name": loaded.name,
        "path": str(path),
        "description": loaded.description,
        "plugin_types": types,
        "gems": sorted({PLUGIN_GEMS[t] for t in types if t in PLUGIN_GEMS}),
        "environment": sorted(set(_ENV.findall(text))),
        "files": files,
        "directories": _directories(text),
        "problems": [str(issue) for issue in lint(text)],
    }


class FilterModule:
    def filters(self):
        return {
            "levity_fluentd_render": levity_fluentd_render,
            "levity_fluentd_profile_info": levity_fluentd_profile_info,
        }
