"""Webhook acknowledgement throughput and latency, beside a bare Flask endpoint.

    python bench/webhook_throughput.py [--events 4000] [--clients 16] [--rate 200] [--seconds 15]

Serves (a) subledger's app and (b) bench/bare_app.py — a Flask endpoint that
reads the body and answers 200 — with the same gunicorn settings, on a
scratch PostgreSQL database and Redis, and drives both from the same
load generator in the same run:

* throughput: `--clients` threads send distinct signed events as fast as the
  answers come back;
* latency: an open-loop schedule of `--rate` requests per second for
  `--seconds`, each latency measured from its scheduled send time, so a stall
  is not hidden by the requests it held back.

No worker runs: this measures the acknowledgement (verify, INSERT, COMMIT,
queue the shard), which is what Stripe waits for. Targets: ≥ 50 % of the bare
endpoint's throughput, and p99 under 50 ms at 200 requests/s. The load
generator is Python on the same machine and takes CPU from the servers, so
the absolute numbers are a floor; the ratio is the figure that travels.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from redis import Redis
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ledger import migrate  # noqa: E402
from ledger.db import Database  # noqa: E402
from tests.ledger.subscription_payloads import item, price, subscription, ts, utc  # noqa: E402
from tests.stripe_payloads import WEBHOOK_SECRET, current_event, signature_header  # noqa: E402

GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")
GOLD = price(10000)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Events:
    """Distinct signed subscription events (current API shape), made on demand."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.count = 0
        self.lock = threading.Lock()

    def next(self) -> tuple[bytes, dict[str, str]]:
        with self.lock:
            n = self.count
            self.count += 1
        customer = f"cus_{self.prefix}{n}"
        payload = subscription(item(GOLD, quantity=1 + n % 3), start=utc(1, 1 + n % 27), customer=customer,
                               sub_id=f"sub_{self.prefix}{n}")  # fmt: skip
        event = current_event("customer.subscription.created", payload, event_id=f"evt_{self.prefix}{n}",
                              created=ts(utc(1, 1 + n % 27)))  # fmt: skip
        body = json.dumps(event).encode()
        return body, {"Stripe-Signature": signature_header(body), "Content-Type": "application/json"}


@contextmanager
def gunicorn(app: str, env: dict[str, str], workers: int) -> Iterator[str]:
    port = free_port()
    command = [GUNICORN, app, "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--chdir", str(ROOT)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(url, timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.2)
        else:
            raise RuntimeError(f"gunicorn serving {app} did not come up")
        yield f"{url}/webhooks/stripe"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def throughput(url: str, events: Events, clients: int, count: int) -> tuple[float, int]:
    """Requests per second with `clients` closed-loop senders; and the number of non-200 answers."""
    remaining = [count]
    failures = [0]
    lock = threading.Lock()

    def sender() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                body, headers = events.next()
                try:
                    ok = session.post(url, data=body, headers=headers, timeout=30).status_code == 200
                except requests.RequestException:
                    ok = False
                if not ok:
                    with lock:
                        failures[0] += 1

    threads = [threading.Thread(target=sender) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return count / (time.perf_counter() - started), failures[0]


def latencies(url: str, events: Events, rate: float, seconds: float, senders: int = 32) -> tuple[list[float], int]:
    """Open loop: request i is due at start + i/rate; its latency counts from then (milliseconds)."""
    total = int(rate * seconds)
    signed = [events.next() for _ in range(total)]  # signing is not what is measured
    results: list[float] = []
    failures = [0]
    slot = [0]
    lock = threading.Lock()
    start = time.perf_counter() + 0.5

    def sender() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    index = slot[0]
                    slot[0] += 1
                if index >= total:
                    return
                due = start + index / rate
                pause = due - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
                body, headers = signed[index]
                try:
                    ok = session.post(url, data=body, headers=headers, timeout=30).status_code == 200
                except requests.RequestException:
                    ok = False
                elapsed_ms = (time.perf_counter() - due) * 1000
                with lock:
                    results.append(elapsed_ms)
                    failures[0] += 0 if ok else 1

    threads = [threading.Thread(target=sender) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + 120)
    return results, failures[0]


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(int(fraction * len(ordered)), len(ordered) - 1)]


def reset(database: Database, redis: Redis) -> None:
    with database.engine.begin() as connection:
        connection.execute(text("TRUNCATE stripe_events"))
    redis.flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=4000, help="requests of the throughput run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, default=4, help="gunicorn workers, for both apps")
    parser.add_argument("--server-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--database-url", help="use this (migrated, its events emptied) instead of a scratch database")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/13", help="its db is flushed")
    args = parser.parse_args()

    scratch = None
    url = args.database_url
    if url is None:
        scratch = f"subledger_bench_webhooks_{os.getpid()}"
        admin = create_engine(args.server_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {scratch}"))
        url = args.server_url.rsplit("/", 1)[0] + f"/{scratch}"
    database = Database(url)
    redis = Redis.from_url(args.redis_url)
    env = {**os.environ, "DATABASE_URL": url, "REDIS_URL": args.redis_url, "STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET,
           "PYTHONPATH": str(ROOT)}  # fmt: skip
    rows = []
    try:
        migrate.upgrade(database.engine)
        for label, app in (("bare Flask 200", "bench.bare_app:app"), ("subledger webhook", "webapp:create_app()")):
            reset(database, redis)
            events = Events(prefix=label.split()[0][:4])
            with gunicorn(app, env, args.workers) as endpoint:
                throughput(endpoint, events, args.clients, 200)  # warm-up: connections, imports, caches
                rate, failed = throughput(endpoint, events, args.clients, args.events)
                timings, late_failed = latencies(endpoint, events, args.rate, args.seconds)
            rows.append((label, rate, percentile(timings, 0.5), percentile(timings, 0.99), failed + late_failed))
            print(f"  {label}: done", flush=True)
    finally:
        database.dispose()
        redis.flushdb()
        if scratch is not None:
            with create_engine(args.server_url, isolation_level="AUTOCOMMIT").connect() as connection:
                connection.execute(text(f"DROP DATABASE IF EXISTS {scratch}"))

    print(f"\ngunicorn --workers {args.workers}, {args.clients} clients, {os.cpu_count()} CPUs shared with the client")
    print(f"{'endpoint':<20} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}  (latency at {args.rate:.0f} req/s)  non-200")
    for label, rate, p50, p99, failed in rows:
        print(f"{label:<20} {rate:>8.0f} {p50:>8.1f} {p99:>8.1f}  {'':>25}{failed:>8}")
    (_, bare, *_), (_, ours, _, ours_p99, _) = rows
    share = ours / bare
    print(f"\nsubledger / bare throughput: {share:.0%} (target ≥ 50%) {'ok' if share >= 0.5 else 'MISSED'}")
    verdict = "ok" if ours_p99 < 50 else "MISSED"
    print(f"subledger p99 at {args.rate:.0f}/s: {ours_p99:.1f} ms (target < 50 ms) {verdict}")
    print(f"samples: {args.events:,} requests for throughput, {int(args.rate * args.seconds):,} for latency, per app")


if __name__ == "__main__":
    main()
