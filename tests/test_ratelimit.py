"""The per-user token bucket, with a fake clock."""

from __future__ import annotations

import pytest

from bot.chatflow.ratelimit import RateLimiter, describe_wait


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_refusal_then_refill() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_minute=6, burst=3, clock=clock)
    assert [limiter.check(1).allowed for _ in range(3)] == [True, True, True]
    refused = limiter.check(1)
    assert not refused.allowed and refused.first_refusal
    assert refused.retry_after_s == pytest.approx(10.0)
    again = limiter.check(1)
    assert not again.allowed and not again.first_refusal  # one message per run of refusals
    clock.now += 5
    assert limiter.check(1).retry_after_s == pytest.approx(5.0)
    clock.now += 5
    assert limiter.check(1).allowed
    assert not limiter.check(1).allowed
    clock.now += 10
    ok = limiter.check(1)
    assert ok.allowed and ok.retry_after_s == 0
    refused = limiter.check(1)
    assert refused.first_refusal  # a new run of refusals is announced again


def test_users_are_independent() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_minute=1, burst=1, clock=clock)
    assert limiter.check(1).allowed
    assert not limiter.check(1).allowed
    assert limiter.check(2).allowed


def test_refill_is_capped_at_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_minute=60, burst=2, clock=clock)
    limiter.check(1)
    clock.now += 3600
    assert [limiter.check(1).allowed for _ in range(3)] == [True, True, False]


def test_zero_rate_means_unlimited_and_zero_burst_still_lets_one_through() -> None:
    assert all(RateLimiter(0, 0).check(1).allowed for _ in range(100))
    limiter = RateLimiter(rate_per_minute=6, burst=0, clock=Clock())
    assert limiter.check(1).allowed and not limiter.check(1).allowed


def test_memory_is_bounded() -> None:
    clock = Clock()
    limiter = RateLimiter(rate_per_minute=6, burst=3, clock=clock, max_users=100)
    for uid in range(1000):
        limiter.check(uid)
        clock.now += 0.01
    assert len(limiter._buckets) <= 100


def test_negative_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        RateLimiter(-1, 3)


def test_describe_wait() -> None:
    assert describe_wait(0.2) == "1 second"
    assert describe_wait(9.1) == "10 seconds"
    assert describe_wait(600) == "10 minutes"
