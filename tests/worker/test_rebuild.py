"""`subledger rebuild` and the daily roll-forward that books what time alone changes."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from sqlalchemy import select

from ledger.db import Database, utcnow
from ledger.engine import recompute_customers
from ledger.models import Movement
from ledger.settings import RuleSettings, Settings
from ledger.state import record_object, record_subscription
from tests.ledger.subscription_payloads import item, price, repeating_discount, subscription
from worker.processing import lock_partition
from worker.rebuild import RebuildReport, rebuild


def booked(db: Database) -> list[tuple[str, int]]:
    with db.session() as session:
        return [(m.type, m.amount) for m in session.scalars(select(Movement).order_by(Movement.day))]


def test_roll_forward_books_a_discount_end_that_no_event_announced(db: Database, settings: Settings) -> None:
    now = utcnow()
    start, end = now - timedelta(days=90), now - timedelta(days=1)
    payload = subscription(item(price(10000)), start=start)
    payload["discounts"] = [repeating_discount(10, start, end)]
    with db.transaction() as session:
        record_subscription(session, payload, observed_at=start, source="evt_1")
        # Computed two days ago: the discount was still running.
        recompute_customers(session, ["cus_1"], settings.rules, now=now - timedelta(days=2))
    assert booked(db) == [("new", 9000)]
    report = rebuild(db, settings)
    assert (report.customers, report.movements_added, report.problems) == (1, 1, [])
    assert booked(db) == [("new", 9000), ("expansion", 1000)]


def test_roll_forward_churns_past_due_after_the_grace_period(db: Database, settings: Settings) -> None:
    now = utcnow()
    start = now - timedelta(days=60)
    with db.transaction() as session:
        record_subscription(session, subscription(item(price(5000)), start=start), observed_at=start, source="evt_a")
        late = subscription(item(price(5000)), start=start, status="past_due")
        record_subscription(session, late, observed_at=now - timedelta(days=5), source="evt_b")
    graced = Settings(database_url=settings.database_url, rules=RuleSettings(past_due_grace_days=3))
    rebuild(db, graced)
    assert booked(db) == [("new", 5000), ("churn", -5000)]


def test_rebuild_without_a_key_values_a_coupon_never_read_for_every_item(db: Database, settings: Settings) -> None:
    # A coupon.* webhook copy: no applies_to (Stripe includes it only when expanded), and no key to read it.
    coupon = {"id": "TEN", "object": "coupon", "percent_off": 10, "amount_off": None, "duration": "forever"}
    held = {"id": "di_1", "object": "discount", "start": None, "end": None, "coupon": coupon}
    payload = subscription(item(price(10000)), start=utcnow() - timedelta(days=30))
    payload["discounts"] = [held]
    with db.transaction() as session:
        record_object(session, coupon, observed_at=utcnow() - timedelta(days=40))
        record_subscription(session, payload, observed_at=utcnow() - timedelta(days=30), source="evt_1")
    report = rebuild(db, settings)
    assert (report.customers, report.problems) == (1, [])
    assert booked(db) == [("new", 9000)]


def test_a_customer_a_worker_holds_is_rebuilt_after_its_commit_not_from_versions_read_before(
    db: Database, settings: Settings
) -> None:
    """The daily roll-forward runs while workers store events. A customer whose events a worker is storing is
    recomputed once the worker commits: recomputed from the versions read before, its ledger would overwrite
    the worker's and lose the event (a churn the worker booked vanished in a 20,000-customer replay)."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers through its single write lock: no partition lock to hold")
    now = utcnow()
    start = now - timedelta(days=60)
    active = subscription(item(price(10000)), start=start)
    with db.transaction() as session:
        record_subscription(session, active, observed_at=start, source="evt_1")
        recompute_customers(session, ["cus_1"], RuleSettings(), now=now)
    ended = now - timedelta(days=1)
    canceled = subscription(item(price(10000)), start=start, status="canceled", canceled_at=ended, ended_at=ended)
    worker = db.session()
    try:
        with worker.begin():
            assert lock_partition(worker, "cus_1")
            record_subscription(worker, canceled, observed_at=ended, source="evt_2")
            recompute_customers(worker, ["cus_1"], RuleSettings(), now=now)
            done: list[RebuildReport] = []
            thread = threading.Thread(target=lambda: done.append(rebuild(db, settings)))
            thread.start()
            time.sleep(1.0)  # the rebuild has read cus_1's versions, or tried to, while the worker holds it
            assert thread.is_alive()
        thread.join(timeout=60)
    finally:
        worker.close()
    assert booked(db) == [("new", 10000), ("churn", -10000)]
    assert done and done[0].problems == []
