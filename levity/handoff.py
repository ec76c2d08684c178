"""Blocking work handed to a thread, its result handed back to the event loop in one step.

Written by hand because `loop.run_in_executor` plus a done callback costs the loop two
iterations to report a result (the thread's state is copied over in one, the callbacks run in
the next), and an awaiting task a third. On a loop serving a thousand chargers an iteration
takes milliseconds, and a transaction call's answer waits for two such hand-offs in a row (the
database commit, then the audit event's fsync): each iteration saved there is latency saved.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor, Future
from typing import Any, Callable


def hand_off(loop: asyncio.AbstractEventLoop, executor: Executor, work: Callable[..., Any], *args: Any,
             then: Callable[[Any], None]) -> None:
    """Run `work(*args)` on `executor`; then `then(result)` on `loop`, as one callback.
    `work` must not raise (it reports failure in its result); if it does anyway, `then`
    gets the exception object as its result, so the caller can still release its waiters."""

    def done(future: Future) -> None:
        try:
            result = future.result()
        except BaseException as exc:  # noqa: BLE001 - handed to `then`, never lost in the thread
            result = exc
        try:
            loop.call_soon_threadsafe(then, result)
        except RuntimeError:  # the loop closed meanwhile (shutdown): nobody waits any more
            pass

    executor.submit(work, *args).add_done_callback(done)
