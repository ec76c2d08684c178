"""`levity api-tokens` (manage the operator API's tokens) and `levity call` (send a charger a
call through the API, as scripts and operators do)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request

DEFAULT_URL = "http://127.0.0.1:9001"

# `levity call` exit codes, one per answer of the API (docs/operator-api.md).
EXIT_CODES: dict[int, tuple[int, str]] = {
    400: (3, "the payload does not follow the action's schema"),
    401: (4, "no token or an unknown one (LEVITY_API_TOKEN / --token-file)"),
    403: (5, "this token may only read: sending calls needs a token with the role operate"),
    404: (6, "unknown charge point, or not a call a central system sends"),
    409: (7, "the charge point is not connected"),
    502: (8, "the charger refused the call (CALLERROR) or answered against the schema"),
    503: (9, "too many calls are waiting for this charger: try again"),
    504: (10, "the charger did not answer in time"),
}
EXIT_UNREACHABLE = 11  # the API did not answer at all
EXIT_OTHER = 1


def register(commands) -> None:
    tokens = commands.add_parser("api-tokens", help="create, list and revoke operator API tokens",
                                 description="Tokens of the operator HTTP API. Only a SHA-256 hash of each is kept "
                                             "in Levity's database; `create` prints the token once.")
    tokens.add_argument("action", choices=("create", "list", "revoke"))
    tokens.add_argument("name", nargs="?", metavar="NAME", help="the token's name (recorded as requested_by)")
    tokens.add_argument("--role", choices=("read", "operate"), help="create: read may use every GET, operate may "
                        "also send calls")
    tokens.add_argument("--database", default=None, help="SQLite database [env LEVITY_DATABASE]")
    tokens.set_defaults(func=_api_tokens)

    call = commands.add_parser(
        "call", help="send a charger an OCPP call through the operator API and print its answer",
        description="Send CHARGE_POINT_ID the OCPP call ACTION with PAYLOAD (JSON, as OCPP 1.6 spells it) "
                    "through the operator API and print the charger's answer. Exit codes: 0 answered, "
                    + ", ".join(f"{code} {status}" for status, (code, _) in EXIT_CODES.items())
                    + f", {EXIT_UNREACHABLE} API unreachable, {EXIT_OTHER} other.")
    call.add_argument("charge_point_id", metavar="CHARGE_POINT_ID")
    call.add_argument("action", metavar="ACTION", help="e.g. Reset, RemoteStartTransaction, GetConfiguration")
    call.add_argument("payload", metavar="PAYLOAD", nargs="?", default="{}", help="JSON object (default {})")
    call.add_argument("--url", default=None, help=f"the API's base URL [env LEVITY_API_URL, default {DEFAULT_URL}]")
    call.add_argument("--token-file", default=None,
                      help="file holding the token [the token itself: env LEVITY_API_TOKEN]")
    call.add_argument("--timeout", type=float, default=None, help="seconds to wait for the charger (API default 30)")
    call.set_defaults(func=_call)


def _api_tokens(args: argparse.Namespace) -> int:
    from levity.api.tokens import TokenStore
    from levity.config import load_settings
    from levity.database import open_store

    settings = load_settings(argparse.Namespace(database=args.database))
    store = open_store(settings)
    try:
        tokens = TokenStore(store)
        if args.action == "create":
            if not args.name or not args.role:
                print("levity: api-tokens create needs NAME and --role read|operate", file=sys.stderr)
                return 2
            try:
                print(tokens.create(args.name, args.role))  # shown once; only its hash is kept
            except ValueError as exc:
                print(f"levity: {exc}", file=sys.stderr)
                return 2
        elif args.action == "revoke":
            if not args.name:
                print("levity: api-tokens revoke needs NAME", file=sys.stderr)
                return 2
            if not store.revoke_api_token(args.name):
                print(f"levity: no token named {args.name!r}", file=sys.stderr)
                return 1
        else:
            for name, role, created_at in store.api_tokens():
                print(f"{name}\t{role}\t{created_at}")
    finally:
        store.close()
    return 0


def _call(args: argparse.Namespace) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        print(f"levity: PAYLOAD is not valid JSON ({exc}); e.g. '{{\"type\": \"Soft\"}}'", file=sys.stderr)
        return 2
    token = os.environ.get("LEVITY_API_TOKEN", "")
    if args.token_file:
        try:
            token = open(args.token_file, encoding="utf-8").read().strip()
        except OSError as exc:
            print(f"levity: cannot read --token-file: {exc.strerror}", file=sys.stderr)
            return 2
    base = (args.url or os.environ.get("LEVITY_API_URL") or DEFAULT_URL).rstrip("/")
    url = (f"{base}/api/v1/charge-points/{urllib.parse.quote(args.charge_point_id, safe='')}/calls/"
           f"{urllib.parse.quote(args.action, safe='')}")
    if args.timeout is not None:
        url += f"?timeout={args.timeout:g}"
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    wait = (args.timeout or 30.0) + 10
    try:
        with urllib.request.urlopen(request, timeout=wait) as response:
            print(json.dumps(json.loads(response.read() or b"null")))
            return 0
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"levity: cannot reach the operator API at {base}: {reason} (LEVITY_API_URL / --url)", file=sys.stderr)
        return EXIT_UNREACHABLE
    code, meaning = EXIT_CODES.get(status, (EXIT_OTHER, "unexpected answer"))
    try:
        problem = json.loads(body)
    except ValueError:
        problem = {"detail": body.decode("utf-8", "replace")[:500]}
    print(f"levity: {status}: {meaning}: {problem.get('detail', '')}", file=sys.stderr)
    if status == 502 and problem.get("error_code"):
        print(json.dumps({k: problem.get(k) for k in ("error_code", "error_description", "error_details")}),
              file=sys.stderr)
    return code
