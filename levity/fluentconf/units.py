"""Fluentd value syntax: sizes, durations, time placeholders and integer thresholds as regexps.

Fluentd parses sizes as an integer with an optional k/m/g/t suffix and durations as an integer
with an optional s/m/h/d suffix. Profiles may write `8MB` or `512m`; the rendered config always
uses the canonical form (`8m`), which `--strict-config-value` accepts.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$", re.IGNORECASE)
_SIZE_FACTORS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION_FACTORS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

SIZE_EXPECTED = "a size like 512m, 8MB, 1g or a number of bytes"
DURATION_EXPECTED = "a duration like 5s, 10m, 1h, 1d or a number of seconds"


def canonical_size(value: object) -> str:
    """'8MB' -> '8m', 1024 -> '1024'. Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"expected {SIZE_EXPECTED}")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"expected {SIZE_EXPECTED} (greater than zero)")
        return str(value)
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match and int(match.group(1)) > 0:
            return f"{int(match.group(1))}{match.group(2).lower()}"
    raise ValueError(f"expected {SIZE_EXPECTED}")


def size_bytes(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) * _SIZE_FACTORS[match.group(2).lower()]


def canonical_duration(value: object) -> str:
    """'5S' -> '5s', 30 -> '30s', '1h' -> '1h'. Raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_EXPECTED}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected {DURATION_EXPECTED} (not negative)")
        return f"{value}s"
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return f"{int(match.group(1))}{(match.group(2) or 's').lower()}"
    raise ValueError(f"expected {DURATION_EXPECTED}")


def duration_seconds(text: str) -> int:
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r}")
    return int(match.group(1)) * _DURATION_FACTORS[(match.group(2) or "s").lower()]


# Fluentd (Fluent::PluginHelper / Output#get_placeholders_time) finds the granularity of the time
# placeholders by formatting a base time and the base time plus 1s, 1m, 1h, 1d: the first step
# that changes the string is the granularity. The same method here.
_BASE = datetime(2016, 1, 1, tzinfo=timezone.utc)
_STEPS = ((1, "second", "%S"), (60, "minute", "%M"), (3600, "hour", "%H"), (86400, "day", "%d"))
_TIME_DIRECTIVE = re.compile(r"%[-_0^#]?\d*[A-Za-z]")


def has_time_placeholder(text: str) -> bool:
    return bool(_TIME_DIRECTIVE.search(text.replace("%%", "")))


def time_granularity(text: str) -> int | None:
    """Seconds of the finest time placeholder in `text` (as Fluentd sees it), None if none."""
    if not has_time_placeholder(text):
        return None
    # %{path}-style s3 placeholders are not strftime: remove them first.
    cleaned = re.sub(r"%\{[^}]*\}", "", text)
    base = _BASE.strftime(cleaned)
    for seconds, _name, _example in _STEPS:
        if (_BASE + timedelta(seconds=seconds)).strftime(cleaned) != base:
            return seconds
    return None


def has_tag_placeholder(text: str) -> bool:
    return bool(re.search(r"\$\{tag(\[-?\d+\])?\}", text))


def integer_at_least_regexp(threshold: int) -> str:
    """An anchored regexp matching the decimal integers >= threshold (no sign, no leading zeros).

    filter_grep compares `record[key].to_s` with the pattern, so an integer field 14000 is
    matched as the string "14000". Negative numbers, decimals and strings with leading zeros
    never match.
    """
    if threshold < 0:
        raise ValueError("threshold must not be negative")
    if threshold == 0:
        return "^(0|[1-9][0-9]*)$"
    digits = str(threshold)
    width = len(digits)
    if digits == "1" + "0" * (width - 1):  # a power of ten: "at least `width` digits"
        return f"^[1-9][0-9]{{{width - 1},}}$" if width > 1 else "^[1-9][0-9]*$"
    alternatives = []
    # Same width, greater at position i, equal before it.
    for i, digit in enumerate(digits):
        d = int(digit)
        low = d + 1
        if low > 9:
            continue
        if i == 0 and low < 1:
            low = 1
        rest = width - i - 1
        klass = f"[{low}-9]" if low < 9 else "9"
        tail = f"[0-9]{{{rest}}}" if rest > 1 else ("[0-9]" if rest == 1 else "")
        alternatives.append(f"{digits[:i]}{klass}{tail}")
    alternatives.append(digits)  # the threshold itself
    alternatives.append(f"[1-9][0-9]{{{width},}}")  # more digits
    return "^(" + "|".join(alternatives) + ")$"


def tag_pattern_covers(general: str, specific: str) -> bool:
    """True when every tag matched by `specific` is also matched by `general` (simple cases)."""
    if general == specific or general == "**":
        return True
    if general.endswith(".**") and " " not in general + specific and "{" not in general + specific:
        stem = general[:-3]
        return specific == stem or specific.startswith(stem + ".")
    return False
