"""What a Stripe subscription is worth per month: mrr-rules.md §1–§4.

Pure functions over Stripe payloads as plain dicts, in either shape a webhook
endpoint can be pinned to: the current API (items carry `price`, discounts are
lists on the subscription and on each item, coupons sit under
`discount.source.coupon`) and the 2020 one (a top-level `plan` and `quantity`,
a singular `discount` holding its `coupon`). Amounts are exact `Fraction`s of
the minor unit until a subscription total is rounded, once.

This module values items and discounts only. Whether a subscription counts at
all (`status`, trials, pauses, cancellation) is the timeline's business.
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from ledger.errors import SubledgerError
from ledger.settings import RuleSettings

StripeObject = Mapping[str, Any]
"""A Stripe API object as decoded from JSON."""

DAYS_PER_YEAR = Fraction("365.2425")
"""Mean Gregorian year, the basis of the week and day rows of §3."""

MONTHS_FACTOR: Mapping[str, Fraction] = {
    "month": Fraction(1),
    "year": Fraction(1, 12),
    "week": DAYS_PER_YEAR / 12 / 7,
    "day": DAYS_PER_YEAR / 12,
}
"""§3's f(interval): how many times one interval fits into a month."""


class UnresolvedStripeObject(SubledgerError, ValueError):
    """The payload holds an id (or lacks a field) where an object is needed.

    The caller fetches or expands the named object and calls again; the
    message says which object and what is missing.
    """

    def __init__(self, message: str, *, object_id: str = "", missing: str = "") -> None:
        super().__init__(message)
        self.object_id = object_id
        self.missing = missing


@dataclass(frozen=True)
class ItemMRR:
    """One counted subscription item's monthly worth, each amount rounded half-up on its own."""

    item_id: str
    """Subscription item id; for a legacy single-plan subscription, the plan id."""
    price_id: str
    product_id: str | None
    currency: str
    """Lower-case ISO code."""
    gross: int
    """Monthly list amount, minor units."""
    net: int
    """After item and subscription discounts, minor units."""


@dataclass(frozen=True)
class SubscriptionMRR:
    """A subscription's monthly worth at one instant.

    `gross` and `net` are rounded once from the exact sum of the items, so the
    rounded `items` may differ from them by a cent or so: the totals are the
    numbers that count, the items are a breakdown for display.
    """

    currency: str
    gross: int
    net: int
    items: tuple[ItemMRR, ...]


@dataclass(frozen=True)
class MonthlyDiscount:
    """A discount active at the valuation instant, its `amount_off` already per month."""

    discount_id: str
    percent_off: Fraction | None = None
    amount_off: Fraction | None = None
    """Minor units per month."""
    products: frozenset[str] | None = None
    """The coupon's `applies_to.products`; None means every item."""


# --- §1 Money ------------------------------------------------------------------------------


def round_half_up(amount: Fraction) -> int:
    """Nearest integer, halves away from zero (2.5 → 3, -2.5 → -3)."""
    rounded = math.floor(abs(amount) + Fraction(1, 2))
    return rounded if amount >= 0 else -rounded


# --- §2 What counts: item amounts ----------------------------------------------------------


def item_amount(price: StripeObject, quantity: int) -> Fraction:
    """Amount per billing period of `quantity` units of a price (or legacy plan), minor units.

    Follows Stripe's billing: per-unit prices multiply the unit amount by the
    quantity after `transform_quantity`; tiered prices take the volume tier the
    quantity falls in, or sum every graduated tier it reaches, each with its
    flat amount.
    """
    if (price.get("billing_scheme") or "per_unit") == "tiered":
        return _tiered_amount(price, quantity)
    unit = _money(price, "unit_amount")
    if unit is None:  # a legacy plan
        unit = _money(price, "amount")
    if unit is None:
        raise UnresolvedStripeObject(
            f"price {_id(price)} has no unit_amount: fetch the price and call again",
            object_id=_id(price),
            missing="unit_amount",
        )
    return unit * _transformed_quantity(price, quantity)


def _transformed_quantity(price: StripeObject, quantity: int) -> int:
    transform = price.get("transform_quantity") or price.get("transform_usage")
    if not transform:
        return quantity
    units = Fraction(quantity, int(transform["divide_by"]))
    return math.ceil(units) if transform.get("round") == "up" else math.floor(units)


def _tiered_amount(price: StripeObject, quantity: int) -> Fraction:
    tiers = price.get("tiers")
    if tiers is None:
        raise UnresolvedStripeObject(
            f"price {_id(price)} is tiered but carries no tiers: fetch it with "
            "expand[]=items.data.price.tiers (or expand[]=tiers) and call again",
            object_id=_id(price),
            missing="tiers",
        )
    mode = price.get("tiers_mode")
    if mode == "volume":
        for tier in tiers:
            up_to = _up_to(tier)
            if up_to is None or quantity <= up_to:
                return _tier_unit(tier) * quantity + _tier_flat(tier)
        raise ValueError(f"price {_id(price)}: no tier holds quantity {quantity}")
    if mode == "graduated":
        total = Fraction(0)
        lower = 0
        for index, tier in enumerate(tiers):
            up_to = _up_to(tier)
            # Quantity 0 still sits in the first tier, so its flat amount is due.
            if index == 0 or quantity > lower:
                units = max(0, (quantity if up_to is None else min(quantity, up_to)) - lower)
                total += _tier_unit(tier) * units + _tier_flat(tier)
            if up_to is None or quantity <= up_to:
                break
            lower = up_to
        return total
    raise ValueError(f"price {_id(price)}: unknown tiers_mode {mode!r}")


def _up_to(tier: StripeObject) -> int | None:
    up_to = tier.get("up_to")
    return None if up_to is None or up_to == "inf" else int(up_to)


def _tier_unit(tier: StripeObject) -> Fraction:
    return _money(tier, "unit_amount") or Fraction(0)


def _tier_flat(tier: StripeObject) -> Fraction:
    return _money(tier, "flat_amount") or Fraction(0)


def _money(source: StripeObject, field: str) -> Fraction | None:
    """`field_decimal` (exact decimal string) if present, else the integer `field`."""
    decimal = source.get(f"{field}_decimal")
    if decimal is not None:
        return Fraction(str(decimal))
    value = source.get(field)
    return None if value is None else Fraction(int(value))


# --- §3 Normalising to a month -------------------------------------------------------------


def monthly_amount(amount_per_period: Fraction, interval: str, interval_count: int) -> Fraction:
    """amount_per_period × f(interval) ÷ interval_count, exactly."""
    if interval not in MONTHS_FACTOR:
        raise ValueError(f"unknown billing interval {interval!r}")
    if interval_count < 1:
        raise ValueError(f"interval_count must be at least 1 (got {interval_count})")
    return amount_per_period * MONTHS_FACTOR[interval] / interval_count


def add_interval(start: datetime, interval: str, interval_count: int) -> datetime:
    """`start` moved on by `interval_count` intervals, on the calendar.

    Months and years keep the day of the month, clamped to the month's last
    day (31 January + 1 month = 28 or 29 February), as Stripe bills.
    """
    if interval == "day":
        return start + timedelta(days=interval_count)
    if interval == "week":
        return start + timedelta(weeks=interval_count)
    if interval not in ("month", "year"):
        raise ValueError(f"unknown billing interval {interval!r}")
    months = interval_count * (12 if interval == "year" else 1)
    years, month_index = divmod(start.month - 1 + months, 12)
    year, month = start.year + years, month_index + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return start.replace(year=year, month=month, day=day)


# --- §4 Discounts --------------------------------------------------------------------------


def apply_discounts(
    lines: Sequence[tuple[str | None, Fraction]], discounts: Sequence[MonthlyDiscount]
) -> tuple[Fraction, ...]:
    """What is left of each `(product_id, monthly amount)` line after the discounts, in order.

    Each discount works on what the previous ones left, and only on the lines
    whose product it applies to. An `amount_off` is shared among those lines
    pro rata to what is left on them and never takes more than is left.
    """
    left = [amount for _, amount in lines]
    for discount in discounts:
        eligible = [
            index
            for index, (product_id, _) in enumerate(lines)
            if discount.products is None or product_id in discount.products
        ]
        if discount.percent_off is not None:
            keep = max(Fraction(0), 1 - discount.percent_off / 100)
            for index in eligible:
                left[index] *= keep
        if discount.amount_off is not None:
            base = sum((left[index] for index in eligible), Fraction(0))
            if base > 0:
                taken = min(discount.amount_off, base)
                for index in eligible:
                    left[index] -= taken * left[index] / base
    return tuple(max(Fraction(0), amount) for amount in left)


@dataclass(frozen=True)
class _Coupon:
    coupon_id: str
    percent_off: Fraction | None
    amount_off: int | None
    currency: str | None
    currency_options: Mapping[str, Any]
    duration: str
    duration_in_months: int | None
    products: frozenset[str] | None

    def amount_off_in(self, currency: str) -> int | None:
        """The per-invoice amount off in `currency`; None when the coupon has none in it."""
        if self.amount_off is None:
            return None
        if self.currency is None or self.currency.lower() == currency:
            return self.amount_off
        option = self.currency_options.get(currency) or {}
        amount = option.get("amount_off")
        return None if amount is None else int(amount)


@dataclass(frozen=True)
class _Discount:
    discount_id: str
    coupon: _Coupon
    start: datetime | None
    end: datetime | None


@dataclass(frozen=True)
class _Line:
    item_id: str
    price_id: str
    product_id: str | None
    interval: str
    interval_count: int
    gross: Fraction
    discounts: tuple[_Discount, ...]


def _active_at(discount: _Discount, at: datetime, period: tuple[str, int], rules: RuleSettings) -> bool:
    if discount.start is not None and at < discount.start:
        return False
    if discount.end is not None and at >= discount.end:
        return False
    if discount.coupon.duration == "once":
        if rules.discounts_once != "subtract" or discount.start is None:
            return False
        return at < add_interval(discount.start, *period)
    return True


def _value_changes_at(discount: _Discount, period: tuple[str, int], rules: RuleSettings) -> datetime | None:
    if discount.coupon.duration == "once":
        if rules.discounts_once != "subtract" or discount.start is None:
            return None
        first_period_end = add_interval(discount.start, *period)
        return first_period_end if discount.end is None else min(first_period_end, discount.end)
    return discount.end


def _in_scope(discount: _Discount, lines: Sequence[_Line]) -> list[_Line]:
    products = discount.coupon.products
    return [line for line in lines if products is None or line.product_id in products]


def _billing_period(lines: Sequence[_Line]) -> tuple[str, int]:
    """The shortest interval among `lines`: how often an invoice carries the discount."""
    shortest = max(lines, key=lambda line: MONTHS_FACTOR[line.interval] / line.interval_count)
    return shortest.interval, shortest.interval_count


def _monthly(
    discount: _Discount, scope: Sequence[_Line], currency: str, at: datetime, rules: RuleSettings
) -> MonthlyDiscount | None:
    if not scope:
        return None
    period = _billing_period(scope)
    if not _active_at(discount, at, period, rules):
        return None
    coupon = discount.coupon
    if coupon.percent_off is not None:
        return MonthlyDiscount(discount.discount_id, percent_off=coupon.percent_off, products=coupon.products)
    amount_off = coupon.amount_off_in(currency)
    if amount_off is None:
        return None
    return MonthlyDiscount(
        discount.discount_id,
        amount_off=monthly_amount(Fraction(amount_off), *period),
        products=coupon.products,
    )


# --- Reading the payload -------------------------------------------------------------------


def _id(source: Any) -> str:
    if isinstance(source, str):
        return source
    if isinstance(source, Mapping):
        return str(source.get("id") or "")
    return ""


def _timestamp(value: Any) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(int(value), tz=UTC)


def _coupon(discount: StripeObject, discount_id: str) -> _Coupon:
    coupon = discount.get("coupon")
    if coupon is None and isinstance(discount.get("source"), Mapping):
        coupon = discount["source"].get("coupon")
    if not isinstance(coupon, Mapping):
        what = f"coupon {coupon!r} as an id" if isinstance(coupon, str) else "no coupon"
        raise UnresolvedStripeObject(
            f"discount {discount_id} holds {what}: fetch it with the coupon expanded "
            "(expand[]=discounts.source.coupon) and call again",
            object_id=discount_id,
            missing="coupon",
        )
    percent_off = coupon.get("percent_off")
    amount_off = coupon.get("amount_off")
    if percent_off is None and amount_off is None:
        raise UnresolvedStripeObject(
            f"coupon {_id(coupon)} has neither percent_off nor amount_off",
            object_id=_id(coupon),
            missing="percent_off/amount_off",
        )
    applies_to = coupon.get("applies_to") or {}
    products = applies_to.get("products")
    return _Coupon(
        coupon_id=_id(coupon),
        # JSON gives 25.5 as a float; its shortest repr is the decimal the user typed.
        percent_off=None if percent_off is None else Fraction(str(percent_off)),
        amount_off=None if amount_off is None else int(amount_off),
        currency=coupon.get("currency"),
        currency_options=coupon.get("currency_options") or {},
        duration=coupon.get("duration") or "forever",
        duration_in_months=coupon.get("duration_in_months"),
        products=frozenset(_id(product) for product in products) if products else None,
    )


def _discount(entry: Any, expanded: Mapping[str, StripeObject]) -> _Discount:
    if isinstance(entry, str):
        if entry not in expanded:
            raise UnresolvedStripeObject(
                f"discount {entry} is an id, not an object: fetch the subscription with "
                "expand[]=discounts and expand[]=items.data.discounts and call again",
                object_id=entry,
                missing="discount object",
            )
        entry = expanded[entry]
    if not isinstance(entry, Mapping):
        raise ValueError(f"discount must be an id or an object (got {entry!r})")
    discount_id = _id(entry) or f"discount of coupon {_id(entry.get('coupon'))}"
    coupon = _coupon(entry, discount_id)
    start = _timestamp(entry.get("start"))
    end = _timestamp(entry.get("end"))
    if end is None and coupon.duration == "repeating" and start is not None and coupon.duration_in_months:
        # Stripe always sets `end` on a repeating discount; this only covers hand-built payloads.
        end = add_interval(start, "month", int(coupon.duration_in_months))
    return _Discount(discount_id, coupon, start, end)


def _subscription_discounts(subscription: StripeObject) -> list[_Discount]:
    """`discounts` in order, plus a singular legacy `discount` not already among them.

    Payloads of 2023–2024 API versions list ids in `discounts` and expand the
    first one as `discount`; the ids are resolved against it.
    """
    single = subscription.get("discount")
    expanded: dict[str, StripeObject] = {}
    if isinstance(single, Mapping) and single.get("id"):
        expanded[str(single["id"])] = single
    entries = list(subscription.get("discounts") or [])
    listed = {_id(entry) for entry in entries}
    if single is not None and (not _id(single) or _id(single) not in listed):
        entries.append(single)
    return [_discount(entry, expanded) for entry in entries]


def _rate(item: StripeObject) -> StripeObject:
    """The item's price, or its legacy plan; a tiered price without tiers borrows the plan's."""
    price, plan = item.get("price"), item.get("plan")
    if isinstance(price, Mapping):
        if (
            price.get("billing_scheme") == "tiered"
            and price.get("tiers") is None
            and isinstance(plan, Mapping)
            and plan.get("tiers") is not None
        ):
            return plan
        return price
    if isinstance(plan, Mapping):
        return plan
    raise UnresolvedStripeObject(
        f"subscription item {_id(item)} carries no price object: fetch the subscription and call again",
        object_id=_id(item),
        missing="price",
    )


def _licensed_period(rate: StripeObject) -> tuple[str, int] | None:
    """(interval, interval_count) of a recurring licensed price or plan, else None."""
    if "interval" in rate:  # a legacy plan: always recurring
        recurring: StripeObject = rate
    else:
        if "type" not in rate and "recurring" not in rate:
            # Only an id (e.g. an invoice line's price): whether it is recurring is unknown.
            raise UnresolvedStripeObject(
                f"price {_id(rate)} is only an id: fetch the price and call again",
                object_id=_id(rate),
                missing="price",
            )
        if rate.get("type") == "one_time" or not isinstance(rate.get("recurring"), Mapping):
            return None
        recurring = rate["recurring"]
    if (recurring.get("usage_type") or "licensed") != "licensed":
        return None
    return str(recurring["interval"]), int(recurring.get("interval_count") or 1)


def _item_rows(subscription: StripeObject) -> list[tuple[str, StripeObject, int, list[Any]]]:
    """(item id, price or plan, quantity, item discounts) for every item of either shape."""
    items = subscription.get("items")
    if isinstance(items, Mapping):
        if items.get("has_more"):
            raise UnresolvedStripeObject(
                f"subscription {_id(subscription)} lists only part of its items: "
                "fetch them all (GET /v1/subscription_items) and call again",
                object_id=_id(subscription),
                missing="items",
            )
        data = items.get("data") or []
        # Licensed items always have a quantity in Stripe; a missing one is read as 1.
        return [
            (_id(item), _rate(item), _quantity(item.get("quantity")), list(item.get("discounts") or []))
            for item in data
        ]
    plan = subscription.get("plan")
    if isinstance(plan, Mapping):
        return [(_id(plan), plan, _quantity(subscription.get("quantity")), [])]
    return []


def _quantity(value: Any) -> int:
    return 1 if value is None else int(value)


def _currency(subscription: StripeObject, rows: Sequence[tuple[str, StripeObject, int, list[Any]]]) -> str:
    currency = subscription.get("currency") or (rows[0][1].get("currency") if rows else None)
    if not currency:
        raise UnresolvedStripeObject(
            f"subscription {_id(subscription)} has neither a currency nor an item to read it from",
            object_id=_id(subscription),
            missing="currency",
        )
    return str(currency).lower()


def _lines(subscription: StripeObject) -> tuple[str, list[_Line]]:
    rows = _item_rows(subscription)
    currency = _currency(subscription, rows)
    lines = []
    for item_id, rate, quantity, discounts in rows:
        period = _licensed_period(rate)
        if period is None:
            continue
        product = rate.get("product")
        lines.append(
            _Line(
                item_id=item_id,
                price_id=_id(rate),
                product_id=_id(product) or None,
                interval=period[0],
                interval_count=period[1],
                gross=monthly_amount(item_amount(rate, quantity), *period),
                discounts=tuple(_discount(entry, {}) for entry in discounts),
            )
        )
    return currency, lines


# --- The subscription ----------------------------------------------------------------------


def subscription_mrr(subscription: StripeObject, at: datetime, rules: RuleSettings) -> SubscriptionMRR:
    """Monthly worth of the subscription's recurring licensed items at `at`, discounts active then.

    Item discounts apply first, then the subscription's, each on what is left
    (Stripe's order). Raises UnresolvedStripeObject when a discount, coupon or
    tier list must be fetched first.
    """
    _require_aware(at)
    currency, lines = _lines(subscription)
    left: list[Fraction] = []
    for line in lines:
        monthly = [_monthly(d, _in_scope(d, [line]), currency, at, rules) for d in line.discounts]
        (amount,) = apply_discounts([(line.product_id, line.gross)], [d for d in monthly if d])
        left.append(amount)
    subscription_level = [
        _monthly(d, _in_scope(d, lines), currency, at, rules) for d in _subscription_discounts(subscription)
    ]
    left = list(
        apply_discounts(
            [(line.product_id, amount) for line, amount in zip(lines, left, strict=True)],
            [d for d in subscription_level if d],
        )
    )
    items = tuple(
        ItemMRR(
            item_id=line.item_id,
            price_id=line.price_id,
            product_id=line.product_id,
            currency=currency,
            gross=round_half_up(line.gross),
            net=round_half_up(net),
        )
        for line, net in zip(lines, left, strict=True)
    )
    gross = sum((line.gross for line in lines), Fraction(0))
    net = max(Fraction(0), sum(left, Fraction(0)))
    return SubscriptionMRR(currency=currency, gross=round_half_up(gross), net=round_half_up(net), items=items)


def value_breakpoints(subscription: StripeObject, rules: RuleSettings) -> tuple[datetime, ...]:
    """Instants at which `subscription_mrr` changes with no Stripe event, sorted, UTC.

    A repeating discount's `end`; with DISCOUNTS_ONCE=subtract, the end of a
    once-discount's first billing period.
    """
    _, lines = _lines(subscription)
    scoped = [(d, _in_scope(d, [line])) for line in lines for d in line.discounts]
    scoped += [(d, _in_scope(d, lines)) for d in _subscription_discounts(subscription)]
    instants = {
        instant
        for discount, scope in scoped
        if scope and (instant := _value_changes_at(discount, _billing_period(scope), rules)) is not None
    }
    return tuple(sorted(instant.astimezone(UTC) for instant in instants))


def _require_aware(at: datetime) -> None:
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"`at` must be a timezone-aware datetime (got {at.isoformat()})")
