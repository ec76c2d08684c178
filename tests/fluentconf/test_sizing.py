"""Buffers sized from numbers: `sizing` (rate, survive, event size) gives the file buffers their
limits, flush threads and retry bounds; errors name the key path."""

import pytest

from levity.fluentconf import ProfileError, load_profile, render


def profile(**sizing):
    return {
        "description": "sized",
        "sizing": {"rate": "1000 events/s", "survive": "1h", "event_size": "1KB", **sizing},
        "outputs": [
            {"name": "es", "type": "elasticsearch",
             "buffer": {"type": "file", "flush_interval": "5s", "chunk_limit_size": "8m"}},
            {"name": "billing", "type": "forward", "servers": [{"host": "billing.example.internal"}],
             "buffer": {"type": "file", "flush_interval": "1s", "chunk_limit_size": "1m", "share": 0.1,
                        "retry_timeout": "72h"}},
            {"name": "debug", "type": "stdout"},
        ],
        "routes": [{"match": "ocpp.transaction.**", "outputs": ["billing", "es"]},
                   {"match": "ocpp.**", "outputs": ["es", "debug"]}],
    }


def load(write_profile, data):
    return load_profile(write_profile(data))


def test_the_arithmetic(write_profile):
    loaded = load(write_profile, profile())
    es = loaded.output("es").buffer
    # B = 1000 x 1 KiB = 0.98 MiB/s; (3600 s + 5 s flush) x 1.5 = 5,281 MiB -> rounded up to 6 GiB.
    assert es.total_limit_size == "6g"
    # backlog of 1 h drained in 1 h while events keep coming: 2 x B = 1.95 MiB/s, one 8 MiB chunk
    # a second per thread -> 1 thread, raised to Elasticsearch's 2.
    assert es.flush_thread_count == 2
    assert es.retry_timeout == "90m" and es.retry_max_interval == "150s"
    billing = loaded.output("billing").buffer
    # share 0.1: 0.098 MiB/s x 3601 s x 1.5 = 528 MiB.
    assert billing.total_limit_size == "528m" and billing.flush_thread_count == 1
    assert billing.retry_timeout == "72h"  # set in the profile: it wins
    text = render(loaded)
    assert "total_limit_size 6g" in text and "share" not in text


def test_more_rate_means_more_threads_and_a_faster_catch_up_too(write_profile):
    fast = load(write_profile, profile(rate=20000, catch_up="15m")).output("es").buffer
    # B = 19.5 MiB/s x (1 + 4) = 97.7 MiB/s over 8 MiB per thread-second -> 13 threads.
    assert fast.flush_thread_count == 13


def test_without_sizing_nothing_is_computed(write_profile):
    data = profile()
    del data["sizing"]
    es = load(write_profile, data).output("es").buffer
    assert es.total_limit_size is None and es.retry_timeout is None


@pytest.mark.parametrize("key, value, expected", [
    ("rate", "fast", "positive number of events per second"),
    ("rate", 0, "positive number of events per second"),
    ("survive", "two hours", "duration"),
    ("survive", "0h", "longer than 0"),
    ("event_size", "big", "size"),
    ("headroom", 0.5, "greater than or equal to 1"),
    ("bogus", 1, "one of: rate, survive"),
])
def test_bad_values_name_the_key_path(write_profile, key, value, expected):
    data = profile(**{key: value})
    with pytest.raises(ProfileError) as caught:
        load(write_profile, data)
    problem = next(p for p in caught.value.problems if p.key_path == f"sizing.{key}")
    assert expected in problem.expected


def test_missing_survive_is_named(write_profile):
    data = profile()
    del data["sizing"]["survive"]
    with pytest.raises(ProfileError) as caught:
        load(write_profile, data)
    assert caught.value.key_path == "sizing.survive" and caught.value.found == "nothing"


def test_buffers_larger_than_max_disk_are_refused(write_profile):
    with pytest.raises(ProfileError) as caught:
        load(write_profile, profile(max_disk="5g"))
    error = caught.value
    assert error.key_path == "sizing.max_disk"
    assert "es 6g" in error.found and "billing 528m" in error.found


def test_the_production_profile_is_sized_from_its_numbers():
    from levity.fluentconf.profile import profiles_dir

    production = load_profile(profiles_dir() / "production.yaml")
    assert production.doc.sizing.rate == 5000 and production.doc.sizing.survive == "2h"
    for output in production.outputs:
        assert output.buffer.total_limit_size and output.buffer.retry_timeout and output.buffer.flush_thread_count
