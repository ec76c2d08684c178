"""Real OCPP 2.0.1 clients for tests: the `ocpp` library's v201 ChargePoint (it validates
Levity's answers against the OCA 2.0.1 schemas), and raw frames."""

from __future__ import annotations

import contextlib

import websockets
from ocpp.v201 import ChargePoint as LibraryChargingStation
from ocpp.v201 import call

from tests.support.ocpp_client import RawClient, library_client

SUBPROTOCOL = "ocpp2.0.1"


def library_charging_station(url: str, station_id: str, library_class=LibraryChargingStation):
    """An `ocpp` library 2.0.1 charging station connected to Levity; its reader runs in a task."""
    return library_client(url, station_id, library_class, SUBPROTOCOL)


@contextlib.asynccontextmanager
async def raw_charging_station(url: str, station_id: str, **kwargs):
    kwargs.setdefault("subprotocols", [SUBPROTOCOL])
    async with websockets.connect(f"{url}/{station_id}", **kwargs) as ws:
        yield RawClient(ws)


BOOT = call.BootNotification(
    charging_station={"vendor_name": "TestVendor", "model": "TestModel", "serial_number": "SN-201",
                      "firmware_version": "2.0.0"},
    reason="PowerUp")


def energy(value: float, unit: str = "Wh", multiplier: int = 0, timestamp: str = "2024-01-15T10:10:00Z",
           context: str | None = None) -> list[dict]:
    """A meterValue list with one Energy.Active.Import.Register sample."""
    sample = {"value": value, "measurand": "Energy.Active.Import.Register",
              "unit_of_measure": {"unit": unit, "multiplier": multiplier}}
    if context:
        sample["context"] = context
    return [{"timestamp": timestamp, "sampled_value": [sample]}]


def transaction_event(event_type: str, station_transaction_id: str, seq_no: int, *, timestamp: str,
                      trigger_reason: str, meter_value: list | None = None, id_token: str | None = None,
                      evse: dict | None = None, stopped_reason: str | None = None,
                      charging_state: str | None = None) -> call.TransactionEvent:
    info = {"transaction_id": station_transaction_id}
    if stopped_reason:
        info["stopped_reason"] = stopped_reason
    if charging_state:
        info["charging_state"] = charging_state
    return call.TransactionEvent(
        event_type=event_type, timestamp=timestamp, trigger_reason=trigger_reason, seq_no=seq_no,
        transaction_info=info, meter_value=meter_value,
        id_token={"id_token": id_token, "type": "ISO14443"} if id_token else None, evse=evse)
