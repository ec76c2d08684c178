"""Run by test_sigkill.py as a separate process.

    emitter_process.py emit SPOOL PORT     emit durable events forever, printing each event_id
                                           once emit_durable has returned (the charger's answer)
    emitter_process.py deliver SPOOL PORT  start, wait until the spool is empty, close, exit 0
"""

import asyncio
import sys

from levity.audit.delivery import ForwardSink
from levity.audit.events import EventFactory
from levity.config import Settings


async def main(mode: str, spool: str, port: int) -> int:
    settings = Settings(fluentd_enabled=True, fluentd_host="127.0.0.1", fluentd_port=port, fluentd_timeout=1.0,
                        spool_dir=spool, flush_interval=0.05)
    sink = ForwardSink(settings, backoff_max=0.5)
    await sink.start()
    if mode == "deliver":
        while sink.stats()["spooled"]:
            await asyncio.sleep(0.05)
        await sink.close(5)
        return 0
    factory = EventFactory("ocpp")

    async def charger(n: int) -> None:
        for i in range(1_000_000):
            event = factory.make("transaction_start", f"CP{n}", connector_id=1, id_tag="T", meter_start=i,
                                 transaction_id=n * 1_000_000 + i, transaction_timestamp="2024-01-15T10:00:00Z")
            await sink.emit_durable(event)
            sys.stdout.write(event.record["event_id"] + "\n")
            sys.stdout.flush()
            sink.emit(factory.make("heartbeat", f"CP{n}"))

    await asyncio.gather(*(charger(n) for n in range(10)))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
