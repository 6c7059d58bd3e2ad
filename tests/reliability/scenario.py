"""What the fault and load tests share: the events, the ledger they must come
to, a clean reference run, and worker processes that can be killed for real.

A fault test passes when the ledger it ends with is identical, row for row
(movements with their sources, daily totals, account months), to a clean
in-order run of the same events on an emptied database.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from redis import Redis
from sqlalchemy import func, select, text

from ledger.db import Database, utcnow
from ledger.intake import store_event
from ledger.models import Base, StripeEvent
from ledger.settings import Settings
from tests.ledger.subscription_payloads import item, subscription, utc
from tests.processes import free_port, healthy, wait_for
from tests.stripe_payloads import WEBHOOK_SECRET
from tests.worker.test_pipeline import GOLD, account_months, daily_totals, many_customers, movements, sub_event
from worker import processing
from worker.recompute import after_apply_for

SUBLEDGER = os.path.join(os.path.dirname(sys.executable), "subledger")
GUNICORN = os.path.join(os.path.dirname(sys.executable), "gunicorn")

__all__ = ["many_customers"]


class Ledger(NamedTuple):
    movements: list[tuple[Any, ...]]
    daily_totals: list[tuple[Any, ...]]
    account_months: list[tuple[Any, ...]]


def ledger(db: Database) -> Ledger:
    return Ledger(movements(db), daily_totals(db), account_months(db))


def empty(db: Database) -> None:
    """Every table emptied, as the `db` fixture leaves it."""
    with db.engine.begin() as connection:
        tables = [table.name for table in reversed(Base.metadata.sorted_tables)]
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
        else:
            for table in tables:
                connection.execute(text(f"DELETE FROM {table}"))


def store(db: Database, events: Iterable[Mapping[str, Any]], *, now: datetime | None = None) -> None:
    """Events as the webhook stores them, in one transaction."""
    with db.transaction() as session:
        for event in events:
            store_event(session, event, received_via="webhook", now=now or utcnow())


def clean_run(db: Database, settings: Settings, events: list[dict[str, Any]]) -> Ledger:
    """The reference: an emptied database, the events stored once in order, one worker."""
    empty(db)
    store(db, events)
    report = processing.drain(db, None, budget_s=300, after_apply=after_apply_for(settings))
    assert (report.processed, report.failed, report.retrying) == (len(events), 0, 0), report.errors
    return ledger(db)


def statuses(db: Database) -> Counter[str]:
    with db.session() as session:
        return Counter(dict(session.execute(select(StripeEvent.status, func.count()).group_by("status")).all()))


def stored_ids(db: Database) -> list[str]:
    with db.session() as session:
        return list(session.scalars(select(StripeEvent.id)))


def age_pending_events(db: Database, by: timedelta = timedelta(minutes=10)) -> None:
    """Let time pass for the pending events: the sweeper takes them for stuck."""
    with db.transaction() as session:
        for event in session.scalars(select(StripeEvent).where(StripeEvent.status == "pending")):
            event.received_at -= by
            if event.next_attempt_at is not None:
                event.next_attempt_at -= by


def same_second_events(customers: int) -> list[dict[str, Any]]:
    """Per customer: created, then two changes stamped with the same second (ordered by previous_attributes)."""
    events = []
    tie = utc(2, 1, 9)
    for n in range(customers):
        customer, sub_id = f"cus_tie{n}", f"sub_tie{n}"
        versions = [
            subscription(item(GOLD, quantity=q), start=utc(1, 10), customer=customer, sub_id=sub_id) for q in (1, 2, 3)
        ]
        events += [
            sub_event(f"evt_tie{n}_a", "created", versions[0], utc(1, 10)),
            sub_event(f"evt_tie{n}_b", "updated", versions[1], tie, {"items": versions[0]["items"]}),
            sub_event(f"evt_tie{n}_c", "updated", versions[2], tie, {"items": versions[1]["items"]}),
        ]
    return events


def expected_movements(count: int) -> list[tuple[Any, ...]]:
    """The movements of `many_customers(count)`, worked out by hand (docs/mrr-rules.md §3):
    new at the start, +1 seat on 3 February, odd customers churn on 2 April."""
    rows = []
    for n in range(count):
        customer, seats = f"cus_{n:03d}", 1 + n % 3
        start = f"2024-01-{1 + n % 27:02d}"
        rows.append((customer, start, "new", 10000 * seats, 0, 10000 * seats, (f"evt_{n}_a",)))
        rows.append((customer, "2024-02-03", "expansion", 10000, 10000 * seats, 10000 * (seats + 1), (f"evt_{n}_b",)))
        if n % 2:
            mrr = 10000 * (seats + 1)
            rows.append((customer, "2024-04-02", "churn", -mrr, mrr, 0, (f"evt_{n}_c",)))
    return sorted(rows, key=lambda row: (row[0], row[1], row[2]))


# --- processes ------------------------------------------------------------------------------


def process_env(settings: Settings, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url or "",
        **extra,
    }


def start_worker(env: Mapping[str, str], log: Path, *, burst: bool = False) -> subprocess.Popen[bytes]:
    command = [SUBLEDGER, "worker", *(["--burst"] if burst else [])]
    with log.open("ab") as output:
        return subprocess.Popen(command, env=dict(env), stdout=output, stderr=subprocess.STDOUT)


def children(pid: int) -> list[int]:
    """Direct children of `pid` (an RQ worker's work horse runs in its own process group)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def kill_hard(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and its work horse at once, as an out-of-memory kill or a lost machine would."""
    horses = children(process.pid)
    for pid in [*horses, process.pid]:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    process.wait(timeout=10)


def queued_sweep(connection: Redis) -> None:
    """What the clock does every minute."""
    from worker.queues import queue

    queue(connection).enqueue("worker.jobs.sweep")


@contextmanager
def gunicorn(settings: Settings, log: Path, *, workers: int = 4, **env: str) -> Iterator[str]:
    """The `web` process of the Procfile on a free port; yields its URL."""
    port = free_port()
    environment = process_env(settings, STRIPE_WEBHOOK_SECRET=WEBHOOK_SECRET, **env)
    command = [GUNICORN, "webapp:create_app()", "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
    with log.open("wb") as output:
        server = subprocess.Popen(
            command, env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        assert wait_for(lambda: healthy(url), timeout=60), log.read_text()[-2000:]
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
