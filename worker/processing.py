"""Draining stored events into the ledger.

A drain pass claims a batch of partitions (customers, or a catalog object) of
one shard that have events due, locks them for its transaction, so one
customer's changes are never processed by two workers at once, and applies
their events and recomputes their ledgers with a few set-based statements.
Should anything in the batch fail, the batch is redone one partition at a
time, one savepoint per event, so one bad event costs only itself.

An event's effects and its `processed` mark commit together: a worker killed
half-way leaves the event pending, and it is simply processed again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ledger.db import Database, utcnow
from ledger.models import EventStatus, StripeEvent
from ledger.state import Applied, apply_event, apply_events
from worker.defaults import MAX_ATTEMPTS, PARTITIONS_PER_PASS, RETRY_BASE_S, RETRY_MAX_S, SQLITE_PARTITIONS_PER_PASS

log = logging.getLogger("subledger.worker")

AfterApply = Callable[[Session, list[Applied]], dict[str, str]]
"""Called in the transaction once events are applied; returns a movement summary per customer."""


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


def lock_partition(session: Session, partition: str) -> bool:
    """Take a partition's lock (a customer's) for this transaction; False if someone else holds it.

    PostgreSQL: a transaction-scoped advisory lock, released at commit or when
    a killed worker's connection drops; never waits, so it cannot deadlock.
    SQLite: every write transaction already holds the database's single write
    lock (BEGIN IMMEDIATE).
    """
    if session.get_bind().dialect.name != "postgresql":
        return True
    return bool(session.scalar(select(func.pg_try_advisory_xact_lock(func.hashtextextended(partition, 0)))))


def _lock_partitions(session: Session, partitions: list[str]) -> list[str]:
    """The partitions whose locks this transaction could take."""
    return [partition for partition in partitions if lock_partition(session, partition)]


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
        if not _lock_partitions(session, [partition]):
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
        summaries: dict[str, str] = {}
        if done and after_apply is not None:
            try:
                with session.begin_nested():
                    summaries = after_apply(session, applied)
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
        for event in done:
            event.status = EventStatus.PROCESSED.value
            event.processed_at = now
            event.next_attempt_at = None
            event.last_error = None
        report.processed += len(done)
        _log_processed(done, summaries, started)
    return report


def _log_processed(events: list[StripeEvent], summaries: dict[str, str], started: float) -> None:
    """One structured line per event processed."""
    elapsed_ms = round((time.perf_counter() - started) * 1000, 2)
    for event in events:
        log.info(
            "event processed",
            extra={
                "event_id": event.id,
                "event_type": event.type,
                "customer": event.partition,
                "movements": summaries.get(event.partition, "no change"),
                "batch_ms": elapsed_ms,
            },
        )


def process_batch(
    db: Database, partitions: list[str], *, now: datetime, after_apply: AfterApply | None = None
) -> DrainReport:
    """Apply the partitions' due events and recompute their ledgers in one transaction.

    Falls back to `process_partition` for each partition when anything fails,
    so errors land on the events that caused them.
    """
    report = DrainReport()
    started = time.perf_counter()
    with db.transaction() as session:
        locked = _lock_partitions(session, partitions)
        report.skipped_locked = len(partitions) - len(locked)
        events = list(
            session.scalars(
                select(StripeEvent)
                .where(StripeEvent.partition.in_(locked), *_due(now))  # type: ignore[arg-type]
                .order_by(StripeEvent.created, StripeEvent.id)
            )
        )
        if not events:
            return report
        try:
            with session.begin_nested():
                applied = apply_events(session, events)
                summaries = after_apply(session, applied) if after_apply is not None else {}
                session.execute(
                    update(StripeEvent)
                    .where(StripeEvent.id.in_([event.id for event in events]))
                    .values(
                        status=EventStatus.PROCESSED.value,
                        processed_at=now,
                        next_attempt_at=None,
                        last_error=None,
                        attempts=StripeEvent.attempts + 1,
                    )
                    .execution_options(synchronize_session=False)
                )
            report.processed += len(events)
            _log_processed(events, summaries, started)
            return report
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
        except Exception:
            pass
    for partition in locked:
        report.add(process_partition(db, partition, now=now, after_apply=after_apply))
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
            # SQLite has one writer: smaller batches let webhooks in between them.
            limit = (
                PARTITIONS_PER_PASS if session.get_bind().dialect.name == "postgresql" else SQLITE_PARTITIONS_PER_PASS
            )
            partitions = due_partitions(session, shard, now=now, limit=limit)
        if not partitions:
            return report
        result = process_batch(db, partitions, now=now, after_apply=after_apply)
        report.add(result)
        if result.skipped_locked == len(partitions):
            # Every partition is being worked on elsewhere; those workers finish them.
            return report
        if time.monotonic() > deadline:
            report.more_work = True
            return report
