"""The baseline: the central system a user writes from the `ocpp` library's README and examples.

An `ocpp.v16.ChargePoint` subclass with one `@on` handler per action the bench sends, the
library's default JSON schema validation of every request and response, `websockets.serve`
with `subprotocols=["ocpp1.6"]`. Answers only, nothing stored or audited. One difference from
the README: logging at WARNING (the README's INFO logs every frame), which favours this
baseline.

    python -m benchmarks.plain_ocpp_server --host 127.0.0.1 --port 9001
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import logging
import signal
from datetime import datetime, timezone

import websockets
from ocpp.routing import on
from ocpp.v16 import ChargePoint as cp
from ocpp.v16 import call_result
from ocpp.v16.datatypes import IdTagInfo
from ocpp.v16.enums import Action, AuthorizationStatus, RegistrationStatus

transaction_ids = itertools.count(1)


def now() -> str:
    return datetime.now(timezone.utc).isoformat()


class ChargePoint(cp):
    @on(Action.boot_notification)
    def on_boot_notification(self, charge_point_vendor: str, charge_point_model: str, **kwargs):
        return call_result.BootNotification(current_time=now(), interval=300, status=RegistrationStatus.accepted)

    @on(Action.heartbeat)
    def on_heartbeat(self, **kwargs):
        return call_result.Heartbeat(current_time=now())

    @on(Action.status_notification)
    def on_status_notification(self, connector_id: int, error_code: str, status: str, **kwargs):
        return call_result.StatusNotification()

    @on(Action.authorize)
    def on_authorize(self, id_tag: str, **kwargs):
        return call_result.Authorize(id_tag_info=IdTagInfo(status=AuthorizationStatus.accepted))

    @on(Action.start_transaction)
    def on_start_transaction(self, connector_id: int, id_tag: str, meter_start: int, timestamp: str, **kwargs):
        return call_result.StartTransaction(transaction_id=next(transaction_ids),
                                            id_tag_info=IdTagInfo(status=AuthorizationStatus.accepted))

    @on(Action.meter_values)
    def on_meter_values(self, connector_id: int, meter_value: list, **kwargs):
        return call_result.MeterValues()

    @on(Action.stop_transaction)
    def on_stop_transaction(self, meter_stop: int, timestamp: str, transaction_id: int, **kwargs):
        return call_result.StopTransaction()


async def on_connect(websocket):
    if websocket.subprotocol is None:
        return await websocket.close()
    charge_point_id = websocket.request.path.strip("/")
    await ChargePoint(charge_point_id, websocket).start()


async def main(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with websockets.serve(on_connect, host, port, subprotocols=["ocpp1.6"]):
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9001)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(main(args.host, args.port))
