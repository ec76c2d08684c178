"""Buffers sized from numbers: a profile's `sizing` (event rate, outage to survive, event size)
gives every file buffer its limits, flush threads and retry bounds (docs/fluentd-profiles.md,
"Buffers sized from numbers", has the same arithmetic in words).

For each output with a file buffer, with B = rate x share x event_size (bytes per second; share
is the fraction of the events the output receives, buffer.share, default 1):

- total_limit_size   = B x (survive + flush_interval) x headroom: the outage plus what waits for
                       the next flush, with a margin; rounded up to a MiB.
- chunk_limit_size   = 8m unless the profile says otherwise.
- flush_thread_count = ceil(B x (1 + survive / catch_up) / (chunk_limit_size / write_time)),
                       1..16 (2..16 for Elasticsearch, whose plugin warns below 2): after the outage the backlog drains within catch_up while new
                       events keep coming, each thread writing one chunk per write_time.
- retry_timeout      = survive x headroom: a chunk is retried for the whole outage it is sized for.
- retry_max_interval = survive / 24, between 30s and 5m: the output notices the destination is
                       back within a few percent of the outage.

A value the profile sets itself always wins; only missing keys are computed.
"""

from __future__ import annotations

import math

from levity.fluentconf import schema
from levity.fluentconf.units import duration_seconds, size_bytes

MIB = 1 << 20
DEFAULT_CHUNK = "8m"
MAX_THREADS = 16
# fluent-plugin-elasticsearch warns below 2 flush threads ("traffic jam" of bulk requests).
MIN_THREADS = {"elasticsearch": 2}


def _duration(seconds: float) -> str:
    seconds = math.ceil(seconds)
    for unit, factor in (("h", 3600), ("m", 60)):
        if seconds % factor == 0 and seconds >= factor:
            return f"{seconds // factor}{unit}"
    return f"{seconds}s"


def _size(nbytes: float) -> str:
    """Rounded up: to a MiB, and to a GiB from 1 GiB on (limits, not measurements)."""
    mib = max(1, math.ceil(nbytes / MIB))
    return f"{math.ceil(mib / 1024)}g" if mib > 1024 else f"{mib}m"


def sized_buffer(buffer: schema.Buffer, sizing: schema.Sizing, min_threads: int = 1) -> dict[str, object]:
    """The computed values for the keys this buffer leaves unset."""
    rate_bytes = sizing.rate * buffer.share * size_bytes(sizing.event_size)
    survive = duration_seconds(sizing.survive)
    catch_up = duration_seconds(sizing.catch_up) if sizing.catch_up else survive
    flush = duration_seconds(buffer.flush_interval) if buffer.flush_interval else 60  # Fluentd's default
    chunk = size_bytes(buffer.chunk_limit_size or DEFAULT_CHUNK)
    threads = math.ceil(rate_bytes * (1 + survive / max(catch_up, 1)) / (chunk / duration_seconds(sizing.write_time)))
    computed: dict[str, object] = {
        "total_limit_size": _size(rate_bytes * (survive + flush) * sizing.headroom),
        "chunk_limit_size": DEFAULT_CHUNK,
        "flush_thread_count": min(MAX_THREADS, max(min_threads, threads)),
        "retry_max_interval": _duration(min(300, max(30, survive / 24))),
    }
    if not buffer.retry_forever and buffer.retry_max_times is None:
        computed["retry_timeout"] = _duration(survive * sizing.headroom)
    return {key: value for key, value in computed.items() if getattr(buffer, key) is None}


def apply_sizing(outputs: list[schema.OutputBase], sizing: schema.Sizing | None) -> dict[str, dict[str, object]]:
    """Fill the file buffers of `outputs` from `sizing`; returns what was computed, by output name."""
    if sizing is None:
        return {}
    applied = {}
    for output in outputs:
        buffer = output.buffer
        if buffer is None or buffer.type != "file":
            continue  # only a file buffer survives a restart: memory buffers are not sized for outages
        values = sized_buffer(buffer, sizing, MIN_THREADS.get(output.type, 1))
        for key, value in values.items():
            setattr(buffer, key, value)
        applied[output.name] = values
    return applied


def total_disk(outputs: list[schema.OutputBase]) -> int:
    """Bytes the file buffers may take together (their total_limit_size)."""
    return sum(size_bytes(o.buffer.total_limit_size) for o in outputs
               if o.buffer is not None and o.buffer.type == "file" and o.buffer.total_limit_size)
