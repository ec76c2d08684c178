"""Verify step: one real OCPP 1.6J BootNotification against Levity, run with the venv's Python.

Usage: boot_notification.py URL   (e.g. ws://127.0.0.1:9000/molecule-cp-1)
Prints the answer; exits 1 unless it is [3, "1", {... "status": "Accepted" ...}].
"""

import asyncio
import json
import sys

import websockets


async def main(url):
    async with websockets.connect(url, subprotocols=["ocpp1.6"], open_timeout=10) as ws:
        if ws.subprotocol != "ocpp1.6":
            print(f"server chose subprotocol {ws.subprotocol!r}")
            return 1
        await ws.send(json.dumps([2, "1", "BootNotification", {"chargePointVendor": "V", "chargePointModel": "M"}]))
        answer = json.loads(await asyncio.wait_for(ws.recv(), 10))
    print(json.dumps(answer))
    ok = (isinstance(answer, list) and answer[:2] == [3, "1"]
          and isinstance(answer[2], dict) and answer[2].get("status") == "Accepted")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1])))
