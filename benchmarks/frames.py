"""Prebuilt OCPP 1.6J CALL frames, as complete client-to-server WebSocket frames.

Every frame is built once: WebSocket header + a zero masking key + `[2,"` + unique id +
`","Action",{payload}]`. Unique ids have a fixed width, so the header (which holds the
payload length) is fixed too and sending a call is one bytes concatenation. A zero masking
key is valid (RFC 6455 only asks the key to be unpredictable, servers unmask whatever it is)
and spares the client the XOR; the server does the same unmasking work with any key.
The calls of a transaction carry per-transaction values, as a real charger's do: its energy
register counting up from session to session, the time of the start and stop, and the
transactionId the server answered. Those three frames are filled in per call (one bytes
%-format) and get their header per call. Identical starts would be resends: since billing
integrity rules answer a repeated StartTransaction with the first one's id, a client that sent
the same start every time would measure the repeat path, not transactions.
"""

from __future__ import annotations

import json
import time

# Unique ids: 10 digits, per charger counter (unique per connection, which is what OCPP-J asks).
UID_WIDTH = 10
ZERO_MASK = b"\x00\x00\x00\x00"
BENCH_TIMESTAMP = "2024-01-15T10:00:00.000Z"
ID_TAG = "BENCHTAG01"
METER_START = 10_000  # every charger's energy register at the first start, Wh
SESSION_WH = 7_500  # energy of one benchmark session


def ws_header(length: int, opcode: int = 0x1) -> bytes:
    """Header of a final, masked client frame carrying `length` bytes (mask key not included)."""
    first = 0x80 | opcode
    if length < 126:
        return bytes((first, 0x80 | length))
    if length < 65536:
        return bytes((first, 0x80 | 126)) + length.to_bytes(2, "big")
    return bytes((first, 0x80 | 127)) + length.to_bytes(8, "big")


def masked_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    return ws_header(len(payload), opcode) + ZERO_MASK + payload


def _json(payload: dict) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


BOOT_PAYLOAD = {"chargePointVendor": "LevityBench", "chargePointModel": "SimCharger",
                "chargePointSerialNumber": "BENCH-SN", "firmwareVersion": "1.0.0"}

STATIC_PAYLOADS: dict[str, dict] = {
    "BootNotification": BOOT_PAYLOAD,
    "Heartbeat": {},
    "StatusNotification": {"connectorId": 1, "errorCode": "NoError", "status": "Available",
                           "timestamp": BENCH_TIMESTAMP},
    "StatusNotificationCharging": {"connectorId": 1, "errorCode": "NoError", "status": "Charging",
                                   "timestamp": BENCH_TIMESTAMP},
    "Authorize": {"idTag": ID_TAG},
    # Meter values outside a transaction (connector energy register), as chargers send them.
    "MeterValues": {"connectorId": 1, "meterValue": [{"timestamp": BENCH_TIMESTAMP, "sampledValue": [
        {"value": "12345", "context": "Sample.Periodic", "measurand": "Energy.Active.Import.Register",
         "unit": "Wh"}]}]},
}

# Three samples per MeterValues in a transaction: energy (mid-session), power, current.
TX_METER_VALUE = ('[{"timestamp":"%s","sampledValue":['
                  '{"value":"%d","context":"Sample.Periodic","measurand":"Energy.Active.Import.Register","unit":"Wh"},'
                  '{"value":"11000","context":"Sample.Periodic","measurand":"Power.Active.Import","unit":"W"},'
                  '{"value":"16.0","context":"Sample.Periodic","measurand":"Current.Import","phase":"L1","unit":"A"}'
                  ']}]')
# The action name a frame key stands for (StatusNotificationCharging is a StatusNotification).
ACTION_OF = {key: key for key in STATIC_PAYLOADS}
ACTION_OF["StatusNotificationCharging"] = "StatusNotification"
ACTION_OF["TxMeterValues"] = "MeterValues"
ACTION_OF["StopTransaction"] = "StopTransaction"


class StaticFrame:
    """head + uid + tail is the whole WebSocket frame."""

    __slots__ = ("key", "action", "head", "tail")

    def __init__(self, key: str, payload: dict):
        self.key = key
        self.action = ACTION_OF[key]
        body_tail = b'","' + self.action.encode() + b'",' + _json(payload) + b"]"
        length = len(b'[2,"') + UID_WIDTH + len(body_tail)
        self.head = ws_header(length) + ZERO_MASK + b'[2,"'
        self.tail = body_tail

    def build(self, uid: bytes) -> bytes:
        return self.head + uid + self.tail


class TransactionFrame:
    """A frame whose payload is a bytes %-format template, filled in per call."""

    __slots__ = ("key", "action", "before", "payload")

    def __init__(self, key: str, action: str, payload: str):
        self.key, self.action = key, action
        self.before = b'","' + action.encode() + b'",'
        self.payload = payload.encode() + b"]"

    def build(self, uid: bytes, *values) -> bytes:
        body = b'[2,"' + uid + self.before + self.payload % values
        return ws_header(len(body)) + ZERO_MASK + body


STATIC = {key: StaticFrame(key, payload) for key, payload in STATIC_PAYLOADS.items()}
# OCPP 2.0.1 chargers of a mixed fleet (bench --mixed-versions): their BootNotification; a
# Heartbeat is `{}` in both versions, so the heartbeat-only load is the same frames.
BOOT_201 = StaticFrame("BootNotification", {"reason": "PowerUp", "chargingStation": {
    "vendorName": "LevityBench", "model": "SimCharger", "serialNumber": "BENCH-SN", "firmwareVersion": "2.0.1"}})
# build(uid, meter_start, timestamp)
START_TRANSACTION = TransactionFrame(
    "StartTransaction", "StartTransaction",
    '{"connectorId":1,"idTag":"' + ID_TAG + '","meterStart":%d,"timestamp":"%s"}')
# build(uid, transaction_id, timestamp, energy_register)
TX_METER_VALUES = TransactionFrame(
    "TxMeterValues", "MeterValues", '{"connectorId":1,"transactionId":%d,"meterValue":' + TX_METER_VALUE + "}")
# build(uid, transaction_id, meter_stop, timestamp)
STOP_TRANSACTION = TransactionFrame(
    "StopTransaction", "StopTransaction",
    '{"transactionId":%d,"idTag":"' + ID_TAG + '","meterStop":%d,"timestamp":"%s","reason":"Local"}')


def now_timestamp() -> bytes:
    """The current time as chargers send it (RFC 3339, UTC, milliseconds)."""
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)).encode() + b".%03dZ" % (int(now * 1000) % 1000)


# Client control frames.
CLOSE_FRAME = masked_frame(b"\x03\xe8", opcode=0x8)  # 1000 normal closure


def pong_frame(payload: bytes) -> bytes:
    return masked_frame(payload, opcode=0xA)


def handshake_request(host: str, port: int, path: str, subprotocol: str = "ocpp1.6") -> bytes:
    # A fixed key: the bench does not check Sec-WebSocket-Accept beyond the 101 status.
    return (f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: {subprotocol}\r\nUser-Agent: levity-bench\r\n\r\n").encode()
