"""The failed-login limiter on its own, with a clock the test moves."""

from levity.auth import CredentialCache, FailureLimiter, hash_password


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_failures_allowed_in_a_burst_then_one_per_interval():
    clock = Clock()
    limiter = FailureLimiter(per_minute=6, clock=clock)  # burst 6, then one every 10 s
    for _ in range(6):
        assert not limiter.blocked("CP-1")
        limiter.failed("CP-1")
    assert limiter.blocked("CP-1") and not limiter.blocked("CP-2")
    assert limiter.retry_after("CP-1") == 10
    clock.now += 10
    assert not limiter.blocked("CP-1")
    limiter.failed("CP-1")
    assert limiter.blocked("CP-1")


def test_the_table_is_bounded_least_recent_out():
    limiter = FailureLimiter(per_minute=1, max_keys=100, clock=Clock())
    for n in range(1000):
        limiter.failed(f"10.0.{n // 256}.{n % 256}")
    assert len(limiter) == 100
    assert limiter.blocked("10.0.3.231") and not limiter.blocked("10.0.0.0")


def test_cached_proof_is_tied_to_the_stored_hash():
    cache = CredentialCache()
    old, new = hash_password("0123456789abcdef"), hash_password("fedcba9876543210")
    cache.remember("CP-1", "0123456789abcdef", old)
    assert cache.known("CP-1", "0123456789abcdef", old)
    assert not cache.known("CP-1", "0123456789abcdef", new)  # rotated: check again, against the new hash
    assert not cache.known("CP-1", "wrong", old)
