"""worker.synthetic: a realistic, deterministic Stripe account, and the MRR it expects.

The strongest check is the last one: the ledger, fed the generated events
through the same intake and drain as webhooks, books exactly the MRR the
generator computed by its own arithmetic, on every day of the 24 months.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from ledger.db import Database, utcnow
from ledger.intake import USED_EVENT_TYPES, store_event, validate_event
from ledger.reporting import mrr_series
from ledger.settings import Settings
from worker import processing
from worker.cli import main
from worker.recompute import after_apply_for
from worker.synthetic import (
    API_VERSION,
    EXPORT_FILES,
    Coupon,
    CouponTerms,
    Customer,
    Discount,
    Item,
    Price,
    Subscription,
    SyntheticAccount,
    _worth,
    export,
    generate_account,
    sign,
)

NOW = datetime(2026, 11, 23, 9, 30, tzinfo=UTC)


@cache
def default_account(seed: int = 0) -> SyntheticAccount:
    return generate_account(seed=seed, now=NOW)


# --- Deterministic ---------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_account() -> None:
    first = generate_account(customers=40, seed=7, now=NOW)
    again = generate_account(customers=40, seed=7, now=NOW)
    other = generate_account(customers=40, seed=8, now=NOW)
    assert first.events() == again.events()
    assert first.expected_mrr() == again.expected_mrr()
    assert first.events() != other.events()


def test_the_history_covers_24_months_ending_now() -> None:
    account = default_account()
    created = [event["created"] for event in account.events()]
    assert max(created) <= int(NOW.timestamp())
    assert datetime.fromtimestamp(min(created), UTC) < NOW - timedelta(days=730)
    for series in account.expected_mrr().values():
        assert min(series) == (NOW.date().replace(year=NOW.year - 2)).isoformat()
        assert max(series) == NOW.date().isoformat()
        assert len(series) == (NOW.date() - NOW.date().replace(year=NOW.year - 2)).days + 1


# --- Stripe's current shape --------------------------------------------------------------------

ID_SHAPES = {
    "customer": r"cus_[A-Za-z0-9]{14}",
    "subscription": r"sub_1[A-Za-z0-9]{23}",
    "subscription_item": r"si_[A-Za-z0-9]{14}",
    "price": r"price_1[A-Za-z0-9]{23}",
    "product": r"prod_[A-Za-z0-9]{14}",
    "discount": r"di_1[A-Za-z0-9]{23}",
    "event": r"evt_1[A-Za-z0-9]{23}",
}


def test_every_event_is_a_valid_stripe_event_of_a_type_subledger_uses() -> None:
    account = default_account()
    for event in account.events():
        assert validate_event(json.loads(json.dumps(event))) == event
        assert event["type"] in USED_EVENT_TYPES
        assert event["api_version"] == API_VERSION
        assert event["livemode"] is False
        assert re.fullmatch(ID_SHAPES["event"], event["id"])
        assert ("previous_attributes" in event["data"]) == event["type"].endswith(".updated")
    assert len({event["id"] for event in account.events()}) == len(account.events())


def test_objects_have_stripe_ids_and_the_current_api_shape() -> None:
    account = default_account()
    subscriptions = [e["data"]["object"] for e in account.events() if e["type"].startswith("customer.subscription.")]
    for subscription in subscriptions:
        assert re.fullmatch(ID_SHAPES["subscription"], subscription["id"])
        assert re.fullmatch(ID_SHAPES["customer"], subscription["customer"])
        assert "current_period_start" not in subscription  # moved onto the items
        assert "discount" not in subscription  # only `discounts`, as ids
        assert all(re.fullmatch(ID_SHAPES["discount"], d) for d in subscription["discounts"])
        for item in subscription["items"]["data"]:
            assert re.fullmatch(ID_SHAPES["subscription_item"], item["id"])
            assert re.fullmatch(ID_SHAPES["price"], item["price"]["id"])
            assert re.fullmatch(ID_SHAPES["product"], item["price"]["product"])
            assert item["current_period_start"] < item["current_period_end"]
            assert item["price"]["recurring"]["usage_type"] == "licensed"


def test_discount_events_carry_the_whole_discount_naming_a_created_coupon() -> None:
    events = default_account().events()
    coupons = {e["data"]["object"]["id"] for e in events if e["type"] == "coupon.created"}
    discounts = [e for e in events if e["type"].startswith("customer.discount.")]
    assert discounts
    for event in discounts:
        discount = event["data"]["object"]
        assert discount["object"] == "discount"
        assert discount["source"]["type"] == "coupon"
        assert discount["source"]["coupon"] in coupons
        assert discount["start"] <= event["created"]
    listed = {
        d for e in events if e["type"].startswith("customer.subscription.") for d in e["data"]["object"]["discounts"]
    }
    created = {e["data"]["object"]["id"] for e in discounts if e["type"] == "customer.discount.created"}
    assert listed <= created


def test_a_discount_is_stored_before_the_subscription_version_naming_it() -> None:
    seen: set[str] = set()
    for event in default_account().events():
        if event["type"] == "customer.discount.created":
            seen.add(event["data"]["object"]["id"])
        if event["type"].startswith("customer.subscription."):
            assert set(event["data"]["object"]["discounts"]) <= seen


def test_no_two_versions_of_a_subscription_share_a_second_and_none_is_at_midnight() -> None:
    stamps = Counter(
        (e["data"]["object"]["id"], e["created"])
        for e in default_account().events()
        if e["type"].startswith("customer.subscription.")
    )
    assert max(stamps.values()) == 1
    assert all(created % 86_400 for _, created in stamps)


# --- Every scenario of the issue -------------------------------------------------------------


def _monthly(items: dict[str, Any]) -> float:
    factor = {"month": 1.0, "year": 1 / 12, "week": 365.2425 / 84}
    return sum(
        i["price"]["unit_amount"] * i["quantity"] * factor[i["price"]["recurring"]["interval"]] for i in items["data"]
    )


def _interval(items: dict[str, Any]) -> str:
    return str(items["data"][0]["price"]["recurring"]["interval"])


def scenarios(events: list[dict[str, Any]]) -> Counter[str]:
    """What happened in the account, read from its events alone (not from the generator's state)."""
    found: Counter[str] = Counter()
    coupons = {e["data"]["object"]["id"]: e["data"]["object"] for e in events if e["type"] == "coupon.created"}
    ended: set[str] = set()
    live: dict[str, set[str]] = {}
    for event in events:
        obj, kind = event["data"]["object"], event["type"]
        previous = event["data"].get("previous_attributes") or {}
        if kind == "customer.discount.created":
            coupon = coupons[obj["source"]["coupon"]]
            found[f"coupon {coupon['duration']}"] += 1
            found["coupon percent_off" if coupon["percent_off"] is not None else "coupon amount_off"] += 1
        elif kind == "customer.discount.deleted":
            found["repeating discount ended"] += 1
        elif kind == "customer.subscription.created":
            found[f"currency {obj['currency']}"] += 1
            found.update(f"{item['price']['recurring']['interval']}ly price" for item in obj["items"]["data"])
            found["quantity above 1"] += any(item["quantity"] > 1 for item in obj["items"]["data"])
            found["trial"] += obj["status"] == "trialing"
            customer = obj["customer"]
            found["second subscription"] += bool(live.get(customer))
            found["reactivation"] += customer in ended and not live.get(customer)
            live.setdefault(customer, set()).add(obj["id"])
        elif kind == "customer.subscription.deleted":
            live[obj["customer"]].discard(obj["id"])
            ended.add(obj["customer"])
            assert obj["status"] == "canceled" and obj["ended_at"] == event["created"]
            if obj["trial_end"] == obj["ended_at"]:
                found["trial lapsed"] += 1
            elif obj["cancel_at_period_end"]:
                found["canceled at period end"] += 1
            elif obj["cancellation_details"]["reason"] == "payment_failed":
                found["past_due, then canceled"] += 1
            else:
                found["canceled now"] += 1
        elif kind == "customer.subscription.updated":
            status, before = obj["status"], previous.get("status")
            found["trial converted"] += before == "trialing" and status == "active"
            found[f"incomplete, then {status}"] += before == "incomplete"
            found["past_due"] += before == "active" and status == "past_due"
            found["past_due recovered"] += before == "past_due" and status == "active"
            found["cancellation scheduled"] += previous.get("cancel_at_period_end") is False
            found["scheduled cancellation undone"] += previous.get("cancel_at_period_end") is True
            found["coupon added later"] += bool(previous.get("discounts") == [] and obj["discounts"])
            if "items" in previous and before is None:
                old, new = previous["items"], obj["items"]
                if [i["price"]["id"] for i in old["data"]] == [i["price"]["id"] for i in new["data"]]:
                    found["quantity change"] += 1
                if _interval(old) != _interval(new):
                    found["billing interval change"] += 1
                found["upgrade" if _monthly(new) > _monthly(old) else "downgrade"] += 1
    return +found


ISSUE_SCENARIOS = (
    "monthly price",
    "yearly price",
    "weekly price",
    "quantity above 1",
    "quantity change",
    "trial",
    "trial converted",
    "trial lapsed",
    "incomplete, then active",
    "incomplete, then incomplete_expired",
    "upgrade",
    "downgrade",
    "billing interval change",
    "coupon forever",
    "coupon repeating",
    "coupon once",
    "coupon percent_off",
    "coupon amount_off",
    "coupon added later",
    "repeating discount ended",
    "canceled now",
    "cancellation scheduled",
    "canceled at period end",
    "scheduled cancellation undone",
    "reactivation",
    "second subscription",
    "past_due",
    "past_due recovered",
    "past_due, then canceled",
    "currency usd",
    "currency eur",
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_scenario_of_the_issue_appears_in_a_default_size_account(seed: int) -> None:
    found = scenarios(default_account(seed).events())
    assert [name for name in ISSUE_SCENARIOS if not found[name]] == []
    assert 250 <= sum(1 for e in default_account(seed).events() if e["type"] == "customer.created") <= 300


# --- The generator's own arithmetic, against docs/mrr-rules.md ---------------------------------


def _subscription(
    amount: int, interval: str, quantity: int = 1, status: str = "active", coupon: CouponTerms | None = None
) -> Subscription:
    price = Price("price_x", _product(), "prod_x", interval, "usd", amount, 0)
    customer = Customer("cus_x", "X", "x@example.com", "usd", 0)
    subscription = Subscription("sub_x", customer, 0, status, [Item("si_x", price, quantity, 0)], anchor=0)
    if coupon is not None:
        subscription.discount = Discount("di_x", Coupon(coupon.code, coupon, 0), "cus_x", "sub_x", 0, None)
    return subscription


def _product() -> Any:
    from worker.synthetic import PRODUCTS

    return PRODUCTS[0]


@pytest.mark.parametrize(
    ("subscription", "mrr"),
    [
        pytest.param(_subscription(10000, "month"), 10000, id="§3 month: as is"),
        pytest.param(_subscription(60000, "year"), 5000, id="§3 year: ÷ 12 ($600/year → $50)"),
        pytest.param(_subscription(1000, "week"), 4348, id="§3 week: × 4.348125, half-up"),
        pytest.param(_subscription(1200, "month", quantity=7), 8400, id="§2 unit amount × quantity"),
        pytest.param(_subscription(1000, "month", coupon=CouponTerms("F", "", "forever", percent_off=50)), 500,
                     id="example 5: $10/month, 50% forever → $5"),
        pytest.param(_subscription(12000, "year", coupon=CouponTerms("F", "", "forever", percent_off=10)), 900,
                     id="example 5: $120/year, 10% forever → $9"),
        pytest.param(_subscription(1000, "month", coupon=CouponTerms("R", "", "repeating", percent_off=10)), 900,
                     id="example 6: 10% repeating, while it lasts → $9"),
        pytest.param(_subscription(120000, "year", coupon=CouponTerms("O", "", "once", percent_off=20)), 10000,
                     id="example 7: once ignored (default) → $100"),
        pytest.param(_subscription(120000, "year", coupon=CouponTerms("A", "", "forever", amount_off=12000)), 9000,
                     id="§4 amount_off normalised like the price"),
        pytest.param(_subscription(900, "week", coupon=CouponTerms("A", "", "forever", amount_off=1000)), 0,
                     id="§4 never below 0"),
        pytest.param(_subscription(1000, "month", status="trialing"), 0, id="§2 trialing: 0"),
        pytest.param(_subscription(1000, "month", status="past_due"), 1000, id="§2 past_due: counted"),
        pytest.param(_subscription(1000, "month", status="canceled"), 0, id="§2 canceled: 0"),
        pytest.param(_subscription(1000, "month", status="incomplete"), 0, id="§2 incomplete: 0"),
    ],
)  # fmt: skip
def test_the_generator_values_a_subscription_as_the_rules_say(subscription: Subscription, mrr: int) -> None:
    assert _worth(subscription) == mrr


# --- Export, signature, live activity ---------------------------------------------------------


def test_export_writes_events_objects_and_expected_mrr(tmp_path: Path) -> None:
    account = generate_account(customers=30, seed=3, now=NOW)
    written = export(account, tmp_path / "account")
    assert [path.name for path in written] == list(EXPORT_FILES)
    events = json.loads((tmp_path / "account" / "events.json").read_text())
    objects = json.loads((tmp_path / "account" / "objects.json").read_text())
    expected = json.loads((tmp_path / "account" / "expected_mrr.json").read_text())
    assert events == account.events()
    assert len(objects["customers"]) == 30
    assert {s["id"] for s in objects["subscriptions"]} == {
        e["data"]["object"]["id"] for e in events if e["type"] == "customer.subscription.created"
    }
    assert {c["id"] for c in objects["coupons"]} >= {"LAUNCH50", "FRIENDS20", "WELCOME25"}
    assert {p["currency"] for p in objects["prices"]} == {"usd", "eur"}
    assert set(expected) == {"usd", "eur"}
    assert all(isinstance(mrr, int) for series in expected.values() for mrr in series.values())


def test_subledger_demo_export_writes_the_files_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--export", str(tmp_path / "out"), "--customers", "10", "--seed", "4"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(EXPORT_FILES)
    assert "events.json" in capsys.readouterr().out


def test_sign_is_the_stripe_scheme_the_receiver_checks() -> None:
    import stripe

    header = sign(b'{"id": "evt_1"}', "whsec_demo", 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    stripe.WebhookSignature.verify_header('{"id": "evt_1"}', header, "whsec_demo", tolerance=None)


def test_live_activity_adds_valid_events_stamped_now() -> None:
    account = generate_account(customers=40, seed=5, now=NOW)
    history_ids = {event["id"] for event in account.events()}
    at = int(NOW.timestamp()) + 5
    kinds: Counter[str] = Counter()
    for step in range(40):
        activity = account.live_activity(at + 3 * step)
        assert activity.description
        for event in activity.events:
            validate_event(event)
            assert event["created"] == at + 3 * step and event["id"] not in history_ids
            kinds[event["type"]] += 1
    assert kinds["customer.created"] and kinds["customer.subscription.updated"]
    assert account.events() == generate_account(customers=40, seed=5, now=NOW).events()  # history untouched


# --- The ledger agrees with the generator ------------------------------------------------------


def ledger_mrr(db: Database, settings: Settings, events: list[dict[str, Any]], first: date, last: date) -> Any:
    """Store the events as the webhook does, drain them as a worker does; MRR per currency and day."""
    with db.transaction() as session:
        for event in events:
            store_event(session, event, received_via="webhook", now=utcnow())
    report = processing.drain(db, None, budget_s=600, after_apply=after_apply_for(settings))
    assert (report.failed, report.retrying, report.errors) == (0, 0, [])
    with db.session() as session:
        series = mrr_series(
            session, livemode=False, start=first, end=last, interval="day", rates=None, reporting_currency="usd"
        )
    return {s.currency: {b.end.isoformat(): b.mrr for b in s.buckets} for s in series}


def _compare(expected: dict[str, dict[str, int]], booked: dict[str, dict[str, int]]) -> None:
    assert set(booked) == set(expected)
    for currency, series in expected.items():
        wrong = [(day, booked[currency][day], mrr) for day, mrr in series.items() if booked[currency][day] != mrr]
        assert wrong == [], f"{currency}: (day, ledger, generator) differ on {len(wrong)} days"


def test_the_ledger_books_the_generators_mrr_on_every_day(db: Database, settings: Settings) -> None:
    # An hour in the past, so the drain's "now" is after every event, live ones included.
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    account = generate_account(customers=100, seed=11, now=now)
    for step in range(30):
        account.live_activity(int(now.timestamp()) + 60 + 7 * step)
    expected = account.expected_mrr()
    days = sorted(expected["usd"])
    booked = ledger_mrr(
        db,
        settings,
        [*account.events(), *account.live_events],
        date.fromisoformat(days[0]),
        date.fromisoformat(days[-1]),
    )
    _compare(expected, booked)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_ledger_books_the_generators_mrr_for_default_size_accounts(
    db: Database, settings: Settings, seed: int
) -> None:
    account = generate_account(seed=seed, now=datetime.now(UTC) - timedelta(minutes=5))
    expected = account.expected_mrr()
    days = sorted(expected["usd"])
    _compare(
        expected, ledger_mrr(db, settings, account.events(), date.fromisoformat(days[0]), date.fromisoformat(days[-1]))
    )
