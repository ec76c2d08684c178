"""Real OCPP 1.6 clients for tests: the `ocpp` library's ChargePoint, and raw frames."""

from __future__ import annotations

import asyncio
import contextlib
import json

import websockets
from ocpp.v16 import ChargePoint as LibraryChargePoint
from ocpp.v16 import call


def library_charge_point(url: str, charge_point_id: str):
    """An `ocpp` library charge point connected to Levity; its reader runs in a task."""
    return library_client(url, charge_point_id, LibraryChargePoint, "ocpp1.6")


@contextlib.asynccontextmanager
async def library_client(url: str, charge_point_id: str, library_class, subprotocol: str):
    """An instance of an `ocpp` library ChargePoint class (either version) connected with `subprotocol`."""
    async with websockets.connect(f"{url}/{charge_point_id}", subprotocols=[subprotocol]) as ws:
        assert ws.subprotocol == subprotocol
        cp = library_class(charge_point_id, ws)
        reader = asyncio.create_task(cp.start())
        try:
            yield cp
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, websockets.ConnectionClosed):
                await reader


@contextlib.asynccontextmanager
async def raw_charge_point(url: str, charge_point_id: str, **kwargs):
    kwargs.setdefault("subprotocols", ["ocpp1.6"])
    async with websockets.connect(f"{url}/{charge_point_id}", **kwargs) as ws:
        yield RawClient(ws)


class RawClient:
    """Sends frames exactly as given, for what a library client cannot send."""

    def __init__(self, ws):
        self.ws = ws

    async def send_raw(self, frame: str | bytes, timeout: float = 5.0):
        await self.ws.send(frame)
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout))

    async def call(self, unique_id: str, action: str, payload: dict, timeout: float = 5.0):
        return await self.send_raw(json.dumps([2, unique_id, action, payload]), timeout)


BOOT = call.BootNotification(charge_point_vendor="TestVendor", charge_point_model="TestModel",
                             charge_point_serial_number="SN-123", firmware_version="1.0.0")
