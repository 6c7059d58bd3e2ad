"""Processing stored events into the state tables: a real forking RQ worker, both
API shapes, events late, twice or broken, and the per-customer lock.

Events go in the way Stripe sends them, signed, through the webhook receiver;
the worker (or `drain` where a test needs to move the clock) does the rest.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from flask.testing import FlaskClient
from redis import Redis
from rq import Worker
from sqlalchemy import func, select, text

from ledger.db import Database, from_timestamp, utcnow
from ledger.models import Customer, StripeEvent, StripeObject, Subscription, SubscriptionSnapshot
from ledger.settings import Settings
from tests.stripe_payloads import current_event, event_2020, resource, signed
from worker import context, replay
from worker.defaults import MAX_ATTEMPTS, RETRY_BASE_S, RETRY_MAX_S
from worker.processing import drain, process_partition
from worker.queues import queue

DAY = 24 * 3600
JULY_2024 = 1719792000
"""2024-07-01 00:00 UTC: when the current-shape account below starts."""

BROKEN_SUBSCRIPTION_ERROR = "UnusableEvent: subscription object lacks id, customer or status"


# Current API shape objects, built from Stripe's examples with realistic values.


def current_customer(customer_id: str, *, email: str, name: str, created: int) -> dict[str, Any]:
    customer = resource("customer")
    customer.update(id=customer_id, email=email, name=name, created=created, discount=None)
    return customer


def current_price(price_id: str, unit_amount: int, *, created: int) -> dict[str, Any]:
    price = resource("price")
    price.update(
        id=price_id,
        created=created,
        product="prod_analytics",
        unit_amount=unit_amount,
        unit_amount_decimal=str(unit_amount),
        transform_quantity=None,
        recurring={
            "interval": "month",
            "interval_count": 1,
            "meter": None,
            "usage_type": "licensed",
            "trial_period_days": None,
        },
    )
    return price


def current_subscription(
    subscription_id: str,
    customer_id: str,
    price: dict[str, Any],
    *,
    created: int,
    quantity: int = 1,
    status: str = "active",
    cancel_at_period_end: bool = False,
) -> dict[str, Any]:
    subscription = resource("subscription")
    subscription.update(
        id=subscription_id,
        customer=customer_id,
        status=status,
        created=created,
        start_date=created,
        billing_cycle_anchor=created,
        billing_cycle_anchor_config=None,
        cancel_at=created + 30 * DAY if cancel_at_period_end else None,
        cancel_at_period_end=cancel_at_period_end,
        canceled_at=None,
        ended_at=None,
        trial_start=None,
        trial_end=None,
        pending_update=None,
        pending_invoice_item_interval=None,
        next_pending_invoice_item_invoice=None,
        pause_collection=None,
        transfer_data=None,
    )
    [item] = subscription["items"]["data"]
    item.update(
        id=f"si_{subscription_id.removeprefix('sub_')}",
        created=created,
        price=price,
        quantity=quantity,
        subscription=subscription_id,
        current_period_start=created,
        current_period_end=created + 31 * DAY,
    )
    item["plan"].update(
        id=price["id"],
        amount=price["unit_amount"],
        amount_decimal=price["unit_amount_decimal"],
        billing_scheme="per_unit",
        created=price["created"],
        currency="usd",
        interval="month",
        interval_count=1,
        livemode=False,
        product=price["product"],
        tiers_mode=None,
        transform_usage=None,
    )
    subscription["items"]["url"] = f"/v1/subscription_items?subscription={subscription_id}"
    return subscription


def current_invoice(invoice_id: str, subscription: dict[str, Any], *, created: int) -> dict[str, Any]:
    invoice = resource("invoice")
    [item] = subscription["items"]["data"]
    amount = item["price"]["unit_amount"] * item["quantity"]
    invoice.update(
        id=invoice_id,
        customer=subscription["customer"],
        created=created,
        status="paid",
        billing_reason="subscription_create",
        amount_due=amount,
        amount_paid=amount,
        amount_remaining=0,
        subtotal=amount,
        total=amount,
        period_start=created,
        period_end=created,
        parent={
            "quote_details": None,
            "subscription_details": {"metadata": {}, "subscription": subscription["id"]},
            "type": "subscription_details",
        },
    )
    [line] = invoice["lines"]["data"]
    line.update(invoice=invoice_id, amount=amount, subtotal=amount, quantity=item["quantity"])
    return invoice


def broken_subscription_event(event_id: str, customer_id: str, *, created: int) -> dict[str, Any]:
    """A used event type whose subscription has no status: processing cannot use it."""
    subscription = {"id": "sub_broken", "object": "subscription", "customer": customer_id, "livemode": False}
    return current_event("customer.subscription.updated", subscription, event_id=event_id, created=created)


# Delivering and processing.


def deliver(client: FlaskClient, *events: dict[str, Any]) -> None:
    for event in events:
        body, headers = signed(event)
        response = client.post("/webhooks/stripe", data=body, headers=headers)
        assert response.status_code == 200, response.get_json()


def run_worker(redis: Redis) -> None:
    """A forking RQ worker in burst mode, as `subledger worker --burst` runs it."""
    jobs = queue(redis)
    Worker([jobs], connection=redis).work(burst=True)
    assert jobs.count == 0
    assert jobs.failed_job_registry.count == 0, "a drain job crashed"


def event_rows(db: Database) -> dict[str, StripeEvent]:
    with db.session() as session:
        return {row.id: row for row in session.scalars(select(StripeEvent))}


def latest(db: Database, subscription_id: str) -> Subscription:
    with db.session() as session:
        row = session.get(Subscription, subscription_id)
    assert row is not None, f"no subscriptions row for {subscription_id}"
    return row


def snapshot_count(db: Database, subscription_id: str) -> int:
    with db.session() as session:
        count = session.scalar(
            select(func.count())
            .select_from(SubscriptionSnapshot)
            .where(SubscriptionSnapshot.subscription_id == subscription_id)
        )
    return count or 0


def customer(db: Database, customer_id: str) -> Customer:
    with db.session() as session:
        row = session.get(Customer, customer_id)
    assert row is not None, f"no customers row for {customer_id}"
    return row


def stripe_object(db: Database, object_id: str) -> StripeObject:
    with db.session() as session:
        row = session.get(StripeObject, object_id)
    assert row is not None, f"no stripe_objects row for {object_id}"
    return row


class FakeClock:
    """A clock the test moves by hand (drain takes it as `clock`)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


# A real worker processing both API shapes.


def account_2020() -> list[dict[str, Any]]:
    return [
        event_2020(name)
        for name in (
            "customer_updated",
            "subscription_updated",
            "subscription_created",
            "subscription_deleted",
            "price_created",
            "invoice_paid",
        )
    ]


def account_current() -> list[dict[str, Any]]:
    start = JULY_2024
    price = current_price("price_team_monthly", 4900, created=start - DAY)
    created = current_subscription("sub_current", "cus_current", price, created=start)
    upgraded = current_subscription("sub_current", "cus_current", price, created=start, quantity=3)
    cancelling = current_subscription(
        "sub_current", "cus_current", price, created=start, quantity=3, cancel_at_period_end=True
    )
    return [
        current_event("price.created", price, event_id="evt_cur_price", created=start - DAY),
        current_event(
            "customer.created",
            current_customer("cus_current", email="ops@acme.test", name="Acme", created=start - 60),
            event_id="evt_cur_customer_created",
            created=start - 60,
        ),
        current_event("customer.subscription.created", created, event_id="evt_cur_sub_created", created=start),
        current_event(
            "invoice.paid",
            current_invoice("in_current", created, created=start + 5),
            event_id="evt_cur_inv",
            created=start + 5,
        ),
        current_event(
            "customer.subscription.updated", upgraded, event_id="evt_cur_sub_upgraded", created=start + 3 * DAY
        ),
        current_event(
            "customer.updated",
            current_customer("cus_current", email="billing@acme.test", name="Acme Inc.", created=start - 60),
            event_id="evt_cur_customer_updated",
            created=start + 4 * DAY,
        ),
        current_event(
            "customer.subscription.updated", cancelling, event_id="evt_cur_sub_cancelling", created=start + 10 * DAY
        ),
    ]


def test_worker_processes_2020_and_current_shape_events(
    client: FlaskClient, db: Database, redis: Redis, worker_env: Settings
) -> None:
    events = account_2020() + account_current()
    deliver(client, *events)
    # The parent uses the worker's database before forking: each job's child must
    # open connections of its own, and the parent's must still work afterwards.
    shared = context.database()
    assert {row.status for row in event_rows(shared).values()} == {"pending"}

    run_worker(redis)

    rows = event_rows(shared)
    assert sorted(rows) == sorted(event["id"] for event in events)
    assert {(row.status, row.attempts, row.last_error) for row in rows.values()} == {("processed", 1, None)}


def test_latest_subscription_version_and_one_snapshot_per_version(
    client: FlaskClient, db: Database, redis: Redis, worker_env: Settings
) -> None:
    old, current = account_2020(), account_current()
    deliver(client, *old, *current)
    run_worker(redis)

    by_type = {event["type"]: event for event in old}
    deleted = by_type["customer.subscription.deleted"]
    ended = latest(db, "sub_JdIzvfy6o5GZRd")
    assert (ended.status, ended.customer_id) == ("canceled", "cus_IhGfebO16cMIGN")
    assert ended.observed_at == from_timestamp(deleted["created"])
    assert ended.payload == deleted["data"]["object"]
    assert snapshot_count(db, "sub_JdIzvfy6o5GZRd") == 2
    assert latest(db, "sub_JLEPMp81LApOJl").status == "active"
    assert snapshot_count(db, "sub_JLEPMp81LApOJl") == 1

    cancelling = current[-1]
    now = latest(db, "sub_current")
    assert now.payload == cancelling["data"]["object"]
    assert now.payload["items"]["data"][0]["quantity"] == 3
    assert now.payload["cancel_at_period_end"] is True
    assert now.observed_at == from_timestamp(cancelling["created"])
    assert snapshot_count(db, "sub_current") == 3


def test_customers_carry_email_and_name_from_customer_updated(
    client: FlaskClient, db: Database, redis: Redis, worker_env: Settings
) -> None:
    deliver(client, *account_2020(), *account_current())
    run_worker(redis)

    old = customer(db, "cus_IhGfebO16cMIGN")
    assert (old.email, old.name, old.livemode, old.deleted) == ("billz@supabase.io", "Copple", False, False)
    current = customer(db, "cus_current")
    assert (current.email, current.name) == ("billing@acme.test", "Acme Inc.")
    # Known only from an invoice so far: a row without details.
    assert customer(db, "cus_JsuO3bmrj0QlAw").email is None


def test_prices_and_invoices_are_kept_whole(
    client: FlaskClient, db: Database, redis: Redis, worker_env: Settings
) -> None:
    old, current = account_2020(), account_current()
    deliver(client, *old, *current)
    run_worker(redis)

    price_2020 = stripe_object(db, "price_1J02UOJDPojXS6LNDao8fiaO")
    assert (price_2020.object, price_2020.customer_id, price_2020.deleted) == ("price", None, False)
    invoice_2020 = stripe_object(db, "in_1KJqKBJDPojXS6LNJbvLUgEy")
    assert (invoice_2020.object, invoice_2020.customer_id) == ("invoice", "cus_JsuO3bmrj0QlAw")
    assert invoice_2020.payload["subscription"] == "sub_JsuPyCPhXWfZar"

    price = stripe_object(db, "price_team_monthly")
    assert (price.object, price.payload["unit_amount"]) == ("price", 4900)
    invoice = stripe_object(db, "in_current")
    assert (invoice.object, invoice.customer_id) == ("invoice", "cus_current")
    assert invoice.payload["parent"]["subscription_details"]["subscription"] == "sub_current"
    assert invoice.payload["amount_paid"] == 4900


# Late, repeated and broken events.


def test_deleted_before_created_leaves_the_subscription_canceled(
    client: FlaskClient, db: Database, redis: Redis, worker_env: Settings
) -> None:
    deliver(client, event_2020("subscription_deleted"))
    run_worker(redis)
    assert latest(db, "sub_JdIzvfy6o5GZRd").status == "canceled"

    # The creation arrives late, after the deletion was processed.
    deliver(client, event_2020("subscription_created"))
    run_worker(redis)

    assert {row.status for row in event_rows(db).values()} == {"processed"}
    assert latest(db, "sub_JdIzvfy6o5GZRd").status == "canceled"
    assert snapshot_count(db, "sub_JdIzvfy6o5GZRd") == 2


def test_current_shape_updates_in_reverse_order_keep_the_newest(
    client: FlaskClient, db: Database, redis: Redis, worker_env: Settings
) -> None:
    events = [event for event in account_current() if event["type"].startswith("customer.subscription.")]
    for event in reversed(events):
        deliver(client, event)
        run_worker(redis)
    now = latest(db, "sub_current")
    assert now.payload == events[-1]["data"]["object"]
    assert snapshot_count(db, "sub_current") == 3


def test_same_event_delivered_twice_stores_one_snapshot(
    client: FlaskClient, db: Database, redis: Redis, worker_env: Settings
) -> None:
    event = event_2020("subscription_created")
    deliver(client, event, event)
    run_worker(redis)
    deliver(client, event)  # Stripe retries once more after it was processed
    run_worker(redis)

    assert len(event_rows(db)) == 1
    assert snapshot_count(db, "sub_JdIzvfy6o5GZRd") == 1


def test_replaying_a_processed_event_changes_nothing(
    client: FlaskClient, db: Database, redis: Redis, worker_env: Settings
) -> None:
    event = event_2020("subscription_created")
    deliver(client, event)
    run_worker(redis)
    before = latest(db, "sub_JdIzvfy6o5GZRd")

    count, shards = replay.mark_for_replay(db, failed_only=False, since=from_timestamp(event["created"]))
    assert count == 1
    for shard in shards:
        replay.wake(redis, shard)
    run_worker(redis)

    assert event_rows(db)[event["id"]].status == "processed"
    assert snapshot_count(db, "sub_JdIzvfy6o5GZRd") == 1
    after = latest(db, "sub_JdIzvfy6o5GZRd")
    assert (after.status, after.observed_at, after.payload) == (before.status, before.observed_at, before.payload)


def test_unusable_event_is_retried_with_backoff_then_failed(client: FlaskClient, db: Database, redis: Redis) -> None:
    broken = broken_subscription_event("evt_broken", "cus_retry", created=JULY_2024)
    deliver(client, broken)
    clock = FakeClock(utcnow())
    delays: list[timedelta] = []

    for attempt in range(1, MAX_ATTEMPTS):
        report = drain(db, None, budget_s=60, clock=clock)
        assert (report.processed, report.retrying, report.failed) == (0, 1, 0)
        row = event_rows(db)["evt_broken"]
        assert (row.status, row.attempts, row.last_error) == ("pending", attempt, BROKEN_SUBSCRIPTION_ERROR)
        assert row.next_attempt_at is not None
        assert row.next_attempt_at > utcnow()
        delays.append(row.next_attempt_at - clock.now)

        # Not due yet: a drain just before the retry time leaves the event alone.
        clock.now = row.next_attempt_at - timedelta(seconds=1)
        assert drain(db, None, budget_s=60, clock=clock).retrying == 0
        assert event_rows(db)["evt_broken"].attempts == attempt
        clock.now = row.next_attempt_at

    report = drain(db, None, budget_s=60, clock=clock)
    assert (report.retrying, report.failed) == (0, 1)
    assert report.errors == [f"evt_broken: {BROKEN_SUBSCRIPTION_ERROR}"]
    row = event_rows(db)["evt_broken"]
    assert (row.status, row.attempts, row.next_attempt_at) == ("failed", MAX_ATTEMPTS, None)
    assert row.last_error == BROKEN_SUBSCRIPTION_ERROR

    assert delays[0] == timedelta(seconds=RETRY_BASE_S)
    for earlier, later in pairwise(delays):
        assert later == min(2 * earlier, timedelta(seconds=RETRY_MAX_S))

    # Failed is final until a replay: a drain much later leaves it alone.
    clock.now += timedelta(days=30)
    assert drain(db, None, budget_s=60, clock=clock).failed == 0
    assert event_rows(db)["evt_broken"].attempts == MAX_ATTEMPTS


def test_one_bad_event_does_not_hold_back_the_customer(
    client: FlaskClient, db: Database, redis: Redis, worker_env: Settings
) -> None:
    price = current_price("price_team_monthly", 4900, created=JULY_2024 - DAY)
    created = current_subscription("sub_mixed", "cus_mixed", price, created=JULY_2024)
    past_due = current_subscription("sub_mixed", "cus_mixed", price, created=JULY_2024, status="past_due")
    deliver(
        client,
        current_event("customer.subscription.created", created, event_id="evt_good_1", created=JULY_2024),
        broken_subscription_event("evt_bad", "cus_mixed", created=JULY_2024 + 10),
        current_event("customer.subscription.updated", past_due, event_id="evt_good_2", created=JULY_2024 + 20),
    )
    run_worker(redis)

    rows = event_rows(db)
    assert {row.partition for row in rows.values()} == {"cus_mixed"}
    assert {event_id: row.status for event_id, row in rows.items()} == {
        "evt_good_1": "processed",
        "evt_bad": "pending",
        "evt_good_2": "processed",
    }
    assert (rows["evt_bad"].attempts, rows["evt_bad"].last_error) == (1, BROKEN_SUBSCRIPTION_ERROR)
    assert latest(db, "sub_mixed").status == "past_due"
    assert snapshot_count(db, "sub_mixed") == 2


# The per-customer lock.


def test_partition_locked_elsewhere_is_skipped_then_processed(client: FlaskClient, db: Database, redis: Redis) -> None:
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers through its single write lock: no partition lock to hold")
    price = current_price("price_team_monthly", 4900, created=JULY_2024 - DAY)
    subscription = current_subscription("sub_x", "cus_x", price, created=JULY_2024)
    deliver(client, current_event("customer.subscription.created", subscription, event_id="evt_x", created=JULY_2024))
    lock = text("SELECT pg_advisory_lock(hashtextextended('cus_x', 0))")
    unlock = text("SELECT pg_advisory_unlock(hashtextextended('cus_x', 0))")

    with db.engine.connect() as other_worker:
        other_worker.execute(lock)
        try:
            report = process_partition(db, "cus_x")
            assert (report.skipped_locked, report.processed) == (1, 0)
            # drain gives up on a partition another worker holds instead of spinning on it.
            assert drain(db, None, budget_s=5).skipped_locked == 1
            row = event_rows(db)["evt_x"]
            assert (row.status, row.attempts) == ("pending", 0)
        finally:
            assert other_worker.scalar(unlock) is True

    report = process_partition(db, "cus_x")
    assert (report.skipped_locked, report.processed) == (0, 1)
    assert event_rows(db)["evt_x"].status == "processed"
    assert latest(db, "sub_x").status == "active"
