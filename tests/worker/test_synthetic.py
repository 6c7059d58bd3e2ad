"""worker.synthetic: a realistic, deterministic Stripe account, and the truth it records.

The account is read back from what it sends and serves (events, final
objects), never from the simulation's state, and checked against itself: the
invoices against the truth, the per-customer truth against the per-currency
one. The strongest check is the last one: the ledger, fed the events through
the same intake and drain as webhooks, books exactly the MRR the simulation
computed by its own arithmetic, on every day of the history.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
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
    API_VERSION_2020,
    EXPORT_FILES,
    PRODUCTS,
    Behaviour,
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

FACTORS = {"month": Fraction(1), "year": Fraction(1, 12), "week": Fraction("365.2425") / 84}
"""docs/mrr-rules.md §3, written again here: the tests never use the simulation's arithmetic."""

BILLING_EVENTS = frozenset({"invoiceitem.created"})
"""Event types Stripe sends that subledger does not read (stored as ignored)."""


@cache
def account(seed: int = 0, customers: int = 300, months: int = 12) -> SyntheticAccount:
    return generate_account(customers=customers, seed=seed, now=NOW, months=months)


@cache
def events(seed: int = 0) -> list[dict[str, Any]]:
    return account(seed).events()


@cache
def objects(seed: int = 0) -> dict[str, list[dict[str, Any]]]:
    return account(seed).objects()


# --- Deterministic ---------------------------------------------------------------------------


def test_the_same_seed_gives_the_same_account() -> None:
    first = generate_account(customers=40, seed=7, now=NOW, months=12)
    again = generate_account(customers=40, seed=7, now=NOW, months=12)
    other = generate_account(customers=40, seed=8, now=NOW, months=12)
    assert first.events() == again.events()
    assert first.objects() == again.objects()
    assert first.expected_mrr() == again.expected_mrr()
    assert first.expected_customer_mrr() == again.expected_customer_mrr()
    assert first.history_limits() == again.history_limits()
    assert first.events() != other.events()


@pytest.mark.parametrize("months", [12, 18])
def test_the_history_covers_the_months_ending_now(months: int) -> None:
    found = generate_account(customers=60, seed=1, now=NOW, months=months)
    year, month = divmod(NOW.year * 12 + NOW.month - 1 - months, 12)
    first = NOW.date().replace(year=year, month=month + 1)
    created = [event["created"] for event in found.events()]
    assert max(created) <= int(NOW.timestamp())
    assert datetime.fromtimestamp(min(created), UTC).date() < first
    for series in found.expected_mrr().values():
        assert min(series) == first.isoformat() and max(series) == NOW.date().isoformat()
        assert len(series) == (NOW.date() - first).days + 1


def test_the_default_history_is_24_months() -> None:
    found = generate_account(customers=5, seed=2, now=NOW)
    assert min(found.expected_mrr()["usd"]) == NOW.date().replace(year=NOW.year - 2).isoformat()


# --- Stripe's current shape --------------------------------------------------------------------

ID_SHAPES = {
    "customer": r"cus_[A-Za-z0-9]{14}",
    "subscription": r"sub_1[A-Za-z0-9]{23}",
    "subscription_item": r"si_[A-Za-z0-9]{14}",
    "price": r"price_1[A-Za-z0-9]{23}",
    "product": r"prod_[A-Za-z0-9]{14}",
    "discount": r"di_1[A-Za-z0-9]{23}",
    "event": r"evt_1[A-Za-z0-9]{23}",
    "invoice": r"in_1[A-Za-z0-9]{23}",
    "line_item": r"il_1[A-Za-z0-9]{23}",
    "invoiceitem": r"ii_1[A-Za-z0-9]{23}",
}


def test_every_event_is_a_valid_stripe_event_with_a_unique_id() -> None:
    for event in events():
        assert validate_event(json.loads(json.dumps(event))) == event
        assert event["type"] in USED_EVENT_TYPES | BILLING_EVENTS
        assert event["api_version"] == API_VERSION
        assert event["livemode"] is False
        assert re.fullmatch(ID_SHAPES["event"], event["id"])
        assert ("previous_attributes" in event["data"]) == event["type"].endswith(".updated")
    assert len({event["id"] for event in events()}) == len(events())


def test_events_come_catalog_first_then_in_the_order_of_created() -> None:
    kinds = [event["type"].split(".")[0] for event in events()]
    catalog = len(account().catalog_events)
    assert set(kinds[:catalog]) == {"product", "price", "coupon"}
    history = [event["created"] for event in events()[catalog:]]
    assert history == sorted(history)


def test_subscriptions_have_stripe_ids_and_the_current_api_shape() -> None:
    subscriptions = [e["data"]["object"] for e in events() if e["type"].startswith("customer.subscription.")]
    for subscription in [*subscriptions, *objects()["subscriptions"]]:
        assert re.fullmatch(ID_SHAPES["subscription"], subscription["id"])
        assert re.fullmatch(ID_SHAPES["customer"], subscription["customer"])
        assert "current_period_start" not in subscription  # moved onto the items
        assert "discount" not in subscription  # only `discounts`, as ids
        assert all(re.fullmatch(ID_SHAPES["discount"], d) for d in subscription["discounts"])
        assert subscription["latest_invoice"] is None or re.fullmatch(
            ID_SHAPES["invoice"], subscription["latest_invoice"]
        )
        for item in subscription["items"]["data"]:
            assert re.fullmatch(ID_SHAPES["subscription_item"], item["id"])
            assert re.fullmatch(ID_SHAPES["price"], item["price"]["id"])
            assert re.fullmatch(ID_SHAPES["product"], item["price"]["product"])
            assert item["current_period_start"] < item["current_period_end"]
            assert item["price"]["recurring"]["usage_type"] == "licensed"
            assert all(re.fullmatch(ID_SHAPES["discount"], d) for d in item["discounts"])


def test_invoices_have_the_current_api_shape_that_history_reads() -> None:
    for invoice in objects()["invoices"]:
        assert re.fullmatch(ID_SHAPES["invoice"], invoice["id"])
        assert invoice["object"] == "invoice" and "subscription" not in invoice
        assert invoice["parent"]["type"] == "subscription_details"
        subscription = invoice["parent"]["subscription_details"]["subscription"]
        assert invoice["billing_reason"] in ("subscription_create", "subscription_cycle", "subscription_update")
        assert invoice["lines"]["has_more"] is False and invoice["lines"]["data"]
        assert invoice["subtotal"] == sum(line["amount"] for line in invoice["lines"]["data"])
        discounts = sum(d["amount"] for d in invoice["total_discount_amounts"])
        assert invoice["total"] == invoice["subtotal"] - discounts
        for line in invoice["lines"]["data"]:
            assert re.fullmatch(ID_SHAPES["line_item"], line["id"]) and line["invoice"] == invoice["id"]
            details = line["parent"]["subscription_item_details"]
            assert line["parent"]["type"] == "subscription_item_details"
            assert details["subscription"] == subscription
            assert re.fullmatch(ID_SHAPES["subscription_item"], details["subscription_item"])
            assert isinstance(details["proration"], bool)
            assert (details["invoice_item"] is not None) <= details["proration"]
            assert re.fullmatch(ID_SHAPES["price"], line["pricing"]["price_details"]["price"])
            assert line["period"]["start"] < line["period"]["end"]
            assert sum(d["amount"] for d in line["discount_amounts"]) <= max(line["amount"], 0)


def test_discount_events_carry_the_whole_discount_naming_a_created_coupon() -> None:
    coupons = {e["data"]["object"]["id"] for e in events() if e["type"] == "coupon.created"}
    discounts = [e for e in events() if e["type"].startswith("customer.discount.")]
    assert discounts
    for event in discounts:
        discount = event["data"]["object"]
        assert discount["object"] == "discount"
        assert discount["source"]["type"] == "coupon"
        assert discount["source"]["coupon"] in coupons
        assert discount["start"] <= event["created"]
    for event in events():
        if event["type"] == "coupon.created":
            assert "applies_to" not in event["data"]["object"]  # includable: only when expanded


def test_a_discount_is_stored_before_the_subscription_version_naming_it() -> None:
    seen: set[str] = set()
    for event in events():
        if event["type"] == "customer.discount.created":
            seen.add(event["data"]["object"]["id"])
        if event["type"].startswith("customer.subscription."):
            subscription = event["data"]["object"]
            named = {*subscription["discounts"], *(d for i in subscription["items"]["data"] for d in i["discounts"])}
            assert named <= seen


def test_no_event_at_midnight_and_same_second_updates_chain_through_previous_attributes() -> None:
    assert all(event["created"] % 86_400 for event in events())
    updates: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for event in events():
        if event["type"] == "customer.subscription.updated":
            updates[(event["data"]["object"]["id"], event["created"])].append(event)
    tied = [group for group in updates.values() if len(group) > 1]
    assert tied
    for group in tied:  # each later version says exactly what the one before it held
        for earlier, later in itertools.pairwise(group):
            for key, value in later["data"]["previous_attributes"].items():
                assert earlier["data"]["object"].get(key) == value


def test_the_final_objects_leave_out_deleted_coupons_that_discounts_still_name() -> None:
    found = objects()
    deleted = {coupon["id"] for coupon in account().deleted_coupons()}
    assert deleted
    assert not deleted & {coupon["id"] for coupon in found["coupons"]}
    named = {discount["source"]["coupon"] for discount in found["discounts"]}
    assert deleted & named
    live_discounts = {d for s in found["subscriptions"] if s["status"] != "canceled" for d in s["discounts"]}
    by_id = {d["id"]: d for d in found["discounts"]}
    assert any(by_id[d]["source"]["coupon"] in deleted for d in live_discounts)
    assert {d for s in found["subscriptions"] for d in s["discounts"]} <= set(by_id)
    restricted = [coupon for coupon in found["coupons"] if "applies_to" in coupon]
    assert restricted and all(coupon["applies_to"]["products"] for coupon in restricted)


# --- The 2020 shape ---------------------------------------------------------------------------


@cache
def account_2020() -> SyntheticAccount:
    return generate_account(customers=150, seed=3, now=NOW, months=12, api_version=API_VERSION_2020)


def test_events_can_come_in_the_2020_shape() -> None:
    found = account_2020()
    kinds: Counter[str] = Counter()
    for event in found.events():
        assert event["api_version"] == API_VERSION_2020
        obj = event["data"]["object"]
        if event["type"].startswith("customer.subscription."):
            kinds["subscription"] += 1
            assert "currency" not in obj and "discounts" not in obj and "billing_mode" not in obj
            items = obj["items"]["data"]
            assert obj["current_period_start"] < obj["current_period_end"]
            assert obj["plan"] == (items[0]["plan"] if len(items) == 1 else None)
            assert obj["quantity"] == (items[0]["quantity"] if len(items) == 1 else None)
            for item in items:
                assert item["plan"]["id"] == item["price"]["id"] and "current_period_start" not in item
            if obj["discount"] is not None:
                kinds["discount"] += 1
                assert obj["discount"]["coupon"]["object"] == "coupon" and "source" not in obj["discount"]
        elif event["type"].startswith("customer.discount."):
            assert obj["coupon"]["object"] == "coupon"
        elif event["type"].startswith("invoice."):
            kinds["invoice"] += 1
            assert obj["subscription"] and "parent" not in obj
            for line in obj["lines"]["data"]:
                assert line["type"] == ("invoiceitem" if line["proration"] else "subscription")
                assert line["subscription"] == obj["subscription"] and line["subscription_item"].startswith("si_")
                assert line["price"]["id"] == line["plan"]["id"]
                kinds["proration line"] += line["proration"]
            kinds["invoice discount"] += obj["discount"] is not None
    assert min(kinds[k] for k in ("subscription", "discount", "invoice", "proration line", "invoice discount")) > 0
    assert all(
        "discounts" in s and "parent" in i
        for s, i in zip(found.objects()["subscriptions"], found.objects()["invoices"], strict=False)
    )


def test_a_2020_account_keeps_to_what_a_2020_subscription_could_hold() -> None:
    subscriptions = account_2020().objects()["subscriptions"]  # served in the current shape all the same
    assert subscriptions and all("discounts" in s and "discount" not in s for s in subscriptions)
    for subscription in subscriptions:
        assert len(subscription["discounts"]) <= 1  # one singular `discount`
        assert all(item["discounts"] == [] for item in subscription["items"]["data"])  # none on items
        assert subscription["billing_mode"]["type"] == "classic"  # one period: no mixed intervals


# --- Every behaviour, read from the events and objects -------------------------------------------


def _monthly(items: dict[str, Any]) -> Fraction:
    return sum(
        (
            Fraction(i["price"]["unit_amount"] * i["quantity"])
            * FACTORS[i["price"]["recurring"]["interval"]]
            / i["price"]["recurring"]["interval_count"]
            for i in items["data"]
        ),
        Fraction(0),
    )


def _cycle(price: dict[str, Any]) -> str:
    recurring = price["recurring"]
    names = {("month", 1): "monthly", ("year", 1): "yearly", ("week", 1): "weekly", ("week", 2): "weekly"}
    return names.get((recurring["interval"], recurring["interval_count"]), "multi-month")


def scenarios(found: SyntheticAccount) -> Counter[str]:
    """What happened in the account, read from its events and objects alone."""
    history, final = found.events(), found.objects()
    seen: Counter[str] = Counter()
    coupons = {c["id"]: c for c in [*final["coupons"], *found.deleted_coupons()]}
    prices = {p["id"]: p for p in final["prices"]}
    discounts = {d["id"]: d for d in final["discounts"]}
    deleted_at = {e["data"]["object"]["id"]: e["created"] for e in history if e["type"] == "coupon.deleted"}
    ended: set[str] = set()
    live: dict[str, set[str]] = {}
    last: dict[str, dict[str, Any]] = {}
    converted: dict[str, int] = {}
    stamps: dict[tuple[str, int], Counter[str]] = defaultdict(Counter)
    for event in history:
        obj, kind = event["data"]["object"], event["type"]
        previous = event["data"].get("previous_attributes") or {}
        customer = obj.get("customer")
        if isinstance(customer, str):
            stamps[(customer, event["created"])][kind.rsplit(".", 1)[0]] += 1
        if kind == "customer.discount.created":
            coupon = coupons[obj["source"]["coupon"]]
            seen[f"coupon {coupon['duration']}"] += 1
            seen["coupon percent_off" if coupon["percent_off"] is not None else "coupon amount_off"] += 1
            seen["coupon on an item" if obj["subscription_item"] else "coupon on the subscription"] += 1
            seen["coupon restricted to a product"] += "applies_to" in coupon
        elif kind == "customer.discount.deleted":
            ending = obj["end"] is not None and obj["end"] == event["created"]
            seen["repeating discount ended" if ending else "coupon removed by hand"] += 1
        elif kind == "coupon.deleted":
            seen["coupon deleted"] += 1
        elif kind == "invoiceitem.created":
            seen["proration: create_prorations (pending items)"] += 1
        elif kind == "invoice.created":
            seen[f"invoice {obj['billing_reason']}"] += 1
            lines = obj["lines"]["data"]
            prorations = [line for line in lines if line["parent"]["subscription_item_details"]["proration"]]
            if obj["billing_reason"] == "subscription_create" and obj["total"] == 0 and lines[0]["amount"] == 0:
                seen["trial invoice"] += 1
            if obj["billing_reason"] == "subscription_update" and {p["amount"] > 0 for p in prorations} == {
                True,
                False,
            }:
                seen["proration: always_invoice (pair on an update invoice)"] += 1
            if obj["billing_reason"] == "subscription_cycle" and any(
                p["parent"]["subscription_item_details"]["invoice_item"] for p in prorations
            ):
                seen["pending prorations billed on a renewal"] += 1
            for line in prorations:
                seen[f"prorated change on a {_cycle(prices[line['pricing']['price_details']['price']])} price"] += 1
            if obj["discounts"] or any(line["discount_amounts"] for line in lines):
                seen["invoice with discounts"] += 1
        elif kind == "invoice.payment_failed":
            seen["invoice payment failed"] += 1
        elif kind == "invoice.voided":
            seen["invoice voided"] += 1
        elif kind == "invoice.marked_uncollectible":
            seen["invoice marked uncollectible"] += 1
        elif kind == "customer.subscription.paused":
            seen["paused at the end of a trial"] += 1
        elif kind == "customer.subscription.resumed":
            seen["resumed after a pause"] += 1
        elif kind == "customer.subscription.created":
            seen[f"currency {obj['currency']}"] += 1
            seen.update(f"{_cycle(item['price'])} price" for item in obj["items"]["data"])
            intervals = {item["price"]["recurring"]["interval"] for item in obj["items"]["data"]}
            seen["mixed intervals (monthly beside yearly)"] += intervals == {"month", "year"}
            seen["quantity above 1"] += any(item["quantity"] > 1 for item in obj["items"]["data"])
            seen["trial"] += obj["status"] == "trialing"
            owner = obj["customer"]
            seen["second subscription"] += bool(live.get(owner))
            seen["reactivation (a new subscription after a churn)"] += owner in ended and not live.get(owner)
            live.setdefault(owner, set()).add(obj["id"])
        elif kind == "customer.subscription.deleted":
            live[obj["customer"]].discard(obj["id"])
            ended.add(obj["customer"])
            before = last[obj["id"]]
            assert obj["status"] == "canceled" and obj["ended_at"] == event["created"]
            if before["status"] == "trialing":
                seen["trial lapsed"] += 1
            elif before["status"] == "paused":
                seen["canceled while paused"] += 1
            elif obj["cancel_at_period_end"]:
                seen["canceled at period end"] += 1
            elif obj["cancel_at"] is not None:
                seen["canceled at a date (cancel_at)"] += 1
            elif before["status"] == "past_due":
                seen["past_due, then canceled"] += 1
            elif before["status"] == "unpaid":
                seen["unpaid, then canceled"] += 1
            else:
                seen["canceled now"] += 1
        elif kind == "customer.subscription.updated":
            status, before = obj["status"], previous.get("status")
            seen["trial converted"] += before == "trialing" and status == "active"
            if before == "trialing" and status == "active":
                converted[obj["id"]] = event["created"]
            seen["trial converted into a failed payment"] += (
                status == "past_due" and converted.get(obj["id"]) == event["created"]
            )
            seen["trial extended"] += status == "trialing" and "trial_end" in previous
            seen[f"incomplete, then {status}"] += before == "incomplete"
            seen["past_due"] += before == "active" and status == "past_due"
            seen["past_due recovered"] += before == "past_due" and status == "active"
            seen["past_due, then unpaid"] += before == "past_due" and status == "unpaid"
            seen["unpaid, then paid"] += before == "unpaid" and status == "active"
            seen["pause_collection set"] += "pause_collection" in previous and obj["pause_collection"] is not None
            seen["pause_collection cleared"] += "pause_collection" in previous and obj["pause_collection"] is None
            if "cancel_at" in previous:
                scheduled = "cancellation at period end" if obj["cancel_at_period_end"] else "cancel_at"
                if obj["cancel_at"] is None:
                    scheduled = "cancellation at period end" if previous.get("cancel_at_period_end") else "cancel_at"
                seen[f"{scheduled} {'set' if obj['cancel_at'] is not None else 'undone'}"] += 1
            seen["coupon added later"] += bool(previous.get("discounts") == [] and obj["discounts"])
            if "items" in previous and before is None:
                old, new = previous["items"], obj["items"]
                prices_before = [i["price"]["id"] for i in old["data"]]
                prices_after = [i["price"]["id"] for i in new["data"]]
                if prices_before != prices_after or [i["quantity"] for i in old["data"]] != [
                    i["quantity"] for i in new["data"]
                ]:
                    if prices_before == prices_after:
                        seen["quantity change"] += 1
                    if {_cycle(prices[p]) for p in prices_before} != {_cycle(prices[p]) for p in prices_after}:
                        seen["billing interval change"] += 1
                    seen["upgrade" if _monthly(new) > _monthly(old) else "downgrade"] += 1
        if kind.startswith("customer.subscription."):
            named = [*obj["discounts"], *(d for item in obj["items"]["data"] for d in item["discounts"])]
            coupon_ids = [discounts[d]["source"]["coupon"] for d in named]
            if obj["status"] in ("active", "past_due") and any(
                deleted_at.get(coupon, event["created"]) < event["created"] for coupon in coupon_ids
            ):
                seen["discount of a deleted coupon still applied"] += 1
            last[obj["id"]] = obj
    for kinds in stamps.values():
        seen["subscription update and invoice events in one second"] += bool(
            kinds["customer.subscription"] and kinds["invoice"]
        )
    seen["two updates of one subscription in one second"] += sum(
        count > 1
        for count in Counter(
            (e["data"]["object"]["id"], e["created"]) for e in history if e["type"] == "customer.subscription.updated"
        ).values()
    )
    for reasons in found.history_limits().values():
        for reason in reasons:
            for marker, name in (
                ("proration_behavior=none", "proration: none (a history limit)"),
                ("removed by hand", "limit: coupon removed by hand"),
                ("collection paused", "limit: collection paused"),
                ("became unpaid", "limit: became unpaid"),
            ):
                seen[name] += marker in reason
    return +seen


BEHAVIOURS = (
    # 1. invoices
    "invoice subscription_create",
    "invoice subscription_cycle",
    "invoice subscription_update",
    "trial invoice",
    "invoice with discounts",
    "invoice payment failed",
    "invoice voided",
    "invoice marked uncollectible",
    # 3. changes and prorations
    "upgrade",
    "downgrade",
    "quantity change",
    "billing interval change",
    "prorated change on a monthly price",
    "prorated change on a yearly price",
    "prorated change on a weekly price",
    "prorated change on a multi-month price",
    "proration: create_prorations (pending items)",
    "pending prorations billed on a renewal",
    "proration: always_invoice (pair on an update invoice)",
    "proration: none (a history limit)",
    # 4. intervals
    "monthly price",
    "yearly price",
    "weekly price",
    "multi-month price",
    "mixed intervals (monthly beside yearly)",
    "quantity above 1",
    # 5. coupons
    "coupon forever",
    "coupon repeating",
    "coupon once",
    "coupon percent_off",
    "coupon amount_off",
    "coupon on an item",
    "coupon on the subscription",
    "coupon restricted to a product",
    "coupon added later",
    "coupon removed by hand",
    "limit: coupon removed by hand",
    "repeating discount ended",
    "coupon deleted",
    "discount of a deleted coupon still applied",
    # 6. lives
    "trial",
    "trial converted",
    "trial lapsed",
    "trial extended",
    "trial converted into a failed payment",
    "paused at the end of a trial",
    "incomplete, then active",
    "incomplete, then incomplete_expired",
    "past_due",
    "past_due recovered",
    "past_due, then unpaid",
    "limit: became unpaid",
    "past_due, then canceled",
    "pause_collection set",
    "pause_collection cleared",
    "limit: collection paused",
    "cancellation at period end set",
    "cancellation at period end undone",
    "canceled at period end",
    "cancel_at set",
    "cancel_at undone",
    "canceled at a date (cancel_at)",
    "canceled now",
    "reactivation (a new subscription after a churn)",
    "second subscription",
    # 7. one second
    "subscription update and invoice events in one second",
    "two updates of one subscription in one second",
    # 8. currencies
    "currency usd",
    "currency eur",
    "currency gbp",
)


def test_every_behaviour_appears_in_a_300_customer_account_at_default_rates() -> None:
    found = scenarios(account())
    assert [name for name in BEHAVIOURS if not found[name]] == []
    assert sum(1 for e in events() if e["type"] == "customer.created") == 300


# --- The truth ---------------------------------------------------------------------------------


def test_the_customers_truth_adds_up_to_the_currency_truth_every_day() -> None:
    found = account()
    per_customer = found.expected_customer_mrr()
    assert set(per_customer) == {c["id"] for c in objects()["customers"]}
    expected = found.expected_mrr()
    totals: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    for points in per_customer.values():
        assert points == sorted(points)
        current: dict[str, int] = {}
        for day, currency, mrr in points:
            assert mrr >= 0 and mrr != current.get(currency, 0)  # a change point changes something
            totals[currency][day] += mrr - current.get(currency, 0)
            current[currency] = mrr
    assert set(expected) == {"usd", "eur", "gbp"}
    for currency, series in expected.items():
        running = 0
        for day, mrr in series.items():
            running += totals[currency].get(date.fromisoformat(day), 0)
            assert running == mrr, (currency, day)


def _truth_on(points: list[tuple[date, str, int]], day: date, currency: str) -> int:
    found = 0
    for at, point_currency, mrr in points:
        if at > day:
            break
        if point_currency == currency:
            found = mrr
    return found


def test_regular_invoice_lines_bill_the_price_and_match_the_truth_when_their_period_starts() -> None:
    found = account()
    final = objects()
    prices = {p["id"]: p for p in final["prices"]}
    coupons = {c["id"]: c for c in [*final["coupons"], *found.deleted_coupons()]}
    coupon_of = {d["id"]: coupons[d["source"]["coupon"]] for d in final["discounts"]}
    subscriptions = {s["id"]: s for s in final["subscriptions"]}
    owned = Counter(s["customer"] for s in final["subscriptions"])
    truth = found.expected_customer_mrr()
    days_with_events: dict[tuple[str, date], list[int]] = defaultdict(list)
    for event in events():
        customer = event["data"]["object"].get("customer")
        if isinstance(customer, str) and not event["type"].startswith("invoice"):
            days_with_events[(customer, datetime.fromtimestamp(event["created"], UTC).date())].append(event["created"])
    compared = 0
    for invoice in final["invoices"]:
        lines = [
            line for line in invoice["lines"]["data"] if not line["parent"]["subscription_item_details"]["proration"]
        ]
        for line in lines:
            price = prices[line["pricing"]["price_details"]["price"]]
            assert line["amount"] == price["unit_amount"] * line["quantity"] or line["description"].startswith("Trial")
            assert line["amount"] - sum(d["amount"] for d in line["discount_amounts"]) >= 0
        subscription = subscriptions[invoice["parent"]["subscription_details"]["subscription"]]
        customer = invoice["customer"]
        day = datetime.fromtimestamp(invoice["created"], UTC).date()
        if (
            invoice["billing_reason"] != "subscription_cycle"
            or invoice["status"] != "paid"
            or invoice["status_transitions"]["paid_at"] - invoice["created"] > 2 * 3600
            or owned[customer] != 1
            or subscription["billing_mode"]["type"] != "classic"
            or any(at > invoice["created"] for at in days_with_events[(customer, day)])
            or any(coupon_of[d["discount"]]["duration"] == "once" for d in invoice["total_discount_amounts"])
        ):  # a once-coupon's invoice is billed less than the MRR, which ignores it
            continue
        assert {line["period"]["start"] for line in lines} == {invoice["created"]}
        monthly, tolerance = Fraction(0), Fraction(1, 2)
        for line in lines:
            recurring = prices[line["pricing"]["price_details"]["price"]]["recurring"]
            factor = FACTORS[recurring["interval"]] / recurring["interval_count"]
            monthly += (line["amount"] - sum(d["amount"] for d in line["discount_amounts"])) * factor
            tolerance += len(line["discount_amounts"]) * factor / 2
        assert abs(_truth_on(truth[customer], day, invoice["currency"]) - monthly) <= tolerance, invoice["id"]
        compared += 1
    assert compared > 200


def test_proration_pairs_date_the_change_with_opposite_signs() -> None:
    final = objects()
    updates = {
        (e["data"]["object"]["id"], e["created"]) for e in events() if e["type"] == "customer.subscription.updated"
    }
    prorations: list[tuple[str, str, int, int]] = []  # subscription, item, start, amount
    for invoice in final["invoices"]:
        for line in invoice["lines"]["data"]:
            details = line["parent"]["subscription_item_details"]
            if details["proration"]:
                prorations.append(
                    (details["subscription"], details["subscription_item"], line["period"]["start"], line["amount"])
                )
    for item in final["invoiceitems"]:
        if item["invoice"] is None:
            details = item["parent"]["subscription_details"]
            prorations.append(
                (details["subscription"], details["subscription_item"], item["period"]["start"], item["amount"])
            )
    changes: dict[tuple[str, str, int], list[int]] = defaultdict(list)
    for subscription, item, start, amount in prorations:
        assert (subscription, start) in updates  # the change instant: an update of that second
        changes[(subscription, item, start)].append(amount)
    pairs = [amounts for amounts in changes.values() if len(amounts) == 2]
    assert len(pairs) > 50
    for amounts in pairs:
        assert min(amounts) < 0 < max(amounts)


def test_history_limits_name_customers_with_the_reason() -> None:
    limits = account().history_limits()
    customers = {c["id"] for c in objects()["customers"]}
    assert limits and set(limits) <= customers
    for reasons in limits.values():
        assert reasons and all(re.match(r"sub_1\w{23}: ", reason) for reason in reasons)


def test_an_all_invoiced_account_has_no_history_limit_and_still_every_kind_of_record() -> None:
    """What the replay's backfill floors are measured on: every change shown by an invoice or a proration."""
    found = generate_account(customers=300, seed=0, now=NOW, months=12, behaviour=Behaviour.all_invoiced())
    assert found.history_limits() == {}
    items = found.objects()["invoiceitems"]
    assert any(item["invoice"] is None for item in items), "prorations still pending at now"
    assert any(item["invoice"] is not None for item in items), "prorations billed since"
    assert found.deleted_coupons(), "coupons deleted while applied"


# --- The simulation's own arithmetic, against docs/mrr-rules.md --------------------------------


def _price(amount: int, interval: str, key: str = "starter", count: int = 1) -> Price:
    product = next(p for p in PRODUCTS if p.key == key)
    return Price(f"price_{key}_{interval}", product, f"prod_{key}", interval, "usd", amount, 0, count)


def _subscription(
    amount: int,
    interval: str,
    quantity: int = 1,
    status: str = "active",
    coupon: CouponTerms | None = None,
    *,
    count: int = 1,
) -> Subscription:
    customer = Customer("cus_x", "X", "x@example.com", "usd", 0)
    subscription = Subscription("sub_x", customer, 0, status, [Item("si_x", _price(amount, interval), quantity, 0)], 0)
    if coupon is not None:
        subscription.discounts.append(_discount(coupon))
    subscription.items[0].price.interval_count = count
    return subscription


def _discount(terms: CouponTerms, item: str | None = None) -> Discount:
    return Discount(f"di_{terms.code}", Coupon(terms.code, terms, 0), "cus_x", "sub_x", 0, None, item)


def _gold_and_silver(*coupons: tuple[CouponTerms, str | None]) -> Subscription:
    """4 × Gold yearly at $500 (as Business) beside 2 × Silver monthly at $30 (as Team), in one subscription."""
    customer = Customer("cus_x", "X", "x@example.com", "usd", 0)
    gold = Item("si_gold", _price(50000, "year", "business"), 4, 0)
    silver = Item("si_silver", _price(3000, "month", "team"), 2, 0)
    subscription = Subscription("sub_x", customer, 0, "active", [gold, silver], 0, billing_mode="flexible")
    holders = {"si_gold": gold.discounts, "si_silver": silver.discounts, None: subscription.discounts}
    for terms, item in coupons:
        holders[item].append(_discount(terms, item))
    return subscription


FOREVER_50 = CouponTerms("F", "", "forever", percent_off=50)
TEAM_ONLY_50 = CouponTerms("T", "", "forever", percent_off=50, applies_to=("team",))
FIVE_OFF = CouponTerms("A", "", "forever", amount_off=500, currency="usd")
FIVE_OFF_EUR = CouponTerms("E", "", "forever", amount_off=500, currency="eur")


@pytest.mark.parametrize(
    ("subscription", "mrr"),
    [
        pytest.param(_subscription(10000, "month"), 10000, id="§3 month: as is"),
        pytest.param(_subscription(60000, "year"), 5000, id="§3 year: ÷ 12 ($600/year → $50)"),
        pytest.param(_subscription(1000, "week"), 4348, id="§3 week: × 4.348125, half-up"),
        pytest.param(_subscription(1000, "week", count=2), 2174, id="example 8: $10 every 2 weeks → $21.74"),
        pytest.param(_subscription(5700, "month", count=3), 1900, id="§3 interval_count: ÷ 3 ($57/quarter → $19)"),
        pytest.param(_subscription(1200, "month", quantity=7), 8400, id="§2 unit amount × quantity"),
        pytest.param(_subscription(1000, "month", coupon=CouponTerms("F", "", "forever", percent_off=50)), 500,
                     id="example 5: $10/month, 50% forever → $5"),
        pytest.param(_subscription(12000, "year", coupon=CouponTerms("F", "", "forever", percent_off=10)), 900,
                     id="example 5: $120/year, 10% forever → $9"),
        pytest.param(_subscription(1000, "month", coupon=CouponTerms("R", "", "repeating", percent_off=10)), 900,
                     id="example 6: 10% repeating, while it lasts → $9"),
        pytest.param(_subscription(120000, "year", coupon=CouponTerms("O", "", "once", percent_off=20)), 10000,
                     id="example 7: once ignored (default) → $100"),
        pytest.param(_subscription(120000, "year", coupon=CouponTerms("A", "", "forever", amount_off=12000,
                                                                      currency="usd")), 9000,
                     id="§4 amount_off normalised like the price"),
        pytest.param(_subscription(900, "week", coupon=CouponTerms("A", "", "forever", amount_off=1000,
                                                                   currency="usd")), 0,
                     id="§4 never below 0"),
        pytest.param(_subscription(1000, "month", coupon=FIVE_OFF_EUR), 1000,
                     id="§4 an amount off in another currency does not apply"),
        pytest.param(_gold_and_silver(), 22667, id="§3 example 4: yearly Gold beside monthly Silver, rounded once"),
        pytest.param(_gold_and_silver((FOREVER_50, "si_silver")), 19667, id="§4 an item's discount: its item only"),
        pytest.param(_gold_and_silver((TEAM_ONLY_50, None)), 19667, id="§4 applies_to honoured"),
        pytest.param(_gold_and_silver((FIVE_OFF, None)), 22167,
                     id="§4 a subscription's amount off: the shortest interval ($5 a month)"),
        pytest.param(_gold_and_silver((FIVE_OFF, "si_gold")), 22625,
                     id="§4 an item's amount off: its own interval ($5 a year)"),
        pytest.param(_gold_and_silver((FOREVER_50, "si_silver"), (FIVE_OFF, None)), 19167,
                     id="§4 item discounts before the subscription's"),
        pytest.param(_subscription(1000, "month", status="trialing"), 0, id="§2 trialing: 0"),
        pytest.param(_subscription(1000, "month", status="past_due"), 1000, id="§2 past_due: counted"),
        pytest.param(_subscription(1000, "month", status="unpaid"), 0, id="§2 unpaid: 0"),
        pytest.param(_subscription(1000, "month", status="paused"), 0, id="§2 paused: 0"),
        pytest.param(_subscription(1000, "month", status="canceled"), 0, id="§2 canceled: 0"),
        pytest.param(_subscription(1000, "month", status="incomplete"), 0, id="§2 incomplete: 0"),
    ],
)  # fmt: skip
def test_the_generator_values_a_subscription_as_the_rules_say(subscription: Subscription, mrr: int) -> None:
    assert _worth(subscription) == mrr


def test_paused_collection_counts_nothing() -> None:
    subscription = _subscription(1000, "month")
    subscription.pause_collection = {"behavior": "void", "resumes_at": None}
    assert _worth(subscription) == 0


# --- Export, signature, live activity ---------------------------------------------------------


def test_export_writes_events_objects_and_expected_mrr(tmp_path: Path) -> None:
    found = generate_account(customers=30, seed=3, now=NOW, months=12)
    written = export(found, tmp_path / "account")
    assert [path.name for path in written] == list(EXPORT_FILES)
    exported = json.loads((tmp_path / "account" / "events.json").read_text())
    final = json.loads((tmp_path / "account" / "objects.json").read_text())
    expected = json.loads((tmp_path / "account" / "expected_mrr.json").read_text())
    assert exported == found.events()
    assert len(final["customers"]) == 30
    assert {s["id"] for s in final["subscriptions"]} == {
        e["data"]["object"]["id"] for e in exported if e["type"] == "customer.subscription.created"
    }
    assert {c["id"] for c in final["coupons"]} >= {"LAUNCH50", "FRIENDS20", "WELCOME25"}
    assert {p["currency"] for p in final["prices"]} == {"usd", "eur", "gbp"}
    assert set(expected) == {"usd", "eur", "gbp"}
    assert all(isinstance(mrr, int) for series in expected.values() for mrr in series.values())


def test_subledger_demo_export_writes_the_files_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["demo", "--export", str(tmp_path / "out"), "--customers", "10", "--seed", "4"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(EXPORT_FILES)
    assert "events.json" in capsys.readouterr().out


def test_the_demo_flavour_keeps_to_what_webhooks_show() -> None:
    found = generate_account(customers=60, seed=4, now=NOW, behaviour=Behaviour.demo())
    kinds = Counter(event["type"] for event in found.events())
    assert not any(kind.startswith("invoice") for kind in kinds)
    assert set(found.expected_mrr()) == {"usd", "eur"}
    assert not any("applies_to" in coupon for coupon in found.objects()["coupons"])
    assert found.objects()["invoices"]  # billed all the same


def test_sign_is_the_stripe_scheme_the_receiver_checks() -> None:
    import stripe

    header = sign(b'{"id": "evt_1"}', "whsec_demo", 1_700_000_000)
    assert header.startswith("t=1700000000,v1=")
    stripe.WebhookSignature.verify_header('{"id": "evt_1"}', header, "whsec_demo", tolerance=None)


def test_live_activity_adds_valid_events_stamped_now() -> None:
    found = generate_account(customers=40, seed=5, now=NOW, months=12)
    history_ids = {event["id"] for event in found.events()}
    at = int(NOW.timestamp()) + 5
    kinds: Counter[str] = Counter()
    for step in range(40):
        activity = found.live_activity(at + 3 * step)
        assert activity.description
        for event in activity.events:
            validate_event(event)
            assert event["created"] == at + 3 * step and event["id"] not in history_ids
            kinds[event["type"]] += 1
    assert kinds["customer.created"] and kinds["customer.subscription.updated"]
    assert found.events() == generate_account(customers=40, seed=5, now=NOW, months=12).events()  # history untouched


# --- The ledger agrees with the generator ------------------------------------------------------

WEBHOOK_VISIBLE = Behaviour(restricted_coupons=False)
"""Everything but restricted coupons: webhooks never carry `applies_to`, and these tests have no Stripe API."""


def ledger_mrr(db: Database, settings: Settings, found: SyntheticAccount, first: date, last: date) -> Any:
    """Store the events as the webhook does, drain them as a worker does; MRR per currency and day.

    The catalog first, as the demo delivers it: a coupon created late in the
    history would otherwise sit in a partition drained after the customers'
    that name it (partitions go oldest first).
    """
    catalog = len(found.catalog_events)
    for delivery in (found.events()[:catalog], [*found.events()[catalog:], *found.live_events]):
        with db.transaction() as session:
            for event in delivery:
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
        assert wrong == [], f"{currency}: (day, ledger, generator) differ on {len(wrong)} days: {wrong[:5]}"


def test_the_ledger_books_the_generators_mrr_on_every_day(db: Database, settings: Settings) -> None:
    # An hour in the past, so the drain's "now" is after every event, live ones included.
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    found = generate_account(customers=100, seed=11, now=now, behaviour=WEBHOOK_VISIBLE)
    for step in range(30):
        found.live_activity(int(now.timestamp()) + 60 + 7 * step)
    expected = found.expected_mrr()
    days = sorted(expected["usd"])
    booked = ledger_mrr(db, settings, found, date.fromisoformat(days[0]), date.fromisoformat(days[-1]))
    _compare(expected, booked)


def test_the_ledger_books_the_generators_mrr_from_2020_shaped_webhooks(db: Database, settings: Settings) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    found = generate_account(
        customers=150, seed=12, now=now, months=12, behaviour=WEBHOOK_VISIBLE, api_version=API_VERSION_2020
    )
    expected = found.expected_mrr()
    days = sorted(expected["usd"])
    _compare(expected, ledger_mrr(db, settings, found, date.fromisoformat(days[0]), date.fromisoformat(days[-1])))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_ledger_books_the_generators_mrr_for_default_size_accounts(
    db: Database, settings: Settings, seed: int
) -> None:
    found = generate_account(
        seed=seed, now=datetime.now(UTC) - timedelta(minutes=5), months=12, behaviour=WEBHOOK_VISIBLE
    )
    expected = found.expected_mrr()
    days = sorted(expected["usd"])
    _compare(expected, ledger_mrr(db, settings, found, date.fromisoformat(days[0]), date.fromisoformat(days[-1])))
