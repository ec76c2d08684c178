"""Run Levity as a library, with audit events going to Fluentd.

    export FLUENTD_ENABLED=true FLUENTD_HOST=localhost FLUENTD_PORT=24224
    python examples/server_with_fluentd.py

Chargers connect to ws://<this host>:9000/<charge_point_id> (LEVITY_PORT changes the port).
Every setting of `levity serve --help` is read from the environment the same way; this
example only turns Fluentd on when FLUENTD_ENABLED is not set at all.
"""

import asyncio
import os
import signal

from levity.config import load_settings
from levity.server import CentralSystem, configure_logging


async def main() -> None:
    environ = {"FLUENTD_ENABLED": "true", **os.environ}
    settings = load_settings(environ=environ)
    configure_logging(settings.log_level)

    central_system = CentralSystem(settings)
    await central_system.start()

    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
    # Closes chargers' connections and flushes (or spools) the audit events still queued.
    await central_system.stop()


if __name__ == "__main__":
    asyncio.run(main())
