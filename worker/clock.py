"""The `clock` process: RQ's own cron scheduler queues the periodic jobs.

Run exactly one clock: RQ's cron has no locking, so two clocks would queue
everything twice. The jobs it queues are safe to run twice all the same.
"""

from __future__ import annotations

import logging

from redis import Redis
from rq.cron import CronScheduler

from ledger.intake import QUEUE_NAME
from ledger.settings import Settings
from worker import jobs
from worker.defaults import CATCH_UP_INTERVAL_S, CATCH_UP_TIMEOUT_S, ROLL_FORWARD_CRON, SWEEP_INTERVAL_S

log = logging.getLogger("subledger.clock")


def build_scheduler(connection: Redis, settings: Settings) -> CronScheduler:
    scheduler = CronScheduler(connection=connection, name="subledger-clock")
    scheduler.register(jobs.sweep, QUEUE_NAME, interval=SWEEP_INTERVAL_S, result_ttl=600)
    scheduler.register(jobs.roll_forward, QUEUE_NAME, cron=ROLL_FORWARD_CRON, job_timeout=3600, result_ttl=86400)
    if settings.stripe_api_key:
        scheduler.register(
            jobs.reconcile_nightly, QUEUE_NAME, cron=settings.reconcile_cron, job_timeout=6 * 3600, result_ttl=86400
        )
        scheduler.register(
            jobs.catch_up_events,
            QUEUE_NAME,
            interval=CATCH_UP_INTERVAL_S,
            job_timeout=CATCH_UP_TIMEOUT_S,
            result_ttl=3600,
        )
    else:
        log.warning("STRIPE_API_KEY is not set: no nightly reconciliation and no missed-event catch-up")
    return scheduler


def run_clock(connection: Redis, settings: Settings) -> None:
    build_scheduler(connection, settings).start()  # type: ignore[no-untyped-call]
