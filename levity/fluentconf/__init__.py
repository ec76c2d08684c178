"""fluent.conf generator: YAML profiles in, Fluentd configs out.

    from levity.fluentconf import load_profile, render, render_file, write_atomic, ProfileError

    text = render_file("profiles/production.yaml")   # validated, deterministic
    write_atomic(text, "/etc/fluent/fluent.conf")     # temp file + os.replace, mode 0640

`render_file(path)` is the stable entry point for the Ansible role and docker compose.
"""

from levity.fluentconf.profile import Profile, ProfileError, find_profile, load_profile
from levity.fluentconf.render import render, render_file, write_atomic


def shipped_profiles() -> dict[str, str]:
    """Shipped profile names and their one-line descriptions, sorted by name."""
    from levity.fluentconf.profile import _read_yaml, label_for, profiles_dir

    result = {}
    for path in sorted(profiles_dir().glob("*.yaml")):
        data = _read_yaml(path, label_for(path))
        result[path.stem] = str(data.get("description", "")).strip()
    return result


__all__ = ["Profile", "ProfileError", "find_profile", "load_profile", "render", "render_file",
           "shipped_profiles", "write_atomic"]
