"""The engine over stored state: snapshots in the database → changes and movements."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select

from ledger.db import Database
from ledger.engine import recompute_customer, settle_ties
from ledger.intake import store_event
from ledger.models import Movement, StripeObject, SubscriptionChange, SubscriptionSnapshot
from ledger.mrr import UnresolvedStripeObject
from ledger.ordering import TiedVersion, settle_order
from ledger.resolve import resolve_subscription
from ledger.settings import RuleSettings
from ledger.state import RANK_HISTORY, record_object, record_subscription
from tests.ledger.subscription_payloads import item, price, subscription, ts, utc
from tests.stripe_payloads import current_event

RULES = RuleSettings()
NOW = utc(12, 31)


def store(db: Database, payload: dict, observed_at, source: str) -> None:
    with db.transaction() as session:
        record_subscription(session, payload, observed_at=observed_at, source=source)


def ranks_at(db: Database, observed_at: datetime | None = None) -> dict[str, int]:
    """Source → rank of the stored snapshots (observed at `observed_at`, when given)."""
    query = select(SubscriptionSnapshot.source, SubscriptionSnapshot.rank)
    if observed_at is not None:
        query = query.where(SubscriptionSnapshot.observed_at == observed_at)
    with db.session() as session:
        return {source: rank for source, rank in session.execute(query)}


def recompute(db: Database, customer: str):
    with db.transaction() as session:
        return recompute_customer(session, customer, RULES, now=NOW)


def mrr_by_currency(db: Database) -> dict[str, int]:
    with db.session() as session:
        rows = session.execute(select(Movement.currency, func.sum(Movement.amount)).group_by(Movement.currency))
        return {currency: int(total) for currency, total in rows}


def test_worked_example_1_mrr_12500(db: Database) -> None:
    monthly, yearly = price(10000), price(60000, "year", price_id="price_yearly")
    customers = [(f"cus_m{n}", monthly) for n in range(100)] + [(f"cus_y{n}", yearly) for n in range(50)]
    for customer, rate in customers:
        store(
            db, subscription(item(rate), start=utc(1, 5), customer=customer, sub_id=f"sub_{customer}"), utc(1, 5), "evt"
        )
        recompute(db, customer)
    assert mrr_by_currency(db) == {"usd": 1_250_000}


def test_worked_example_2_mrr_25000_eur(db: Database) -> None:
    rate = price(2500, currency="eur")
    for n in range(1000):
        customer = f"cus_{n}"
        payload = subscription(item(rate), start=utc(2, 1), customer=customer, sub_id=f"sub_{n}", currency="eur")
        store(db, payload, utc(2, 1), f"evt_{n}")
    for n in range(1000):
        recompute(db, f"cus_{n}")
    assert mrr_by_currency(db) == {"eur": 2_500_000}


def test_recompute_keeps_unchanged_movements_and_their_ids(db: Database) -> None:
    store(db, subscription(item(price(10000)), start=utc(1, 10)), utc(1, 10), "evt_1")
    first = recompute(db, "cus_1")
    assert (first.movements_added, first.movements_removed) == (1, 0)
    with db.session() as session:
        [movement_id] = session.scalars(select(Movement.id))
    store(db, subscription(item(price(10000), quantity=2), start=utc(1, 10)), utc(3, 1), "evt_2")
    second = recompute(db, "cus_1")
    assert (second.movements_added, second.movements_removed) == (1, 0)
    with db.session() as session:
        assert movement_id in set(session.scalars(select(Movement.id)))
        changes = session.scalar(select(func.count()).select_from(SubscriptionChange))
        assert changes == 2


def test_references_are_filled_from_stored_objects(db: Database) -> None:
    # As subledger reads a coupon: with `applies_to` expanded (null: every item).
    coupon = {"id": "TEN", "object": "coupon", "percent_off": 10, "duration": "forever", "amount_off": None}
    coupon["applies_to"] = None
    discount = {
        "id": "di_1",
        "object": "discount",
        "customer": "cus_1",
        "start": 0,
        "end": None,
        "source": {"type": "coupon", "coupon": "TEN"},
    }
    payload = subscription(item(price(10000)), start=utc(1, 10))
    payload["discounts"] = ["di_1"]
    with db.transaction() as session:
        record_object(session, coupon, observed_at=utc(1, 1))
        record_object(session, discount, observed_at=utc(1, 1))
    store(db, payload, utc(1, 10), "evt_1")
    result = recompute(db, "cus_1")
    assert [(m.type, m.amount) for m in result.movements] == [("new", 9000)]


def test_discount_whose_event_is_stored_but_not_applied_yet_values_the_subscription_naming_it(db: Database) -> None:
    # customer.discount.created arrived (stored, pending) but a drain that began before it values the
    # subscription naming the discount by id: the event is stored, so the discount is known.
    coupon = {"id": "TEN", "object": "coupon", "percent_off": 10, "duration": "forever", "amount_off": None}
    held = {"id": "di_1", "object": "discount", "customer": "cus_1", "start": 0, "end": None}
    created = current_event("customer.discount.created", held | {"coupon": coupon | {"applies_to": None}},
                            event_id="evt_discount", created=ts(utc(1, 10)))  # fmt: skip
    with db.transaction() as session:
        store_event(session, created, received_via="webhook", now=NOW)
    store(db, subscription(item(price(10000)), start=utc(1, 10), discounts=["di_1"]), utc(1, 10), "evt_1")
    assert [(m.type, m.amount) for m in recompute(db, "cus_1").movements] == [("new", 9000)]


def ten_percent_off(customer: str = "cus_1", **coupon_fields: object) -> dict:
    """A subscription whose discount holds a 10%-off coupon inline (older API shapes)."""
    coupon = {"id": "TEN", "object": "coupon", "percent_off": 10, "duration": "forever", "amount_off": None}
    held = {"id": "di_1", "object": "discount", "start": 0, "end": None, "coupon": coupon | coupon_fields}
    payload = subscription(
        item(price(10000)), item(price(5000, price_id="price_extra", product="prod_extra"), item_id="si_2"),
        start=utc(1, 10), customer=customer, sub_id=f"sub_{customer}",
    )  # fmt: skip
    payload["discounts"] = [held]
    return payload


def test_a_coupon_never_read_with_applies_to_is_named_before_it_values_anything(db: Database) -> None:
    store(db, ten_percent_off(), utc(1, 10), "evt_1")
    with pytest.raises(UnresolvedStripeObject) as raised, db.transaction() as session:
        recompute_customer(session, "cus_1", RULES, now=NOW)
    assert (raised.value.object_id, raised.value.missing) == ("TEN", "applies_to")

    # A caller that cannot fetch says so: the coupon then reduces every item.
    told: list[str] = []
    with db.transaction() as session:
        result = recompute_customer(session, "cus_1", RULES, now=NOW, unread_applies_to=told.append)
    assert ([(m.type, m.amount) for m in result.movements], told) == ([("new", 13500)], ["TEN"])


def test_a_coupon_takes_applies_to_from_the_copy_that_read_it(db: Database) -> None:
    with db.transaction() as session:
        record_object(session, {"id": "TEN", "object": "coupon", "applies_to": {"products": ["prod_extra"]}},
                      observed_at=utc(1, 1))  # fmt: skip
    store(db, ten_percent_off(), utc(1, 10), "evt_1")
    assert [(m.type, m.amount) for m in recompute(db, "cus_1").movements] == [("new", 14500)]


def test_a_deleted_coupon_never_read_reduces_every_item(db: Database) -> None:
    # Stripe answers 404 for a deleted coupon: its applies_to can no longer be read.
    with db.transaction() as session:
        record_object(session, {"id": "TEN", "object": "coupon", "deleted": True}, observed_at=utc(1, 1), deleted=True)
    store(db, ten_percent_off(), utc(1, 10), "evt_1")
    assert [(m.type, m.amount) for m in recompute(db, "cus_1").movements] == [("new", 13500)]


@pytest.mark.parametrize("read_first", [True, False], ids=["read copy first", "webhook copy first"])
def test_a_webhook_copy_of_a_coupon_never_erases_the_applies_to_read(db: Database, read_first: bool) -> None:
    read = {"id": "TEN", "object": "coupon", "name": "10%", "applies_to": {"products": ["prod_extra"]}}
    webhook = {"id": "TEN", "object": "coupon", "name": "Ten percent"}  # includable applies_to left out
    copies = [(read, utc(1, 1)), (webhook, utc(2, 1))]
    with db.transaction() as session:
        for copy, observed_at in copies if read_first else reversed(copies):
            record_object(session, copy, observed_at=observed_at)
    with db.session() as session:
        stored = session.get(StripeObject, "TEN")
        assert stored is not None
        assert stored.payload == {**webhook, "applies_to": {"products": ["prod_extra"]}}


def test_resolve_leaves_unknown_references_for_the_rules_to_name() -> None:
    payload = subscription(item(price(10000)), start=utc(1, 10))
    payload["discounts"] = ["di_unknown"]
    assert resolve_subscription(payload, lambda _id: None)["discounts"] == ["di_unknown"]


def test_same_second_ties_fall_back_to_the_current_api_state(db: Database) -> None:
    one = subscription(item(price(10000), quantity=1), start=utc(1, 10))
    two = subscription(item(price(10000), quantity=2), start=utc(1, 10))
    tie = utc(2, 1)
    store(db, one, utc(1, 10), "evt_0")
    store(db, two, tie, "evt_b")
    store(db, one, tie, "evt_a")  # quantity back to 1 in the same second: which came last?
    with db.transaction() as session:
        settle_ties(session, "sub_1", tie, lambda _id: two)
    ranks = ranks_at(db, tie)
    assert ranks == {"evt_a": 0, "evt_b": 1}
    result = recompute(db, "cus_1")
    assert [(m.type, m.amount) for m in result.movements] == [("new", 10000), ("expansion", 10000)]


def test_a_backfill_version_in_the_second_of_two_events_comes_after_both(db: Database) -> None:
    # Two seats, then three in the same second; a backfill, with the clock's events catch-up running
    # beside it, rebuilds that second from its prorations: the state once both changes are done.
    one, two, three = (subscription(item(price(10000), quantity=q), start=utc(1, 10)) for q in (1, 2, 3))
    rebuilt = {**three, "metadata": {"rebuilt": "from the invoices"}}  # not the events' copy
    tie = utc(2, 1)
    store(db, one, utc(1, 10), "evt_0")
    store(db, three, tie, "evt_b")
    store(db, two, tie, "evt_a")
    with db.transaction() as session:
        record_subscription(session, rebuilt, observed_at=tie, source="backfill:run_1", rank=RANK_HISTORY)
        settle_ties(session, "sub_1", tie, lambda _id: rebuilt)  # the API shows three seats
    ranks = ranks_at(db, tie)
    assert ranks == {"evt_a": 0, "evt_b": 1, "backfill:run_1": RANK_HISTORY}
    result = recompute(db, "cus_1")
    assert [(m.type, m.amount) for m in result.movements] == [("new", 10000), ("expansion", 20000)]


def test_settle_order_by_previous_attributes_ignores_list_order() -> None:
    one, two, three = ({"status": "active", "quantity": q} for q in (1, 2, 3))
    versions = [
        TiedVersion(three, {"quantity": 2}),
        TiedVersion(one, None),
        TiedVersion(two, {"quantity": 1}),
    ]
    assert settle_order(versions) == [1, 2, 0]


@pytest.mark.parametrize("last", [10, 12])
def test_a_quantity_changed_and_changed_back_in_one_second_is_settled_by_the_api_after_a_renewal(last: int) -> None:
    # 12 seats → 10 → 12 (or 10 → 12 → 10) in one second: each event's previous_attributes match the
    # other version, so they do not order them. The subscription re-read weeks later has renewed
    # since (its item's period moved on): it still says which came last.
    def seats(quantity: int, period: tuple[datetime, datetime]) -> dict:
        payload = subscription(item(price(1200), quantity=quantity), start=utc(8, 2))
        payload["items"]["data"][0].update(current_period_start=ts(period[0]), current_period_end=ts(period[1]))
        return payload

    ten, twelve = seats(10, (utc(11, 2), utc(12, 2))), seats(12, (utc(11, 2), utc(12, 2)))
    renewed = seats(last, (utc(12, 2), utc(12, 31)))
    versions = [TiedVersion(twelve, {"items": ten["items"]}), TiedVersion(ten, {"items": twelve["items"]})]
    expected = [1, 0] if last == 12 else [0, 1]
    assert settle_order(versions, renewed) == expected
    assert settle_order(list(reversed(versions)), renewed) == expected[::-1]


def test_settle_order_without_evidence_uses_the_lifecycle_stage() -> None:
    active = {"status": "active", "quantity": 1}
    canceled = {"status": "canceled", "quantity": 1}
    assert settle_order([TiedVersion(canceled, None), TiedVersion(active, None)]) == [1, 0]
    assert settle_order([TiedVersion(active, None), TiedVersion(canceled, None)]) == [0, 1]


def test_future_breakpoints_are_not_booked_before_they_happen(db: Database) -> None:
    payload = subscription(item(price(10000)), start=utc(1, 10), trial_end=NOW + timedelta(days=3))
    payload["status"] = "trialing"
    store(db, payload, utc(12, 1), "evt_1")
    assert recompute(db, "cus_1").movements == ()


def test_subscription_paused_sent_beside_an_updated_carrying_the_identical_object_reranks_its_second(
    db: Database,
) -> None:
    # Stripe sends customer.subscription.paused and customer.subscription.updated with the very same
    # object, in the second the subscription also went from 3 seats to 1. The two copies arrive
    # apart: the second is stored at rank 0 after the first was ranked behind the 3-seat version, and
    # settling the second again swaps the identical copies, which the unique key (subscription,
    # second, rank, content) must never see half-way.
    tie = utc(2, 1)
    one_seat = subscription(item(price(10000)), start=utc(1, 10), status="paused")
    three_seats = subscription(item(price(10000), quantity=3), start=utc(1, 10), status="paused")
    assert settle_order([TiedVersion(three_seats, None), TiedVersion(one_seat, None)]) == [1, 0]
    store(db, one_seat, tie, "evt_1_updated")
    store(db, three_seats, tie, "evt_3_seats")
    with db.transaction() as session:
        settle_ties(session, "sub_1", tie, lambda _id: one_seat)  # the API shows one seat: it came last
    store(db, one_seat, tie, "evt_2_paused")
    with db.transaction() as session:
        # Two copies match the API now: the fixed order decides, the identical copies first.
        settle_ties(session, "sub_1", tie, lambda _id: one_seat)
    ranks = ranks_at(db)
    # Identical copies in event-id order: the same whatever order they arrived in.
    assert ranks == {"evt_1_updated": 0, "evt_2_paused": 1, "evt_3_seats": 2}


@pytest.mark.parametrize("order", [("draft", "open", "paid"), ("paid", "open", "draft"), ("open", "paid", "draft")])
def test_of_invoice_events_stamped_with_one_second_the_paid_invoice_is_kept(
    db: Database, order: tuple[str, ...]
) -> None:
    """invoice.created, .finalized and .paid of an automatic charge share their second: in any order,
    the stored invoice is the paid one (a draft would not count as billed, mrr-rules.md §10)."""
    with db.transaction() as session:
        for status in order:
            record_object(session, {"id": "in_1", "object": "invoice", "status": status}, observed_at=utc(1, 1))
        record_object(session, {"id": "in_2", "object": "invoice", "status": "open"}, observed_at=utc(1, 1))
        record_object(session, {"id": "in_2", "object": "invoice", "status": "void"}, observed_at=utc(1, 2))
    with db.session() as session:
        stored = {row.id: row.payload["status"] for row in session.scalars(select(StripeObject))}
    assert stored == {"in_1": "paid", "in_2": "void"}
