"""`levity serve`: one process, or a supervisor with workers (levity/workers.py).

The entry point above both, so that the server never imports its own supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import os

from levity.config import Settings, StartupError
from levity.server import configure_logging, raise_open_files_limit, serve_until_signalled
from levity.workers import check_settings, run_supervisor

log = logging.getLogger("levity")


def run(settings: Settings) -> int:
    configure_logging(settings.log_level)
    os.umask(0o077)  # database, spool and audit files hold personal data: owner only
    raise_open_files_limit(settings.max_connections)
    check_settings(settings)  # also with one worker: refuses files sharded for several
    if settings.workers > 1:
        return run_supervisor(settings)
    try:
        asyncio.run(serve_until_signalled(settings))
    except StartupError as exc:
        log.error("%s", exc)
        return 1
    return 0
