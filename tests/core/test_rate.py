"""The token bucket: rate, burst, refusals in a row, no limit at rate 0."""

from __future__ import annotations

from pulse._core.rate import TokenBucket


def test_a_burst_then_the_rate() -> None:
    """A full bucket allows `burst` requests at once, then one per 1/rate seconds."""
    bucket = TokenBucket(10.0, 0.0, burst=5)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.refused == 1
    assert not bucket.take(0.05)  # half a token
    assert bucket.refused == 2
    assert bucket.take(0.1)  # one token after 0.1 s at 10/s
    assert bucket.refused == 0


def test_refill_is_capped_and_time_never_runs_back() -> None:
    """A long pause refills at most `burst`; an earlier `now` refills nothing."""
    bucket = TokenBucket(1.0, 0.0, burst=2)
    assert bucket.take(0.0) and bucket.take(0.0) and not bucket.take(0.0)
    assert [bucket.take(1000.0) for _ in range(3)] == [True, True, False]
    assert not bucket.take(500.0)


def test_rate_zero_means_no_limit() -> None:
    """rate 0 never refuses."""
    bucket = TokenBucket(0.0, 0.0)
    assert all(bucket.take(0.0) for _ in range(10_000))
