"""The ceiling: a raw `websockets` server sending every frame straight back.

Same library, handshake (subprotocol ocpp1.6) and defaults as the OCPP servers, no OCPP at
all: what one Python process can do with WebSocket frames on this machine. The bench
accepts the echoed CALL as the answer.

    python -m benchmarks.echo_server --host 127.0.0.1 --port 9002
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import websockets


async def echo(websocket):
    async for message in websocket:
        await websocket.send(message)


async def main(host: str, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with websockets.serve(echo, host, port, subprotocols=["ocpp1.6"]):
        await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9002)
    args = parser.parse_args()
    asyncio.run(main(args.host, args.port))
