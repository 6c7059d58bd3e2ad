"""What webhooks leave out (mrr-rules.md, "The engine in the worker"): discounts named
by id, coupons named by id inside them, and a coupon's `applies_to`, filled in from
stored objects or read from Stripe, whatever order the webhooks arrive in.

Events go in through the webhook receiver and are processed by the worker's drain
and recompute, one drain per arrival, on the real database; Stripe's API is
simulated by `responses`. No event may need a retry: each one is processed by the
drain that first sees it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
import responses
from flask.testing import FlaskClient
from sqlalchemy import select

from ledger import engine
from ledger.db import Database, utcnow
from ledger.models import Movement, StripeEvent, SubscriptionSnapshot, WaitingCustomer
from ledger.settings import Settings
from tests.ledger.subscription_payloads import item, price, subscription, ts, utc
from tests.stripe_payloads import current_event, signed
from tests.worker.stripe_http import BASE, FakeStripe
from worker import processing
from worker.recompute import after_apply_for, retry_waiting

GOLD = price(10000, price_id="price_gold")


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeStripe(mock)


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    """The worker's settings: a test-mode key, Stripe at the fake's address."""
    return replace(settings, stripe_api_key="sk_test_subledger", stripe_api_base=BASE)


def arrive(client: FlaskClient, db: Database, worker: Settings, *events: dict[str, Any]) -> None:
    """Each event received by webhook, then drained by the worker before the next arrives."""
    for event in events:
        body, headers = signed(event)
        response = client.post("/webhooks/stripe", data=body, headers=headers)
        assert response.status_code == 200, response.get_json()
        processing.drain(db, None, budget_s=60, after_apply=after_apply_for(worker))
        processed_first_time(db)


def receive(client: FlaskClient, *events: dict[str, Any]) -> None:
    """Events received by webhook and stored, not drained yet."""
    for event in events:
        body, headers = signed(event)
        response = client.post("/webhooks/stripe", data=body, headers=headers)
        assert response.status_code == 200, response.get_json()


def drain_partition(db: Database, worker: Settings, partition: str) -> None:
    """One drain pass over a single partition, as a worker that picked only it up."""
    processing.process_batch(db, [partition], now=utcnow(), after_apply=after_apply_for(worker))
    processed_first_time(db, partition)


def processed_first_time(db: Database, partition: str | None = None) -> None:
    """Every event stored so far (of `partition`) was processed by its first drain: none waits for a retry."""
    query = select(StripeEvent)
    if partition is not None:
        query = query.where(StripeEvent.partition == partition)
    with db.session() as session:
        events = {e.id: (e.status, e.attempts, e.last_error) for e in session.scalars(query)}
    assert events == dict.fromkeys(events, ("processed", 1, None))


def movements(db: Database) -> list[tuple[str, str, str, int, tuple[str, ...]]]:
    with db.session() as session:
        rows = session.scalars(select(Movement).order_by(Movement.customer_id, Movement.at))
        return [(m.customer_id, m.day.isoformat(), m.type, m.amount, tuple(m.sources)) for m in rows]


def coupon(coupon_id: str, percent_off: int, **fields: Any) -> dict[str, Any]:
    """A coupon as a `coupon.*` webhook carries it: no `applies_to`, which Stripe includes only when expanded."""
    return {
        "id": coupon_id,
        "object": "coupon",
        "amount_off": None,
        "created": ts(utc(1, 1)),
        "currency": None,
        "duration": "forever",
        "duration_in_months": None,
        "livemode": False,
        "metadata": {},
        "name": f"{percent_off}% off",
        "percent_off": percent_off,
        "valid": True,
        **fields,
    }


def discount(discount_id: str, coupon_id: str, start: datetime, *, customer: str, sub_id: str) -> dict[str, Any]:
    """A discount of API 2025-09-30.clover and later: its coupon named by id under `source`."""
    return {
        "id": discount_id,
        "object": "discount",
        "checkout_session": None,
        "customer": customer,
        "customer_account": None,
        "end": None,
        "invoice": None,
        "invoice_item": None,
        "promotion_code": None,
        "source": {"type": "coupon", "coupon": coupon_id},
        "start": ts(start),
        "subscription": sub_id,
        "subscription_item": None,
    }


def event(kind: str, obj: dict[str, Any], at: datetime, event_id: str, **previous: Any) -> dict[str, Any]:
    envelope = current_event(kind, obj, event_id=event_id, created=ts(at))
    if previous:
        envelope["data"]["previous_attributes"] = previous
    return envelope


def subscription_calls(stripe: FakeStripe) -> list[str]:
    return [path for path, _ in stripe.requests if path.startswith("/v1/subscriptions")]


# --- Discounts and the coupons they name by id -------------------------------------------------


def test_discount_deleted_event_arriving_first_still_discounts_the_versions_that_named_it(
    client: FlaskClient, db: Database, keyed: Settings, stripe: FakeStripe
) -> None:
    half = discount("di_half", "HALF", utc(1, 10), customer="cus_1", sub_id="sub_1")
    named = subscription(item(GOLD), start=utc(1, 10), discounts=["di_half"])  # webhooks name discounts by id
    removed = subscription(item(GOLD), start=utc(1, 10), discounts=[])
    # Stripe now: the discount is gone from the subscription (a deleted discount is on none).
    stripe.add("subscriptions", removed)
    stripe.add("coupons", coupon("HALF", 50, applies_to=None))

    arrive(
        client,
        db,
        keyed,
        # Delivered shuffled: the deletion before the versions that name the discount,
        # the discount's creation and its coupon's last.
        event("customer.discount.deleted", half, utc(3, 1), "evt_discount_deleted"),
        event("customer.subscription.created", named, utc(1, 10), "evt_created"),
        event("customer.subscription.updated", removed, utc(3, 1), "evt_removed", discounts=["di_half"]),
        event("customer.discount.created", half, utc(1, 10), "evt_discount_created"),
        event("coupon.created", coupon("HALF", 50), utc(1, 1), "evt_coupon"),
    )

    # Deleting the discount ended it on 1 March; it discounted every version before.
    assert movements(db) == [
        ("cus_1", "2024-01-10", "new", 5000, ("evt_created",)),
        ("cus_1", "2024-03-01", "expansion", 5000, ("evt_removed",)),
    ]
    assert subscription_calls(stripe) == []
    assert stripe.calls("/v1/coupons/HALF") == [{"expand[0]": "applies_to"}]


def test_coupon_named_by_id_is_read_from_the_store_or_its_own_endpoint(
    client: FlaskClient, db: Database, keyed: Settings, stripe: FakeStripe
) -> None:
    # QUARTER was created before the webhook endpoint existed: no coupon.* event ever names it.
    first = discount("di_a", "QUARTER", utc(1, 10), customer="cus_a", sub_id="sub_a")
    second = discount("di_b", "QUARTER", utc(1, 20), customer="cus_b", sub_id="sub_b")
    sub_a = subscription(item(GOLD), start=utc(1, 10), discounts=["di_a"], customer="cus_a", sub_id="sub_a")
    sub_a_removed = subscription(item(GOLD), start=utc(1, 10), discounts=[], customer="cus_a", sub_id="sub_a")
    sub_b = subscription(item(GOLD), start=utc(1, 20), discounts=["di_b"], customer="cus_b", sub_id="sub_b")
    # Stripe now: sub_a's discount was removed meanwhile; sub_b still carries its own.
    stripe.add("subscriptions", sub_a_removed, dict(sub_b, discounts=[second]))
    stripe.add("coupons", coupon("QUARTER", 25, applies_to=None))

    arrive(
        client,
        db,
        keyed,
        event("customer.discount.created", first, utc(1, 10), "evt_di_a"),
        event("customer.subscription.created", sub_a, utc(1, 10), "evt_sub_a"),
        event("customer.discount.created", second, utc(1, 20), "evt_di_b"),
        event("customer.subscription.created", sub_b, utc(1, 20), "evt_sub_b"),
        event("customer.subscription.updated", sub_a_removed, utc(2, 1), "evt_sub_a_removed", discounts=["di_a"]),
        event("customer.discount.deleted", first, utc(2, 1), "evt_di_a_deleted"),
    )

    assert movements(db) == [
        ("cus_a", "2024-01-10", "new", 7500, ("evt_sub_a",)),
        ("cus_a", "2024-02-01", "expansion", 2500, ("evt_sub_a_removed",)),
        ("cus_b", "2024-01-20", "new", 7500, ("evt_sub_b",)),
    ]
    # Read once from its own endpoint, then from the store; never through a subscription.
    assert stripe.calls("/v1/coupons/QUARTER") == [{"expand[0]": "applies_to"}]
    assert subscription_calls(stripe) == []


def test_coupon_created_event_still_queued_in_its_own_partition_values_the_subscription_naming_it(
    client: FlaskClient, db: Database, keyed: Settings, stripe: FakeStripe
) -> None:
    # CYBER10 has been deleted since: Stripe answers 404 for it. Its coupon.created arrived first, but
    # it is drained in its own partition (the coupon's), by a pass that has not run yet.
    cyber = discount("di_cyber", "CYBER10", utc(1, 10), customer="cus_1", sub_id="sub_1")
    named = subscription(item(GOLD), start=utc(1, 10), discounts=["di_cyber"])
    receive(client, event("coupon.created", coupon("CYBER10", 10), utc(1, 1), "evt_coupon"))
    receive(
        client,
        event("customer.discount.created", cyber, utc(1, 10), "evt_discount"),
        event("customer.subscription.created", named, utc(1, 10), "evt_created"),
    )

    drain_partition(db, keyed, "cus_1")

    # The coupon is known from its event; which items it reduces is not (webhooks leave applies_to
    # out) and can no longer be read: deleted, it reduces every item.
    assert movements(db) == [("cus_1", "2024-01-10", "new", 9000, ("evt_created",))]
    assert stripe.calls("/v1/coupons/CYBER10") == [{"expand[0]": "applies_to"}]
    processing.drain(db, None, budget_s=60, after_apply=after_apply_for(keyed))
    processed_first_time(db)


def test_discount_stripe_still_shows_whose_coupon_was_deleted_since_values_the_subscription_before_its_event(
    client: FlaskClient, db: Database, keyed: Settings, stripe: FakeStripe
) -> None:
    # The subscription names di_half before customer.discount.created arrives. Stripe still shows the
    # discount on the subscription, but its coupon HALF was deleted since (GET /v1/coupons/HALF: 404).
    half = discount("di_half", "HALF", utc(1, 10), customer="cus_1", sub_id="sub_1")
    named = subscription(item(GOLD), start=utc(1, 10), discounts=["di_half"])
    stripe.add("subscriptions", dict(named, discounts=[half]))

    arrive(
        client,
        db,
        keyed,
        event("coupon.created", coupon("HALF", 50), utc(1, 1), "evt_coupon"),
        event("customer.subscription.created", named, utc(1, 10), "evt_created"),
        event("customer.discount.created", half, utc(1, 10), "evt_discount"),
    )

    # The discount is read from the subscription; its coupon from the store, and, its applies_to no
    # longer readable, it reduces every item.
    assert movements(db) == [("cus_1", "2024-01-10", "new", 5000, ("evt_created",))]
    assert stripe.calls("/v1/coupons/HALF") == [{"expand[0]": "applies_to"}]


def test_update_naming_a_discount_before_its_event_arrived_waits_for_it_without_a_retry(
    client: FlaskClient, db: Database, keyed: Settings, stripe: FakeStripe
) -> None:
    # In one second Stripe added a seat (evt_seat) and a 50%-off discount (evt_discounted). The
    # discounted version arrives before customer.discount.created, and Stripe no longer has the
    # discount (removed on 1 March): the event is applied, and the customer's ledger waits for it.
    half = discount("di_half", "HALF", utc(2, 1), customer="cus_1", sub_id="sub_1")
    one_seat = subscription(item(GOLD), start=utc(1, 10))
    two_seats = subscription(item(GOLD, 2), start=utc(1, 10))
    discounted = subscription(item(GOLD, 2), start=utc(1, 10), discounts=["di_half"])
    stripe.add("subscriptions", two_seats)  # Stripe now: two seats, the discount removed
    stripe.add("coupons", coupon("HALF", 50, applies_to=None))
    arrive(client, db, keyed, event("customer.subscription.created", one_seat, utc(1, 10), "evt_created"))
    receive(client, event("customer.subscription.updated", discounted, utc(2, 1), "evt_discounted", discounts=[]))
    assert processing.drain(db, None, budget_s=60, after_apply=after_apply_for(keyed)).retrying == 0
    with db.session() as session:
        waiting = session.get(WaitingCustomer, "cus_1")
        assert waiting is not None and waiting.object_id == "di_half"
        assert "discount di_half is an id, not an object" in waiting.reason

    # Then the discount and the seat arrive; the discounted version, stored already, is settled after
    # the seat's (its previous_attributes say so), and the ledger is valued with the discount.
    receive(
        client,
        event("customer.discount.created", half, utc(2, 1), "evt_discount"),
        event("customer.subscription.updated", two_seats, utc(2, 1), "evt_seat", items=one_seat["items"]),
        event("customer.subscription.updated", two_seats, utc(3, 1), "evt_removed", discounts=["di_half"]),
    )
    processing.drain(db, None, budget_s=60, after_apply=after_apply_for(keyed))

    with db.session() as session:
        events = {e.id: (e.status, e.attempts) for e in session.scalars(select(StripeEvent))}
        versions = session.execute(
            select(SubscriptionSnapshot.source, SubscriptionSnapshot.rank)
            .where(SubscriptionSnapshot.observed_at == utc(2, 1))
            .order_by(SubscriptionSnapshot.rank)
        ).all()
        assert session.get(WaitingCustomer, "cus_1") is None
    assert set(events.values()) == {("processed", 1)}
    assert [tuple(v) for v in versions] == [("evt_seat", 0), ("evt_discounted", 1)]
    # Two seats at half price on 1 February are worth one seat; the removal on 1 March doubles it.
    assert movements(db) == [
        ("cus_1", "2024-01-10", "new", 10000, ("evt_created",)),
        ("cus_1", "2024-03-01", "expansion", 10000, ("evt_removed",)),
    ]


def test_a_ledger_waiting_for_a_coupon_is_valued_when_the_coupon_arrives_in_its_own_event(
    client: FlaskClient, db: Database, keyed: Settings, stripe: FakeStripe
) -> None:
    # The coupon's own event comes last (shuffled delivery), and Stripe has deleted the coupon since
    # (404): the customer's ledger waits for it. The coupon event's partition is the coupon, not the
    # customer; the batch that stores it values the waiting customer.
    half = discount("di_half", "HALF", utc(2, 1), customer="cus_1", sub_id="sub_1")
    discounted = subscription(item(GOLD), start=utc(2, 1), discounts=["di_half"])
    stripe.add("subscriptions", dict(discounted, discounts=[half]))
    arrive(
        client,
        db,
        keyed,
        event("customer.discount.created", half, utc(2, 1), "evt_discount"),
        event("customer.subscription.created", discounted, utc(2, 1), "evt_created"),
    )
    with db.session() as session:
        waiting = session.get(WaitingCustomer, "cus_1")
        assert waiting is not None and waiting.object_id == "HALF"
    assert movements(db) == []
    arrive(client, db, keyed, event("coupon.created", coupon("HALF", 50, applies_to=None), utc(1, 1), "evt_coupon"))
    with db.session() as session:
        assert session.get(WaitingCustomer, "cus_1") is None
        assert {e.attempts for e in session.scalars(select(StripeEvent))} == {1}
    assert movements(db) == [("cus_1", "2024-02-01", "new", 5000, ("evt_created",))]


def test_the_sweeper_values_a_waiting_ledger_once_stripe_gives_what_it_waits_for(
    client: FlaskClient, db: Database, keyed: Settings, stripe: FakeStripe
) -> None:
    """Stripe's subscription does not show the discount yet when the event is processed (its reads
    can lag its events): the ledger waits, and the sweeper's pass (`retry_waiting`) fetches again."""
    half = discount("di_half", "HALF", utc(2, 1), customer="cus_1", sub_id="sub_1")
    discounted = subscription(item(GOLD), start=utc(2, 1), discounts=["di_half"])
    stripe.add("subscriptions", dict(discounted, discounts=[]))
    stripe.add("coupons", coupon("HALF", 50, applies_to=None))
    arrive(client, db, keyed, event("customer.subscription.created", discounted, utc(2, 1), "evt_created"))
    assert retry_waiting(db, keyed) == (0, 1)
    assert movements(db) == []
    stripe.add("subscriptions", dict(discounted, discounts=[half]))
    assert retry_waiting(db, keyed) == (1, 0)
    with db.session() as session:
        assert session.get(WaitingCustomer, "cus_1") is None
    assert movements(db) == [("cus_1", "2024-02-01", "new", 5000, ("evt_created",))]


def test_a_batch_fetching_references_customer_by_customer_adds_to_the_account_totals_once(
    client: FlaskClient, db: Database, keyed: Settings, stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every customer's recompute adds to the same account_months and daily_totals rows. In key order
    # within one statement, two workers never lock them crosswise; but a transaction adding to them
    # again for a second customer would hold rows the other worker's next statement waits for.
    quarter = discount("di_quarter", "QUARTER", utc(1, 10), customer="cus_a", sub_id="sub_a")
    named = subscription(item(GOLD), start=utc(1, 10), discounts=["di_quarter"], customer="cus_a", sub_id="sub_a")
    plain = subscription(item(GOLD), start=utc(2, 10), customer="cus_b", sub_id="sub_b")
    stripe.add("coupons", coupon("QUARTER", 25, applies_to=None))  # no coupon.* event: read from Stripe
    receive(
        client,
        event("customer.discount.created", quarter, utc(1, 10), "evt_discount"),
        event("customer.subscription.created", named, utc(1, 10), "evt_a"),
        event("customer.subscription.created", plain, utc(2, 10), "evt_b"),
    )
    added: list[str] = []
    add_to_rows = engine.add_to_rows

    def spy(session: Any, model: type[Any], rows: list[dict[str, Any]], **columns: Any) -> None:
        added.append(model.__name__)
        add_to_rows(session, model, rows, **columns)

    monkeypatch.setattr(engine, "add_to_rows", spy)

    processing.process_batch(db, ["cus_a", "cus_b"], now=utcnow(), after_apply=after_apply_for(keyed))

    processed_first_time(db)
    assert movements(db) == [
        ("cus_a", "2024-01-10", "new", 7500, ("evt_a",)),
        ("cus_b", "2024-02-10", "new", 10000, ("evt_b",)),
    ]
    assert added == ["DailyTotal", "AccountMonth"]


# --- A coupon's applies_to: included only when expanded -------------------------------------

PLAN = price(4900, price_id="price_plan", product="prod_plan")
SUPPORT = price(9900, price_id="price_support", product="prod_support")


def plan_and_support(discount_id: str, *, support: int = 1) -> dict[str, Any]:
    """A 49.00 plan and a 99.00 support item, with a discount naming its coupon by id."""
    return subscription(
        item(PLAN, item_id="si_plan"),
        item(SUPPORT, support, item_id="si_support"),
        start=utc(1, 10),
        discounts=[discount_id],
    )


def support_only_account(coupon_id: str) -> list[dict[str, Any]]:
    """A 30%-off coupon restricted to the support product, on a plan-and-support subscription
    whose support item goes from 1 to 2 on 1 March."""
    held = discount("di_support", coupon_id, utc(1, 10), customer="cus_1", sub_id="sub_1")
    one, two = plan_and_support("di_support"), plan_and_support("di_support", support=2)
    return [
        event("coupon.created", coupon(coupon_id, 30), utc(1, 1), f"evt_{coupon_id}_created"),
        event("customer.discount.created", held, utc(1, 10), "evt_discount"),
        event("customer.subscription.created", one, utc(1, 10), "evt_created"),
        event("customer.subscription.updated", two, utc(3, 1), "evt_second_seat", items=one["items"]),
    ]


def test_coupon_seen_without_applies_to_is_fetched_expanded_before_valuing(
    client: FlaskClient, db: Database, keyed: Settings, stripe: FakeStripe
) -> None:
    # Expanded, Stripe says what the coupon applies to; webhooks never carry the field.
    stripe.add("coupons", coupon("SUPPORT30", 30, applies_to={"products": ["prod_support"]}))
    created, held, named, second_seat = support_only_account("SUPPORT30")
    # A later webhook copy (renamed after the worker read the coupon) carries no applies_to either.
    renamed = event(
        "coupon.updated",
        coupon("SUPPORT30", 30, name="Support, 30% off"),
        utcnow() + timedelta(minutes=1),
        "evt_renamed",
    )

    arrive(client, db, keyed, created, held, named, renamed, second_seat)

    # 49.00 + 99.00 × 0.7 = 118.30, not 148.00 × 0.7 = 103.60; then 49.00 + 198.00 × 0.7 = 187.60.
    assert movements(db) == [
        ("cus_1", "2024-01-10", "new", 11830, ("evt_created",)),
        ("cus_1", "2024-03-01", "expansion", 6930, ("evt_second_seat",)),
    ]
    assert stripe.calls("/v1/coupons/SUPPORT30") == [{"expand[0]": "applies_to"}]


def test_coupon_never_read_without_a_key_reduces_every_item_and_is_logged_once(
    client: FlaskClient, db: Database, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="subledger.worker")

    arrive(client, db, settings, *support_only_account("NOKEY30"))

    # Nothing can say which items it reduces: every item, rather than a ledger held back forever.
    assert movements(db) == [
        ("cus_1", "2024-01-10", "new", 10360, ("evt_created",)),
        ("cus_1", "2024-03-01", "expansion", 6930, ("evt_second_seat",)),
    ]
    said = [record.getMessage() for record in caplog.records if "NOKEY30" in record.getMessage()]
    assert len(said) == 1
    assert "STRIPE_API_KEY" in said[0]


@pytest.mark.parametrize("deletion", ["Stripe answers 404", "coupon.deleted received"])
def test_deleted_coupon_never_read_still_counts_for_every_item(
    client: FlaskClient, db: Database, keyed: Settings, stripe: FakeStripe, deletion: str
) -> None:
    coupon_id = "GONE30"  # deleted in Stripe: GET /v1/coupons/GONE30 answers 404
    created, held, named, second_seat = support_only_account(coupon_id)
    deleted = [event("coupon.deleted", coupon(coupon_id, 30, valid=False), utc(1, 2), "evt_gone")]

    arrive(client, db, keyed, created, *(deleted if deletion == "coupon.deleted received" else []), held, named)
    arrive(client, db, keyed, second_seat)

    assert movements(db) == [
        ("cus_1", "2024-01-10", "new", 10360, ("evt_created",)),
        ("cus_1", "2024-03-01", "expansion", 6930, ("evt_second_seat",)),
    ]
    # Asked once at most: a coupon Stripe deleted cannot be read any more.
    expected = [] if deletion == "coupon.deleted received" else [{"expand[0]": "applies_to"}]
    assert stripe.calls(f"/v1/coupons/{coupon_id}") == expected
