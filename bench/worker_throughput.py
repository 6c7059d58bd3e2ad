"""Events per second through one worker process, beside RQ's own no-op job rate.

    python bench/worker_throughput.py [--customers 10000] [--database-url URL] [--redis-url URL]

Stores a synthetic history (every customer: a subscription created, changed a
few times, some cancelled and some coming back) as pending events, the way the
webhook receiver leaves them, then times one `subledger worker --burst`
process until every event is processed and its movements are committed. In the
same run it times the same worker class on no-op jobs. Prints a table.
Needs PostgreSQL and Redis (defaults: the local ones; a scratch database is
created and dropped).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from redis import Redis
from rq import Queue
from sqlalchemy import create_engine, func, insert, select, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ledger import migrate  # noqa: E402
from ledger.db import Database, utcnow  # noqa: E402
from ledger.intake import QUEUE_NAME, SHARD_COUNT, partition_of, shard_of  # noqa: E402
from ledger.models import Movement, StripeEvent  # noqa: E402
from worker.queues import wake_shard  # noqa: E402

PRICES = [(900, "month"), (2900, "month"), (9900, "month"), (29000, "year"), (99000, "year"), (500, "week")]


def price(amount: int, interval: str) -> dict[str, Any]:
    return {
        "id": f"price_{amount}_{interval}",
        "object": "price",
        "billing_scheme": "per_unit",
        "currency": "usd",
        "product": f"prod_{amount}",
        "recurring": {"interval": interval, "interval_count": 1, "usage_type": "licensed"},
        "type": "recurring",
        "unit_amount": amount,
        "unit_amount_decimal": str(amount),
    }


def subscription(customer: str, sub_id: str, start: datetime, quantity: int, rate: dict[str, Any], **extra: Any):
    body = {
        "id": sub_id,
        "object": "subscription",
        "customer": customer,
        "currency": "usd",
        "livemode": False,
        "status": "active",
        "start_date": int(start.timestamp()),
        "created": int(start.timestamp()),
        "cancel_at_period_end": False,
        "cancel_at": None,
        "canceled_at": None,
        "ended_at": None,
        "trial_end": None,
        "pause_collection": None,
        "discounts": [],
        "items": {
            "object": "list",
            "has_more": False,
            "data": [{"id": f"si_{sub_id}", "object": "subscription_item", "price": rate, "quantity": quantity}],
        },
    }
    body.update({k: int(v.timestamp()) if isinstance(v, datetime) else v for k, v in extra.items()})
    return body


def history(customers: int, seed: int = 7) -> list[dict[str, Any]]:
    """Stripe events for a synthetic account, in the current API shape."""
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    origin = datetime(2023, 1, 1, tzinfo=UTC)

    def event(kind: str, obj: dict[str, Any], at: datetime) -> None:
        events.append(
            {
                "id": f"evt_{len(events):08d}",
                "object": "event",
                "type": f"customer.subscription.{kind}",
                "api_version": "2025-10-29.clover",
                "created": int(at.timestamp()),
                "livemode": False,
                "data": {"object": obj},
            }
        )

    for n in range(customers):
        customer, sub_id = f"cus_{n:06d}", f"sub_{n:06d}"
        at = origin + timedelta(days=rng.randrange(700), seconds=rng.randrange(86400))
        rate, quantity = price(*rng.choice(PRICES)), rng.randint(1, 5)
        event("created", subscription(customer, sub_id, at, quantity, rate), at)
        for _ in range(rng.randint(2, 6)):
            at += timedelta(days=rng.randint(1, 60), seconds=rng.randrange(3600))
            if rng.random() < 0.5:
                quantity = max(1, quantity + rng.choice((-1, 1, 2)))
            else:
                rate = price(*rng.choice(PRICES))
            event("updated", subscription(customer, sub_id, at, quantity, rate), at)
        if rng.random() < 0.3:
            at += timedelta(days=rng.randint(1, 90))
            ended = subscription(customer, sub_id, at, quantity, rate, status="canceled", canceled_at=at, ended_at=at)
            event("deleted", ended, at)
    return events


def store_pending(database: Database, events: list[dict[str, Any]]) -> None:
    now = utcnow()
    rows = []
    for document in events:
        partition = partition_of(document)
        rows.append(
            {
                "id": document["id"],
                "type": document["type"],
                "api_version": document["api_version"],
                "livemode": False,
                "created": datetime.fromtimestamp(document["created"], UTC),
                "payload": document,
                "received_at": now,
                "received_via": "webhook",
                "partition": partition,
                "shard": shard_of(partition),
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
            }
        )
    with database.engine.begin() as connection:
        for start in range(0, len(rows), 2000):
            connection.execute(insert(StripeEvent), rows[start : start + 2000])


def run_burst_worker(env: dict[str, str], *extra: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "subledger"), "worker", "--burst", *extra],
        env=env,
        check=True,
        stderr=open(os.environ.get("BENCH_WORKER_LOG", os.devnull), "a"),  # noqa: SIM115
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def noop_rate(connection: Redis, env: dict[str, str], jobs: int, *extra: str) -> float:
    queue = Queue(QUEUE_NAME, connection=connection)
    for _ in range(jobs):
        queue.enqueue("bench.noop.noop", result_ttl=0)
    return jobs / run_burst_worker(env, *extra)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--server-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13")
    parser.add_argument("--noop-jobs", type=int, default=500)
    args = parser.parse_args()

    name = f"subledger_bench_{os.getpid()}"
    admin = create_engine(args.server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    url = args.server_url.rsplit("/", 1)[0] + f"/{name}"
    database = Database(url)
    redis = Redis.from_url(args.redis_url)
    redis.flushdb()
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": args.redis_url, "PYTHONPATH": str(ROOT)}
    try:
        migrate.upgrade(database.engine)
        events = history(args.customers)
        store_pending(database, events)
        print(f"{len(events):,} events for {args.customers:,} customers stored as pending", flush=True)
        for shard in range(SHARD_COUNT):
            wake_shard(redis, shard, force=True)
        elapsed = run_burst_worker(env)
        with database.session() as session:
            processed = session.scalar(
                select(func.count()).select_from(StripeEvent).where(StripeEvent.status == "processed")
            )
            movements = session.scalar(select(func.count()).select_from(Movement))
        assert processed == len(events), f"only {processed} of {len(events)} events processed"
        ours = len(events) / elapsed
        redis.flushdb()
        forking = noop_rate(redis, env, args.noop_jobs)
        simple = noop_rate(redis, env, args.noop_jobs, "--simple")
        print()
        print(f"{'what':<52} {'per second':>12}")
        print(f"{'subledger: events processed (1 forking worker)':<52} {ours:>12,.0f}")
        print(f"{'RQ no-op jobs, same worker class (Worker, forking)':<52} {forking:>12,.1f}")
        print(f"{'RQ no-op jobs, SimpleWorker':<52} {simple:>12,.1f}")
        print()
        print(f"{len(events):,} events → {movements:,} movements in {elapsed:.1f} s; target ≥ 1,000 events/s")
    finally:
        database.dispose()
        redis.flushdb()
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


if __name__ == "__main__":
    main()
