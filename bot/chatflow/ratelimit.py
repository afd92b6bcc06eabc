"""Per-user token buckets: a short burst is fine, a steady flood is slowed to the configured rate.

Discord-free and clock-injectable, so the behaviour is tested without sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_s: float  # 0 when allowed; else seconds until one token is back
    # True for the first refusal of a run of refusals: worth a message, the rest a reaction.
    first_refusal: bool = False


@dataclass
class _Bucket:
    tokens: float
    updated: float
    warned: bool = False


class RateLimiter:
    """``rate_per_minute`` tokens refill continuously up to ``burst``; each message spends one."""

    def __init__(
        self,
        rate_per_minute: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_users: int = 10_000,
    ) -> None:
        if rate_per_minute < 0 or burst < 0:
            raise ValueError("rate and burst must be >= 0")
        self.rate_per_s = rate_per_minute / 60.0
        # A burst of 0 with a positive rate would refuse everyone forever; one message is the floor.
        self.burst = max(1, burst) if rate_per_minute > 0 else burst
        self._clock = clock
        self._buckets: dict[int, _Bucket] = {}
        self._max_users = max_users

    @property
    def unlimited(self) -> bool:
        """rate_per_minute = 0 switches the limit off (documented in the configuration)."""
        return self.rate_per_s == 0

    def check(self, user_id: int) -> RateDecision:
        """Spend a token if one is there; otherwise say how long until one is."""
        if self.unlimited:
            return RateDecision(True, 0.0)
        now = self._clock()
        bucket = self._buckets.get(user_id)
        if bucket is None:
            self._evict_full(now)
            bucket = self._buckets[user_id] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s)
            bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            bucket.warned = False
            return RateDecision(True, 0.0)
        first = not bucket.warned
        bucket.warned = True
        return RateDecision(False, (1.0 - bucket.tokens) / self.rate_per_s, first_refusal=first)

    def _evict_full(self, now: float) -> None:
        # Buckets that have refilled are indistinguishable from new ones; dropping them bounds memory.
        if len(self._buckets) < self._max_users:
            return
        for uid, b in list(self._buckets.items()):
            if b.tokens + (now - b.updated) * self.rate_per_s >= self.burst:
                del self._buckets[uid]
        if len(self._buckets) >= self._max_users:  # everyone is mid-burst: drop the oldest
            oldest = min(self._buckets, key=lambda uid: self._buckets[uid].updated)
            del self._buckets[oldest]


def describe_wait(seconds: float) -> str:
    """A wait as people say it, rounded up so that retrying after it works."""
    whole = max(1, math.ceil(seconds))
    if whole < 120:
        return "1 second" if whole == 1 else f"{whole} seconds"
    return f"{math.ceil(whole / 60)} minutes"
