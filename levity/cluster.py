"""Several Levity instances on one PostgreSQL database: the newest connection of a charger wins
across instances, as it does within one.

A charger reconnects (its instance died, or the balancer moved it) before the old socket is
noticed dead. The instance it reaches records itself as the holder of that charge point in
connection_owners with a new generation from a sequence, and NOTIFYs the others; an instance
that still holds an older connection of that charger closes it, as "replaced".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import uuid
from typing import Callable

import psycopg

from levity.database import DatabaseStartupError, redact
from levity.store import StorageError
from levity.store_pg import describe

log = logging.getLogger("levity.cluster")

CHANNEL = "levity_connections"
RELISTEN_SECONDS = 1.0


class InstanceCluster:
    def __init__(self, store, url: str, password: bytes | None,
                 on_replaced: Callable[[str, int], None]):
        self.instance_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._store = store
        self._url = url
        self._password = password.decode() if password else None
        self._on_replaced = on_replaced
        self._task: asyncio.Task | None = None
        self.replaced_elsewhere = 0  # connections closed because the charger reached another instance
        self.claim_failures = 0

    def claim(self, charge_point_id: str) -> int:
        """This instance now holds the charger's connection: its generation (0 when the database
        cannot record it; then any newer claim elsewhere wins)."""
        try:
            return self._store.claim_connection(charge_point_id, self.instance_id)
        except StorageError as exc:
            self.claim_failures += 1
            log.warning("%s: cannot record this instance as its holder: %s", charge_point_id, exc)
            return 0

    async def start(self) -> None:
        try:
            connection = await self._connect()
        except psycopg.Error as exc:
            raise DatabaseStartupError(f"cannot listen for other instances on the database "
                                       f"{redact(self._url)}: {describe(exc)}") from None
        self._task = asyncio.create_task(self._listen(connection))

    async def _connect(self) -> psycopg.AsyncConnection:
        kwargs = {"password": self._password} if self._password else {}
        connection = await psycopg.AsyncConnection.connect(self._url, autocommit=True, connect_timeout=5,
                                                           application_name="levity-listen", **kwargs)
        await connection.execute(f"LISTEN {CHANNEL}")
        return connection

    async def _listen(self, connection: psycopg.AsyncConnection | None) -> None:
        try:
            while True:
                try:
                    if connection is None:
                        connection = await self._connect()
                        log.warning("listening for other instances' connections again")
                    async for notice in connection.notifies():
                        self._notified(notice.payload)
                except psycopg.Error as exc:
                    log.warning("lost the database notifications (%s): retrying in %.0fs", describe(exc),
                                RELISTEN_SECONDS)
                if connection is not None:
                    with contextlib.suppress(psycopg.Error):
                        await connection.close()
                connection = None
                await asyncio.sleep(RELISTEN_SECONDS)
        finally:
            if connection is not None:
                with contextlib.suppress(psycopg.Error):
                    await connection.close()

    def _notified(self, payload: str) -> None:
        try:
            charge_point_id, instance_id, generation = json.loads(payload)
        except (ValueError, TypeError):
            return
        if instance_id != self.instance_id:
            self._on_replaced(charge_point_id, int(generation))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
