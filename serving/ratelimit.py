"""Token buckets per caller and scope: 429 with ``Retry-After`` when one runs dry.

A caller is an API key (by its id) or, for anonymous calls, the client address (an
IPv6 client's /64 network: see :func:`serving.auth.address_bucket`). Each
scope (``read``, ``write``, ``ops``, and ``auth`` for uncached key checks) has its
own rate and burst; a write costs one
token per event, so a batch of 100 events weighs as much as 100 single posts.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["RateLimitSettings", "RateLimiter", "TokenBucket"]


class RateLimitSettings(BaseSettings):
    """Per-scope limits (env prefix ``LIVEREC_RATE_``); a rate of 0 turns a scope's off.

    Every key of a scope gets this rate and burst unless its record sets its own
    (``liverec keys add --limit``, ``liverec keys limit``), and each server process
    counts apart: N replicas take N times the rate from a key.

    Parameters
    ----------
    read_per_s, read_burst
        Read calls per second and burst, per key or per client address.
    write_per_s, write_burst
        Events per second and burst a key (or an anonymous address) may post.
    ops_per_s, ops_burst
        ``/metrics``, ``/v1/model`` and dashboard calls.
    auth_per_s, auth_burst
        Key verifications per client address that miss the verified-key cache (a
        first use, or a wrong key): each costs a scrypt, so guessing is slowed and
        cannot tie up the CPU.
    max_callers
        Buckets kept (least recently used callers are forgotten beyond it).

    Examples
    --------
    >>> RateLimitSettings(write_per_s=5).write_per_s
    5.0
    """

    model_config = SettingsConfigDict(env_prefix="LIVEREC_RATE_", extra="ignore")

    read_per_s: float = Field(default=1000.0, ge=0)
    read_burst: float = Field(default=2000.0, ge=1)
    write_per_s: float = Field(default=100.0, ge=0)
    write_burst: float = Field(default=500.0, ge=1)
    ops_per_s: float = Field(default=20.0, ge=0)
    ops_burst: float = Field(default=100.0, ge=1)
    auth_per_s: float = Field(default=5.0, ge=0)
    auth_burst: float = Field(default=50.0, ge=1)
    max_callers: int = Field(default=100_000, ge=1)

    def limit(self, scope: str) -> tuple[float, float]:
        """(tokens per second, burst) of ``scope``."""
        return (
            float(getattr(self, f"{scope}_per_s")),
            float(getattr(self, f"{scope}_burst")),
        )


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; :meth:`take` says how long to wait.

    Examples
    --------
    >>> b = TokenBucket(rate=1.0, burst=2.0, now=0.0)
    >>> b.take(1, now=0.0), b.take(1, now=0.0), b.take(1, now=0.0)
    (0.0, 0.0, 1.0)
    >>> b.take(1, now=1.0)
    0.0
    """

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = time.monotonic() if now is None else now

    def take(self, cost: float = 1.0, now: float | None = None) -> float:
        """Take ``cost`` tokens; 0.0 on success, else the seconds until they exist.

        A refused call takes nothing. A cost above the burst can never pass: the
        wait returned is then the time to refill a full burst.
        """
        now = time.monotonic() if now is None else now
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= cost:
            self.tokens -= cost
            return 0.0
        missing = min(cost, self.burst) - self.tokens
        return missing / self.rate if self.rate > 0 else math.inf


class RateLimiter:
    """One :class:`TokenBucket` per (scope, caller), bounded in number.

    Examples
    --------
    >>> rl = RateLimiter(RateLimitSettings(write_per_s=1, write_burst=1))
    >>> rl.check("write", "key:ab12", now=0.0), rl.check("write", "key:ab12", now=0.0)
    (0.0, 1.0)
    >>> rl.check("write", "key:other", now=0.0)
    0.0
    >>> # its own limit: half a token came at the old rate, the rest takes 0.05 s
    >>> rl.check("write", "key:ab12", now=0.5, limit=(10.0, 20.0))
    0.05
    """

    def __init__(self, settings: RateLimitSettings) -> None:
        self.settings = settings
        self._buckets: OrderedDict[tuple[str, str], TokenBucket] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, scope: str, caller: str, cost: float = 1.0, now: float | None = None,
              limit: tuple[float, float] | None = None) -> float:
        """0.0 when ``caller`` may go on, else the seconds until it may (``Retry-After``).

        ``limit``: the caller's own (rate, burst) in place of the settings' (a key's
        own limits). A bucket follows a changed limit at once, keeping its tokens up
        to the new burst.
        """
        rate, burst = limit or self.settings.limit(scope)
        if rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        key = (scope, caller)
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = self._buckets[key] = TokenBucket(rate, burst, now)
                if len(self._buckets) > self.settings.max_callers:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                if (bucket.rate, bucket.burst) != (rate, burst):
                    bucket.take(0.0, now)  # refilled at the old rate up to now
                    bucket.rate, bucket.burst = rate, burst
                    bucket.tokens = min(bucket.tokens, burst)
            return bucket.take(cost, now)
