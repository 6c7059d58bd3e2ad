"""`subledger replay`: put stored events back in line for processing.

Processing is idempotent (ledger.state), so replaying an event that was
already applied changes nothing; replaying a failed one after a fix applies it.
"""

from __future__ import annotations

from datetime import datetime

from redis import Redis
from sqlalchemy import ColumnElement, func, select, update

from ledger.db import Database, utcnow
from ledger.models import EventStatus, StripeEvent
from ledger.settings import Settings
from worker import processing
from worker.queues import wake_shard
from worker.recompute import after_apply_for


def mark_for_replay(db: Database, *, failed_only: bool, since: datetime | None) -> tuple[int, list[int]]:
    """Make the chosen events due now; return how many and on which shards.

    Default: failed and pending events. `failed_only`: failed events. `since`:
    limits to events created from then on, and includes processed ones, to
    re-run a window of history after a fix.
    """
    statuses = [EventStatus.FAILED.value]
    if not failed_only:
        statuses.append(EventStatus.PENDING.value)
        if since is not None:
            statuses.append(EventStatus.PROCESSED.value)
    conditions: list[ColumnElement[bool]] = [StripeEvent.status.in_(statuses)]
    if since is not None:
        conditions.append(StripeEvent.created >= since)
    with db.transaction() as session:
        count = session.scalar(select(func.count()).select_from(StripeEvent).where(*conditions)) or 0
        shards = sorted(session.scalars(select(StripeEvent.shard).distinct().where(*conditions)))
        session.execute(
            update(StripeEvent)
            .where(*conditions)
            .values(status=EventStatus.PENDING.value, attempts=0, next_attempt_at=utcnow())
        )
    return count, shards


def wake(connection: Redis, shard: int) -> None:
    wake_shard(connection, shard, force=True)


def process_now(db: Database, settings: Settings) -> processing.DrainReport:
    """Drain every due event in this process (local runs without a shared queue)."""
    return processing.drain(db, None, budget_s=float("inf"), after_apply=after_apply_for(settings))
