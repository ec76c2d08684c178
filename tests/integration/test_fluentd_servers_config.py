"""`levity serve` refuses a bad FLUENTD_SERVERS at start: one line naming the setting, exit 2."""

import pytest

from tests.integration.test_startup import serve


@pytest.mark.parametrize("value, expected", [
    ("", "FLUENTD_SERVERS: empty"),
    ("agg-1,,agg-2", "FLUENTD_SERVERS: empty entry"),
    ("agg-1:70000", "FLUENTD_SERVERS: port out of range in 'agg-1:70000'"),
    ("agg-1:24224,agg-1", "FLUENTD_SERVERS: duplicate entry agg-1:24224"),
])
def test_bad_server_lists_stop_the_start_with_one_line(tmp_path, value, expected):
    result = serve(tmp_path, FLUENTD_ENABLED="true", FLUENTD_SERVERS=value)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("levity: configuration error: ") and expected in lines[0], lines
