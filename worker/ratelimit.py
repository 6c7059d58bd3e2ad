"""Stripe's rate limit, shared by every process that calls Stripe: token buckets.

Stripe allows an account about 100 requests a second in live mode (25 in test
mode) and about 25 a second on any one endpoint; past that it answers 429.
Backfill threads, workers fetching missing objects and the nightly reconcile
may run at once on several machines, so the budget is kept in Redis, where
they all draw from the same buckets: one for the account and one per endpoint
(the path without ids, `/v1/invoices/*/lines`). A request takes a token from
both at once, in one Lua script, or takes none and waits.

Without REDIS_URL (a local run, one process) the same buckets live in memory.
If Redis stops answering, a process falls back to its own buckets rather than
stop calling Stripe: 429s are still waited out by `worker.stripe_api`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from redis import Redis, RedisError

from ledger.settings import Settings

log = logging.getLogger("subledger.stripe")

LIVE_RATE = 100.0
"""Stripe's limit for an account in live mode, requests per second."""

TEST_RATE = 25.0
"""Stripe's limit for an account in test mode, requests per second."""

ENDPOINT_RATE = 25.0
"""Stripe's limit for one endpoint (path without ids), requests per second."""

BURST_S = 0.25
"""A full bucket holds this many seconds' worth of its rate: small, so a burst after
an idle spell never doubles the rate Stripe sees within one second."""

KEY_PREFIX = "subledger:stripe:"
"""Redis keys of the buckets: `subledger:stripe:<mode>:global`, `…:<mode>:/v1/invoices/*/lines`."""

KEY_TTL_S = 60
"""An idle bucket's key expires (it would be full again by then anyway)."""

REDIS_RETRY_S = 30.0
"""After Redis failed to answer, the process limits itself alone this long before asking Redis again."""

WHOLE = 1 - 1e-4
"""A bucket holding this much holds a token: a refill computed from Unix times in floating point
(a resolution of 0.2 µs) falls a hair short of the token it waited for."""

MIN_WAIT_S = 0.001
"""The shortest wait: one a clock would not even notice would only spin."""

ACTION_SEGMENTS = frozenset({"search", "upcoming", "create_preview"})
"""Path segments in an id's place that are not ids (`/v1/prices/search`)."""


def endpoint(path: str) -> str:
    """The endpoint a request path belongs to: ids replaced by `*`.

    Stripe paths alternate resource and id: `/v1/invoices/in_1/lines` →
    `/v1/invoices/*/lines`. Coupon ids are free text (`/v1/coupons/HALF`), so
    position decides, not the shape of the segment.
    """
    path = path.split("?", 1)[0]
    segments = path.strip("/").split("/")
    if len(segments) < 2 or not segments[0].startswith("v"):
        return path
    named = [segments[0]]
    for position, segment in enumerate(segments[1:]):
        is_id = position % 2 == 1 and segment not in ACTION_SEGMENTS
        named.append("*" if is_id else segment)
    return "/" + "/".join(named)


@dataclass(frozen=True)
class Limits:
    """Requests per second subledger allows itself, for the account and per endpoint."""

    mode: str
    account_rate: float
    endpoint_rate: float

    @classmethod
    def for_settings(cls, settings: Settings) -> Limits:
        """Stripe's limits for the key's mode × STRIPE_RATE_SHARE; test mode's when the mode is unknown."""
        share = settings.stripe_rate_share
        live = settings.livemode is True
        account = LIVE_RATE if live else TEST_RATE
        return cls("live" if live else "test", account * share, min(ENDPOINT_RATE, account) * share)


Bucket = tuple[str, float, float]
"""(key, rate per second, capacity)."""


class Buckets(Protocol):
    def take(self, buckets: Sequence[Bucket], now: float) -> float:
        """Take one token from every bucket, or none: 0.0, or the seconds to wait before trying again."""
        ...


# KEYS: the buckets; ARGV: now, then rate and capacity of each bucket, then the TTL.
# A bucket is a hash {tokens, at}; `at` never goes backwards, so a process whose
# clock lags another's gets no refill until its clock catches up (never more).
_TAKE = (
    f"local WHOLE = {WHOLE!r}\n"
    """
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[#ARGV])
local wait = 0
local tokens = {}
local stamps = {}
for i, key in ipairs(KEYS) do
    local rate = tonumber(ARGV[2 * i])
    local capacity = tonumber(ARGV[2 * i + 1])
    local stored = redis.call('HMGET', key, 'tokens', 'at')
    local level = tonumber(stored[1]) or capacity
    local at = tonumber(stored[2]) or now
    if now > at then
        level = math.min(capacity, level + (now - at) * rate)
        at = now
    end
    tokens[i] = level
    stamps[i] = at
    if level < WHOLE then
        wait = math.max(wait, (1 - level) / rate)
    end
end
if wait > 0 then
    return tostring(wait)
end
for i, key in ipairs(KEYS) do
    redis.call('HSET', key, 'tokens', tostring(tokens[i] - 1), 'at', tostring(stamps[i]))
    redis.call('EXPIRE', key, ttl)
end
return '0'
"""
)


class RedisBuckets:
    """Buckets in Redis, shared by every process using the same Redis."""

    def __init__(self, connection: Redis) -> None:
        self.connection = connection
        self._take = connection.register_script(_TAKE)

    def take(self, buckets: Sequence[Bucket], now: float) -> float:
        arguments: list[str] = [repr(now)]
        for _, rate, capacity in buckets:
            arguments += [repr(rate), repr(capacity)]
        arguments.append(str(KEY_TTL_S))
        answer = self._take(keys=[key for key, _, _ in buckets], args=arguments)
        return float(answer.decode() if isinstance(answer, bytes) else answer)


class LocalBuckets:
    """The same buckets in this process's memory, for a run without Redis."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[str, tuple[float, float]] = {}

    def take(self, buckets: Sequence[Bucket], now: float) -> float:
        with self._lock:
            levels: list[tuple[float, float]] = []
            wait = 0.0
            for key, rate, capacity in buckets:
                level, at = self._state.get(key, (capacity, now))
                if now > at:
                    level, at = min(capacity, level + (now - at) * rate), now
                levels.append((level, at))
                if level < WHOLE:
                    wait = max(wait, (1 - level) / rate)
            if wait > 0:
                return wait
            for (key, _, _), (level, at) in zip(buckets, levels, strict=True):
                self._state[key] = (level - 1, at)
            return 0.0


class RateLimiter:
    """Waits until Stripe may be called on a path; usable as `StripeAPI(throttle=...)`."""

    def __init__(
        self,
        buckets: Buckets,
        limits: Limits,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.buckets = buckets
        self.limits = limits
        self._clock = clock
        self._sleep = sleep
        self._fallback: LocalBuckets | None = None
        self._fallback_until = 0.0

    def _buckets_for(self, path: str) -> list[Bucket]:
        prefix = f"{KEY_PREFIX}{self.limits.mode}:"
        account, per_endpoint = self.limits.account_rate, self.limits.endpoint_rate
        return [
            (f"{prefix}global", account, max(1.0, account * BURST_S)),
            (f"{prefix}{endpoint(path)}", per_endpoint, max(1.0, per_endpoint * BURST_S)),
        ]

    def _take(self, buckets: Sequence[Bucket]) -> float:
        now = self._clock()
        if self._fallback is None or now >= self._fallback_until:
            try:
                return self.buckets.take(buckets, now)
            except RedisError as exc:
                log.warning("Redis does not answer; limiting Stripe calls in this process only: %s", exc)
                self._fallback = self._fallback or LocalBuckets()
                self._fallback_until = now + REDIS_RETRY_S
        assert self._fallback is not None
        return self._fallback.take(buckets, now)

    def try_acquire(self, path: str) -> float:
        """Take a token for `path` if both buckets have one: 0.0; else take none and say how long to wait."""
        return self._take(self._buckets_for(path))

    def acquire(self, path: str) -> float:
        """Block until a request on `path` is allowed; the seconds waited."""
        buckets = self._buckets_for(path)
        waited = 0.0
        while (wait := self._take(buckets)) > 0:
            wait = max(wait, MIN_WAIT_S)
            self._sleep(wait)
            waited += wait
        return waited

    def __call__(self, path: str) -> None:
        self.acquire(path)


_shared: dict[tuple[str | None, Limits], RateLimiter] = {}
_shared_lock = threading.Lock()


def stripe_limiter(settings: Settings) -> RateLimiter:
    """This process's limiter for the settings: on REDIS_URL's Redis, else in memory.

    One per process and configuration, so every client and thread draws from
    the same buckets.
    """
    limits = Limits.for_settings(settings)
    key = (settings.redis_url, limits)
    with _shared_lock:
        limiter = _shared.get(key)
        if limiter is None:
            buckets: Buckets = (
                RedisBuckets(Redis.from_url(settings.redis_url)) if settings.redis_url else LocalBuckets()
            )
            limiter = _shared[key] = RateLimiter(buckets, limits)
        return limiter
