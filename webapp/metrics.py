"""`GET /metrics`: Prometheus metrics, behind the API's bearer token.

gunicorn runs several web processes and RQ forks a work horse per job, so
counters kept in one process's memory would not add up. Nothing here counts
in memory: webhook outcomes are counted in a Redis hash by every web process
(webapp.webhooks), and everything else is read at scrape time from where it
already lives — events by status and the oldest pending one from the events
table, the last good backfill and reconcile from `sync_runs`, the queue depth
from RQ. A source that does not answer is reported as down, never as a 500.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterator
from datetime import datetime

from flask import Blueprint, Flask, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from redis import RedisError
from rq import Queue
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from ledger.db import utcnow
from ledger.intake import QUEUE_NAME
from ledger.models import EventStatus, RunStatus, StripeEvent, SyncRun, WaitingCustomer
from webapp.auth import require_api_token
from webapp.services import Services, services
from webapp.webhooks import COUNTERS_KEY

bp = Blueprint("metrics", __name__)
bp.before_request(require_api_token)

WEBHOOK_OUTCOMES = ("received", "stored", "ignored", "duplicate", "failed")
"""Outcomes of a delivery besides `rejected:<reason>` (see webapp.webhooks.COUNTERS_KEY)."""

SYNC_KINDS = ("backfill", "reconcile")
"""Runs whose last success is worth an alert when it gets old."""


def _text(key: bytes | str) -> str:
    return key.decode() if isinstance(key, bytes) else key


def _aware(instant: datetime) -> datetime:
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=utcnow().tzinfo)


class SubledgerCollector(Collector):
    """Reads the numbers at each scrape from Redis and the database."""

    def __init__(self, found: Services) -> None:
        self.found = found

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("subledger_source_up", "Whether the source answered this scrape", labels=["source"])
        redis_ok = yield from self._from_redis()
        database_ok = yield from self._from_database()
        up.add_metric(["redis"], 1.0 if redis_ok else 0.0)
        up.add_metric(["database"], 1.0 if database_ok else 0.0)
        yield up

    def _from_redis(self) -> Generator[Metric, None, bool]:
        connection = self.found.redis
        if connection is None:
            return False
        try:
            counts = {_text(key): int(value) for key, value in connection.hgetall(COUNTERS_KEY).items()}
            depth = Queue(QUEUE_NAME, connection=connection).count
        except RedisError:
            return False
        webhooks = CounterMetricFamily(
            "subledger_webhooks", "Webhook deliveries by outcome (received counts them all)", labels=["outcome"]
        )
        for outcome in WEBHOOK_OUTCOMES:
            webhooks.add_metric([outcome], counts.get(outcome, 0))
        rejected = CounterMetricFamily(
            "subledger_webhooks_rejected", "Webhook deliveries refused, by reason", labels=["reason"]
        )
        for key, value in sorted(counts.items()):
            if key.startswith("rejected:"):
                rejected.add_metric([key.removeprefix("rejected:")], value)
        yield webhooks
        yield rejected
        yield GaugeMetricFamily("subledger_queue_depth", "Jobs waiting in the RQ queue", value=depth)
        return True

    def _from_database(self) -> Generator[Metric, None, bool]:
        now = utcnow()
        try:
            with self.found.database.session() as session:
                by_status = dict(
                    session.execute(select(StripeEvent.status, func.count()).group_by(StripeEvent.status)).all()
                )
                oldest = session.scalar(
                    select(func.min(StripeEvent.received_at)).where(StripeEvent.status == EventStatus.PENDING.value)
                )
                waiting = session.scalar(select(func.count()).select_from(WaitingCustomer)) or 0
                last_ok = dict(
                    session.execute(
                        select(SyncRun.kind, func.max(SyncRun.finished_at))
                        .where(SyncRun.status == RunStatus.OK.value, SyncRun.kind.in_(SYNC_KINDS))
                        .group_by(SyncRun.kind)
                    ).all()
                )
        except SQLAlchemyError:
            return False
        events = GaugeMetricFamily("subledger_events", "Stored events by status", labels=["status"])
        for status in EventStatus:
            events.add_metric([status.value], by_status.get(status.value, 0))
        yield events
        yield GaugeMetricFamily(
            "subledger_customers_waiting",
            "Customers whose ledger waits for an object their events name (waiting_customers says which)",
            value=waiting,
        )
        lag = 0.0 if oldest is None else max((now - _aware(oldest)).total_seconds(), 0.0)
        yield GaugeMetricFamily(
            "subledger_processing_lag_seconds", "Now minus the arrival of the oldest pending event", value=lag
        )
        age = GaugeMetricFamily(
            "subledger_last_success_age_seconds",
            "Seconds since the last run that ended ok (+Inf when none has)",
            labels=["kind"],
        )
        for kind in SYNC_KINDS:
            finished = last_ok.get(kind)
            age.add_metric([kind], math.inf if finished is None else (now - _aware(finished)).total_seconds())
        yield age
        return True


@bp.get("/metrics")
def metrics() -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SubledgerCollector(services()))
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
