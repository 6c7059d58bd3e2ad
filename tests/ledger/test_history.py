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
    _billed_signature,
    _latest_billing,
    _rate_reader,
    _signature,
    _version_payload,
    invoice_fields,
    reconstruct,
)
from ledger.movements import MovementType, customer_movements
from ledger.mrr import UnresolvedStripeObject, subscription_mrr
from ledger.settings import RuleSettings
from ledger.timeline import Snapshot, subscription_changes
from tests.ledger.invoice_payloads import (
    CURRENT,
    SCENARIO_CANCELED_AT,
    SHAPES,
    CurrentShape,
    backfill_scenario,
    price_lookup,
)
from tests.ledger.subscription_payloads import utc

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


def proration_lines_ignored(plans: Plans) -> Case:
    shape = plans.shape
    mid_period = utc(2, 20, 14)
    standalone = shape.invoice(
        "in_upgrade",
        shape.proration_line(plans.basic, 1, start=mid_period, end=utc(3, 1, 9), amount=-1552),
        shape.proration_line(plans.pro, 1, start=mid_period, end=utc(3, 1, 9), amount=3103),
        created=mid_period,
    )
    march = plans.renewal("in_mar", 3, plans.pro)
    # Prorations left pending land on the next renewal invoice, beside its period line.
    march["lines"]["data"].insert(
        0, shape.proration_line(plans.pro, 1, start=utc(2, 25), end=utc(3, 1, 9), amount=700, item_id="si_1")
    )
    return plans.case(
        plans.current(plans.pro),
        [plans.renewal("in_jan", 1, plans.basic), plans.renewal("in_feb", 2, plans.basic), standalone, march],
        [basic_in("in_jan", 1), (utc(3, 1, 9), "invoice:in_mar", "active", (("price_pro", 1),))],
    )


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
    pytest.param(proration_lines_ignored, id="proration lines ignored"),
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
    return reconstruct(case.subscription, case.invoices, prices=case.prices.get, read_at=case.read_at)


def assert_shortcuts_agree(current: Mapping[str, Any], invoices: list[dict[str, Any]], prices: PriceLookup) -> None:
    """The signature compared before a version is built is the built version's, and
    the invoices cut to `invoice_fields` give the same history."""
    rates = _rate_reader(prices, current)
    billings = _latest_billing(str(current["id"]), invoices, rates)
    for billed in billings:
        assert _billed_signature(current, billed, rates) == _signature(_version_payload(current, billed, rates))
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
        (utc(3, 1, 9), "invoice:in_2024_03"),
        (utc(5, 1, 9), "invoice:in_2024_05"),
        (utc(6, 1, 9), "invoice:in_2024_06"),
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
        (date(2024, 3, 1), MovementType.EXPANSION, 5000),
        (date(2024, 5, 1), MovementType.EXPANSION, 10000),
        (date(2024, 6, 1), MovementType.CONTRACTION, -4000),
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
