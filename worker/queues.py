"""Telling workers there is work: one queued drain job per shard at a time."""

from __future__ import annotations

from redis import Redis
from rq import Queue, Retry

from ledger.intake import (
    DRAIN_JOB,
    DRAIN_JOB_OPTIONS,
    DRAIN_JOB_RETRY_INTERVALS_S,
    QUEUE_NAME,
    REPAIR_QUEUE_NAME,
    WAKE_KEY,
    WAKE_TTL_S,
)


def queue(connection: Redis) -> Queue:
    return Queue(QUEUE_NAME, connection=connection)


def repair_queue(connection: Redis) -> Queue:
    """Repairs wait here: never ahead of the events (`worker_queues`)."""
    return Queue(REPAIR_QUEUE_NAME, connection=connection)


def worker_queues(connection: Redis) -> list[Queue]:
    """What a worker listens to, in order: a worker takes a job from a queue only when those before it
    are empty, so a repair (it reads from Stripe) never holds events back."""
    return [queue(connection), repair_queue(connection)]


def wake_shard(connection: Redis, shard: int, *, force: bool = False) -> bool:
    """Queue a drain job for `shard` unless one is queued and not started yet.

    With `force` a job is queued whatever the wake key says: the sweeper's way
    of replacing a queue message that was lost. True when a job was queued.
    """
    if not connection.set(WAKE_KEY.format(shard=shard), "1", nx=not force, ex=WAKE_TTL_S):
        return False
    retry = Retry(max=len(DRAIN_JOB_RETRY_INTERVALS_S), interval=list(DRAIN_JOB_RETRY_INTERVALS_S))
    queue(connection).enqueue(DRAIN_JOB, shard, retry=retry, **DRAIN_JOB_OPTIONS)
    return True
