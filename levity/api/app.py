"""The operator API's endpoints (FastAPI), exactly as the operator API contract fixes them.

Every error is application/problem+json (RFC 9457) whose `detail` says what to change. A call
is checked completely (token and role, action, JSON, the action's OCPP schema, size) before it
is handed to the process holding the charger, so a wrong request never reaches a charger.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol

from fastapi import Depends, FastAPI, Path, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from levity import __version__
from levity.api.models import ChargePoint, ChargePointDetail, Problem, Transaction
from levity.api.tokens import TokenStore
from levity.commands import (ACTIONS_BY_VERSION, CENTRAL_SYSTEM_ACTIONS, CSMS_ACTIONS_201, DEFAULT_TIMEOUT,
                             EXAMPLE_REQUESTS, EXAMPLE_REQUESTS_201, CommandSchemas, Unavailable)
from levity.ocpp16.validation import CHARGE_POINT_ACTIONS
from levity.ocpp201.validation import CHARGING_STATION_ACTIONS

PREFIX = "/api/v1"
MAX_TIMEOUT = 300.0
PROBLEM = "application/problem+json"
# outcome of a call that was sent -> HTTP status (200 carries the charger's payload)
OUTCOME_STATUS = {"result": 200, "call_error": 502, "timeout": 504, "not_connected": 409}


class Backend(Protocol):
    """The process(es) holding the chargers: levity.api.local.LocalOperations, or the
    supervisor's forwarding to its workers (levity.workers.WorkerOperations)."""

    async def charge_points(self) -> list[dict[str, Any]]: ...
    async def charge_point(self, charge_point_id: str) -> dict[str, Any] | None: ...
    async def transactions(self, charge_point_id: str | None, open_only: bool | None, limit: int) -> list[dict]: ...
    async def call(self, charge_point_id: str, action: str, payload: dict, requested_by: str,
                   timeout: float) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Principal:
    name: str
    role: str


class ProblemError(Exception):
    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.status, self.detail, self.headers, self.extra = status, detail, headers, extra


def problem(status: int, detail: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    body.update({k: v for k, v in extra.items() if v is not None})
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {s: {"model": Problem, "description": HTTPStatus(s).phrase, "content": {PROBLEM: {}}} for s in statuses}


def create_app(backend: Backend, tokens: TokenStore, schemas: CommandSchemas, max_payload_bytes: int = 65536) -> FastAPI:
    app = FastAPI(title="Levity operator API", version=__version__, openapi_url=None, docs_url=None,
                  redoc_url=None, description="Charge points, transactions, and OCPP calls Levity sends to chargers.")
    bearer = HTTPBearer(auto_error=False, description="a token from `levity api-tokens create NAME --role read|operate`")

    # async: the token lookup runs on the event loop thread that owns the store's connection
    # (a plain def would run in FastAPI's thread pool, and concurrent requests would share one
    # PostgreSQL connection across threads).
    async def principal(credentials: HTTPAuthorizationCredentials | None = Security(bearer)) -> Principal:
        challenge = {"WWW-Authenticate": 'Bearer realm="levity"'}
        if credentials is None:
            raise ProblemError(401, "send 'Authorization: Bearer <token>'; an administrator creates one with "
                               "`levity api-tokens create NAME --role read|operate`", challenge)
        found = tokens.principal(credentials.credentials)
        if found is None:
            raise ProblemError(401, "unknown or revoked token: ask for a new one (`levity api-tokens list` "
                               "shows the valid names)", challenge)
        return Principal(*found)

    # Errors -------------------------------------------------------------------------------

    @app.exception_handler(ProblemError)
    async def _problem(_request: Request, exc: ProblemError):
        return problem(exc.status, exc.detail, exc.headers, **exc.extra)

    @app.exception_handler(Unavailable)
    async def _unavailable(_request: Request, exc: Unavailable):
        return problem(503, f"{exc}: try again in a moment (a call in flight may or may not have reached the "
                            "charger: its ocpp.command event tells)", {"Retry-After": "2"})

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError):
        parts = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()))
            parts.append(f"{where}: {error.get('msg')}")
        return problem(400, "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException):
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404:
            detail = f"no such endpoint: see GET {PREFIX}/openapi.json"
        return problem(exc.status_code, detail, getattr(exc, "headers", None))

    # Endpoints ----------------------------------------------------------------------------

    @app.get(f"{PREFIX}/openapi.json", include_in_schema=False)
    async def openapi(_who: Principal = Depends(principal)):
        return JSONResponse(app.openapi())

    @app.get(f"{PREFIX}/charge-points", response_model=list[ChargePoint], responses=_problems(401))
    async def list_charge_points(_who: Principal = Depends(principal)):
        return await backend.charge_points()

    @app.get(f"{PREFIX}/charge-points/{{charge_point_id}}", response_model=ChargePointDetail,
             responses=_problems(401, 404))
    async def get_charge_point(charge_point_id: str, _who: Principal = Depends(principal)):
        item = await backend.charge_point(charge_point_id)
        if item is None:
            raise ProblemError(404, f"no charge point {charge_point_id!r} is known: it has never connected and is not "
                               f"registered (GET {PREFIX}/charge-points lists them)")
        return item

    @app.get(f"{PREFIX}/transactions", response_model=list[Transaction], responses=_problems(400, 401))
    async def list_transactions(
            charge_point_id: str | None = Query(None, description="only this charge point's"),
            open: bool | None = Query(None, description="true: only open ones; false: only stopped ones"),
            limit: int = Query(1000, ge=1, le=10000, description="newest first, at most this many"),
            _who: Principal = Depends(principal)):
        return await backend.transactions(charge_point_id, open, limit)

    actions = ", ".join(CENTRAL_SYSTEM_ACTIONS)
    actions_201 = ", ".join(CSMS_ACTIONS_201)
    examples = {action: {"summary": f"{action} ({profile})", "value": EXAMPLE_REQUESTS[action]}
                for action, profile in CENTRAL_SYSTEM_ACTIONS.items()}
    # The 2.0.1 ones apart (an extension of the media type): several actions share a name with
    # a 1.6 call and take another payload.
    examples_201 = {action: {"summary": f"{action} (OCPP 2.0.1, {block})", "value": EXAMPLE_REQUESTS_201[action]}
                    for action, block in CSMS_ACTIONS_201.items()}

    @app.post(
        f"{PREFIX}/charge-points/{{charge_point_id}}/calls/{{action}}",
        summary="Send an OCPP call to a charger and wait for its answer",
        description="The body is the call's payload as the charger's OCPP version spells it (camelCase). "
                    "OCPP 1.6 actions: " + actions + ". OCPP 2.0.1 actions: " + actions_201
                    + ". 200 carries the charger's CALLRESULT payload.",
        responses={200: {"description": "the charger's CALLRESULT payload", "content": {"application/json": {
            "schema": {"type": "object"}}}}, **_problems(400, 401, 403, 404, 409, 502, 503, 504)},
        openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
            "schema": {"type": "object", "description": "the payload of the call in the charger's OCPP version"},
            "examples": examples, "x-ocpp-2.0.1-examples": examples_201}}}})
    async def send_call(
            request: Request, charge_point_id: str = Path(), action: str = Path(description=actions),
            timeout: float = Query(DEFAULT_TIMEOUT, gt=0, le=MAX_TIMEOUT, description="seconds to wait for the answer"),
            who: Principal = Depends(principal)):
        if who.role != "operate":
            raise ProblemError(403, f"token {who.name!r} has the role {who.role!r}: sending calls needs a token "
                               "created with --role operate")
        versions = [version for version, table in ACTIONS_BY_VERSION.items() if action in table]
        if not versions:
            hint = (f"{action} is sent by charge points, not to them"
                    if action in CHARGE_POINT_ACTIONS or action in CHARGING_STATION_ACTIONS
                    else f"{action[:40]!r} is not a call a central system sends in OCPP 1.6 or 2.0.1")
            raise ProblemError(404, f"{hint}; the calls are: {actions} (OCPP 1.6), {actions_201} (OCPP 2.0.1), "
                               "spelled as OCPP does")
        body = await _body(request, max_payload_bytes)
        try:
            payload = json.loads(body, parse_constant=_no_constant) if body.strip() else None
        except (ValueError, RecursionError) as exc:
            raise ProblemError(400, f"the body is not valid JSON ({str(exc)[:120]}): send the {action} payload as "
                               'a JSON object, e.g. {} when it has no fields') from None
        if payload is None:
            raise ProblemError(400, f"the body is empty: send the {action} payload as a JSON object ({{}} for none)")
        # Refused here when no version's schema takes it; the charger's own version is checked
        # where its connection is (a payload valid only in the other version: 400 from there).
        errors = {version: schemas.request_error(action, payload, version) for version in versions}
        if None not in errors.values():
            version, error = next(iter(errors.items()))
            raise ProblemError(400, f"{action}: {error} (OCPP {version} {action}{'.req' if version == '1.6' else ''})")
        answer = await backend.call(charge_point_id, action, payload, who.name, timeout)
        return _call_response(charge_point_id, action, answer, timeout)

    return app


async def _body(request: Request, limit: int) -> bytes:
    """The request body, read no further than `limit` bytes (a huge body is refused, not buffered)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProblemError(400, f"the payload is larger than {limit} bytes, the most Levity sends a charger "
                               "(LEVITY_MAX_FRAME_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _call_response(charge_point_id: str, action: str, answer: dict[str, Any], timeout: float) -> JSONResponse:
    kind = answer["kind"]
    if kind == "unknown":
        return problem(404, f"no charge point {charge_point_id!r} is known: check the id "
                            f"(GET {PREFIX}/charge-points lists them)")
    if kind == "wrong_version":
        return problem(404, answer["detail"])
    if kind == "invalid":
        return problem(400, answer["detail"])
    if kind == "busy":
        return problem(503, f"{charge_point_id} has too many calls waiting ({answer.get('detail')}): retry later",
                       {"Retry-After": "1"})
    result = answer["result"]
    outcome, unique_id = result["outcome"], result["unique_id"]
    if outcome == "result":
        return JSONResponse(result["payload"])
    if outcome == "not_connected":
        return problem(409, f"{charge_point_id} is not connected ({result['error_description']}): the call was not "
                            "answered; try again once it is connected", unique_id=unique_id)
    if outcome == "timeout":
        return problem(504, f"{charge_point_id} did not answer {action} within {timeout:g} s "
                            f"({result['error_description']}); a longer ?timeout= may help", unique_id=unique_id)
    what = "sent an answer that breaks the OCPP schema" if result["invalid_answer"] else "answered with a CALLERROR"
    return problem(502, f"{charge_point_id} {what}: {result['error_code']} {result['error_description']}".strip(),
                   unique_id=unique_id, error_code=result["error_code"],
                   error_description=result["error_description"], error_details=result["error_details"])
