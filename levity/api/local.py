"""What the operator API asks of the process that holds the chargers' connections: read its
store and sessions, send a call on a charger's connection and audit it. One process serving
alone answers the API with this directly; with several workers each worker answers the
requests its supervisor forwards (levity/workers.py) with the same object.

Answers are plain JSON-able dicts so they cross the supervisor-worker channel unchanged.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from levity.audit.events import iso_utc
from levity.commands import ACTIONS_BY_VERSION, Busy, CallSender, CommandResult

log = logging.getLogger("levity.api")

OCPP_VERSION = "1.6"  # of charge points last seen before Levity kept the version


class LocalOperations:
    def __init__(self, central):
        self.central = central
        self.commands: dict[tuple[str, str], int] = {}  # (action, outcome) -> calls, for /metrics

    # Reading -----------------------------------------------------------------------------

    def _item(self, row: dict[str, Any] | None, charge_point_id: str) -> dict[str, Any]:
        session = self.central.sessions.get(charge_point_id)
        row = row or {}
        if session is not None:
            idle = time.monotonic() - session.connection.last_seen
            last_seen = iso_utc(time.time_ns() - int(idle * 1e9))
        else:
            last_seen = max((row.get(k) for k in ("last_heartbeat", "last_boot", "last_status") if row.get(k)),
                            default=None)
        seen = session is not None or bool(row.get("last_boot") or row.get("last_heartbeat") or row.get("last_status"))
        return {
            "id": charge_point_id, "connected": session is not None,
            "ocpp_version": self._version(session, row) if seen else None, "last_seen": last_seen,
            "registered": bool(row.get("registered")), "vendor": row.get("vendor"), "model": row.get("model"),
            "serial_number": row.get("serial_number"), "firmware_version": row.get("firmware_version"),
            "registration_status": row.get("registration_status"),
        }

    @staticmethod
    def _version(session, row: dict[str, Any]) -> str:
        """The live connection's OCPP version, else the last one seen."""
        if session is not None:
            return session.ocpp_version
        return row.get("ocpp_version") or OCPP_VERSION

    async def charge_points(self) -> list[dict[str, Any]]:
        rows = {row["id"]: row for row in self.central.store.charge_point_rows()}
        ids = sorted(set(rows) | set(self.central.sessions))
        return [self._item(rows.get(cp), cp) for cp in ids]

    async def charge_point(self, charge_point_id: str) -> dict[str, Any] | None:
        rows = self.central.store.charge_point_rows(charge_point_id)
        if not rows and charge_point_id not in self.central.sessions:
            return None
        item = self._item(rows[0] if rows else None, charge_point_id)
        item["connectors"] = self.central.store.connectors(charge_point_id)
        return item

    async def transactions(self, charge_point_id: str | None, open_only: bool | None, limit: int) -> list[dict]:
        return self.central.store.transactions(charge_point_id, open_only, limit, newest_first=True)

    # Calling -----------------------------------------------------------------------------

    async def call(self, charge_point_id: str, action: str, payload: dict, requested_by: str,
                   timeout: float) -> dict[str, Any]:
        """{"kind": "unknown" | "wrong_version" | "invalid" | "busy" | "done", ...}; "done" carries
        the CommandResult, which was audited as one ocpp.command event (not_connected included).
        The action and payload are checked against the charger's OCPP version (live or last seen)."""
        central = self.central
        session = central.sessions.get(charge_point_id)
        rows = central.store.charge_point_rows(charge_point_id) if session is None else None
        if session is None and not rows:
            return {"kind": "unknown"}
        version = self._version(session, rows[0] if rows else {})
        if action not in ACTIONS_BY_VERSION[version]:
            return {"kind": "wrong_version", "version": version,
                    "detail": f"{action} is not a call a central system sends in OCPP {version}, the version "
                              f"{charge_point_id} speaks; its calls are: {', '.join(ACTIONS_BY_VERSION[version])}"}
        problem = central.command_schemas.request_error(action, payload, version)
        if problem is not None:
            return {"kind": "invalid", "detail": f"{action}: {problem} (OCPP {version} {action})"}
        if session is None:
            result = CommandResult(action, str(uuid.uuid4()), "not_connected", sent=False,
                                   error_description="the charge point is not connected")
        else:
            if session.sender is None:
                session.sender = CallSender(session.connection, central.command_schemas, version=version)
            try:
                result = await session.sender.call(action, payload, timeout)
            except Busy as exc:
                return {"kind": "busy", "detail": str(exc)}
        self._audit(charge_point_id, payload, requested_by, result, version)
        return {"kind": "done", "result": result.to_dict()}

    def _audit(self, charge_point_id: str, payload: dict, requested_by: str, result: CommandResult,
               version: str) -> None:
        central = self.central
        extra: dict[str, Any] = {"ocpp_version": version}
        if result.outcome != "result":
            extra["error_description"] = result.error_description
        if result.invalid_answer:
            extra["invalid_answer"] = True
        if not result.sent:
            extra["sent"] = False
        central.sink.emit(central.events.command(
            charge_point_id, action=result.action, unique_id=result.unique_id, requested_by=requested_by,
            request=payload, outcome=result.outcome, status=result.status, error_code=result.error_code,
            latency_ms=result.latency_ms, **extra))
        key = (result.action, result.outcome)
        self.commands[key] = self.commands.get(key, 0) + 1
        log.info("%s: %s %s requested by %s: %s%s", charge_point_id, result.action, result.unique_id, requested_by,
                 result.outcome, f" ({result.error_code})" if result.error_code else "")

    def metrics_lines(self) -> list[str]:
        return [f'levity_commands_total{{action="{action}",outcome="{outcome}"}} {count}'
                for (action, outcome), count in sorted(self.commands.items())]

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        """One request from the supervisor (levity/workers.py), by operation name."""
        if op == "charge_points":
            return await self.charge_points()
        if op == "charge_point":
            return await self.charge_point(**args)
        if op == "transactions":
            return await self.transactions(**args)
        if op == "call":
            return await self.call(**args)
        raise ValueError(f"unknown operation {op!r}")
