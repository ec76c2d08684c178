import re

import pytest

from levity.fluentconf.units import (canonical_duration, canonical_size, duration_seconds, integer_at_least_regexp,
                                     size_bytes, time_granularity)


@pytest.mark.parametrize("given,canonical", [("512m", "512m"), ("8MB", "8m"), ("8mb", "8m"), ("1g", "1g"),
                                             ("64KiB", "64k"), (1024, "1024"), ("2T", "2t")])
def test_sizes(given, canonical):
    assert canonical_size(given) == canonical


@pytest.mark.parametrize("bad", ["", "big", "1.5g", "-1m", 0, True, "8 parsecs", "1p"])
def test_bad_sizes(bad):
    with pytest.raises(ValueError):
        canonical_size(bad)


@pytest.mark.parametrize("given,canonical,seconds", [("5s", "5s", 5), ("10m", "10m", 600), ("1h", "1h", 3600),
                                                     ("1d", "1d", 86400), (30, "30s", 30), ("72H", "72h", 259200)])
def test_durations(given, canonical, seconds):
    assert canonical_duration(given) == canonical
    assert duration_seconds(canonical) == seconds


@pytest.mark.parametrize("bad", ["", "soon", "1w", "5 minutes", "-1", -1, "1.5h", False])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        canonical_duration(bad)


def test_size_bytes():
    assert size_bytes("8m") == 8 << 20


@pytest.mark.parametrize("text,granularity", [("/a/${tag}/%Y-%m-%d", 86400), ("ocpp/%Y/%m/%d/%H", 3600),
                                              ("/a/${tag}", None), ("/a/%Y-%m", None), ("%{path}%Y%m%d", 86400)])
def test_time_granularity_like_fluentd(text, granularity):
    assert time_granularity(text) == granularity


@pytest.mark.parametrize("threshold", [0, 1, 7, 10, 99, 100, 101, 999, 1000, 4321, 9999, 10000, 10001, 12345, 99999])
def test_integer_at_least_regexp_is_exact(threshold):
    pattern = re.compile(integer_at_least_regexp(threshold))
    for value in list(range(0, 3 * threshold + 200)) + [10 ** 7, 123456789]:
        assert bool(pattern.search(str(value))) == (value >= threshold), value
    for text in ("-20000", "10000.5", "010000", " 10000", "abc", ""):
        assert not pattern.search(text) or threshold == 0 and text == ""  # never a non-integer


def test_high_value_grep_pattern_like_filter_grep():
    """filter_grep tests regexp.match(record[key].to_s): the stops of the audit contract."""
    pattern = re.compile(integer_at_least_regexp(10000))
    assert pattern.pattern == "^[1-9][0-9]{4,}$"
    stops = [{"energy_delivered": 14000}, {"energy_delivered": 10000}, {"energy_delivered": 9999},
             {"energy_delivered": 0}, {"energy_delivered": -15000}, {}]
    kept = [stop for stop in stops if pattern.search(str(stop.get("energy_delivered", "")))]
    assert kept == [{"energy_delivered": 14000}, {"energy_delivered": 10000}]
