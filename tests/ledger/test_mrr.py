"""ledger.mrr against docs/mrr-rules.md §1–§4, on payloads built from real Stripe shapes."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.mrr import (
    ItemMRR,
    MonthlyDiscount,
    SubscriptionMRR,
    UnresolvedStripeObject,
    add_interval,
    apply_discounts,
    item_amount,
    monthly_amount,
    round_half_up,
    subscription_mrr,
    value_breakpoints,
)
from ledger.settings import RuleSettings
from tests.stripe_payloads import event_2020, resource

IGNORE = RuleSettings()
SUBTRACT = RuleSettings(discounts_once="subtract")

START = datetime(2024, 1, 31, 12, 0, tzinfo=UTC)
AT = datetime(2024, 2, 10, tzinfo=UTC)


def ts(instant: datetime) -> int:
    return int(instant.timestamp())


# --- Payload builders: real fixture shapes with the values a test sets -------------------


def price(
    unit_amount: int | None = 1000,
    interval: str = "month",
    interval_count: int = 1,
    *,
    price_id: str = "price_basic",
    product: str = "prod_basic",
    usage_type: str = "licensed",
    **fields: Any,
) -> dict[str, Any]:
    """A current-API price (fixtures3 `price`)."""
    result: dict[str, Any] = resource("price")
    result.update(
        id=price_id,
        product=product,
        unit_amount=unit_amount,
        unit_amount_decimal=None if unit_amount is None else str(unit_amount),
        transform_quantity=None,
    )
    result["recurring"].update(interval=interval, interval_count=interval_count, usage_type=usage_type)
    result.update(fields)
    return result


def item(rate: dict[str, Any], quantity: int | None = 1, *, item_id: str = "si_1", **fields: Any) -> dict[str, Any]:
    """A current-API subscription item (fixtures3 `subscription_item`), keeping its placeholder `plan`."""
    result: dict[str, Any] = resource("subscription_item")
    result.update(id=item_id, price=rate, quantity=quantity, discounts=[])
    result.update(fields)
    return result


def subscription(*items: dict[str, Any], discounts: list[Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A current-API subscription (fixtures3 `subscription`)."""
    result: dict[str, Any] = resource("subscription")
    result["items"]["data"] = list(items)
    result["discounts"] = discounts or []
    result.update(fields)
    return result


def coupon(
    percent_off: float | None = None,
    amount_off: int | None = None,
    duration: str = "forever",
    *,
    duration_in_months: int | None = None,
    coupon_id: str = "COUPON",
    **fields: Any,
) -> dict[str, Any]:
    """A coupon (fixtures3 `coupon`)."""
    result: dict[str, Any] = resource("coupon")
    result.update(
        id=coupon_id,
        percent_off=percent_off,
        amount_off=amount_off,
        duration=duration,
        duration_in_months=duration_in_months,
    )
    result.update(fields)
    return result


def discount(
    held: dict[str, Any] | str | None,
    start: datetime = START,
    end: datetime | None = None,
    *,
    discount_id: str = "di_1",
) -> dict[str, Any]:
    """A newest-API discount (fixtures3 `discount`): the coupon under `source`."""
    result: dict[str, Any] = resource("discount")
    result.update(id=discount_id, start=ts(start), end=None if end is None else ts(end))
    result["source"]["coupon"] = held
    return result


def legacy_subscription(
    unit_amount: int = 1000,
    interval: str = "month",
    interval_count: int = 1,
    quantity: int = 1,
    *,
    held: dict[str, Any] | None = None,
    start: datetime = START,
    end: datetime | None = None,
) -> dict[str, Any]:
    """A 2020-03-02 subscription (events-api-2020): items with `plan` and `price`, top-level `plan`."""
    result: dict[str, Any] = event_2020("subscription_created")["data"]["object"]
    first = result["items"]["data"][0]
    del result["items"]["data"][1:]
    first["quantity"] = quantity
    first["plan"].update(
        amount=unit_amount, amount_decimal=str(unit_amount), interval=interval, interval_count=interval_count
    )
    first["price"].update(unit_amount=unit_amount, unit_amount_decimal=str(unit_amount))
    first["price"]["recurring"].update(interval=interval, interval_count=interval_count)
    result.update(plan=copy.deepcopy(first["plan"]), quantity=quantity)
    if held is not None:
        result["discount"] = {
            "object": "discount",
            "coupon": held,
            "customer": result["customer"],
            "end": None if end is None else ts(end),
            "start": ts(start),
            "subscription": result["id"],
        }
    return result


def current_subscription(
    unit_amount: int = 1000,
    interval: str = "month",
    interval_count: int = 1,
    quantity: int = 1,
    *,
    held: dict[str, Any] | None = None,
    start: datetime = START,
    end: datetime | None = None,
) -> dict[str, Any]:
    discounts = [] if held is None else [discount(held, start, end)]
    return subscription(item(price(unit_amount, interval, interval_count), quantity), discounts=discounts)


SHAPES = [
    pytest.param(current_subscription, id="current API"),
    pytest.param(legacy_subscription, id="2020-03-02 API"),
]


def mrr(payload: dict[str, Any], at: datetime = AT, rules: RuleSettings = IGNORE) -> tuple[int, int]:
    value = subscription_mrr(payload, at, rules)
    return value.gross, value.net


# --- §1 Money -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "expected"),
    [
        pytest.param(Fraction(1, 2), 1, id="§1 half-up: 0.5 -> 1"),
        pytest.param(Fraction(5, 2), 3, id="§1 half-up: 2.5 -> 3 (not banker's 2)"),
        pytest.param(Fraction(-5, 2), -3, id="§1 half-up: -2.5 -> -3 (away from zero)"),
        pytest.param(Fraction(24999, 10000), 2, id="§1 half-up: 2.4999 -> 2"),
        pytest.param(Fraction("2174.0625"), 2174, id="§1 half-up: 2174.0625 -> 2174"),
        pytest.param(Fraction("30436.875"), 30437, id="§1 half-up: 30436.875 -> 30437"),
        pytest.param(Fraction(0), 0, id="§1 half-up: 0 -> 0"),
    ],
)
def test_round_half_up(amount: Fraction, expected: int) -> None:
    assert round_half_up(amount) == expected


def test_subscription_rounds_once_not_per_item() -> None:
    payload = subscription(*(item(price(1000, "year", price_id=f"price_{n}"), item_id=f"si_{n}") for n in range(3)))

    value = subscription_mrr(payload, AT, IGNORE)

    # 3 × 1000/12 = 250 exactly; each item alone is 83.33 → 83.
    assert (value.gross, value.net) == (250, 250)
    assert [(i.gross, i.net) for i in value.items] == [(83, 83)] * 3


@given(st.decimals(min_value=-(10**9), max_value=10**9, places=4))
def test_round_half_up_matches_decimal_round_half_up(amount: Decimal) -> None:
    assert round_half_up(Fraction(amount)) == int(amount.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# --- §2 What counts: item amounts ---------------------------------------------------------

VOLUME_TIERS: list[dict[str, Any]] = [
    {"up_to": 5, "unit_amount": 700, "unit_amount_decimal": "700", "flat_amount": None},
    {"up_to": 10, "unit_amount": 650, "unit_amount_decimal": "650", "flat_amount": None},
    {"up_to": None, "unit_amount": 600, "unit_amount_decimal": "600", "flat_amount": None},
]
INF_TIERS: list[dict[str, Any]] = [dict(tier, up_to="inf") if tier["up_to"] is None else tier for tier in VOLUME_TIERS]
FLAT_TIERS: list[dict[str, Any]] = [
    {"up_to": 10, "flat_amount": 5000, "flat_amount_decimal": "5000", "unit_amount": 0},
    {"up_to": None, "flat_amount": None, "flat_amount_decimal": "250.5", "unit_amount_decimal": "300"},
]


def tiered(mode: str, tiers: list[dict[str, Any]] | None) -> dict[str, Any]:
    return price(None, billing_scheme="tiered", tiers_mode=mode, tiers=tiers)


@pytest.mark.parametrize(
    ("rate", "quantity", "expected"),
    [
        pytest.param(price(1000), 3, Fraction(3000), id="§2 per_unit: unit_amount × quantity"),
        pytest.param(price(1000), 0, Fraction(0), id="§2 per_unit: quantity 0 -> 0"),
        pytest.param(
            price(None, unit_amount_decimal="12.345"),
            4,
            Fraction("49.38"),
            id="§2 per_unit: unit_amount_decimal, exact",
        ),
        pytest.param(
            price(100, transform_quantity={"divide_by": 5, "round": "up"}),
            11,
            Fraction(300),
            id="§2 transform_quantity: 11 / 5 rounded up = 3 units",
        ),
        pytest.param(
            price(100, transform_quantity={"divide_by": 5, "round": "down"}),
            11,
            Fraction(200),
            id="§2 transform_quantity: 11 / 5 rounded down = 2 units",
        ),
        pytest.param(
            price(100, transform_quantity={"divide_by": 5, "round": "up"}),
            10,
            Fraction(200),
            id="§2 transform_quantity: exact division is not rounded up",
        ),
        pytest.param(tiered("volume", VOLUME_TIERS), 5, Fraction(3500), id="§2 volume: 5 × $7"),
        pytest.param(tiered("volume", VOLUME_TIERS), 6, Fraction(3900), id="§2 volume: 6 × $6.50"),
        pytest.param(tiered("volume", VOLUME_TIERS), 20, Fraction(12000), id="§2 volume: up_to null, 20 × $6"),
        pytest.param(tiered("volume", INF_TIERS), 20, Fraction(12000), id="§2 volume: up_to inf, 20 × $6"),
        pytest.param(
            tiered("volume", FLAT_TIERS),
            12,
            Fraction("3850.5"),
            id="§2 volume: flat_amount_decimal + unit_amount_decimal of the tier",
        ),
        pytest.param(
            tiered("volume", FLAT_TIERS),
            0,
            Fraction(5000),
            id="§2 volume: quantity 0 pays tier 1's flat_amount",
        ),
        pytest.param(tiered("graduated", VOLUME_TIERS), 5, Fraction(3500), id="§2 graduated: 5 in tier 1"),
        pytest.param(tiered("graduated", VOLUME_TIERS), 6, Fraction(4150), id="§2 graduated: 5 × $7 + 1 × $6.50"),
        pytest.param(
            tiered("graduated", INF_TIERS),
            20,
            Fraction(12750),
            id="§2 graduated: up_to inf, 5 × $7 + 5 × $6.50 + 10 × $6",
        ),
        pytest.param(
            tiered("graduated", FLAT_TIERS),
            15,
            Fraction("6750.5"),
            id="§2 graduated: flat_amount of each tier reached + units",
        ),
        pytest.param(
            tiered("graduated", FLAT_TIERS),
            10,
            Fraction(5000),
            id="§2 graduated: a tier not reached adds no flat_amount",
        ),
        pytest.param(
            tiered("graduated", FLAT_TIERS),
            0,
            Fraction(5000),
            id="§2 graduated: quantity 0 pays tier 1's flat_amount",
        ),
        pytest.param(
            {"id": "plan_old", "object": "plan", "amount": 2500, "amount_decimal": None, "interval": "month"},
            2,
            Fraction(5000),
            id="§2 legacy plan: amount × quantity",
        ),
        pytest.param(
            {
                "id": "plan_old",
                "object": "plan",
                "amount": None,
                "amount_decimal": "0.25",
                "interval": "month",
                "transform_usage": {"divide_by": 100, "round": "up"},
            },
            150,
            Fraction("0.5"),
            id="§2 legacy plan: amount_decimal and transform_usage",
        ),
    ],
)
def test_item_amount(rate: dict[str, Any], quantity: int, expected: Fraction) -> None:
    assert item_amount(rate, quantity) == expected


def test_tiered_price_without_tiers_is_unresolved() -> None:
    with pytest.raises(UnresolvedStripeObject, match=r"price_basic.*tiers") as raised:
        item_amount(tiered("volume", None), 3)
    assert raised.value.object_id == "price_basic"


def test_tiered_price_without_tiers_borrows_the_legacy_plans_tiers() -> None:
    payload = legacy_subscription()
    first = payload["items"]["data"][0]
    first["price"].update(billing_scheme="tiered", tiers_mode="volume", unit_amount=None)
    first["plan"].update(billing_scheme="tiered", tiers_mode="volume", tiers=VOLUME_TIERS, amount=None)
    first["quantity"] = 6

    assert mrr(payload) == (3900, 3900)


@given(
    unit=st.integers(min_value=0, max_value=10**7),
    quantity=st.integers(min_value=0, max_value=10**4),
    factor=st.integers(min_value=0, max_value=100),
)
def test_per_unit_amount_scales_with_quantity(unit: int, quantity: int, factor: int) -> None:
    rate = price(unit)
    assert item_amount(rate, quantity * factor) == item_amount(rate, quantity) * factor


@pytest.mark.parametrize(
    ("rate", "counted"),
    [
        pytest.param(price(1000), True, id="§2 recurring licensed: counted"),
        pytest.param(price(1000, usage_type="metered"), False, id="§2 metered: not MRR"),
        pytest.param(price(1000, type="one_time", recurring=None), False, id="§2 one-time price: not MRR"),
    ],
)
def test_only_recurring_licensed_items_count(rate: dict[str, Any], counted: bool) -> None:
    payload = subscription(item(price(2000, price_id="price_seat"), item_id="si_seat"), item(rate, item_id="si_other"))

    value = subscription_mrr(payload, AT, IGNORE)

    assert value.gross == (3000 if counted else 2000)
    assert [i.item_id for i in value.items] == (["si_seat", "si_other"] if counted else ["si_seat"])


def test_legacy_metered_plan_does_not_count() -> None:
    payload = legacy_subscription(1000)
    first = payload["items"]["data"][0]
    first["plan"]["usage_type"] = "metered"
    first.pop("price")

    assert mrr(payload) == (0, 0)


def test_item_without_quantity_counts_as_one() -> None:
    # The 2020 fixture's second item really has no `quantity`.
    payload: dict[str, Any] = event_2020("subscription_created")["data"]["object"]
    for entry in payload["items"]["data"]:
        entry["price"].update(unit_amount=700, unit_amount_decimal="700")
    assert "quantity" not in payload["items"]["data"][1]

    value = subscription_mrr(payload, AT, IGNORE)

    assert (value.gross, [i.gross for i in value.items]) == (1400, [700, 700])


def test_price_is_preferred_over_the_items_plan() -> None:
    # fixtures3's item keeps a placeholder plan: tiered, interval_count 797691627.
    payload = subscription(item(price(1500)))
    assert payload["items"]["data"][0]["plan"]["interval_count"] == 797691627

    assert mrr(payload) == (1500, 1500)


def test_legacy_single_plan_subscription_without_items() -> None:
    payload = legacy_subscription(1000, quantity=3)
    del payload["items"]

    value = subscription_mrr(payload, AT, IGNORE)

    assert value == SubscriptionMRR(
        currency="usd",
        gross=3000,
        net=3000,
        items=(
            ItemMRR(
                "price_1IDQm5JDPojXS6LNM31hxKzp",
                "price_1IDQm5JDPojXS6LNM31hxKzp",
                "prod_Ip4vqwv3EJ7Mi0",
                "usd",
                3000,
                3000,
            ),
        ),
    )


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"currency": "EUR"}, "eur", id="subscription currency, lower-cased"),
        pytest.param({"currency": None}, "gbp", id="no subscription currency: the first item's price"),
    ],
)
def test_currency(fields: dict[str, Any], expected: str) -> None:
    payload = subscription(item(price(1000, currency="gbp")), **fields)

    value = subscription_mrr(payload, AT, IGNORE)

    assert value.currency == expected
    assert value.items[0].currency == expected


def test_legacy_subscription_takes_currency_from_its_items() -> None:
    assert subscription_mrr(legacy_subscription(), AT, IGNORE).currency == "usd"


# --- §3 Normalising to a month ------------------------------------------------------------


@pytest.mark.parametrize(
    ("amount", "interval", "count", "expected"),
    [
        pytest.param(1000, "month", 1, Fraction(1000), id="§3 month: f = 1"),
        pytest.param(3000, "month", 3, Fraction(1000), id="§3 month: every 3 months ÷ 3"),
        pytest.param(12000, "year", 1, Fraction(1000), id="§3 year: f = 1/12"),
        pytest.param(24000, "year", 2, Fraction(1000), id="§3 year: every 2 years ÷ 2"),
        pytest.param(1, "week", 1, Fraction("4.348125"), id="§3 week: f = 365.2425 / 12 / 7 = 4.348125"),
        pytest.param(1000, "week", 2, Fraction("2174.0625"), id="§3 week: $10 every 2 weeks -> $21.74"),
        pytest.param(1, "day", 1, Fraction("30.436875"), id="§3 day: f = 365.2425 / 12 = 30.436875"),
        pytest.param(1000, "day", 1, Fraction("30436.875"), id="§3 day: $10/day -> $304.37"),
    ],
)
def test_monthly_amount(amount: int, interval: str, count: int, expected: Fraction) -> None:
    assert monthly_amount(Fraction(amount), interval, count) == expected


@pytest.mark.parametrize(
    ("interval", "count"),
    [pytest.param("fortnight", 1, id="unknown interval"), pytest.param("month", 0, id="interval_count 0")],
)
def test_monthly_amount_rejects_bad_intervals(interval: str, count: int) -> None:
    with pytest.raises(ValueError):
        monthly_amount(Fraction(1000), interval, count)


@pytest.mark.parametrize(
    ("start", "interval", "count", "expected"),
    [
        pytest.param(
            datetime(2024, 1, 31, tzinfo=UTC),
            "month",
            1,
            datetime(2024, 2, 29, tzinfo=UTC),
            id="31 Jan + 1 month",
        ),
        pytest.param(
            datetime(2023, 11, 30, tzinfo=UTC),
            "month",
            3,
            datetime(2024, 2, 29, tzinfo=UTC),
            id="across a year",
        ),
        pytest.param(
            datetime(2024, 2, 29, tzinfo=UTC),
            "year",
            1,
            datetime(2025, 2, 28, tzinfo=UTC),
            id="29 Feb + 1 year",
        ),
        pytest.param(datetime(2024, 1, 1, tzinfo=UTC), "week", 2, datetime(2024, 1, 15, tzinfo=UTC), id="2 weeks"),
        pytest.param(datetime(2024, 2, 28, tzinfo=UTC), "day", 2, datetime(2024, 3, 1, tzinfo=UTC), id="2 days"),
    ],
)
def test_add_interval_follows_the_calendar(start: datetime, interval: str, count: int, expected: datetime) -> None:
    assert add_interval(start, interval, count) == expected


@pytest.mark.parametrize("build", SHAPES)
@pytest.mark.parametrize(
    ("unit", "interval", "count", "quantity", "expected"),
    [
        pytest.param(1000, "week", 2, 1, 2174, id="example 8: $10 per week, interval_count 2 -> $21.74"),
        pytest.param(1000, "day", 1, 1, 30437, id="example 8: $10/day -> $304.37"),
        pytest.param(50000, "year", 1, 4, 16667, id="example 4: 4 × Gold yearly for $2,000 -> $166.67"),
        pytest.param(3000, "month", 1, 2, 6000, id="example 4: 2 × Silver monthly $60 -> $60"),
        pytest.param(5000, "month", 1, 3, 15000, id="example 4: back on 3 × $50 monthly -> $150"),
    ],
)
def test_worked_examples_normalising(
    build: Any, unit: int, interval: str, count: int, quantity: int, expected: int
) -> None:
    assert mrr(build(unit, interval, count, quantity)) == (expected, expected)


def test_worked_example_1_subscriptions_add_up_to_12500_dollars() -> None:
    monthly = [current_subscription(10000) for _ in range(100)]
    yearly = [legacy_subscription(60000, "year") for _ in range(50)]

    total = sum(subscription_mrr(payload, AT, IGNORE).net for payload in monthly + yearly)

    assert total == 1_250_000


def test_worked_example_2_euros() -> None:
    payload = subscription(item(price(2500, currency="eur")), currency="eur")

    value = subscription_mrr(payload, AT, IGNORE)
    total = 1000 * value.net

    assert (value.currency, total, 12 * total) == ("eur", 2_500_000, 30_000_000)


def test_worked_example_4_gold_and_silver_in_one_subscription_round_once() -> None:
    payload = subscription(
        item(price(50000, "year", price_id="price_gold", product="prod_gold"), 4, item_id="si_gold"),
        item(price(3000, price_id="price_silver", product="prod_silver"), 2, item_id="si_silver"),
    )

    value = subscription_mrr(payload, AT, IGNORE)

    assert (value.gross, value.net) == (22667, 22667)
    assert [(i.item_id, i.price_id, i.product_id, i.gross) for i in value.items] == [
        ("si_gold", "price_gold", "prod_gold", 16667),
        ("si_silver", "price_silver", "prod_silver", 6000),
    ]


# --- §4 Discounts -------------------------------------------------------------------------


@pytest.mark.parametrize("build", SHAPES)
@pytest.mark.parametrize(
    ("unit", "interval", "held", "expected"),
    [
        pytest.param(1000, "month", coupon(50), (1000, 500), id="example 5: $10/month, 50% forever -> $5"),
        pytest.param(12000, "year", coupon(10), (1000, 900), id="example 5: $120/year, 10% forever -> $9"),
        pytest.param(1000, "month", coupon(25.5), (1000, 745), id="§4 percent_off float 25.5 read exactly"),
        pytest.param(1000, "month", coupon(100), (1000, 0), id="§4 100% coupon -> 0"),
        pytest.param(1000, "month", coupon(None, 300), (1000, 700), id="§4 amount_off $3 on a monthly sub"),
        pytest.param(
            120000,
            "year",
            coupon(None, 12000),
            (10000, 9000),
            id="§4 amount_off per invoice normalised: $120 off a yearly $1,200 -> $10/month off",
        ),
        pytest.param(1000, "month", coupon(None, 5000), (1000, 0), id="§4 never below 0"),
    ],
)
def test_forever_discounts(
    build: Any, unit: int, interval: str, held: dict[str, Any], expected: tuple[int, int]
) -> None:
    assert mrr(build(unit, interval, held=held)) == expected


@pytest.mark.parametrize("build", SHAPES)
@pytest.mark.parametrize(
    ("at", "expected"),
    [
        pytest.param(AT, 900, id="example 6: 10% repeating 3 months -> $9 while active"),
        pytest.param(
            datetime(2024, 4, 30, 12, 0, tzinfo=UTC),
            1000,
            id="example 6: -> $10 from discount.end (end exclusive)",
        ),
        pytest.param(datetime(2024, 1, 1, tzinfo=UTC), 1000, id="§4 before discount.start: not subtracted"),
    ],
)
def test_worked_example_6_repeating(build: Any, at: datetime, expected: int) -> None:
    end = datetime(2024, 4, 30, 12, 0, tzinfo=UTC)
    payload = build(1000, held=coupon(10, duration="repeating", duration_in_months=3), end=end)

    assert mrr(payload, at) == (1000, expected)
    assert value_breakpoints(payload, IGNORE) == (end,)


def test_repeating_discount_without_end_ends_after_its_months() -> None:
    payload = current_subscription(1000, held=coupon(10, duration="repeating", duration_in_months=3))

    assert value_breakpoints(payload, IGNORE) == (datetime(2024, 4, 30, 12, 0, tzinfo=UTC),)


@pytest.mark.parametrize("build", SHAPES)
@pytest.mark.parametrize(
    ("rules", "at", "expected"),
    [
        pytest.param(IGNORE, AT, 10000, id="example 7: 20% once on $1,200/year -> $100 (DISCOUNTS_ONCE=ignore)"),
        pytest.param(SUBTRACT, AT, 8000, id="example 7: -> $80 with DISCOUNTS_ONCE=subtract in its first period"),
        pytest.param(
            SUBTRACT,
            datetime(2025, 1, 31, 12, 0, tzinfo=UTC),
            10000,
            id="example 7: -> $100 again once the first (yearly) period is over",
        ),
    ],
)
def test_worked_example_7_once(build: Any, rules: RuleSettings, at: datetime, expected: int) -> None:
    payload = build(120000, "year", held=coupon(20, duration="once"))

    assert mrr(payload, at, rules) == (10000, expected)


@pytest.mark.parametrize(
    ("rules", "interval", "expected"),
    [
        pytest.param(IGNORE, "year", (), id="§4 once, ignore: never changes the value"),
        pytest.param(
            SUBTRACT,
            "year",
            (datetime(2025, 1, 31, 12, 0, tzinfo=UTC),),
            id="§4 once, subtract: start + 1 year",
        ),
        pytest.param(
            SUBTRACT,
            "month",
            (datetime(2024, 2, 29, 12, 0, tzinfo=UTC),),
            id="§4 once, subtract: start + 1 month, day clamped",
        ),
    ],
)
def test_once_breakpoints(rules: RuleSettings, interval: str, expected: tuple[datetime, ...]) -> None:
    payload = current_subscription(1000, interval, held=coupon(20, duration="once"))

    assert value_breakpoints(payload, rules) == expected


def test_forever_discount_has_no_breakpoint() -> None:
    assert value_breakpoints(current_subscription(held=coupon(10)), SUBTRACT) == ()


def test_breakpoints_are_sorted_unique_and_utc() -> None:
    late, early = datetime(2024, 9, 1, tzinfo=UTC), datetime(2024, 5, 1, tzinfo=UTC)
    repeating = coupon(10, duration="repeating", duration_in_months=3)
    payload = subscription(
        item(price(1000), discounts=[discount(repeating, end=early, discount_id="di_item")]),
        discounts=[
            discount(repeating, end=late, discount_id="di_a"),
            discount(repeating, end=early, discount_id="di_b"),
        ],
    )

    breakpoints = value_breakpoints(payload, IGNORE)

    assert breakpoints == (early, late)
    assert all(instant.utcoffset() == UTC.utcoffset(None) for instant in breakpoints)


def test_applies_to_products_limits_the_discount() -> None:
    payload = subscription(
        item(price(1000, price_id="price_a", product="prod_a"), item_id="si_a"),
        item(price(1000, price_id="price_b", product="prod_b"), item_id="si_b"),
        discounts=[discount(coupon(50, applies_to={"products": ["prod_b"]}))],
    )

    value = subscription_mrr(payload, AT, IGNORE)

    assert (value.gross, value.net) == (2000, 1500)
    assert [i.net for i in value.items] == [1000, 500]


def test_item_discount_applies_to_its_item_only() -> None:
    payload = subscription(
        item(price(1000, price_id="price_a"), item_id="si_a", discounts=[discount(coupon(10))]),
        item(price(1000, price_id="price_b"), item_id="si_b"),
    )

    value = subscription_mrr(payload, AT, IGNORE)

    assert (value.net, [i.net for i in value.items]) == (1900, [900, 1000])


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        pytest.param(coupon(10), coupon(None, 100), 800, id="§4 stacked: 10% then $1 off -> $8.00"),
        pytest.param(coupon(None, 100), coupon(10), 810, id="§4 stacked: $1 off then 10% -> $8.10"),
        pytest.param(coupon(50), coupon(50), 250, id="§4 stacked: 50% then 50% on what is left -> $2.50"),
        pytest.param(coupon(None, 800), coupon(None, 800), 0, id="§4 stacked: never below 0"),
    ],
)
def test_stacked_discounts_apply_in_order(first: dict[str, Any], second: dict[str, Any], expected: int) -> None:
    payload = subscription(
        item(price(1000)),
        discounts=[discount(first, discount_id="di_1"), discount(second, discount_id="di_2")],
    )

    assert mrr(payload) == (1000, expected)


def test_item_discounts_apply_before_subscription_discounts() -> None:
    payload = subscription(
        item(price(1000), discounts=[discount(coupon(None, 200), discount_id="di_item")]),
        discounts=[discount(coupon(50), discount_id="di_sub")],
    )

    # (1000 − 200) × 50% = 400, not 1000 × 50% − 200 = 300.
    assert mrr(payload) == (1000, 400)


def test_subscription_amount_off_is_spread_pro_rata_over_items() -> None:
    payload = subscription(
        item(price(3000, price_id="price_a"), item_id="si_a"),
        item(price(1000, price_id="price_b"), item_id="si_b"),
        discounts=[discount(coupon(None, 1000))],
    )

    value = subscription_mrr(payload, AT, IGNORE)

    assert (value.net, [i.net for i in value.items]) == (3000, [2250, 750])


def test_subscription_amount_off_on_mixed_intervals_uses_the_shortest() -> None:
    payload = subscription(
        item(price(1000, price_id="price_m"), item_id="si_m"),
        item(price(120000, "year", price_id="price_y"), item_id="si_y"),
        discounts=[discount(coupon(None, 500))],
    )

    # Every monthly invoice carries the $5 off.
    assert mrr(payload) == (11000, 10500)


@pytest.mark.parametrize(
    ("held", "expected"),
    [
        pytest.param(coupon(None, 300, currency="eur"), 1000, id="§4 amount_off in another currency: ignored"),
        pytest.param(
            coupon(None, 300, currency="eur", currency_options={"usd": {"amount_off": 200}}),
            800,
            id="§4 amount_off from the coupon's currency_options",
        ),
        pytest.param(coupon(None, 300, currency="USD"), 700, id="§4 amount_off currency compared lower-case"),
    ],
)
def test_amount_off_currency(held: dict[str, Any], expected: int) -> None:
    assert mrr(current_subscription(1000, held=held)) == (1000, expected)


def test_2023_payload_resolves_discount_ids_from_the_singular_discount() -> None:
    expanded = discount(coupon(10), discount_id="di_sub")
    payload = subscription(item(price(1000)), discounts=["di_sub"], discount=expanded)

    assert mrr(payload) == (1000, 900)


def test_older_discount_shape_with_coupon_at_top_level() -> None:
    older = discount("unused", discount_id="di_old")
    del older["source"]
    older["coupon"] = coupon(10)

    assert mrr(subscription(item(price(1000)), discounts=[older])) == (1000, 900)


@pytest.mark.parametrize(
    ("lines", "discounts", "expected"),
    [
        pytest.param(
            [("prod_a", Fraction(1000))],
            [MonthlyDiscount("di", percent_off=Fraction("12.5"))],
            (Fraction(875),),
            id="percent_off",
        ),
        pytest.param(
            [("prod_a", Fraction(2000)), ("prod_b", Fraction(1000))],
            [MonthlyDiscount("di", amount_off=Fraction(100))],
            (Fraction(2000) - Fraction(200, 3), Fraction(1000) - Fraction(100, 3)),
            id="amount_off shared pro rata, exactly",
        ),
        pytest.param(
            [("prod_a", Fraction(2000)), ("prod_b", Fraction(1000))],
            [MonthlyDiscount("di", amount_off=Fraction(5000), products=frozenset({"prod_a"}))],
            (Fraction(0), Fraction(1000)),
            id="amount_off limited to its products and to what is left",
        ),
    ],
)
def test_apply_discounts(
    lines: list[tuple[str | None, Fraction]],
    discounts: list[MonthlyDiscount],
    expected: tuple[Fraction, ...],
) -> None:
    assert apply_discounts(lines, discounts) == expected


discount_terms = st.one_of(
    st.builds(
        lambda percent: coupon(percent),
        st.decimals(min_value=0, max_value=100, places=2).map(float),
    ),
    st.builds(lambda amount: coupon(None, amount), st.integers(min_value=1, max_value=10**6)),
)


@given(
    units=st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=4),
    held=st.lists(discount_terms, max_size=3),
    interval=st.sampled_from(["day", "week", "month", "year"]),
)
def test_net_is_between_zero_and_gross(units: list[int], held: list[dict[str, Any]], interval: str) -> None:
    payload = subscription(
        *(item(price(unit, interval, price_id=f"p{n}"), item_id=f"si_{n}") for n, unit in enumerate(units)),
        discounts=[discount(terms, discount_id=f"di_{n}") for n, terms in enumerate(held)],
    )

    value = subscription_mrr(payload, AT, SUBTRACT)

    assert 0 <= value.net <= value.gross
    assert all(0 <= i.net <= i.gross for i in value.items)


# --- Objects the caller must fetch first --------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "object_id", "missing"),
    [
        pytest.param(
            subscription(item(price(1000)), discounts=["di_webhook"]),
            "di_webhook",
            "discount object",
            id="subscription discount given as an id (webhook payload)",
        ),
        pytest.param(
            subscription(item(price(1000), discounts=["di_item"])),
            "di_item",
            "discount object",
            id="item discount given as an id",
        ),
        pytest.param(
            subscription(item(price(1000)), discounts=[discount("SUMMER", discount_id="di_x")]),
            "di_x",
            "coupon",
            id="coupon not expanded under source",
        ),
        pytest.param(
            subscription(item(price(1000)), discounts=[discount(None, discount_id="di_y")]),
            "di_y",
            "coupon",
            id="source.coupon null",
        ),
        pytest.param(
            subscription(item(tiered("graduated", None))),
            "price_basic",
            "tiers",
            id="tiered price without tiers",
        ),
        pytest.param(
            subscription(item(price(1000)), id="sub_big", items={"data": [], "has_more": True}),
            "sub_big",
            "items",
            id="items list cut short (has_more)",
        ),
    ],
)
def test_unresolved_objects(payload: dict[str, Any], object_id: str, missing: str) -> None:
    with pytest.raises(UnresolvedStripeObject, match=object_id) as raised:
        subscription_mrr(payload, AT, IGNORE)
    assert (raised.value.object_id, raised.value.missing) == (object_id, missing)


def test_legacy_coupon_given_as_an_id_is_unresolved() -> None:
    payload = legacy_subscription(held=coupon(10))
    payload["discount"]["coupon"] = "SUMMER"

    with pytest.raises(UnresolvedStripeObject, match="SUMMER"):
        subscription_mrr(payload, AT, IGNORE)


def test_breakpoints_need_discount_objects_too() -> None:
    with pytest.raises(UnresolvedStripeObject, match="di_webhook"):
        value_breakpoints(subscription(item(price(1000)), discounts=["di_webhook"]), IGNORE)


def test_naive_instant_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        subscription_mrr(current_subscription(), datetime(2024, 2, 10), IGNORE)


def test_a_price_given_only_by_id_is_unresolved() -> None:
    from ledger.resolve import resolve_subscription

    payload = {
        "id": "sub_x",
        "currency": "usd",
        "items": {"data": [{"id": "si_1", "price": {"id": "price_9"}, "quantity": 1}]},
    }
    with pytest.raises(UnresolvedStripeObject) as raised:
        subscription_mrr(payload, datetime(2024, 1, 1, tzinfo=UTC), RuleSettings())
    assert (raised.value.object_id, raised.value.missing) == ("price_9", "price")
    stored = {
        "id": "price_9",
        "type": "recurring",
        "currency": "usd",
        "unit_amount": 700,
        "recurring": {"interval": "month", "interval_count": 1, "usage_type": "licensed"},
    }
    filled = resolve_subscription(payload, {"price_9": stored}.get)
    assert subscription_mrr(filled, datetime(2024, 1, 1, tzinfo=UTC), RuleSettings()).net == 700
