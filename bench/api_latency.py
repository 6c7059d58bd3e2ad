"""API latency on a large ledger, beside one raw SQL aggregate over the movements.

    python bench/api_latency.py [--customers 100000] [--movements-per-customer 10]

Seeds a scratch PostgreSQL database with a synthetic ledger (100,000 customers,
1,000,000 movements over three years, with the monthly rollup and daily totals
the engine keeps), serves it with gunicorn, and times `/api/v1/mrr` (monthly,
three years) and `/api/v1/summary` over HTTP, beside the single raw SQL
aggregate a naive implementation would run (`SUM(amount)` by month and type
over every movement), measured in the same run. Targets: each endpoint's
median under 150 ms and within 3× of the raw aggregate.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import requests
from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ledger import migrate  # noqa: E402
from ledger.db import Database  # noqa: E402
from ledger.engine import resum_totals  # noqa: E402
from ledger.movements import Movement, MovementType  # noqa: E402
from ledger.rollup import customer_months  # noqa: E402

TOKEN = "bench-token"
START = date(2023, 1, 1)
DAYS = 3 * 365
NOW = datetime(2025, 12, 31, 23, 0, tzinfo=UTC)


def customer_history(rng: random.Random, customer: str, count: int) -> list[Movement]:
    """`count` movements that add up: new, then changes, churns and returns."""
    moves: list[Movement] = []
    day = START + timedelta(days=rng.randrange(DAYS // 3))
    mrr = 0
    for _ in range(count):
        if mrr == 0:
            kind = MovementType.NEW if not moves else MovementType.REACTIVATION
            after = rng.choice((900, 2900, 4900, 9900, 29900))
        else:
            roll = rng.random()
            if roll < 0.15:
                kind, after = MovementType.CHURN, 0
            elif roll < 0.6:
                kind, after = MovementType.EXPANSION, mrr + rng.choice((1000, 2000, 5000))
            else:
                kind, after = MovementType.CONTRACTION, max(500, mrr - rng.choice((500, 1000, 2000)))
                if after == mrr:
                    kind, after = MovementType.EXPANSION, mrr + 1000
        at = datetime(day.year, day.month, day.day, tzinfo=UTC)
        moves.append(
            Movement(customer, "usd", at, day, kind, after - mrr, mrr, after, (f"evt_{customer}_{len(moves)}",))
        )
        mrr = after
        day += timedelta(days=rng.randint(7, 90))
        if day >= START + timedelta(days=DAYS):
            break
    return moves


def copy_rows(
    connection: psycopg.Connection, table: str, columns: list[str], rows: Iterator[tuple[object, ...]]
) -> int:
    written = 0
    with connection.cursor() as cursor, cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
            written += 1
    return written


def seed(url: str, customers: int, per_customer: int, seed_value: int = 11) -> tuple[int, int]:
    rng = random.Random(seed_value)
    movement_rows: list[tuple[object, ...]] = []
    month_rows: list[tuple[object, ...]] = []
    computed = datetime.now(UTC)
    for n in range(customers):
        customer = f"cus_{n:07d}"
        history = customer_history(rng, customer, per_customer)
        for m in history:
            movement_rows.append(
                (
                    False,
                    customer,
                    "usd",
                    m.day,
                    m.at,
                    str(m.type),
                    m.amount,
                    m.mrr_before,
                    m.mrr_after,
                    f'["{m.sources[0]}"]',
                    "bench",
                    computed,
                )
            )
        for row in customer_months(customer, history, [], [], now=NOW):
            month_rows.append(
                (
                    customer,
                    "usd",
                    row.month,
                    False,
                    row.mrr,
                    row.mrr_start,
                    row.new,
                    row.expansion,
                    row.contraction,
                    row.churn,
                    row.reactivation,
                    row.news,
                    row.expansions,
                    row.churns,
                    row.reactivations,
                    row.scheduled_churn,
                    row.trials_ended,
                    row.trials_converted,
                    row.first_paid_month,
                )
            )
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain) as connection:
        moved = copy_rows(
            connection,
            "movements",
            [
                "livemode",
                "customer_id",
                "currency",
                "day",
                "at",
                "type",
                "amount",
                "mrr_before",
                "mrr_after",
                "sources",
                "rules_version",
                "computed_at",
            ],
            iter(movement_rows),
        )
        copy_rows(
            connection,
            "customer_months",
            [
                "customer_id",
                "currency",
                "month",
                "livemode",
                "mrr",
                "mrr_start",
                "new",
                "expansion",
                "contraction",
                "churn",
                "reactivation",
                "news",
                "expansions",
                "churns",
                "reactivations",
                "scheduled_churn",
                "trials_ended",
                "trials_converted",
                "first_paid_month",
            ],
            iter(month_rows),
        )
        connection.execute(
            "INSERT INTO customers (id, livemode, deleted, observed_at) "
            "SELECT DISTINCT customer_id, false, false, now() FROM movements"
        )
    database = Database(url)
    with database.transaction() as session:
        resum_totals(session)
    database.dispose()
    with psycopg.connect(plain, autocommit=True) as connection:
        connection.execute("VACUUM ANALYZE")
    return moved, len(month_rows)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def median_ms(call: Callable[[], object], runs: int) -> float:
    call()  # warm-up
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--movements-per-customer", type=int, default=10)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--server-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    name = f"subledger_bench_api_{os.getpid()}"
    admin = create_engine(args.server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    url = args.server_url.rsplit("/", 1)[0] + f"/{name}"
    server: subprocess.Popen[bytes] | None = None
    try:
        migrate.upgrade(Database(url).engine)
        started = time.perf_counter()
        movements, months = seed(url, args.customers, args.movements_per_customer)
        print(f"seeded {args.customers:,} customers, {movements:,} movements, {months:,} customer-months "
              f"in {time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip

        port = free_port()
        env = {**os.environ, "DATABASE_URL": url, "SUBLEDGER_API_TOKEN": TOKEN, "PYTHONPATH": str(ROOT)}
        env.pop("REDIS_URL", None)
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "webapp:create_app()",
                "--bind",
                f"127.0.0.1:{port}",
                "--workers",
                "2",
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=ROOT,
        )
        base = f"http://127.0.0.1:{port}"
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        for _ in range(100):
            try:
                session.get(f"{base}/api/v1/summary?month=2025-06", timeout=5).raise_for_status()
                break
            except requests.RequestException:
                time.sleep(0.2)

        def fetch(path: str) -> Callable[[], object]:
            def call() -> object:
                response = session.get(base + path, timeout=30)
                response.raise_for_status()
                return response.json()

            return call

        mrr_path = "/api/v1/mrr?interval=month&start=2023-01-01&end=2025-12-31"
        summary_path = "/api/v1/summary?month=2025-06"
        mrr_ms = median_ms(fetch(mrr_path), args.runs)
        summary_ms = median_ms(fetch(summary_path), args.runs)
        points = fetch(mrr_path)()
        assert isinstance(points, dict) and len(points["points"]) == 36

        plain = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(plain) as connection:
            raw_sql = (
                "SELECT date_trunc('month', day) AS month, type, sum(amount) FROM movements "
                "WHERE livemode = false GROUP BY 1, 2"
            )
            raw_ms = median_ms(lambda: connection.execute(raw_sql).fetchall(), args.runs)

        print()
        print(f"{'what':<58} {'median ms':>10} {'× raw SQL':>10}")
        print(f"{'raw SQL: SUM(amount) by month and type over movements':<58} {raw_ms:>10.1f} {1:>10.2f}")
        print(f"{'GET ' + mrr_path:<58} {mrr_ms:>10.1f} {mrr_ms / raw_ms:>10.2f}")
        print(f"{'GET ' + summary_path:<58} {summary_ms:>10.1f} {summary_ms / raw_ms:>10.2f}")
        print()
        print("targets: each endpoint < 150 ms median and ≤ 3× the raw aggregate")
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
        with admin.connect() as connection:
            connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


if __name__ == "__main__":
    main()
