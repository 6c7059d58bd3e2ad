"""Missed-event catch-up from Stripe's Events API, simulated at the HTTP level by `responses`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import responses
from flask.testing import FlaskClient
from redis import Redis
from rq import Worker
from sqlalchemy import select, update

from ledger.db import Database, utcnow
from ledger.intake import USED_EVENT_TYPES
from ledger.models import Movement, RunStatus, StripeEvent, SyncRun
from ledger.settings import Settings
from tests.ledger.subscription_payloads import item, price, subscription, ts, utc
from tests.stripe_payloads import current_event, signed
from worker.catchup import MAX_TYPES_PER_REQUEST, OVERLAP_S, catch_up
from worker.queues import queue
from worker.runs import RunRefused, start_run
from worker.stripe_api import StripeAPI

BASE = "https://stripe.test"
GOLD = price(10000, price_id="price_gold")


@dataclass
class EventsAPI:
    """GET /v1/events as Stripe answers it: newest first, filtered by `types[]` and
    `created[gte]`, paged with `limit` and `starting_after`."""

    events: list[dict[str, Any]] = field(default_factory=list)
    queries: list[dict[str, list[str]]] = field(default_factory=list)
    down: bool = False

    def __call__(self, request: Any) -> tuple[int, dict[str, str], str]:
        query = parse_qs(urlsplit(request.url).query)
        self.queries.append(query)
        if self.down:
            failure = {"error": {"type": "api_error", "message": "An unknown error occurred"}}
            return 500, {"Stripe-Should-Retry": "false"}, json.dumps(failure)
        types = types_of(query)
        since = int(query["created[gte]"][0]) if "created[gte]" in query else 0
        selected = sorted(
            (e for e in self.events if e["type"] in types and e["created"] >= since),
            key=lambda e: (-e["created"], e["id"]),
        )
        if "starting_after" in query:
            ids = [e["id"] for e in selected]
            selected = selected[ids.index(query["starting_after"][0]) + 1 :]
        limit = int(query["limit"][0])
        page = {"object": "list", "url": "/v1/events", "data": selected[:limit], "has_more": len(selected) > limit}
        return 200, {}, json.dumps(page)


def types_of(query: dict[str, list[str]]) -> list[str]:
    return [value for key, values in query.items() if key.startswith("types[") for value in values]


@pytest.fixture
def stripe_events() -> Iterator[EventsAPI]:
    fake = EventsAPI()
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_callback(responses.GET, f"{BASE}/v1/events", callback=fake)
        yield fake


@pytest.fixture
def stripe_settings(settings: Settings) -> Settings:
    return replace(settings, stripe_api_key="sk_test_subledger", stripe_api_base=BASE)


@pytest.fixture
def api(stripe_settings: Settings) -> StripeAPI:
    return StripeAPI(stripe_settings, sleep=lambda _: None)


def sub_event(event_id: str, kind: str, payload: dict[str, Any], at) -> dict[str, Any]:
    return current_event(f"customer.subscription.{kind}", payload, event_id=event_id, created=ts(at))


def upgrade_events() -> list[dict[str, Any]]:
    start = utc(1, 10)
    return [
        sub_event("evt_created", "created", subscription(item(GOLD), start=start), start),
        sub_event("evt_upgraded", "updated", subscription(item(GOLD, quantity=2), start=start), utc(2, 1)),
    ]


def stored(db: Database) -> dict[str, str]:
    with db.session() as session:
        return {event.id: event.received_via for event in session.scalars(select(StripeEvent))}


def test_events_the_webhooks_missed_are_stored_and_processed(
    db: Database,
    redis: Redis,
    worker_env: Settings,
    stripe_settings: Settings,
    api: StripeAPI,
    stripe_events: EventsAPI,
) -> None:
    stripe_events.events = upgrade_events()

    report = catch_up(db, stripe_settings, redis, api=api)

    assert report.status is RunStatus.OK
    assert dict(report.counts) == {"read": 2, "stored": 2, "duplicates": 0}
    assert stored(db) == {"evt_created": "catchup", "evt_upgraded": "catchup"}
    assert queue(redis).count == 1  # both events are one customer's: one shard woken
    Worker([queue(redis)], connection=redis).work(burst=True)
    with db.session() as session:
        booked = [(m.type, m.amount, m.sources) for m in session.scalars(select(Movement).order_by(Movement.day))]
    assert booked == [("new", 10000, ["evt_created"]), ("expansion", 10000, ["evt_upgraded"])]


def test_the_run_records_the_api_version_it_read_with(
    db: Database, redis: Redis, stripe_settings: Settings, stripe_events: EventsAPI
) -> None:
    chosen = replace(stripe_settings, stripe_api_version="2024-09-30.acacia")
    report = catch_up(db, chosen, redis, api=StripeAPI(chosen, sleep=lambda _: None))
    with db.session() as session:
        assert session.get_one(SyncRun, report.run_id).stripe_api_version == "2024-09-30.acacia"


def test_events_already_received_by_webhook_are_duplicates(
    db: Database, client: FlaskClient, stripe_settings: Settings, api: StripeAPI, stripe_events: EventsAPI
) -> None:
    stripe_events.events = upgrade_events()
    created = stripe_events.events[0]
    body, headers = signed(created)
    assert client.post("/webhooks/stripe", data=body, headers=headers).status_code == 200

    report = catch_up(db, stripe_settings, None, api=api)

    assert dict(report.counts) == {"read": 2, "stored": 1, "duplicates": 1}
    assert stored(db) == {"evt_created": "webhook", "evt_upgraded": "catchup"}


def test_types_are_asked_for_at_most_twenty_at_a_time(
    db: Database, stripe_settings: Settings, api: StripeAPI, stripe_events: EventsAPI
) -> None:
    catch_up(db, stripe_settings, None, api=api)
    groups = [types_of(query) for query in stripe_events.queries]
    assert all(0 < len(group) <= MAX_TYPES_PER_REQUEST for group in groups)
    assert sorted(t for group in groups for t in group) == sorted(USED_EVENT_TYPES)


def test_the_cursor_follows_the_last_finished_run_with_an_overlap(
    db: Database, stripe_settings: Settings, api: StripeAPI, stripe_events: EventsAPI
) -> None:
    def windows() -> set[str | None]:
        found = {query.get("created[gte]", [None])[0] for query in stripe_events.queries}
        stripe_events.queries.clear()
        return found

    first = catch_up(db, stripe_settings, None, api=api)
    assert windows() == {None}, "the first run reads all Stripe keeps"

    second = catch_up(db, stripe_settings, None, api=api)
    with db.session() as session:
        started = {run.id: run.started_at for run in session.scalars(select(SyncRun))}
    assert windows() == {str(int((started[first.run_id] - timedelta(seconds=OVERLAP_S)).timestamp()))}

    stripe_events.down = True
    failed = catch_up(db, stripe_settings, None, api=api)
    assert failed.status is RunStatus.FAILED
    assert failed.errors == ["reading events from Stripe: Stripe error on GET /v1/events: APIError"]
    windows()

    stripe_events.down = False
    catch_up(db, stripe_settings, None, api=api)
    assert windows() == {str(int((started[second.run_id] - timedelta(seconds=OVERLAP_S)).timestamp()))}


def test_every_page_is_read(
    db: Database, redis: Redis, stripe_settings: Settings, api: StripeAPI, stripe_events: EventsAPI
) -> None:
    invoice = {"object": "invoice", "customer": "cus_1", "subscription": "sub_1"}
    stripe_events.events = [
        current_event(
            "invoice.paid", {**invoice, "id": f"in_{n:03d}"}, event_id=f"evt_{n:03d}", created=1_700_000_000 + n
        )
        for n in range(130)
    ]

    report = catch_up(db, stripe_settings, redis, api=api)

    assert dict(report.counts) == {"read": 130, "stored": 130, "duplicates": 0}
    invoice_pages = [q for q in stripe_events.queries if "invoice.paid" in types_of(q)]
    assert [q.get("starting_after") for q in invoice_pages] == [None, ["evt_030"]]
    assert len(stored(db)) == 130


def test_a_gap_longer_than_stripe_keeps_events_is_reported(
    db: Database, stripe_settings: Settings, api: StripeAPI, stripe_events: EventsAPI
) -> None:
    long_ago = start_run(db, "catchup", parameters={})
    with db.transaction() as session:
        session.execute(
            update(SyncRun).values(status="ok", started_at=utcnow() - timedelta(days=40), finished_at=utcnow())
        )
    report = catch_up(db, stripe_settings, None, api=api)
    assert report.run_id != long_ago.run_id
    assert report.status is RunStatus.PARTIAL
    [error] = report.errors
    assert "Stripe keeps events for 30 days" in error


def test_a_running_catch_up_refuses_a_second_but_a_dead_one_does_not(
    db: Database, stripe_settings: Settings, api: StripeAPI, stripe_events: EventsAPI
) -> None:
    start_run(db, "catchup", parameters={})
    with pytest.raises(RunRefused, match="a catchup is already running"):
        catch_up(db, stripe_settings, None, api=api)
    assert stripe_events.queries == []
    with db.transaction() as session:
        session.execute(update(SyncRun).values(heartbeat_at=utcnow() - timedelta(minutes=11)))
    assert catch_up(db, stripe_settings, None, api=api).status is RunStatus.OK


def test_the_clock_gives_a_catch_up_an_hour_to_read_the_30_days_stripe_keeps(redis: Redis, settings: Settings) -> None:
    """RQ stops a job after 180 s unless told otherwise: a large account's first catch-up reads
    thousands of pages, and a run stopped short leaves the cursor where it was."""
    from worker.clock import build_scheduler
    from worker.defaults import CATCH_UP_TIMEOUT_S

    scheduler = build_scheduler(redis, replace(settings, stripe_api_key="sk_test_clock"))
    scheduler.enqueue_jobs()

    timeouts = {job.func_name.rsplit(".", 1)[-1]: job.timeout for job in queue(redis).get_jobs()}
    assert timeouts["catch_up_events"] == CATCH_UP_TIMEOUT_S
