"""Missed-event catch-up: read recent events back from Stripe's Events API and
store the ones the webhooks never delivered.

Events go through the same door as webhooks (`ledger.intake.store_event`), so
an event already received is a duplicate that changes nothing, and a new one
is processed by the workers like any other. Stripe keeps events for 30 days.

The cursor is the run rows themselves: a run reads events created from the
start of the newest catch-up that finished (`ok` or `partial`) minus
OVERLAP_S, so events that became visible in the list a little after they were
created are read by the next run. The first run reads all 30 days. A `failed`
run does not move the cursor: the next one reads the same window again.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from redis import Redis, RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.db import Database, utcnow
from ledger.intake import USED_EVENT_TYPES, NotAnEvent, store_event, validate_event
from ledger.models import EventStatus, RunStatus, SyncRun
from ledger.settings import Settings
from worker.queues import wake_shard
from worker.runs import RunReport, finish_run, heartbeat, record_stop, start_run
from worker.stripe_api import StripeAPI, StripeUnavailable

log = logging.getLogger("subledger.catchup")

OVERLAP_S = 60
"""The cursor stays this far behind the start of the run that set it."""

EVENTS_KEPT = timedelta(days=30)
"""How far back Stripe's Events API goes."""

MAX_TYPES_PER_REQUEST = 20
"""Stripe accepts at most this many `types[]` in one list request."""

COUNTS = ("read", "stored", "duplicates")
"""Counts every catch-up run stores, zero included."""


def type_groups(types: Sequence[str] = tuple(USED_EVENT_TYPES)) -> list[list[str]]:
    """The event types subledger uses, in request-sized groups."""
    ordered = sorted(types)
    return [ordered[start : start + MAX_TYPES_PER_REQUEST] for start in range(0, len(ordered), MAX_TYPES_PER_REQUEST)]


def cursor(session: Session) -> datetime | None:
    """Where the next catch-up starts reading; None: from as far back as Stripe keeps."""
    newest = session.scalars(
        select(SyncRun)
        .where(SyncRun.kind == "catchup", SyncRun.status.in_([RunStatus.OK.value, RunStatus.PARTIAL.value]))
        .order_by(SyncRun.started_at.desc())
        .limit(1)
    ).first()
    return None if newest is None else newest.started_at - timedelta(seconds=OVERLAP_S)


def _events(api: StripeAPI, since: datetime | None) -> Iterator[list[dict[str, Any]]]:
    window: dict[str, Any] = {} if since is None else {"created": {"gte": int(since.timestamp())}}
    for types in type_groups():
        yield from api.pages("/v1/events", types=types, **window)


def _store_page(db: Database, events: Sequence[Mapping[str, Any]], report: RunReport) -> set[int]:
    """Store a page of events in one transaction; the shards of the new pending ones."""
    shards: set[int] = set()
    now = utcnow()
    with db.transaction() as session:
        for document in events:
            report.counts["read"] += 1
            try:
                event = validate_event(document)
                if event.get("id") is None:
                    raise NotAnEvent('"id" is missing')
            except NotAnEvent as exc:
                report.error(f"{document.get('id')}: not a Stripe event: {exc}")
                continue
            result = store_event(session, event, received_via="catchup", now=now)
            if not result.stored:
                report.counts["duplicates"] += 1
                continue
            report.counts["stored"] += 1
            if result.status is EventStatus.PENDING:
                shards.add(result.shard)
    return shards


def _wake(redis: Redis | None, shards: set[int]) -> None:
    if redis is None:
        return
    try:
        for shard in sorted(shards):
            wake_shard(redis, shard)
    except RedisError as exc:
        # The events are committed: the sweeper queues them within minutes.
        log.warning("queue unavailable; the sweeper will pick the events up", extra={"error": str(exc)})


def catch_up(db: Database, settings: Settings, redis: Redis | None, *, api: StripeAPI | None = None) -> RunReport:
    """Store the events of the last window that are not stored yet, and wake their shards.

    Raises RunRefused while another catch-up is alive (a dead one, without a
    recent heartbeat, does not block), StripeUnavailable without an API key.
    """
    api = api or StripeAPI(settings)
    with db.session() as session:
        since = cursor(session)
    report = start_run(
        db,
        "catchup",
        parameters={"since": since.isoformat() if since else None},
        livemode=settings.livemode,
        stripe_api_version=api.api_version,
        exclusive=True,
    )
    report.counts.update(dict.fromkeys(COUNTS, 0))
    oldest = utcnow() - EVENTS_KEPT
    if since is not None and since < oldest:
        report.error(
            f"the previous catch-up read up to {since:%Y-%m-%d %H:%M} UTC and Stripe keeps events for 30 days: "
            "events in between cannot be read back; run `subledger reconcile`"
        )
    try:
        for page in _events(api, since):
            _wake(redis, _store_page(db, page, report))
            heartbeat(db, report)
    except StripeUnavailable as exc:
        report.error(f"reading events from Stripe: {exc}")
        return finish_run(db, report, RunStatus.FAILED)
    except BaseException as exc:
        record_stop(db, report, exc)
        raise
    return finish_run(db, report)
