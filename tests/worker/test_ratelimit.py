"""The token buckets every process calling Stripe shares: never faster than the rate.

Measured on a fake clock: at each tick every client takes as many tokens as
the buckets give, and over any stretch of ticks the total stays within the
bucket's burst plus its rate times the stretch's length.
"""

from __future__ import annotations

import multiprocessing
import threading
import time
from collections.abc import Callable

import pytest
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ledger.settings import Settings
from worker.ratelimit import BURST_S, Buckets, Limits, LocalBuckets, RateLimiter, RedisBuckets, endpoint, stripe_limiter

START = 1_800_000_000.0
TICK = 0.05
TICKS = 120


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        pytest.param("/v1/customers", "/v1/customers", id="a list"),
        pytest.param("/v1/invoices/in_1/lines", "/v1/invoices/*/lines", id="invoice lines"),
        pytest.param("/v1/coupons/HALF", "/v1/coupons/*", id="a coupon named freely"),
        pytest.param("/v1/prices/search", "/v1/prices/search", id="search is no id"),
        pytest.param("/v1/subscriptions/sub_1?expand[]=x", "/v1/subscriptions/*", id="query left out"),
    ],
)
def test_an_endpoint_is_its_path_without_ids(path: str, expected: str) -> None:
    assert endpoint(path) == expected


@pytest.mark.parametrize(
    ("key", "share", "expected"),
    [
        pytest.param("sk_live_x", 0.8, Limits("live", 80.0, 20.0), id="live: 100/s, 25/s per endpoint"),
        pytest.param("rk_test_x", 0.8, Limits("test", 20.0, 20.0), id="test: 25/s"),
        pytest.param(None, 1.0, Limits("test", 25.0, 25.0), id="unknown mode: test's"),
    ],
)
def test_limits_are_stripes_times_the_share(key: str | None, share: float, expected: Limits) -> None:
    assert Limits.for_settings(Settings(stripe_api_key=key, stripe_rate_share=share)) == expected


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def _race(make_buckets: Callable[[], Buckets], paths: list[str], limits: Limits, begin: float) -> list[list[int]]:
    """Clients (one per path, each with its own buckets handle) take all they can at each tick.

    The clock only moves between ticks, when no client is taking: the grants
    of a tick are exactly those the buckets allowed at that instant.
    """
    clock = FakeClock()
    clock.now = begin
    limiters = [RateLimiter(make_buckets(), limits, clock=clock) for _ in paths]
    granted = [[0] * TICKS for _ in paths]
    start, done = threading.Barrier(len(paths) + 1), threading.Barrier(len(paths) + 1)

    def client(index: int) -> None:
        for tick in range(TICKS):
            start.wait()
            while limiters[index].try_acquire(paths[index]) == 0.0:
                granted[index][tick] += 1
            done.wait()

    threads = [threading.Thread(target=client, args=(index,)) for index in range(len(paths))]
    for thread in threads:
        thread.start()
    for tick in range(TICKS):
        clock.now = begin + tick * TICK
        start.wait()
        done.wait()
    for thread in threads:
        thread.join()
    return granted


def _assert_within(counts: list[int], rate: float) -> None:
    """Over any run of ticks: at most a full bucket (BURST_S seconds' worth) plus rate × its length."""
    burst = max(1.0, rate * BURST_S)
    for first in range(TICKS):
        total = 0
        for last in range(first, TICKS):
            total += counts[last]
            # (The slack: a bucket counts 0.9999 as a token, see ratelimit.WHOLE.)
            assert total <= burst + rate * (last - first) * TICK + 1e-3, (first, last, total)


def _check(make_buckets: Callable[[], Buckets]) -> None:
    limits = Limits("test", account_rate=30.0, endpoint_rate=20.0)
    same = _race(make_buckets, ["/v1/invoices", "/v1/invoices"], limits, START)
    _assert_within([a + b for a, b in zip(*same, strict=True)], limits.endpoint_rate)
    elapsed = (TICKS - 1) * TICK
    assert sum(map(sum, same)) >= limits.endpoint_rate * (BURST_S + elapsed) - 2, "the budget is used, not wasted"

    # Later, when the buckets used above are full again.
    apart = _race(make_buckets, ["/v1/invoices", "/v1/customers/cus_1"], limits, START + 60)
    for counts in apart:
        _assert_within(counts, limits.endpoint_rate)
    _assert_within([a + b for a, b in zip(*apart, strict=True)], limits.account_rate)
    assert sum(map(sum, apart)) >= limits.account_rate * (BURST_S + elapsed) - 2


def test_two_redis_connections_never_exceed_the_rates_together(redis: Redis, redis_url: str) -> None:
    connections: list[Redis] = []

    def buckets() -> Buckets:
        connections.append(Redis.from_url(redis_url))
        return RedisBuckets(connections[-1])

    try:
        _check(buckets)
    finally:
        for connection in connections:
            connection.close()
    assert {key.decode() for key in redis.keys("subledger:stripe:*")} == {
        "subledger:stripe:test:global",
        "subledger:stripe:test:/v1/invoices",
        "subledger:stripe:test:/v1/customers/*",
    }


def test_the_in_process_buckets_keep_the_same_rates() -> None:
    shared = LocalBuckets()
    _check(lambda: shared)


def test_acquire_sleeps_exactly_as_long_as_the_bucket_needs() -> None:
    clock = FakeClock()

    def sleep(seconds: float) -> None:
        clock.now += seconds

    limiter = RateLimiter(LocalBuckets(), Limits("test", 10.0, 10.0), clock=clock, sleep=sleep)
    waited = sum(limiter.acquire("/v1/customers") for _ in range(30))
    full = 10.0 * BURST_S  # what the full bucket holds; the rest comes at 10/s
    assert waited == pytest.approx((30 - full) / 10.0)
    assert clock.now - START == pytest.approx((30 - full) / 10.0)


def test_without_redis_url_the_limiter_is_this_process_own() -> None:
    settings = Settings(stripe_api_key="sk_test_x")
    limiter = stripe_limiter(settings)
    assert isinstance(limiter.buckets, LocalBuckets)
    assert stripe_limiter(settings) is limiter, "every client of the process shares it"


def test_when_redis_stops_answering_the_process_limits_itself() -> None:
    unreachable = Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    clock = FakeClock()
    limiter = RateLimiter(RedisBuckets(unreachable), Limits("test", 5.0, 5.0), clock=clock)
    # A full local bucket holds max(1, 5 × BURST_S) tokens; then the next whole token refills at 5/s.
    capacity = max(1.0, 5.0 * BURST_S)
    full = int(capacity)
    wait = (1 - (capacity - full)) / 5.0
    assert [limiter.try_acquire("/v1/customers") for _ in range(full + 1)][-2:] == [0.0, pytest.approx(wait)]
    unreachable.close()


def _take(redis_url: str, count: int, rate: float, ready: multiprocessing.synchronize.Event) -> None:
    limiter = RateLimiter(RedisBuckets(Redis.from_url(redis_url)), Limits("test", rate, rate))
    ready.wait()
    for _ in range(count):
        limiter.acquire("/v1/invoices")


def test_two_processes_share_the_budget_on_the_real_clock(redis: Redis, redis_url: str) -> None:
    rate, each = 40.0, 40
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    processes = [context.Process(target=_take, args=(redis_url, each, rate, ready)) for _ in range(2)]
    for process in processes:
        process.start()
    started = time.monotonic()
    ready.set()
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
    # 80 tokens: those in the full bucket, the rest at 40/s.
    assert time.monotonic() - started >= (2 * each - rate * BURST_S) / rate - 0.05
