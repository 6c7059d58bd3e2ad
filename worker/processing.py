"""Draining stored events into the ledger, one customer at a time.

A drain pass claims the partitions (customers, or a catalog object) of one shard
that have events due, and processes each partition in its own transaction
under a lock, so one customer's changes are never processed by two workers at
once. An event's effects and its `processed` mark commit together: a worker
killed half-way leaves the event pending, and it is simply processed again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ledger.db import Database, utcnow
from ledger.models import EventStatus, StripeEvent
from ledger.state import Applied, apply_event
from worker.defaults import MAX_ATTEMPTS, PARTITIONS_PER_PASS, RETRY_BASE_S, RETRY_MAX_S

log = logging.getLogger("subledger.worker")

AfterApply = Callable[[Session, str, list[Applied]], None]
"""Called inside a partition's transaction once its due events are applied."""


@dataclass
class DrainReport:
    processed: int = 0
    failed: int = 0
    retrying: int = 0
    skipped_locked: int = 0
    more_work: bool = False
    errors: list[str] = field(default_factory=list)

    def add(self, other: DrainReport) -> None:
        self.processed += other.processed
        self.failed += other.failed
        self.retrying += other.retrying
        self.skipped_locked += other.skipped_locked
        self.errors.extend(other.errors)


def retry_delay(attempts: int) -> timedelta:
    """Back-off before the next attempt of an event that failed `attempts` times."""
    return timedelta(seconds=min(RETRY_BASE_S * 2 ** max(attempts - 1, 0), RETRY_MAX_S))


def _lock_partition(session: Session, partition: str) -> bool:
    """Take the partition's lock for this transaction; False if another worker holds it.

    PostgreSQL: a transaction-scoped advisory lock, released at commit or when
    a killed worker's connection drops. SQLite: every write transaction already
    holds the database's single write lock (BEGIN IMMEDIATE).
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    key = func.hashtextextended(partition, 0)
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(key))))


def _due(now: datetime) -> list[object]:
    return [StripeEvent.status == EventStatus.PENDING.value, StripeEvent.next_attempt_at <= now]


def due_partitions(session: Session, shard: int | None, *, now: datetime, limit: int) -> list[str]:
    """Partitions with events due, oldest first."""
    query = (
        select(StripeEvent.partition)
        .where(*_due(now))  # type: ignore[arg-type]
        .group_by(StripeEvent.partition)
        .order_by(func.min(StripeEvent.created))
        .limit(limit)
    )
    if shard is not None:
        query = query.where(StripeEvent.shard == shard)
    return list(session.scalars(query))


def process_partition(
    db: Database, partition: str, *, now: datetime | None = None, after_apply: AfterApply | None = None
) -> DrainReport:
    """Apply a partition's due events, in Stripe order, in one transaction."""
    now = now or utcnow()
    report = DrainReport()
    started = time.perf_counter()
    with db.transaction() as session:
        if not _lock_partition(session, partition):
            report.skipped_locked += 1
            return report
        events = session.scalars(
            select(StripeEvent)
            .where(StripeEvent.partition == partition, *_due(now))  # type: ignore[arg-type]
            .order_by(StripeEvent.created, StripeEvent.id)
        ).all()
        applied: list[Applied] = []
        done: list[StripeEvent] = []
        for event in events:
            event.attempts += 1
            try:
                with session.begin_nested():
                    applied.append(apply_event(session, event))
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise  # the database went away: the job fails and is retried whole
                _record_failure(event, exc, now, report)
            except Exception as exc:  # one bad event must not hold back the others
                _record_failure(event, exc, now, report)
            else:
                done.append(event)
        if done and after_apply is not None:
            try:
                with session.begin_nested():
                    after_apply(session, partition, applied)
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise
                for event in done:
                    _record_failure(event, exc, now, report)
                done = []
            except Exception as exc:
                # The snapshots stay (they are facts); the ledger is recomputed on the retry.
                for event in done:
                    _record_failure(event, exc, now, report)
                done = []
        elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
        for event in done:
            event.status = EventStatus.PROCESSED.value
            event.processed_at = now
            event.next_attempt_at = None
            event.last_error = None
            report.processed += 1
            log.info(
                "event processed",
                extra={
                    "event_id": event.id,
                    "event_type": event.type,
                    "customer": partition,
                    "batch_ms": elapsed_ms,
                },
            )
    return report


def _record_failure(event: StripeEvent, exc: Exception, now: datetime, report: DrainReport) -> None:
    message = f"{type(exc).__name__}: {exc}"[:2000]
    event.last_error = message
    if event.attempts >= MAX_ATTEMPTS:
        event.status = EventStatus.FAILED.value
        event.next_attempt_at = None
        report.failed += 1
        log.error("event failed for good", extra={"event_id": event.id, "error": message})
    else:
        event.next_attempt_at = now + retry_delay(event.attempts)
        report.retrying += 1
        log.warning("event failed, will retry", extra={"event_id": event.id, "error": message})
    report.errors.append(f"{event.id}: {message}")


def drain(
    db: Database,
    shard: int | None,
    *,
    budget_s: float,
    after_apply: AfterApply | None = None,
    clock: Callable[[], datetime] = utcnow,
) -> DrainReport:
    """Process due events of `shard` (all shards with None) until none is left or time is up."""
    report = DrainReport()
    deadline = time.monotonic() + budget_s
    while True:
        now = clock()
        with db.session() as session:
            partitions = due_partitions(session, shard, now=now, limit=PARTITIONS_PER_PASS)
        if not partitions:
            return report
        progressed = False
        for partition in partitions:
            result = process_partition(db, partition, now=now, after_apply=after_apply)
            progressed = progressed or result.skipped_locked == 0
            report.add(result)
            if time.monotonic() > deadline:
                report.more_work = True
                return report
        if not progressed:
            # Every partition is being worked on elsewhere; those workers finish them.
            return report
