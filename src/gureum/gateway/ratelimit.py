"""Token buckets for per-API and per-route rate limits (steady rate + burst), in memory.

Limits are per gateway process, as AWS's are per region: a cluster of N gateways admits up to
N times the configured rate.
"""

from __future__ import annotations

import math
import time


class TokenBucket:
    """`rate` tokens a second, holding at most `burst`; starts full."""

    __slots__ = ("_stamp", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._stamp = time.monotonic()

    def take(self, now: float | None = None) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there will be."""
        now = time.monotonic() if now is None else now
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class RateLimiter:
    """Buckets by key; a bucket is replaced when its configured rate or burst changes."""

    def __init__(self) -> None:
        self._buckets: dict[str, TokenBucket] = {}

    def check(self, key: str, rate: float | None, burst: int | None) -> int:
        """0 if admitted, else the whole seconds to wait (for Retry-After, at least 1)."""
        if rate is None or burst is None:
            return 0
        bucket = self._buckets.get(key)
        if bucket is None or bucket.rate != rate or bucket.burst != burst:
            bucket = self._buckets[key] = TokenBucket(rate, burst)
        wait = bucket.take()
        return 0 if wait == 0.0 else max(1, math.ceil(wait))
