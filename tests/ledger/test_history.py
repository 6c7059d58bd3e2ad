"""ledger.history against docs/history.md: a subscription's past rebuilt from its invoices.

Every rule runs on both invoice shapes (current API and 2020 API).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.history import (
    HistoricalVersion,
    PriceLookup,
    _history,
    _id,
    _rate_reader,
    _Reader,
    _signature,
    invoice_fields,
    reconstruct,
)
from ledger.movements import MovementType, customer_movements
from ledger.mrr import UnresolvedStripeObject, subscription_mrr
from ledger.resolve import resolve_subscription
from ledger.settings import RuleSettings
from ledger.timeline import Snapshot, subscription_changes
from tests.ledger.invoice_payloads import (
    API_2020,
    CURRENT,
    SCENARIO_CANCELED_AT,
    SHAPES,
    CurrentShape,
    backfill_scenario,
    price_lookup,
)
from tests.ledger.subscription_payloads import ts, utc

READ_AT = utc(6, 15, 12)
"""When the current subscription is read, unless a case says otherwise."""

Outline = tuple[datetime, str, str, tuple[tuple[str, int | None], ...]]
"""(observed_at, source, status, ((price id, quantity), …)) of one version."""


def outline(versions: list[HistoricalVersion]) -> list[Outline]:
    return [
        (
            version.observed_at,
            version.source,
            version.subscription["status"],
            tuple((item["price"]["id"], item["quantity"]) for item in version.subscription["items"]["data"]),
        )
        for version in versions
    ]


@dataclass
class Case:
    subscription: dict[str, Any]
    invoices: list[dict[str, Any]]
    expected: list[Outline]
    prices: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    read_at: datetime = READ_AT
    invoice_items: list[dict[str, Any]] = field(default_factory=list)


class Plans:
    """A shape's two prices and its builders, so a case reads like its invoices."""

    def __init__(self, shape: CurrentShape) -> None:
        self.shape = shape
        self.basic = shape.price(5000, "price_basic", "prod_basic")
        self.pro = shape.price(10000, "price_pro", "prod_pro")
        self.prices = price_lookup(self.basic, self.pro)

    def renewal(
        self,
        invoice_id: str,
        month: int,
        rate: dict[str, Any],
        quantity: int = 1,
        *,
        day: int = 1,
        status: str = "paid",
        created: datetime | None = None,
        subscription_id: str = "sub_1",
    ) -> dict[str, Any]:
        start = utc(month, day, 9)
        line = self.shape.period_line(rate, quantity, start=start, subscription_id=subscription_id)
        return self.shape.invoice(
            invoice_id, line, created=created or start, status=status, subscription_id=subscription_id
        )

    def current(self, rate: dict[str, Any], quantity: int = 1, **fields: Any) -> dict[str, Any]:
        return self.shape.subscription((rate, quantity, "si_1"), start=utc(1, 1, 9), **fields)

    def case(self, subscription: dict[str, Any], invoices: list[dict[str, Any]], expected: list[Outline]) -> Case:
        return Case(subscription, invoices, expected, self.prices)


def basic_in(invoice_id: str, month: int, quantity: int = 1, status: str = "active", day: int = 1) -> Outline:
    return (utc(month, day, 9), f"invoice:{invoice_id}", status, (("price_basic", quantity),))


def current_at(at: datetime, status: str, rate_id: str = "price_basic", quantity: int = 1) -> Outline:
    return (at, "current", status, ((rate_id, quantity),))


# --- The rules, one case each ----------------------------------------------------------------


def upgrade_prorations(plans: Plans, *, invoice_items: bool = False) -> list[dict[str, Any]]:
    """The credit for basic and the debit for pro of an upgrade on 20 February, 14:00."""
    shape, mid_period, period_end = plans.shape, utc(2, 20, 14), utc(3, 1, 9)
    credit = {"start": mid_period, "end": period_end, "amount": -1552}
    debit = {"start": mid_period, "end": period_end, "amount": 3103}
    if invoice_items:
        return [
            shape.pending_item("ii_credit", plans.basic, 1, **credit),
            shape.pending_item("ii_debit", plans.pro, 1, **debit),
        ]
    return [
        shape.proration_line(plans.basic, 1, **credit, invoice_item="ii_credit"),
        shape.proration_line(plans.pro, 1, **debit, invoice_item="ii_debit"),
    ]


def pro_from(at: datetime, source: str, quantity: int = 1) -> Outline:
    return (at, source, "active", (("price_pro", quantity),))


def proration_pair_dates_the_change(plans: Plans) -> Case:
    shape = plans.shape
    at_once = shape.invoice(
        "in_upgrade", *upgrade_prorations(plans), created=utc(2, 20, 14), billing_reason="subscription_update"
    )
    march = plans.renewal("in_mar", 3, plans.pro)
    # A debit for what the item already is changes nothing.
    march["lines"]["data"].insert(
        0, shape.proration_line(plans.pro, 1, start=utc(2, 25), end=utc(3, 1, 9), amount=700, item_id="si_1")
    )
    return plans.case(
        plans.current(plans.pro),
        [plans.renewal("in_jan", 1, plans.basic), plans.renewal("in_feb", 2, plans.basic), at_once, march],
        [basic_in("in_jan", 1), pro_from(utc(2, 20, 14), "invoice:in_upgrade")],
    )


def prorations_billed_on_the_next_invoice_date_the_change(plans: Plans) -> Case:
    march = plans.renewal("in_mar", 3, plans.pro)
    march["lines"]["data"][:0] = upgrade_prorations(plans)
    return plans.case(
        plans.current(plans.pro),
        [plans.renewal("in_jan", 1, plans.basic), plans.renewal("in_feb", 2, plans.basic), march],
        [basic_in("in_jan", 1), pro_from(utc(2, 20, 14), "invoice:in_mar")],
    )


def pending_invoice_items_date_the_change(plans: Plans) -> Case:
    case = plans.case(
        plans.current(plans.pro),
        [plans.renewal("in_jan", 1, plans.basic), plans.renewal("in_feb", 2, plans.basic)],
        [basic_in("in_jan", 1), pro_from(utc(2, 20, 14), "invoiceitem:ii_debit")],
    )
    case.invoice_items = upgrade_prorations(plans, invoice_items=True)
    return case


def two_changes_in_one_instant(plans: Plans) -> Case:
    shape, at, period_end = plans.shape, utc(2, 20, 14), utc(3, 1, 9)
    both = shape.invoice(
        "in_changes",
        shape.proration_line(plans.basic, 1, start=at, end=period_end, amount=-1552),
        shape.proration_line(plans.pro, 1, start=at, end=period_end, amount=3103),
        shape.proration_line(plans.pro, 1, start=at, end=period_end, amount=-3103),
        shape.proration_line(plans.pro, 2, start=at, end=period_end, amount=6207),
        created=at,
        billing_reason="subscription_update",
    )
    return plans.case(
        plans.current(plans.pro, 2),
        [plans.renewal("in_jan", 1, plans.basic), plans.renewal("in_feb", 2, plans.basic), both],
        [basic_in("in_jan", 1), pro_from(at, "invoice:in_changes", quantity=2)],
    )


def item_removed_by_a_credit(plans: Plans) -> Case:
    shape, at = plans.shape, utc(2, 20, 14)
    invoices = []
    for month in (1, 2):
        invoice = plans.renewal(f"in_{month}", month, plans.basic)
        invoice["lines"]["data"].append(shape.period_line(plans.pro, start=utc(month, 1, 9), item_id="si_addon"))
        invoices.append(invoice)
    removal = shape.invoice(
        "in_removal",
        shape.proration_line(plans.pro, 1, start=at, end=utc(3, 1, 9), amount=-3103, item_id="si_addon"),
        created=at,
        billing_reason="subscription_update",
    )
    expected = [
        (utc(1, 1, 9), "invoice:in_1", "active", (("price_basic", 1), ("price_pro", 1))),
        (at, "invoice:in_removal", "active", (("price_basic", 1),)),
    ]
    return plans.case(plans.current(plans.basic), [*invoices, removal], expected)


def uninvoiced_change_dated_at_the_next_invoice(plans: Plans) -> Case:
    # Three seats from 10 February with proration_behavior=none: only March's invoice shows it.
    invoices = [
        plans.renewal("in_jan", 1, plans.basic),
        plans.renewal("in_feb", 2, plans.basic),
        plans.renewal("in_mar", 3, plans.basic, 3),
    ]
    return plans.case(plans.current(plans.basic, 3), invoices, [basic_in("in_jan", 1), basic_in("in_mar", 3, 3)])


def item_ends_with_its_billed_period(plans: Plans) -> Case:
    # The add-on was removed on 10 February with proration_behavior=none: its period ends on 1 March.
    shape = plans.shape
    invoices = []
    for month in (1, 2):
        invoice = plans.renewal(f"in_{month}", month, plans.basic)
        invoice["lines"]["data"].append(shape.period_line(plans.pro, start=utc(month, 1, 9), item_id="si_addon"))
        invoices.append(invoice)
    invoices.append(plans.renewal("in_3", 3, plans.basic))
    expected = [
        (utc(1, 1, 9), "invoice:in_1", "active", (("price_basic", 1), ("price_pro", 1))),
        basic_in("in_3", 3),
    ]
    return plans.case(plans.current(plans.basic), invoices, expected)


def interval_switch_invoiced_at_once(plans: Plans) -> Case:
    shape, at = plans.shape, utc(2, 10, 11)
    yearly = shape.price(50000, "price_basic_yearly", "prod_basic", interval="year")
    plans.prices = price_lookup(plans.basic, plans.pro, yearly)
    switch = shape.invoice(
        "in_switch",
        shape.proration_line(plans.basic, 1, start=at, end=utc(3, 1, 9), amount=-1121),
        shape.period_line(yearly, start=at, end=utc(2, 10, 11, year=2025)),
        created=at,
        billing_reason="subscription_update",
    )
    expected = [basic_in("in_jan", 1), (at, "invoice:in_switch", "active", (("price_basic_yearly", 1),))]
    invoices = [plans.renewal("in_jan", 1, plans.basic), plans.renewal("in_feb", 2, plans.basic), switch]
    return plans.case(plans.current(yearly), invoices, expected)


def change_in_the_second_of_an_interval_switch(plans: Plans) -> Case:
    # Switched to yearly (billed at once), then 3 seats in the same second: the seats' invoice credits
    # the yearly seat its neighbour billed, and its id sorts first.
    shape, at, year_end = plans.shape, utc(2, 10, 11), utc(2, 10, 11, year=2025)
    yearly = shape.price(50000, "price_basic_yearly", "prod_basic", interval="year")
    plans.prices = price_lookup(plans.basic, plans.pro, yearly)
    switch = shape.invoice(
        "in_switch",
        shape.proration_line(plans.basic, 1, start=at, end=utc(3, 1, 9), amount=-1121),
        shape.period_line(yearly, start=at, end=year_end),
        created=at,
        billing_reason="subscription_update",
    )
    seats = shape.invoice(
        "in_a_seats",
        shape.proration_line(yearly, 1, start=at, end=year_end, amount=-50000),
        shape.proration_line(yearly, 3, start=at, end=year_end, amount=150000),
        created=at,
        billing_reason="subscription_update",
    )
    expected = [basic_in("in_jan", 1), (at, "invoice:in_switch", "active", (("price_basic_yearly", 3),))]
    invoices = [plans.renewal("in_jan", 1, plans.basic), plans.renewal("in_feb", 2, plans.basic), switch, seats]
    return plans.case(plans.current(yearly, 3), invoices, expected)


def metered_usage_rides_with_its_invoice(plans: Plans) -> Case:
    shape = plans.shape
    usage = shape.price(2, "price_usage", "prod_usage", usage_type="metered")
    plans.prices = price_lookup(plans.basic, plans.pro, usage)

    def renewal(invoice_id: str, month: int, rate: dict[str, Any], used: int | None) -> dict[str, Any]:
        lines = [shape.period_line(rate, start=utc(month, 1, 9))]
        if used is not None:  # usage is billed in arrears, for the month before
            lines.append(shape.period_line(usage, used, start=utc(month - 1, 1, 9), item_id="si_usage"))
        return shape.invoice(invoice_id, *lines, created=utc(month, 1, 9))

    current = shape.subscription((plans.pro, 1, "si_1"), (usage, 1, "si_usage"), start=utc(1, 1, 9))
    expected = [
        basic_in("in_jan", 1),
        (utc(2, 1, 9), "invoice:in_feb", "active", (("price_basic", 1), ("price_usage", None))),
        (utc(3, 1, 9), "invoice:in_mar", "active", (("price_pro", 1), ("price_usage", None))),
    ]
    invoices = [
        renewal("in_jan", 1, plans.basic, None),
        renewal("in_feb", 2, plans.basic, 1234),
        renewal("in_mar", 3, plans.pro, 999),
    ]
    return plans.case(current, invoices, expected)


def invoice_items_ignored(plans: Plans) -> Case:
    shape = plans.shape
    january = plans.renewal("in_jan", 1, plans.basic)
    january["lines"]["data"].append(shape.invoice_item_line(plans.pro, start=utc(1, 1, 9, 5), amount=2500))
    one_off = shape.invoice(
        "in_fee", shape.invoice_item_line(plans.pro, start=utc(1, 15), amount=900), created=utc(1, 15)
    )
    return plans.case(plans.current(plans.basic), [january, one_off], [basic_in("in_jan", 1)])


def draft_and_void_ignored(plans: Plans) -> Case:
    invoices = [
        plans.renewal("in_jan", 1, plans.basic),
        plans.renewal("in_feb", 2, plans.basic, 3, status="draft"),
        plans.renewal("in_mar", 3, plans.basic, 5, status="void"),
    ]
    return plans.case(plans.current(plans.basic), invoices, [basic_in("in_jan", 1)])


def open_and_uncollectible_count(plans: Plans) -> Case:
    invoices = [
        plans.renewal("in_jan", 1, plans.basic),
        plans.renewal("in_feb", 2, plans.basic, 2, status="open"),
        plans.renewal("in_mar", 3, plans.basic, 3, status="uncollectible"),
    ]
    expected = [basic_in("in_jan", 1), basic_in("in_feb", 2, 2), basic_in("in_mar", 3, 3)]
    return plans.case(plans.current(plans.basic, 3), invoices, expected)


def other_subscriptions_ignored(plans: Plans) -> Case:
    shape = plans.shape
    january = plans.renewal("in_jan", 1, plans.basic)
    january["lines"]["data"].append(
        shape.period_line(plans.pro, 4, start=utc(1, 1, 9), item_id="si_other", subscription_id="sub_other")
    )
    theirs = plans.renewal("in_other", 2, plans.pro, 4, subscription_id="sub_other")
    # An invoice that names no subscription, carrying a line of this one.
    unnamed = shape.invoice(
        "in_unnamed",
        shape.period_line(plans.basic, 2, start=utc(3, 1, 9)),
        created=utc(3, 1, 9),
        subscription_id=None,
    )
    return plans.case(
        plans.current(plans.basic, 2),
        [january, theirs, unnamed],
        [basic_in("in_jan", 1), basic_in("in_unnamed", 3, 2)],
    )


def reissued_invoice_wins(plans: Plans) -> Case:
    invoices = [
        plans.renewal("in_jan", 1, plans.basic),
        plans.renewal("in_feb_reissued", 2, plans.basic, 3, created=utc(2, 3)),
        plans.renewal("in_feb_first", 2, plans.basic, 2),
    ]
    return plans.case(
        plans.current(plans.basic, 3), invoices, [basic_in("in_jan", 1), basic_in("in_feb_reissued", 2, 3)]
    )


def same_created_greater_id_wins(plans: Plans) -> Case:
    invoices = [plans.renewal("in_b", 1, plans.basic, 2), plans.renewal("in_a", 1, plans.basic, 7)]
    return plans.case(plans.current(plans.basic, 2), invoices, [basic_in("in_b", 1, 2)])


def identical_versions_merged(plans: Plans) -> Case:
    invoices = [plans.renewal(f"in_{month}", month, plans.basic) for month in (3, 1, 2)]
    return plans.case(plans.current(plans.basic), invoices, [basic_in("in_1", 1)])


def only_consecutive_versions_merged(plans: Plans) -> Case:
    invoices = [
        plans.renewal("in_1", 1, plans.basic),
        plans.renewal("in_2", 2, plans.basic, 2),
        plans.renewal("in_3", 3, plans.basic),
    ]
    expected = [basic_in("in_1", 1), basic_in("in_2", 2, 2), basic_in("in_3", 3)]
    return plans.case(plans.current(plans.basic), invoices, expected)


def trial_line_is_trialing(plans: Plans) -> Case:
    shape = plans.shape
    trial = shape.invoice(
        "in_trial",
        shape.period_line(plans.basic, start=utc(1, 1, 9), end=utc(1, 15, 9), amount=0),
        created=utc(1, 1, 9),
    )
    paid = shape.invoice("in_paid", shape.period_line(plans.basic, start=utc(1, 15, 9)), created=utc(1, 15, 9))
    current = plans.current(plans.basic, trial_start=utc(1, 1, 9), trial_end=utc(1, 15, 9))
    return plans.case(
        current, [paid, trial], [basic_in("in_trial", 1, status="trialing"), basic_in("in_paid", 1, day=15)]
    )


def canceled_dated_at_ended_at(plans: Plans) -> Case:
    current = plans.current(plans.basic, status="canceled", canceled_at=utc(3, 1), ended_at=utc(3, 10))
    invoices = [plans.renewal("in_jan", 1, plans.basic), plans.renewal("in_feb", 2, plans.basic)]
    return plans.case(current, invoices, [basic_in("in_jan", 1), current_at(utc(3, 10), "canceled")])


def canceled_without_ended_at_dated_at_canceled_at(plans: Plans) -> Case:
    current = plans.current(plans.basic, status="canceled", canceled_at=utc(3, 10))
    invoices = [plans.renewal("in_jan", 1, plans.basic)]
    return plans.case(current, invoices, [basic_in("in_jan", 1), current_at(utc(3, 10), "canceled")])


def canceled_after_read_at_dated_at_read_at(plans: Plans) -> Case:
    current = plans.current(plans.basic, status="canceled", canceled_at=utc(7, 1), ended_at=utc(7, 1))
    invoices = [plans.renewal("in_jan", 1, plans.basic)]
    return plans.case(current, invoices, [basic_in("in_jan", 1), current_at(READ_AT, "canceled")])


def current_after_last_invoice_version(plans: Plans) -> Case:
    # Ended before the period of the last (uncollectible) invoice: the current state still comes last.
    current = plans.current(plans.basic, 2, status="canceled", canceled_at=utc(3, 1), ended_at=utc(3, 1))
    invoices = [plans.renewal("in_jan", 1, plans.basic), plans.renewal("in_mar", 3, plans.basic, 2, day=2)]
    expected = [
        basic_in("in_jan", 1),
        basic_in("in_mar", 3, 2, day=2),
        current_at(utc(3, 2, 9, 0) + timedelta(seconds=1), "canceled", quantity=2),
    ]
    return plans.case(current, invoices, expected)


def current_equal_to_last_invoice_dropped(plans: Plans) -> Case:
    invoices = [plans.renewal("in_jan", 1, plans.basic), plans.renewal("in_feb", 2, plans.pro, 2)]
    expected = [basic_in("in_jan", 1), (utc(2, 1, 9), "invoice:in_feb", "active", (("price_pro", 2),))]
    return plans.case(plans.current(plans.pro, 2), invoices, expected)


def current_past_due_kept(plans: Plans) -> Case:
    invoices = [plans.renewal("in_jan", 1, plans.basic)]
    current = plans.current(plans.basic, status="past_due")
    return plans.case(current, invoices, [basic_in("in_jan", 1), current_at(READ_AT, "past_due")])


def current_scheduled_cancellation_kept(plans: Plans) -> Case:
    invoices = [plans.renewal("in_jan", 1, plans.basic)]
    current = plans.current(plans.basic, cancel_at_period_end=True, canceled_at=utc(6, 1))
    return plans.case(current, invoices, [basic_in("in_jan", 1), current_at(READ_AT, "active")])


def current_change_not_yet_invoiced_kept(plans: Plans) -> Case:
    invoices = [plans.renewal("in_jan", 1, plans.basic)]
    current = plans.current(plans.basic, 4)
    return plans.case(current, invoices, [basic_in("in_jan", 1), current_at(READ_AT, "active", quantity=4)])


def no_invoices_gives_current_only(plans: Plans) -> Case:
    return plans.case(plans.current(plans.basic), [], [current_at(READ_AT, "active")])


RULES = [
    pytest.param(proration_pair_dates_the_change, id="a proration pair dates the change at its period start"),
    pytest.param(
        prorations_billed_on_the_next_invoice_date_the_change,
        id="prorations billed on the next invoice date the change",
    ),
    pytest.param(pending_invoice_items_date_the_change, id="pending proration invoice items date the change"),
    pytest.param(two_changes_in_one_instant, id="two changes in one instant: a credit and a debit of one price cancel"),
    pytest.param(item_removed_by_a_credit, id="a credit alone removes its item"),
    pytest.param(uninvoiced_change_dated_at_the_next_invoice, id="an uninvoiced change is dated at the next invoice"),
    pytest.param(item_ends_with_its_billed_period, id="an item no longer on the subscription ends with its period"),
    pytest.param(interval_switch_invoiced_at_once, id="an interval switch is dated at its own invoice"),
    pytest.param(
        change_in_the_second_of_an_interval_switch,
        id="a change in the second of an interval switch: its credit cancels the period just billed",
    ),
    pytest.param(invoice_items_ignored, id="invoice items and one-off lines ignored"),
    pytest.param(metered_usage_rides_with_its_invoice, id="metered usage billed in arrears makes no period"),
    pytest.param(draft_and_void_ignored, id="draft and void invoices ignored"),
    pytest.param(open_and_uncollectible_count, id="open and uncollectible invoices give active versions"),
    pytest.param(other_subscriptions_ignored, id="lines of other subscriptions ignored"),
    pytest.param(reissued_invoice_wins, id="same period start: the later-created (re-issued) invoice wins"),
    pytest.param(same_created_greater_id_wins, id="same period start and created: the greater invoice id wins"),
    pytest.param(identical_versions_merged, id="consecutive identical versions merged, first kept"),
    pytest.param(only_consecutive_versions_merged, id="a return to an earlier state is a version"),
    pytest.param(trial_line_is_trialing, id="period starting before trial_end is trialing"),
    pytest.param(canceled_dated_at_ended_at, id="canceled current state dated at ended_at"),
    pytest.param(canceled_without_ended_at_dated_at_canceled_at, id="canceled without ended_at dated at canceled_at"),
    pytest.param(canceled_after_read_at_dated_at_read_at, id="canceled current state never dated after read_at"),
    pytest.param(current_after_last_invoice_version, id="current state comes after the last invoice version"),
    pytest.param(current_equal_to_last_invoice_dropped, id="current equal to last invoice dropped"),
    pytest.param(current_past_due_kept, id="current kept when its status differs (past_due)"),
    pytest.param(current_scheduled_cancellation_kept, id="current kept when a cancellation is scheduled"),
    pytest.param(current_change_not_yet_invoiced_kept, id="current kept when it changed since the last invoice"),
    pytest.param(no_invoices_gives_current_only, id="no invoices: the current version only"),
]


def rebuild(case: Case) -> list[HistoricalVersion]:
    return reconstruct(
        case.subscription,
        case.invoices,
        prices=case.prices.get,
        read_at=case.read_at,
        invoice_items=case.invoice_items,
    )


def assert_shortcuts_agree(current: Mapping[str, Any], invoices: list[dict[str, Any]], prices: PriceLookup) -> None:
    """The signature compared before a version is built is the built version's, and
    the invoices cut to `invoice_fields` give the same history."""
    reader = _Reader(current, _rate_reader(prices, current), {})
    for moment in _history(reader, invoices, (), end=READ_AT):
        payload = reader.payload(moment.status, moment.trial, moment.state)
        assert reader.signature(moment.status, moment.state) == _signature(payload)
    fields = [invoice_fields(invoice) for invoice in invoices]
    assert reconstruct(current, fields, prices=prices, read_at=READ_AT) == reconstruct(
        current, invoices, prices=prices, read_at=READ_AT
    )


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
@pytest.mark.parametrize("rule", RULES)
def test_rule(rule: Callable[[Plans], Case], shape: CurrentShape) -> None:
    case = rule(Plans(shape))
    versions = rebuild(case)
    assert outline(versions) == case.expected
    assert_shortcuts_agree(case.subscription, case.invoices, case.prices.get)
    instants = [version.observed_at for version in versions]
    assert instants == sorted(set(instants)), "strictly increasing"


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
def test_version_is_the_current_subscription_as_of_its_period(shape: CurrentShape) -> None:
    plans = Plans(shape)
    current = plans.current(
        plans.pro, 2, status="canceled", canceled_at=utc(3, 1), ended_at=utc(3, 10), trial_start=None
    )
    (version, _) = reconstruct(
        current, [plans.renewal("in_jan", 1, plans.basic)], prices=plans.prices.get, read_at=READ_AT
    )
    payload = version.subscription
    copied = ("id", "customer", "start_date", "trial_start", "trial_end", "livemode", "created")
    assert {key: payload.get(key) for key in copied} == {key: current.get(key) for key in copied}
    assert (payload["canceled_at"], payload["ended_at"], payload["cancel_at"]) == (None, None, None)
    assert (payload["cancel_at_period_end"], payload["pause_collection"]) == (False, None)
    (item,) = payload["items"]["data"]
    assert (item["id"], item["price"], item["quantity"]) == ("si_1", plans.basic, 1)
    assert subscription_mrr(payload, utc(1, 2), RuleSettings()).net == 5000
    assert current["status"] == "canceled", "the input is not changed"


# --- Prices and discounts --------------------------------------------------------------------


def test_unknown_price_id_kept_as_id() -> None:
    plans = Plans(CURRENT)
    unknown = CURRENT.price(7000, "price_gone")
    invoices = [plans.renewal("in_jan", 1, unknown)]
    (version, current) = reconstruct(plans.current(plans.basic), invoices, prices=plans.prices.get, read_at=READ_AT)
    assert version.subscription["items"]["data"][0]["price"] == {"id": "price_gone"}
    assert current.source == "current"


def test_unknown_price_id_is_unresolved_when_valued() -> None:
    plans = Plans(CURRENT)
    invoices = [plans.renewal("in_jan", 1, CURRENT.price(7000, "price_gone"))]
    (version, _) = reconstruct(plans.current(plans.basic), invoices, prices=plans.prices.get, read_at=READ_AT)
    with pytest.raises(UnresolvedStripeObject) as raised:
        subscription_mrr(version.subscription, utc(1, 2), RuleSettings())
    assert raised.value.object_id == "price_gone"


def test_price_not_stored_taken_from_the_current_subscription() -> None:
    plans = Plans(CURRENT)
    (version, _) = reconstruct(
        plans.current(plans.basic, 2),
        [plans.renewal("in_jan", 1, plans.basic)],
        prices=lambda price_id: None,
        read_at=READ_AT,
    )
    assert version.subscription["items"]["data"][0]["price"] == plans.basic


def coupon_month(
    shape: CurrentShape, *, on_invoice: bool, expand: bool
) -> tuple[Plans, dict[str, Any], dict[str, Any]]:
    """A June invoice for 2 × pro with a 20% discount, on the whole invoice or on its line only."""
    plans = Plans(shape)
    discount = shape.discount(20, discount_id="di_20", start=utc(5, 20))
    line = shape.period_line(
        plans.pro,
        2,
        start=utc(6, 1, 9),
        amount=16000,
        discount_amounts=[(4000, "di_20")],
        discounts=[] if on_invoice else [discount if expand else "di_20"],
    )
    invoice = shape.invoice(
        "in_jun",
        line,
        created=utc(6, 1, 9),
        discounts=[discount] if on_invoice else [],
        expand_discounts=expand,
    )
    return plans, invoice, discount


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
@pytest.mark.parametrize(
    ("on_invoice", "expand", "subscription_level", "item_level"),
    [
        pytest.param(True, True, ["object"], [], id="invoice discount expanded -> subscription discounts"),
        pytest.param(True, False, ["di_20"], [], id="invoice discount as id -> subscription discounts, id"),
        pytest.param(False, True, [], ["object"], id="line-only discount expanded -> item discounts"),
        pytest.param(False, False, [], ["di_20"], id="line-only discount as id -> item discounts, id"),
    ],
)
def test_discount_placement(
    shape: CurrentShape, on_invoice: bool, expand: bool, subscription_level: list[str], item_level: list[str]
) -> None:
    plans, invoice, discount = coupon_month(shape, on_invoice=on_invoice, expand=expand)
    (version, _) = reconstruct(plans.current(plans.pro, 2), [invoice], prices=plans.prices.get, read_at=READ_AT)
    assert_shortcuts_agree(plans.current(plans.pro, 2), [invoice], plans.prices.get)
    payload = version.subscription

    def named(entries: list[Any]) -> list[Any]:
        return ["object" if entry == discount else entry for entry in entries]

    assert named(payload["discounts"]) == subscription_level
    assert named(payload["items"]["data"][0]["discounts"]) == item_level
    if expand:
        assert subscription_mrr(payload, utc(6, 2), RuleSettings()).net == 16000


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
def test_discount_id_expanded_from_the_current_subscription(shape: CurrentShape) -> None:
    plans, invoice, discount = coupon_month(shape, on_invoice=True, expand=False)
    current = shape.subscription((plans.pro, 2, "si_1"), start=utc(1, 1, 9), discounts=[discount])
    versions = reconstruct(current, [invoice], prices=plans.prices.get, read_at=READ_AT)
    assert [version.source for version in versions] == ["invoice:in_jun"]
    assert versions[0].subscription["discounts"] == [discount]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
def test_partly_listed_invoice_lines_must_be_fetched(shape: CurrentShape) -> None:
    plans = Plans(shape)
    invoice = plans.renewal("in_jan", 1, plans.basic)
    invoice["lines"]["has_more"] = True
    with pytest.raises(UnresolvedStripeObject, match=r"/v1/invoices/in_jan/lines") as raised:
        reconstruct(plans.current(plans.basic), [invoice], prices=plans.prices.get, read_at=READ_AT)
    assert (raised.value.object_id, raised.value.missing) == ("in_jan", "lines")


def test_read_at_must_be_aware() -> None:
    plans = Plans(CURRENT)
    with pytest.raises(ValueError, match="read_at"):
        reconstruct(plans.current(plans.basic), [], prices=plans.prices.get, read_at=datetime(2024, 6, 1))


# --- The backfill scenario, end to end ---------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
def test_backfill_scenario_movements(shape: CurrentShape) -> None:
    scenario = backfill_scenario(shape)
    histories = {
        subscription["id"]: reconstruct(
            subscription, list(scenario.invoices), prices=scenario.prices.get, read_at=scenario.read_at
        )
        for subscription in scenario.subscriptions
    }
    for subscription in scenario.subscriptions:
        assert_shortcuts_agree(subscription, list(scenario.invoices), scenario.prices.get)
    assert [(version.observed_at, version.source) for version in histories["sub_1"]] == [
        (utc(1, 1, 9), "invoice:in_2024_01"),
        (utc(2, 20, 14), "invoice:in_2024_02_upgrade"),
        (utc(5, 1, 9), "invoice:in_2024_05"),
        (utc(5, 20), "invoice:in_2024_06"),
        (SCENARIO_CANCELED_AT, "current"),
    ]
    assert [(version.observed_at, version.source) for version in histories["sub_2"]] == [
        (utc(10, 1, 9), "invoice:in_2024_10_b"),
    ]
    snapshots = [
        Snapshot(
            subscription_id=subscription_id,
            customer_id=version.subscription["customer"],
            observed_at=version.observed_at,
            rank=0,
            source="backfill:run1",
            subscription=version.subscription,
        )
        for subscription_id, versions in histories.items()
        for version in versions
    ]
    rules = RuleSettings()
    movements = customer_movements(subscription_changes(snapshots, rules, until=scenario.read_at), rules)
    assert [(movement.day, movement.type, movement.amount) for movement in movements] == [
        (date(2024, 1, 1), MovementType.NEW, 5000),
        (date(2024, 2, 20), MovementType.EXPANSION, 5000),
        (date(2024, 5, 1), MovementType.EXPANSION, 10000),
        (date(2024, 5, 20), MovementType.CONTRACTION, -4000),
        (date(2024, 8, 15), MovementType.CHURN, -16000),
        (date(2024, 10, 1), MovementType.REACTIVATION, 5000),
    ]
    assert {movement.sources for movement in movements} == {("backfill:run1",)}


# --- Order never matters -----------------------------------------------------------------------


def shuffled_invoices(shape: CurrentShape) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The scenario's invoices plus a re-issued one, a same-second twin, a draft and a void one."""
    scenario = backfill_scenario(shape)
    plans = Plans(shape)
    extra = [
        plans.renewal("in_reissued", 4, plans.pro, 3, created=utc(4, 5)),
        plans.renewal("in_twin_a", 7, plans.basic, 9),
        plans.renewal("in_twin_b", 7, plans.pro, 9),
        plans.renewal("in_draft", 2, plans.pro, 5, status="draft"),
        plans.renewal("in_void", 3, plans.basic, 6, status="void"),
    ]
    return scenario.subscriptions[0], list(scenario.invoices) + extra


ORDERS = {shape.name: shuffled_invoices(shape) for shape in SHAPES}


@settings(max_examples=60, deadline=None)
@given(shape=st.sampled_from(SHAPES), data=st.data())
def test_invoice_order_does_not_matter(shape: CurrentShape, data: st.DataObject) -> None:
    current, invoices = ORDERS[shape.name]
    prices = Plans(shape).prices
    expected = reconstruct(current, invoices, prices=prices.get, read_at=READ_AT)
    assert_shortcuts_agree(current, invoices, prices.get)
    order = data.draw(st.permutations(range(len(invoices))))
    shuffled = [copy.deepcopy(invoices[index]) for index in order]
    assert reconstruct(current, shuffled, prices=prices.get, read_at=READ_AT) == expected


# --- Every billed change, dated when it happened (mrr-rules.md §10) ------------------------------


def valued(versions: list[HistoricalVersion], until: datetime) -> list[tuple[datetime, int]]:
    """(instant, net MRR from then on) of one subscription's versions, as the timeline values them."""
    snapshots = [
        Snapshot("sub_1", "cus_1", version.observed_at, 0, "backfill:run1", version.subscription)
        for version in versions
    ]
    return [(change.at, change.net) for change in subscription_changes(snapshots, RuleSettings(), until=until)]


def movements_of(versions: list[HistoricalVersion], until: datetime) -> list[tuple[date, MovementType, int]]:
    snapshots = [
        Snapshot("sub_1", "cus_1", version.observed_at, 0, "backfill:run1", version.subscription)
        for version in versions
    ]
    rules = RuleSettings()
    changes = subscription_changes(snapshots, rules, until=until)
    return [(movement.day, movement.type, movement.amount) for movement in customer_movements(changes, rules)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
def test_prorated_change_on_a_yearly_plan_is_dated_at_the_change(shape: CurrentShape) -> None:
    """30 seats at 80.00/yr → 1 seat at 490.00/yr on 28 Dec, invoiced at once: 40.83/mo from 28 Dec, not
    200.00/mo until the subscription ends in July."""
    seat = shape.price(8000, "price_seat", "prod_seat", interval="year")
    single = shape.price(49000, "price_single", "prod_single", interval="year")
    start, change, end = utc(7, 17, 10), utc(12, 28, 15), utc(7, 17, 10, year=2025)
    created = shape.invoice(
        "in_create",
        shape.period_line(seat, 30, start=start, end=end, item_id="si_seats"),
        created=start,
        billing_reason="subscription_create",
    )
    changed = shape.invoice(
        "in_change",
        shape.proration_line(seat, 30, start=change, end=end, amount=-132058, item_id="si_seats"),
        shape.proration_line(single, 1, start=change, end=end, amount=26962, item_id="si_single"),
        created=change,
        billing_reason="subscription_update",
    )
    current = shape.subscription(
        (single, 1, "si_single"), start=start, status="canceled", canceled_at=utc(3, 1, year=2025), ended_at=end
    )
    read_at = utc(8, 1, year=2025)
    versions = reconstruct(current, [changed, created], prices=price_lookup(seat, single).get, read_at=read_at)
    assert outline(versions) == [
        (start, "invoice:in_create", "active", (("price_seat", 30),)),
        (change, "invoice:in_change", "active", (("price_single", 1),)),
        (end, "current", "canceled", (("price_single", 1),)),
    ]
    assert valued(versions, read_at) == [(start, 20000), (change, 4083), (end, 0)]
    assert movements_of(versions, read_at) == [
        (date(2024, 7, 17), MovementType.NEW, 20000),
        (date(2024, 12, 28), MovementType.CONTRACTION, -15917),
        (date(2025, 7, 17), MovementType.CHURN, -4083),
    ]


def test_mixed_intervals_each_item_lasts_its_own_period() -> None:
    """The yearly item is billed on January's invoice only: every month is 110.00, not 10.00 after January."""
    annual = CURRENT.price(120000, "price_annual", "prod_annual", interval="year")
    monthly = CURRENT.price(1000, "price_monthly", "prod_addon")
    start = utc(1, 1, 9, year=2025)
    invoices = [
        CURRENT.invoice(
            "in_01",
            CURRENT.period_line(annual, start=start, end=utc(1, 1, 9, year=2026), item_id="si_year"),
            CURRENT.period_line(monthly, start=start, item_id="si_month"),
            created=start,
            billing_reason="subscription_create",
        ),
        *(
            CURRENT.invoice(
                f"in_{month:02}",
                CURRENT.period_line(monthly, start=utc(month, 1, 9, year=2025), item_id="si_month"),
                created=utc(month, 1, 9, year=2025),
            )
            for month in range(2, 7)
        ),
    ]
    current = CURRENT.subscription((annual, 1, "si_year"), (monthly, 1, "si_month"), start=start)
    read_at = utc(6, 15, year=2025)
    versions = reconstruct(current, invoices, prices=price_lookup(annual, monthly).get, read_at=read_at)
    assert outline(versions) == [(start, "invoice:in_01", "active", (("price_annual", 1), ("price_monthly", 1)))]
    assert valued(versions, read_at) == [(start, 11000)]


def test_an_item_no_longer_on_the_subscription_lasts_until_its_billed_period_ends() -> None:
    """A yearly item not renewed (the subscription no longer has it) counts until its year is over."""
    annual = CURRENT.price(120000, "price_annual", "prod_annual", interval="year")
    monthly = CURRENT.price(1000, "price_monthly", "prod_addon")
    start, year_end = utc(1, 1, 9), utc(1, 1, 9, year=2025)
    invoices = [
        CURRENT.invoice(
            "in_01",
            CURRENT.period_line(annual, start=start, end=year_end, item_id="si_year"),
            CURRENT.period_line(monthly, start=start, item_id="si_month"),
            created=start,
        ),
        *(
            CURRENT.invoice(
                f"in_{index:02}",
                CURRENT.period_line(monthly, start=at, item_id="si_month"),
                created=at,
            )
            for index, at in enumerate((utc(month, 1, 9) for month in range(2, 13)), start=2)
        ),
        CURRENT.invoice("in_13", CURRENT.period_line(monthly, start=year_end, item_id="si_month"), created=year_end),
    ]
    current = CURRENT.subscription((monthly, 1, "si_month"), start=start)
    read_at = utc(1, 15, year=2025)
    versions = reconstruct(current, invoices, prices=price_lookup(annual, monthly).get, read_at=read_at)
    assert outline(versions) == [
        (start, "invoice:in_01", "active", (("price_annual", 1), ("price_monthly", 1))),
        (year_end, "invoice:in_13", "active", (("price_monthly", 1),)),
    ]
    assert valued(versions, read_at) == [(start, 11000), (year_end, 1000)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
@pytest.mark.parametrize("trial_line", [True, False], ids=["with its zero-amount line", "its dates only"])
def test_back_on_trial_keeps_the_paid_months(shape: CurrentShape, trial_line: bool) -> None:
    """Paid January–October, on trial in November (flexible billing moved `trial_start`), paid again
    from December: the ten paid months stay, and December is a reactivation, not a new customer."""
    plans = Plans(shape)
    invoices = [plans.renewal(f"in_{month:02}", month, plans.basic) for month in range(1, 11)]
    if trial_line:
        trial = shape.period_line(plans.basic, start=utc(11, 1, 9), end=utc(12, 1, 9), amount=0)
        invoices.append(shape.invoice("in_trial", trial, created=utc(11, 1, 9), billing_reason="subscription_update"))
    invoices.append(plans.renewal("in_12", 12, plans.basic))
    current = plans.current(plans.basic, trial_start=utc(11, 1, 9), trial_end=utc(12, 1, 9))
    read_at = utc(12, 15)
    versions = reconstruct(current, invoices, prices=plans.prices.get, read_at=read_at)
    assert outline(versions) == [
        basic_in("in_01", 1),
        basic_in("in_trial", 11, status="trialing")
        if trial_line
        else (utc(11, 1, 9), "current", "trialing", (("price_basic", 1),)),
        basic_in("in_12", 12),
    ]
    assert [(v.subscription["trial_start"], v.subscription["trial_end"]) for v in versions] == [
        (None, None),
        (ts(utc(11, 1, 9)), ts(utc(12, 1, 9))),
        (ts(utc(11, 1, 9)), ts(utc(12, 1, 9))),
    ]
    assert movements_of(versions, read_at) == [
        (date(2024, 1, 1), MovementType.NEW, 5000),
        (date(2024, 11, 1), MovementType.CHURN, -5000),
        (date(2024, 12, 1), MovementType.REACTIVATION, 5000),
    ]


GONE = {"id": "SUMMER15", "object": "coupon", "deleted": True}
"""What is known of a coupon Stripe has deleted (a 404 for it): its id."""


def summer_invoices(shape: CurrentShape, plans: Plans, discount: dict[str, Any]) -> list[dict[str, Any]]:
    """Pro at 100.00 a month with 15% off (15.00 on every invoice), April to June."""
    return [
        shape.invoice(
            f"in_{month:02}",
            shape.period_line(plans.pro, start=utc(month, 22, 9), amount=10000, discount_amounts=[(1500, "di_summer")]),
            created=utc(month, 22, 9),
            discounts=[discount],
        )
        for month in (4, 5, 6)
    ]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
def test_a_coupon_stripe_deleted_is_valued_as_invoiced(shape: CurrentShape) -> None:
    """A discount naming its coupon by id (2025-09-30.clover) whose coupon answers 404: the invoices say
    it took 15.00 a month; nothing raises, and the discount keeps its id and dates."""
    plans = Plans(shape)
    discount = shape.discount(15, discount_id="di_summer", start=utc(4, 22, 9), coupon_id="SUMMER15", coupon_by_id=True)
    current = shape.subscription((plans.pro, 1, "si_1"), start=utc(4, 22, 9), discounts=[discount])
    versions = reconstruct(
        current,
        summer_invoices(shape, plans, discount),
        prices=plans.prices.get,
        read_at=utc(7, 1),
        as_invoiced={"di_summer": GONE},
    )
    (version,) = versions
    (valued_discount,) = version.subscription["discounts"]
    coupon = valued_discount["coupon"] if shape is API_2020 else valued_discount["source"]["coupon"]
    assert (valued_discount["id"], valued_discount["start"]) == ("di_summer", ts(utc(4, 22, 9)))
    shown = ("id", "percent_off", "amount_off", "currency", "duration", "applies_to", "as_invoiced")
    assert {key: coupon[key] for key in shown} == {
        "id": "SUMMER15",
        "percent_off": 15,  # exactly 15% of every line it reduced
        "amount_off": None,
        "currency": None,
        "duration": "forever",
        "applies_to": None,
        "as_invoiced": ["in_04"],
    }
    resolved = resolve_subscription(version.subscription, lambda _: None)  # nothing left to look up
    assert subscription_mrr(resolved, utc(6, 1), RuleSettings()).net == 8500


@pytest.mark.parametrize(
    ("taken", "coupon_fields", "after_the_change"),
    [
        pytest.param(980, {"percent_off": 20, "amount_off": None}, 7840, id="exactly 20% of every line: a percentage"),
        pytest.param(500, {"percent_off": None, "amount_off": 500, "currency": "usd"}, 9300, id="5.00 off: an amount"),
    ],
)
def test_a_discount_valued_as_invoiced_through_a_prorated_change(
    taken: int, coupon_fields: dict[str, Any], after_the_change: int
) -> None:
    """49.00 a month with a discount Stripe no longer has, then 2 seats from 20 February (prorated): a
    percentage follows the new price, an amount stays what it was."""
    plans = Plans(CURRENT)
    team = CURRENT.price(4900, "price_team", "prod_team")
    plans.prices = price_lookup(plans.basic, plans.pro, team)
    at = utc(2, 20, 14)

    def month(invoice_id: str, number: int) -> dict[str, Any]:
        line = CURRENT.period_line(
            team, start=utc(number, 1, 9), discounts=["di_gone"], discount_amounts=[(taken, "di_gone")]
        )
        return CURRENT.invoice(invoice_id, line, created=utc(number, 1, 9))

    change = CURRENT.invoice(
        "in_seats",
        CURRENT.proration_line(team, 1, start=at, end=utc(3, 1, 9), amount=-1352),
        CURRENT.proration_line(team, 2, start=at, end=utc(3, 1, 9), amount=2704),
        created=at,
        billing_reason="subscription_update",
    )
    versions = reconstruct(
        plans.current(team, 2),
        [month("in_jan", 1), month("in_feb", 2), change],
        prices=plans.prices.get,
        read_at=READ_AT,
        as_invoiced={"di_gone": {}},
    )
    coupon = versions[0].subscription["items"]["data"][0]["discounts"][0]["source"]["coupon"]
    assert {key: coupon.get(key) for key in coupon_fields} == coupon_fields
    # (the current subscription no longer has the discount: its version, at the read, has none)
    assert valued(versions, READ_AT)[:2] == [(utc(1, 1, 9), 4900 - taken), (at, after_the_change)]


def test_a_deleted_coupon_on_mixed_intervals_is_valued_per_item_interval() -> None:
    """20% off a 1,200/yr item and a 10/mo item: 240.00 on January's invoice, 2.00 on each: 22.00 a month."""
    annual = CURRENT.price(120000, "price_annual", "prod_annual", interval="year")
    monthly = CURRENT.price(1000, "price_monthly", "prod_addon")
    start = utc(1, 1, 9, year=2025)
    discount = CURRENT.discount(20, discount_id="di_fall", start=start, coupon_id="FALL20", coupon_by_id=True)
    invoices = [
        CURRENT.invoice(
            "in_01",
            CURRENT.period_line(
                annual,
                start=start,
                end=utc(1, 1, 9, year=2026),
                item_id="si_year",
                discount_amounts=[(24000, "di_fall")],
            ),
            CURRENT.period_line(monthly, start=start, item_id="si_month", discount_amounts=[(200, "di_fall")]),
            created=start,
            discounts=[discount],
        ),
        CURRENT.invoice(
            "in_02",
            CURRENT.period_line(
                monthly, start=utc(2, 1, 9, year=2025), item_id="si_month", discount_amounts=[(200, "di_fall")]
            ),
            created=utc(2, 1, 9, year=2025),
            discounts=[discount],
        ),
    ]
    current = CURRENT.subscription((annual, 1, "si_year"), (monthly, 1, "si_month"), start=start, discounts=[discount])
    versions = reconstruct(
        current,
        invoices,
        prices=price_lookup(annual, monthly).get,
        read_at=utc(2, 15, year=2025),
        as_invoiced={"di_fall": {"id": "FALL20"}},
    )
    (version,) = versions
    coupon = version.subscription["discounts"][0]["source"]["coupon"]
    assert (coupon["percent_off"], coupon["applies_to"], coupon["as_invoiced"]) == (20, None, ["in_01"])
    assert subscription_mrr(version.subscription, utc(2, 2, year=2025), RuleSettings()).net == 8800


def test_prorations_a_later_change_invoices_keep_the_discount_of_their_own_instant() -> None:
    """A yearly plan with 20% off until 1 May: a second seat on 1 March (prorations left pending), a
    third on 1 July invoiced at once. July's invoice, made after the discount ended, bills March's
    prorations too: they still date 2 seats at 20% off, not 2 seats at full price."""
    yearly = CURRENT.price(120000, "price_yearly", "prod_basic", interval="year")
    start, march, july, year_end = utc(1, 1, 9), utc(3, 1, 9), utc(7, 1, 9), utc(1, 1, 9, year=2025)
    discount = CURRENT.discount(20, discount_id="di_spring", start=start)
    discount["end"] = ts(utc(5, 1, 9))
    january = CURRENT.invoice(
        "in_jan",
        CURRENT.period_line(yearly, start=start, end=year_end, discount_amounts=[(24000, "di_spring")]),
        created=start,
        discounts=[discount],
    )
    seats = CURRENT.invoice(
        "in_jul",
        CURRENT.proration_line(yearly, 1, start=march, end=year_end, amount=-100000, invoice_item="ii_march_1"),
        CURRENT.proration_line(yearly, 2, start=march, end=year_end, amount=200000, invoice_item="ii_march_2"),
        CURRENT.proration_line(yearly, 2, start=july, end=year_end, amount=-100000),
        CURRENT.proration_line(yearly, 3, start=july, end=year_end, amount=150000),
        created=july,
        billing_reason="subscription_update",
    )
    versions = reconstruct(
        CURRENT.subscription((yearly, 3, "si_1"), start=start),
        [january, seats],
        prices=price_lookup(yearly).get,
        read_at=utc(8, 1),
    )
    assert valued(versions, utc(8, 1)) == [(start, 8000), (march, 16000), (utc(5, 1, 9), 20000), (july, 30000)]


def test_a_deleted_amount_off_coupon_on_mixed_intervals_is_what_it_took_off_one_invoice() -> None:
    """10.00 off a 1,200/yr item and a 30/mo item: Stripe takes it once per invoice, 9.93 and 0.07 off
    January's two lines, 10.00 off each monthly invoice after: 120.00 a month, not 10.00 + 9.93/12 off."""
    annual = CURRENT.price(120000, "price_annual", "prod_annual", interval="year")
    monthly = CURRENT.price(3000, "price_monthly", "prod_addon")
    start = utc(1, 1, 9, year=2025)
    discount = CURRENT.discount(20, discount_id="di_cyber", start=start, coupon_id="CYBER10", coupon_by_id=True)

    def monthly_line(month: int, taken: int) -> dict[str, Any]:
        return CURRENT.period_line(
            monthly, start=utc(month, 1, 9, year=2025), item_id="si_month", discount_amounts=[(taken, "di_cyber")]
        )

    year_line = CURRENT.period_line(
        annual, start=start, end=utc(1, 1, 9, year=2026), item_id="si_year", discount_amounts=[(993, "di_cyber")]
    )
    invoices = [
        CURRENT.invoice("in_01", year_line, monthly_line(1, 7), created=start, discounts=[discount]),
        *(
            CURRENT.invoice(f"in_0{month}", monthly_line(month, 1000), created=utc(month, 1, 9, year=2025))
            for month in (2, 3)
        ),
    ]
    for invoice in invoices[1:]:
        invoice["discounts"] = [discount]
    current = CURRENT.subscription((annual, 1, "si_year"), (monthly, 1, "si_month"), start=start, discounts=[discount])
    (version,) = reconstruct(
        current,
        invoices,
        prices=price_lookup(annual, monthly).get,
        read_at=utc(3, 15, year=2025),
        as_invoiced={"di_cyber": {"id": "CYBER10"}},
    )
    coupon = version.subscription["discounts"][0]["source"]["coupon"]
    assert (coupon["percent_off"], coupon["amount_off"], coupon["currency"]) == (None, 1000, "usd")
    assert subscription_mrr(version.subscription, utc(3, 2, year=2025), RuleSettings()).net == 10000 + 3000 - 1000


def test_a_deleted_amount_off_coupon_keeps_its_amount_after_an_item_leaves() -> None:
    """10.00 off a yearly plan (1,791.00) and a yearly add-on (261.00), 8.73 and 1.27 off their lines;
    the add-on removed on 13 March: still 10.00 a year off the plan, not the 8.73 its line showed."""
    plan = CURRENT.price(179100, "price_plan", "prod_plan", interval="year")
    addon = CURRENT.price(26100, "price_addon", "prod_addon", interval="year")
    start, removed, year_end = utc(1, 1, 9), utc(3, 13, 9), utc(1, 1, 9, year=2025)
    discount = CURRENT.discount(20, discount_id="di_cyber", start=start, coupon_id="CYBER10", coupon_by_id=True)
    invoices = [
        CURRENT.invoice(
            "in_jan",
            CURRENT.period_line(plan, start=start, end=year_end, discount_amounts=[(873, "di_cyber")]),
            CURRENT.period_line(
                addon, start=start, end=year_end, item_id="si_addon", discount_amounts=[(127, "di_cyber")]
            ),
            created=start,
            discounts=[discount],
        ),
        CURRENT.invoice(
            "in_removal",
            CURRENT.proration_line(addon, 1, start=removed, end=year_end, amount=-21000, item_id="si_addon"),
            created=removed,
            billing_reason="subscription_update",
            discounts=[discount],
        ),
    ]
    current = CURRENT.subscription((plan, 1, "si_1"), start=start, discounts=[discount])
    versions = reconstruct(
        current,
        invoices,
        prices=price_lookup(plan, addon).get,
        read_at=utc(4, 1),
        as_invoiced={"di_cyber": {"id": "CYBER10"}},
    )
    # (205,200 − 1,000) / 12, then (179,100 − 1,000) / 12
    assert valued(versions, utc(4, 1)) == [(start, 17017), (removed, 14842)]


def test_a_deleted_amount_off_coupon_that_looked_like_a_percentage_keeps_its_amount() -> None:
    """10.00 off 16.00 a month is 62.5% on January's and February's invoices; from 20 February the plan
    is 28.00 (prorated), and March takes 10.00 again: 18.00 a month from the change, not 37.5% of 28.00."""
    small = CURRENT.price(1600, "price_small", "prod_small")
    large = CURRENT.price(2800, "price_large", "prod_large")
    at = utc(2, 20, 14)
    discount = CURRENT.discount(20, discount_id="di_ten", start=utc(1, 1, 9), coupon_id="TEN", coupon_by_id=True)

    def month(number: int, rate: dict[str, Any]) -> dict[str, Any]:
        line = CURRENT.period_line(rate, start=utc(number, 1, 9), discount_amounts=[(1000, "di_ten")])
        return CURRENT.invoice(f"in_{number}", line, created=utc(number, 1, 9), discounts=[discount])

    change = CURRENT.invoice(
        "in_change",
        CURRENT.proration_line(small, 1, start=at, end=utc(3, 1, 9), amount=-490),
        CURRENT.proration_line(large, 1, start=at, end=utc(3, 1, 9), amount=858),
        created=at,
        billing_reason="subscription_update",
        discounts=[discount],
    )
    versions = reconstruct(
        CURRENT.subscription((large, 1, "si_1"), start=utc(1, 1, 9), discounts=[discount]),
        [month(1, small), month(2, small), change, month(3, large)],
        prices=price_lookup(small, large).get,
        read_at=utc(3, 15),
        as_invoiced={"di_ten": {"id": "TEN"}},
    )
    assert valued(versions, utc(3, 15)) == [(utc(1, 1, 9), 600), (at, 1800)]


def test_a_deleted_coupon_that_reduced_one_item_applies_to_its_product() -> None:
    """A subscription-level 50% off the add-on only: the invoices show 5.00 off the add-on's line."""
    plans = Plans(CURRENT)
    addon = CURRENT.price(1000, "price_addon", "prod_addon")
    discount = CURRENT.discount(50, discount_id="di_addon", start=utc(1, 1, 9), coupon_id="ADDON50", coupon_by_id=True)
    invoice = CURRENT.invoice(
        "in_jan",
        CURRENT.period_line(plans.basic, start=utc(1, 1, 9)),
        CURRENT.period_line(addon, start=utc(1, 1, 9), item_id="si_addon", discount_amounts=[(500, "di_addon")]),
        created=utc(1, 1, 9),
        discounts=[discount],
    )
    current = CURRENT.subscription((plans.basic, 1, "si_1"), (addon, 1, "si_addon"), start=utc(1, 1, 9))
    (version, _) = reconstruct(
        current,
        [invoice],
        prices=price_lookup(plans.basic, addon).get,
        read_at=READ_AT,
        as_invoiced={"di_addon": {"id": "ADDON50"}},
    )
    coupon = version.subscription["discounts"][0]["source"]["coupon"]
    assert (coupon["percent_off"], coupon["applies_to"]) == (50, {"products": ["prod_addon"]})
    assert subscription_mrr(version.subscription, utc(1, 2), RuleSettings()).net == 5500


def test_a_discount_stripe_no_longer_has_is_valued_as_invoiced_on_its_item() -> None:
    """An item's discount named only by id on the invoice line, removed since (no object anywhere)."""
    plans = Plans(CURRENT)
    line = CURRENT.period_line(
        plans.pro, start=utc(1, 1, 9), amount=10000, discounts=["di_gone"], discount_amounts=[(2500, "di_gone")]
    )
    invoice = CURRENT.invoice("in_jan", line, created=utc(1, 1, 9))
    (version, _) = reconstruct(
        plans.current(plans.pro, 2), [invoice], prices=plans.prices.get, read_at=READ_AT, as_invoiced={"di_gone": {}}
    )
    (item,) = version.subscription["items"]["data"]
    (discount,) = item["discounts"]
    assert discount["id"] == "di_gone"
    assert discount["source"]["coupon"]["percent_off"] == 25
    assert subscription_mrr(version.subscription, utc(1, 2), RuleSettings()).net == 7500


def test_a_coupon_removed_by_hand_is_dated_at_the_next_invoice_without_it() -> None:
    plans = Plans(CURRENT)
    discount = CURRENT.discount(20, discount_id="di_20", start=utc(1, 1, 9))
    invoices = []
    for month, discounted in ((1, True), (2, True), (3, False)):
        line = CURRENT.period_line(
            plans.pro, start=utc(month, 1, 9), discount_amounts=[(2000, "di_20")] if discounted else []
        )
        invoices.append(
            CURRENT.invoice(f"in_{month}", line, created=utc(month, 1, 9), discounts=[discount] if discounted else [])
        )
    versions = reconstruct(plans.current(plans.pro), invoices, prices=plans.prices.get, read_at=READ_AT)
    assert [(v.observed_at, v.subscription["discounts"]) for v in versions] == [
        (utc(1, 1, 9), [discount]),
        (utc(3, 1, 9), []),
    ]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda shape: shape.name)
def test_a_coupon_applied_mid_period_is_dated_at_its_start(shape: CurrentShape) -> None:
    """20% off from 10 February, first invoiced on 1 March: the discount's own `start` dates it."""
    plans = Plans(shape)
    discount = shape.discount(20, discount_id="di_20", start=utc(2, 10, 16))
    march = shape.invoice(
        "in_mar",
        shape.period_line(plans.pro, start=utc(3, 1, 9), discount_amounts=[(2000, "di_20")]),
        created=utc(3, 1, 9),
        discounts=[discount],
    )
    invoices = [plans.renewal("in_jan", 1, plans.pro), plans.renewal("in_feb", 2, plans.pro), march]
    current = shape.subscription((plans.pro, 1, "si_1"), start=utc(1, 1, 9), discounts=[discount])
    versions = reconstruct(current, invoices, prices=plans.prices.get, read_at=READ_AT)
    assert [(v.observed_at, v.source, [_id(d) for d in v.subscription["discounts"]]) for v in versions] == [
        (utc(1, 1, 9), "invoice:in_jan", []),
        (utc(2, 10, 16), "invoice:in_mar", ["di_20"]),
    ]
    assert valued(versions, READ_AT) == [(utc(1, 1, 9), 10000), (utc(2, 10, 16), 8000)]


def test_a_coupon_no_invoice_shows_yet_is_dated_at_its_start_from_the_current_subscription() -> None:
    """An item's coupon applied on 17 November with a swap invoiced by prorations (which carry no
    discount): only the current subscription's item shows it, with its `start`."""
    plans = Plans(CURRENT)
    at = utc(11, 17, 15)
    discount = CURRENT.discount(20, discount_id="di_item", start=at)
    swap = CURRENT.invoice(
        "in_swap",
        CURRENT.proration_line(plans.basic, 1, start=at, end=utc(12, 1, 9), amount=-800),
        CURRENT.proration_line(plans.pro, 1, start=at, end=utc(12, 1, 9), amount=1600),
        created=at,
        billing_reason="subscription_update",
    )
    current = CURRENT.subscription((plans.pro, 1, "si_1"), start=utc(11, 1, 9))
    current["items"]["data"][0]["discounts"] = [discount]
    read_at = utc(11, 25)
    versions = reconstruct(
        current, [plans.renewal("in_nov", 11, plans.basic), swap], prices=plans.prices.get, read_at=read_at
    )
    assert outline(versions) == [basic_in("in_nov", 11), pro_from(at, "invoice:in_swap")]
    assert versions[-1].subscription["items"]["data"][0]["discounts"] == [discount]
    assert valued(versions, read_at) == [(utc(11, 1, 9), 5000), (at, 8000)]


def test_discounts_dated_back_keep_the_order_they_apply_in() -> None:
    """A 50% coupon applied after a 5.00-off one is listed (and applied) first, as the record lists them."""
    plans = Plans(CURRENT)
    amount_off = CURRENT.discount(20, discount_id="di_amount", start=utc(1, 1, 9))
    amount_off["source"]["coupon"].update(id="SAVE5", percent_off=None, amount_off=500, currency="usd")
    half = CURRENT.discount(50, discount_id="di_half", start=utc(2, 10), coupon_id="HALF")
    invoices = [
        CURRENT.invoice(
            f"in_{month}",
            CURRENT.period_line(plans.pro, start=utc(month, 1, 9)),
            created=utc(month, 1, 9),
            discounts=discounts,
        )
        for month, discounts in ((1, [amount_off]), (2, [amount_off]), (3, [half, amount_off]))
    ]
    current = CURRENT.subscription((plans.pro, 1, "si_1"), start=utc(1, 1, 9), discounts=[half, amount_off])
    versions = reconstruct(current, invoices, prices=plans.prices.get, read_at=READ_AT)
    assert [[_id(d) for d in v.subscription["discounts"]] for v in versions] == [
        ["di_amount"],
        ["di_half", "di_amount"],
    ]
    assert valued(versions, READ_AT) == [(utc(1, 1, 9), 9500), (utc(2, 10), 4500)]
