"""`levity fluentd render|validate|profiles`.

Exit codes: 0 success, 1 invalid profile (or a rendered config the linter rejects),
2 usage errors (including a PROFILE that is neither a file nor a shipped profile name).
"""

from __future__ import annotations

import argparse
import sys


def _resolve(spec: str):
    from levity.fluentconf import find_profile

    try:
        return find_profile(spec)
    except FileNotFoundError as exc:
        print(f"levity fluentd: {exc}", file=sys.stderr)
        return None


def _rendered(spec: str) -> tuple[str | None, int]:
    """The fluent.conf text of a profile, or None and the exit code after printing why not."""
    from levity.fluentconf import ProfileError, load_profile, render

    path = _resolve(spec)
    if path is None:
        return None, 2
    try:
        return render(load_profile(path)), 0
    except ProfileError as exc:
        print(f"levity fluentd: invalid profile:\n{exc}", file=sys.stderr)
        return None, 1


def _render(args: argparse.Namespace) -> int:
    from levity.fluentconf import write_atomic

    text, code = _rendered(args.profile)
    if text is None:
        return code
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        write_atomic(text, args.output)
    except OSError as exc:
        print(f"levity fluentd: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _validate(args: argparse.Namespace) -> int:
    from levity.fluentconf.lint import lint

    text, code = _rendered(args.profile)
    if text is None:
        return code
    issues = lint(text)
    if issues:
        print("levity fluentd: the rendered config fails the structural check:", file=sys.stderr)
        for issue in issues:
            print(f"  {issue}", file=sys.stderr)
        return 1
    print("ok")
    return 0


def _profiles(args: argparse.Namespace) -> int:
    from levity.fluentconf import ProfileError, shipped_profiles

    try:
        profiles = shipped_profiles()
    except ProfileError as exc:
        print(f"levity fluentd: {exc}", file=sys.stderr)
        return 1
    width = max((len(name) for name in profiles), default=0)
    for name, description in profiles.items():
        print(f"{name:<{width}}  {description}")
    return 0


def register(commands) -> None:
    fluentd = commands.add_parser(
        "fluentd", help="render and validate fluent.conf from YAML profiles",
        description="Render Fluentd configurations from YAML profiles (see docs/fluentd-profiles.md). "
                    "PROFILE is a path to a YAML file or the name of a shipped profile.")
    sub = fluentd.add_subparsers(dest="fluentd_command", required=True, metavar="SUBCOMMAND")

    render = sub.add_parser("render", help="render a profile to fluent.conf (stdout or -o FILE)")
    render.add_argument("profile", metavar="PROFILE", help="profile file or shipped profile name")
    render.add_argument("-o", "--output", metavar="FILE",
                        help="write atomically to FILE (mode 0640) instead of standard output")
    render.set_defaults(func=_render)

    validate = sub.add_parser("validate", help="check a profile and its rendered config; prints ok")
    validate.add_argument("profile", metavar="PROFILE", help="profile file or shipped profile name")
    validate.set_defaults(func=_validate)

    profiles = sub.add_parser("profiles", help="list the shipped profiles")
    profiles.set_defaults(func=_profiles)
