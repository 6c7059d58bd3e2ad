"""Webhook → events table → worker → movements, on the real database and Redis."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest
import responses
from flask import Flask
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from redis import Redis
from rq import Worker
from sqlalchemy import delete, select, text

from ledger.db import Database, utcnow
from ledger.engine import resum_totals
from ledger.intake import store_event
from ledger.models import AccountMonth, DailyTotal, Movement, StripeEvent, SubscriptionChange, WaitingCustomer
from ledger.rollup import ACCOUNT_SUMS
from ledger.settings import RuleSettings, Settings
from tests.ledger.subscription_payloads import item, price, subscription, ts, utc
from tests.stripe_payloads import current_event, event_2020, signed
from worker import processing
from worker.queues import queue
from worker.rebuild import rebuild
from worker.recompute import after_apply_for

MakeApp = Callable[[Settings], Flask]


def deliver(client, *events: dict[str, Any]) -> None:
    for event in events:
        response = client.post("/webhooks/stripe", **_request(event))
        assert response.status_code == 200, response.get_json()


def _request(event: dict[str, Any]) -> dict[str, Any]:
    body, headers = signed(event)
    return {"data": body, "headers": headers}


def run_worker(redis: Redis) -> None:
    Worker([queue(redis)], connection=redis).work(burst=True)


def movements(db: Database, customer: str | None = None) -> list[tuple[Any, ...]]:
    with db.session() as session:
        query = select(Movement).order_by(Movement.customer_id, Movement.day, Movement.type)
        if customer is not None:
            query = query.where(Movement.customer_id == customer)
        return [
            (m.customer_id, m.day.isoformat(), m.type, m.amount, m.mrr_before, m.mrr_after, tuple(m.sources))
            for m in session.scalars(query)
        ]


def sub_event(event_id: str, kind: str, payload: dict[str, Any], at, previous: dict[str, Any] | None = None):
    event = current_event(f"customer.subscription.{kind}", payload, event_id=event_id, created=ts(at))
    if previous is not None:
        event["data"]["previous_attributes"] = previous
    return event


GOLD = price(10000, price_id="price_gold")
PLATINUM = price(15000, price_id="price_platinum", product="prod_platinum")


def lifecycle() -> list[dict[str, Any]]:
    """docs/mrr-rules.md worked example 3 and a cancellation: $100 plan, upgrade to $150, canceled."""
    start = utc(1, 10)
    created = subscription(item(GOLD), start=start)
    upgraded = subscription(item(PLATINUM), start=start)
    canceled = subscription(item(PLATINUM), start=start, status="canceled", canceled_at=utc(3, 5), ended_at=utc(3, 5))
    return [
        sub_event("evt_created", "created", created, start),
        sub_event("evt_upgrade", "updated", upgraded, utc(2, 1, 12), {"items": created["items"]}),
        sub_event("evt_canceled", "deleted", canceled, utc(3, 5)),
    ]


def test_webhooks_become_movements_traced_to_their_events(client, db: Database, redis: Redis, worker_env) -> None:
    deliver(client, *lifecycle())
    run_worker(redis)
    assert movements(db) == [
        ("cus_1", "2024-01-10", "new", 10000, 0, 10000, ("evt_created",)),
        ("cus_1", "2024-02-01", "expansion", 5000, 10000, 15000, ("evt_upgrade",)),
        ("cus_1", "2024-03-05", "churn", -15000, 15000, 0, ("evt_canceled",)),
    ]
    with db.session() as session:
        versions = set(session.scalars(select(Movement.rules_version)))
        assert versions == {RuleSettings().version}
        statuses = set(session.scalars(select(StripeEvent.status)))
        assert statuses == {"processed"}


def test_2020_api_shape_events_are_valued_the_same_way(client, db: Database, redis: Redis, worker_env) -> None:
    created = event_2020("subscription_created")
    obj = created["data"]["object"]
    for plan in (obj["plan"], obj["items"]["data"][0]["plan"]):
        plan.update(amount=2500, amount_decimal="2500")
    obj["items"]["data"][0]["price"].update(unit_amount=2500, unit_amount_decimal="2500")
    obj["status"] = "active"
    deliver(client, created)
    run_worker(redis)
    [(customer, day, kind, amount, *_)] = movements(db)
    assert (customer, kind, amount) == (obj["customer"], "new", 2500)
    assert day == utc(1, 1).fromtimestamp(obj["start_date"], tz=utc(1, 1).tzinfo).date().isoformat()


def test_a_late_event_reclassifies_what_follows(client, db: Database, redis: Redis, worker_env) -> None:
    created, upgrade, canceled = lifecycle()
    deliver(client, created, canceled)
    run_worker(redis)
    assert [m[2:4] for m in movements(db)] == [("new", 10000), ("churn", -10000)]
    deliver(client, upgrade)
    run_worker(redis)
    assert [m[2:4] for m in movements(db)] == [("new", 10000), ("expansion", 5000), ("churn", -15000)]


def test_redelivery_changes_nothing(client, db: Database, redis: Redis, worker_env) -> None:
    events = lifecycle()
    deliver(client, *events)
    run_worker(redis)
    with db.session() as session:
        ids_before = sorted(session.scalars(select(Movement.id)))
    deliver(client, *events)
    run_worker(redis)
    with db.session() as session:
        assert sorted(session.scalars(select(Movement.id))) == ids_before


def test_same_second_versions_are_ordered_by_previous_attributes(
    client, db: Database, redis: Redis, worker_env
) -> None:
    start = utc(1, 10)
    one = subscription(item(GOLD, quantity=1), start=start)
    two = subscription(item(GOLD, quantity=2), start=start)
    three = subscription(item(GOLD, quantity=3), start=start)
    tie = utc(2, 1, 9)
    events = [
        sub_event("evt_a", "created", one, start),
        sub_event("evt_b", "updated", two, tie, {"items": one["items"]}),
        sub_event("evt_c", "updated", three, tie, {"items": two["items"]}),
    ]
    # Stripe delivers the later change first; arrival order must not matter.
    deliver(client, events[0], events[2], events[1])
    run_worker(redis)
    assert [m[2:6] for m in movements(db)] == [("new", 10000, 0, 10000), ("expansion", 20000, 10000, 30000)]


def discounted_subscription() -> dict[str, Any]:
    payload = subscription(item(GOLD), start=utc(1, 10))
    payload["discounts"] = ["di_half"]  # webhooks carry discount ids, not objects
    return payload


def stripe_discount() -> dict[str, Any]:
    return {
        "id": "di_half",
        "object": "discount",
        "start": ts(utc(1, 10)),
        "end": None,
        "customer": "cus_1",
        "subscription": "sub_1",
        "source": {"type": "coupon", "coupon": "HALF"},
    }


def test_discount_ids_are_fetched_from_stripe(
    settings: Settings, make_app: MakeApp, db: Database, redis: Redis, worker_env, monkeypatch
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_subledger")
    monkeypatch.setenv("STRIPE_API_BASE", "https://stripe.test")
    expanded = discounted_subscription()
    expanded["discounts"] = [stripe_discount()]
    coupon = {"id": "HALF", "object": "coupon", "percent_off": 50, "amount_off": None, "duration": "forever"}
    with responses.RequestsMock() as stripe_api:
        stripe_api.get("https://stripe.test/v1/subscriptions/sub_1", json=expanded)
        stripe_api.get("https://stripe.test/v1/coupons/HALF", json=coupon)
        client = make_app(settings).test_client()
        deliver(client, sub_event("evt_1", "created", discounted_subscription(), utc(1, 10)))
        # The forking worker's child makes the HTTP calls `responses` sees in this process only,
        # so this test drains in-process with the same hook a worker uses.
        from worker import context

        report = processing.drain(db, None, budget_s=60, after_apply=after_apply_for(context.settings()))
    assert report.processed == 1
    assert [m[2:4] for m in movements(db)] == [("new", 5000)]


def test_missing_discount_without_api_key_leaves_the_ledger_waiting_with_a_clear_reason(
    client, db: Database, worker_env
) -> None:
    """The event is applied (its version is a fact); the customer's ledger waits, saying for what and how
    to fix it, and is recomputed once the discount arrives."""
    deliver(client, sub_event("evt_1", "created", discounted_subscription(), utc(1, 10)))
    report = processing.drain(db, None, budget_s=60, after_apply=after_apply_for(worker_env))
    assert (report.processed, report.retrying) == (1, 0)
    with db.session() as session:
        waiting = session.get(WaitingCustomer, "cus_1")
        assert waiting is not None and waiting.object_id == "di_half"
        assert "STRIPE_API_KEY" in waiting.reason
    assert movements(db) == []
    half = {"id": "HALF", "object": "coupon", "percent_off": 50, "amount_off": None, "duration": "forever"}
    whole = stripe_discount() | {"source": {"type": "coupon", "coupon": half | {"applies_to": None}}}
    deliver(client, current_event("customer.discount.created", whole, event_id="evt_2", created=ts(utc(1, 10))))
    processing.drain(db, None, budget_s=60, after_apply=after_apply_for(worker_env))
    with db.session() as session:
        assert session.get(WaitingCustomer, "cus_1") is None
    assert [m[2:4] for m in movements(db)] == [("new", 5000)]


def daily_totals(db: Database) -> list[tuple[Any, ...]]:
    with db.session() as session:
        rows = session.scalars(
            select(DailyTotal).where(DailyTotal.movements != 0).order_by(DailyTotal.day, DailyTotal.type)
        )
        return [(t.currency, t.day, t.type, t.amount, t.movements) for t in rows]


def account_months(db: Database) -> list[tuple[Any, ...]]:
    with db.session() as session:
        rows = session.scalars(select(AccountMonth).order_by(AccountMonth.currency, AccountMonth.month))
        return [
            tuple(getattr(row, name) for name in ("currency", "month", *ACCOUNT_SUMS))
            for row in rows
            if row.mrr or row.customers_start or row.new
        ]


def ledger_rows(db: Database) -> list[tuple[Any, ...]]:
    return [row[:6] for row in movements(db)]


def many_customers(count: int) -> list[dict[str, Any]]:
    events = []
    for n in range(count):
        customer, sub_id = f"cus_{n:03d}", f"sub_{n:03d}"
        start = utc(1, 1 + n % 27)
        base = subscription(item(GOLD, quantity=1 + n % 3), start=start, customer=customer, sub_id=sub_id)
        more = subscription(item(GOLD, quantity=2 + n % 3), start=start, customer=customer, sub_id=sub_id)
        gone = subscription(
            item(GOLD, quantity=2 + n % 3),
            start=start,
            customer=customer,
            sub_id=sub_id,
            status="canceled",
            canceled_at=utc(4, 2),
            ended_at=utc(4, 2),
        )
        events += [
            sub_event(f"evt_{n}_a", "created", base, start),
            sub_event(f"evt_{n}_b", "updated", more, utc(2, 3), {"items": base["items"]}),
        ]
        if n % 2:
            events.append(sub_event(f"evt_{n}_c", "deleted", gone, utc(4, 2)))
    return events


def test_two_worker_processes_give_the_same_ledger_as_one(
    client, db: Database, redis: Redis, worker_env: Settings, settings: Settings
) -> None:
    deliver(client, *many_customers(40))
    env = {**os.environ, "DATABASE_URL": settings.database_url, "REDIS_URL": settings.redis_url or ""}
    command = [os.path.join(os.path.dirname(sys.executable), "subledger"), "worker", "--burst"]
    workers = [subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [worker.wait(timeout=120) for worker in workers] == [0, 0]
    with db.session() as session:
        assert set(session.scalars(select(StripeEvent.status))) == {"processed"}
    two_workers = ledger_rows(db)
    assert len(two_workers) == 40 + 40 + 20
    # The totals both workers incremented concurrently equal the rows they sum, re-summed.
    kept_by_workers = (daily_totals(db), account_months(db))
    with db.transaction() as session:
        resum_totals(session)
    assert (daily_totals(db), account_months(db)) == kept_by_workers

    # The same ledger computed again by one process from the stored state.
    with db.transaction() as session:
        session.execute(delete(Movement))
        session.execute(delete(SubscriptionChange))
    rebuild(db, settings)
    assert ledger_rows(db) == two_workers


def test_rebuild_after_a_rule_change_needs_no_stripe_and_is_idempotent(
    client, db: Database, redis: Redis, worker_env: Settings, settings: Settings
) -> None:
    created, upgrade, canceled = lifecycle()
    canceled["data"]["object"]["canceled_at"] = ts(utc(2, 20))
    deliver(client, created, upgrade, canceled)
    run_worker(redis)
    assert movements(db)[-1][1:3] == ("2024-03-05", "churn")
    request_rules = replace(settings, rules=RuleSettings(churn_recognition="request"))
    first = rebuild(db, request_rules)
    assert (first.customers, first.movements_added, first.movements_removed) == (1, 3, 3)
    assert movements(db)[-1][1:3] == ("2024-02-20", "churn")
    second = rebuild(db, request_rules)
    assert (second.movements_added, second.movements_removed) == (0, 0)
    with db.session() as session:
        assert set(session.scalars(select(Movement.rules_version))) == {request_rules.rules.version}


@pytest.mark.slow
@hypothesis_settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(5)), duplicated=st.lists(st.integers(0, 4), max_size=3))
def test_any_arrival_order_with_duplicates_gives_the_in_order_ledger(
    migrated_database: Database, settings: Settings, order: list[int], duplicated: list[int]
) -> None:
    events = many_customers(2)
    expected_by_order: dict[str, list[tuple[Any, ...]]] = {}
    for label, sequence in (("in order", list(range(5))), ("shuffled", order + duplicated)):
        db = migrated_database
        with db.engine.begin() as connection:
            for table in ("movements", "subscription_changes", "subscription_snapshots", "subscriptions"):
                connection.execute(text(f"DELETE FROM {table}"))
            connection.execute(text("DELETE FROM stripe_events"))
            connection.execute(text("DELETE FROM customers"))
        for index in sequence:
            # One drain per arrival: each event is processed as it comes.
            with db.transaction() as session:
                store_event(session, events[index], received_via="webhook", now=utcnow() - timedelta(seconds=1))
            processing.drain(db, None, budget_s=60, after_apply=after_apply_for(settings))
        expected_by_order[label] = ledger_rows(db)
    assert expected_by_order["shuffled"] == expected_by_order["in order"]
    assert len(expected_by_order["in order"]) == 5
