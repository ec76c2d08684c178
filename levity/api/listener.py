"""Serves the operator API with uvicorn as a task of Levity's own event loop, on its own
listener (never the chargers' port)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket

import uvicorn

log = logging.getLogger("levity.api")


class _EmbeddedServer(uvicorn.Server):
    """uvicorn without its own signal handling: Levity's loop owns SIGTERM/SIGINT/SIGHUP."""

    def install_signal_handlers(self) -> None:  # uvicorn < 0.29
        pass

    @contextlib.contextmanager
    def capture_signals(self):  # uvicorn >= 0.29
        yield


class ApiListener:
    def __init__(self, app, host: str, port: int):
        self.app, self.host, self.port = app, host, port
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        """OSError when the address cannot be bound (the caller says which setting to change)."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.create_server((self.host, self.port), family=family, backlog=256)
        self.port = sock.getsockname()[1]
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # its start/stop chatter; errors still show
        config = uvicorn.Config(self.app, log_config=None, access_log=False, lifespan="off", ws="none",
                                server_header=False, proxy_headers=False)
        self._server = _EmbeddedServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]))
        while not self._server.started and not self._task.done():
            await asyncio.sleep(0.01)
        if self._task.done():
            self._task.result()
        log.info("operator API listening on http://%s:%d/api/v1/", self.host, self.port)
        if not _is_loopback(self.host):
            log.warning("the operator API listens on %s without TLS: serve it to other hosts only through a TLS "
                        "proxy (docs/operator-api.md, security model)", self.host)

    async def stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, 5)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
