"""RQ jobs. Thin: each one finds its context and calls the code that does the work."""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import timedelta
from typing import Any

from redis import Redis
from rq import get_current_job
from sqlalchemy import select

from ledger.db import utcnow
from ledger.intake import WAKE_KEY
from ledger.models import EventStatus, StripeEvent
from worker import context, processing
from worker.defaults import DRAIN_BUDGET_S, REPAIR_ATTEMPTS, REPAIR_BATCH, REPAIR_DELAY_S, STUCK_AFTER_S
from worker.queues import repair_queue, wake_shard
from worker.recompute import after_apply_for, retry_waiting
from worker.runs import RunRefused, one_line

log = logging.getLogger("subledger.worker")


def _connection() -> Redis:
    job = get_current_job()
    if job is None:
        raise RuntimeError("this function runs as an RQ job")
    return job.connection


def drain_shard(shard: int) -> dict[str, Any]:
    """Process the shard's due events; hand over to a fresh job if time runs out."""
    connection = _connection()
    # Cleared before reading the database: an event stored from now on queues a new job.
    connection.delete(WAKE_KEY.format(shard=shard))
    settings = context.settings()
    paid: set[str] = set()
    report = processing.drain(
        context.database(), shard, budget_s=DRAIN_BUDGET_S, after_apply=after_apply_for(settings, paid=paid)
    )
    if report.more_work:
        wake_shard(connection, shard, force=True)
    result = asdict(report)
    if paid and settings.stripe_api_key:
        result["repairs_queued"] = _repair_contradicted(connection, paid)
    return result


def _repair_contradicted(connection: Redis, paid: set[str]) -> list[str]:
    """Queue a `repair` of the subscriptions whose paid invoices contradict the ledger (mrr-rules.md §9)."""
    from worker.reconcile import contradicted_by_invoices

    try:
        with context.database().session() as session:
            contradicted = contradicted_by_invoices(session, context.settings().rules, paid)
    except Exception as exc:  # the events are applied: the nightly reconcile compares what this could not
        log.warning("paid invoices not compared with the ledger: %s", one_line(exc))
        return []
    if contradicted:
        log.info("paid invoices contradict the ledger: repair queued", extra={"subscriptions": contradicted})
        queue_repair(connection, contradicted, attempt=1)
    return contradicted


def queue_repair(connection: Redis, subscription_ids: list[str], *, attempt: int) -> None:
    """Repair jobs of REPAIR_BATCH subscriptions at most, so none holds a worker long."""
    for start in range(0, len(subscription_ids), REPAIR_BATCH):
        repair_queue(connection).enqueue_in(
            timedelta(seconds=REPAIR_DELAY_S * 2 ** (attempt - 1)),
            repair_subscriptions,
            subscription_ids[start : start + REPAIR_BATCH],
            attempt,
        )


def repair_subscriptions(subscription_ids: list[str], attempt: int) -> dict[str, Any]:
    """Reconcile subscriptions a paid invoice contradicted; again later while their customers have events in flight."""
    from worker.reconcile import repair

    report, skipped = repair(context.database(), context.settings(), subscription_ids, trigger="paid invoice")
    if skipped and attempt < REPAIR_ATTEMPTS:
        queue_repair(_connection(), skipped, attempt=attempt + 1)
    return {"run": report.run_id, "status": report.status.value, "counts": dict(report.counts)}


def sweep() -> dict[str, Any]:
    """Re-queue shards whose events wait too long: lost queue messages, due retries."""
    now = utcnow()
    stuck_before = now - timedelta(seconds=STUCK_AFTER_S)
    with context.database().session() as session:
        shards = sorted(
            session.scalars(
                select(StripeEvent.shard)
                .distinct()
                .where(
                    StripeEvent.status == EventStatus.PENDING.value,
                    StripeEvent.next_attempt_at <= now,
                    (StripeEvent.received_at <= stuck_before) | (StripeEvent.attempts > 0),
                )
            )
        )
    connection = _connection()
    for shard in shards:
        wake_shard(connection, shard, force=True)
    if shards:
        log.warning("sweeper re-queued shards", extra={"shards": shards})
    valued, waiting = retry_waiting(context.database(), context.settings())
    if valued:
        log.info("sweeper valued waiting customers", extra={"valued": valued, "still_waiting": waiting})
    return {"requeued_shards": shards, "waiting_valued": valued, "still_waiting": waiting}


def roll_forward() -> dict[str, Any]:
    """Daily: recompute every customer, booking what time alone changed (see worker.rebuild)."""
    from worker.rebuild import rebuild

    report = rebuild(context.database(), context.settings())
    return asdict(report)


def reconcile_nightly() -> dict[str, Any]:
    """The clock's nightly reconciliation (RECONCILE_CRON)."""
    from worker.reconcile import reconcile

    try:
        report = reconcile(context.database(), context.settings())
    except RunRefused as exc:
        return {"skipped": str(exc)}
    return {"run": report.run_id, "status": report.status.value, "counts": dict(report.counts)}


def catch_up_events() -> dict[str, Any]:
    """Read back recent events from Stripe and store those the webhooks missed."""
    from worker.catchup import catch_up

    try:
        report = catch_up(context.database(), context.settings(), _connection())
    except RunRefused as exc:  # the previous catch-up is still reading
        return {"skipped": str(exc)}
    return {"run": report.run_id, "status": report.status.value, "counts": dict(report.counts)}
