"""A synthetic Stripe account: the events a real account would have sent over
24 months, for `subledger demo`, the tests and the benchmarks.

`generate_account(customers=, seed=, now=)` simulates the account day by day
up to `now` and returns its events in Stripe's current API shape (the shape
of fixtures3.json: items carry `current_period_*`, subscriptions list
discounts by id, a discount names its coupon in `source.coupon`), the final
state of every object, and the MRR the generator itself expects at the end of
every UTC day. That expectation is the generator's own arithmetic on its own
state (`_worth`), written from docs/mrr-rules.md with the default settings;
it never calls ledger code, so comparing it with the ledger checks the ledger.

The same seed and `now` always give the same account. After the history,
`SyntheticAccount.live_activity(at)` keeps the account going: one signup,
upgrade, cancellation… per call, as events stamped `at`.

What the simulation keeps out, so every expected number is one the rules
define exactly: no two versions of one subscription in the same second; no
event at midnight; items of one subscription share one interval; one
discount at a time; amount-off coupons only on subscriptions in their own
currency; no repeating discount ends between `now` and the end of tomorrow
(such an end changes MRR with no event, so the ledger books it only after it
happened, while "end of today" would already include it).
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import math
import random
import string
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

API_VERSION = "2025-10-29.clover"
"""The API version the synthetic webhook endpoint is pinned to."""

HISTORY_MONTHS = 24
"""How far back the account's history goes from `now`."""

DEFAULT_CUSTOMERS = 300
"""Customers of a default-size account."""

DAY = 86_400
HOUR = 3_600

MONTHS_PER_INTERVAL = {
    "month": Fraction(1),
    "year": Fraction(1, 12),
    "week": Fraction("365.2425") / 12 / 7,
}
"""mrr-rules.md §3: the factor that turns one billing period's amount into a month's."""

PAYING = frozenset({"active", "past_due"})
"""mrr-rules.md §2: the statuses whose items count (no grace period by default)."""

ALPHANUMERIC = string.ascii_letters + string.digits


# --- The catalog ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    key: str
    name: str
    unit_label: str | None
    tier: int
    """Position on the upgrade path (0: not on it)."""


PRODUCTS = (
    Product("starter", "Starter", None, 1),
    Product("team", "Team", "seat", 2),
    Product("business", "Business", None, 3),
    Product("sprint", "Sprint (weekly)", "seat", 0),
    Product("support", "Priority support", None, 0),
)

LIST_PRICES: dict[tuple[str, str], dict[str, int]] = {
    ("starter", "month"): {"usd": 1900, "eur": 1700},
    ("starter", "year"): {"usd": 19000, "eur": 17000},
    ("team", "month"): {"usd": 1200, "eur": 1100},
    ("team", "year"): {"usd": 12000, "eur": 11000},
    ("business", "month"): {"usd": 19900, "eur": 17900},
    ("business", "year"): {"usd": 199000, "eur": 179000},
    ("sprint", "week"): {"usd": 900, "eur": 800},
    ("support", "month"): {"usd": 2900, "eur": 2600},
    ("support", "year"): {"usd": 29000, "eur": 26000},
}
"""Unit amount per billing period, per (product, interval) and currency."""

CURRENCIES = ("usd", "eur")


@dataclass(frozen=True)
class CouponTerms:
    code: str
    name: str
    duration: str
    percent_off: float | None = None
    amount_off: int | None = None
    currency: str | None = None
    duration_in_months: int | None = None


COUPONS = (
    CouponTerms("LAUNCH50", "50% off for 3 months", "repeating", percent_off=50, duration_in_months=3),
    CouponTerms("FRIENDS20", "20% off forever", "forever", percent_off=20),
    CouponTerms("NONPROFIT", "12.5% off forever", "forever", percent_off=12.5),
    CouponTerms("WELCOME25", "25% off the first invoice", "once", percent_off=25),
    CouponTerms("WINBACK30", "30% off for 2 months", "repeating", percent_off=30, duration_in_months=2),
    CouponTerms("SAVE5", "$5 off forever", "forever", amount_off=500, currency="usd"),
    CouponTerms("FIRST15", "$15 off the first invoice", "once", amount_off=1500, currency="usd"),
    CouponTerms("EURO10X6", "€10 off for 6 months", "repeating", amount_off=1000, currency="eur", duration_in_months=6),
)

FIRST_NAMES = (
    "Ada", "Alan", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Edsger",
    "Radia", "Guido", "Katherine", "Tim", "Hedy", "Bjarne", "Annie", "Niklaus", "Shafi", "John",
)  # fmt: skip
COMPANY_WORDS = (
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell", "Cyberdyne",
    "Soylent", "Wonka", "Gringotts", "Oscorp", "Aperture", "Monarch", "Pied Piper", "Dunder", "Massive", "Nakatomi",
)  # fmt: skip
COMPANY_KINDS = ("Labs", "Systems", "Analytics", "Studio", "GmbH", "SAS", "Inc", "Cloud", "Health", "Logistics")


# --- Arithmetic on instants ----------------------------------------------------------------


def add_months(instant: int, months: int) -> int:
    """`months` calendar months after `instant`, the day clamped to the month's end (as Stripe bills)."""
    moment = datetime.fromtimestamp(instant, UTC)
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def add_periods(anchor: int, interval: str, count: int) -> int:
    if interval == "week":
        return anchor + count * 7 * DAY
    return add_months(anchor, count * (12 if interval == "year" else 1))


def period_around(anchor: int, interval: str, at: int) -> tuple[int, int]:
    """The billing period [start, end) of a subscription anchored at `anchor` that holds `at`."""
    if at < anchor:
        return anchor, add_periods(anchor, interval, 1)
    if interval == "week":
        count = (at - anchor) // (7 * DAY)
    else:
        moment, start = datetime.fromtimestamp(at, UTC), datetime.fromtimestamp(anchor, UTC)
        months = (moment.year - start.year) * 12 + moment.month - start.month
        count = max(months // (12 if interval == "year" else 1) - 1, 0)
    while add_periods(anchor, interval, count + 1) <= at:
        count += 1
    return add_periods(anchor, interval, count), add_periods(anchor, interval, count + 1)


def round_half_up(amount: Fraction) -> int:
    return math.floor(amount + Fraction(1, 2))


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """A `Stripe-Signature` header: `t=…,v1=HMAC-SHA256(secret, "{t}.{payload}")`, as Stripe signs."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


# --- The simulated objects -----------------------------------------------------------------


@dataclass
class Price:
    id: str
    product: Product
    product_id: str
    interval: str
    currency: str
    unit_amount: int
    created: int

    def stripe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "price",
            "active": True,
            "billing_scheme": "per_unit",
            "created": self.created,
            "currency": self.currency,
            "custom_unit_amount": None,
            "livemode": False,
            "lookup_key": f"{self.product.key}_{self.interval}ly_{self.currency}",
            "metadata": {},
            "nickname": f"{self.product.name} {self.interval}ly ({self.currency.upper()})",
            "product": self.product_id,
            "recurring": {
                "interval": self.interval,
                "interval_count": 1,
                "meter": None,
                "trial_period_days": None,
                "usage_type": "licensed",
            },
            "tax_behavior": "unspecified",
            "tiers_mode": None,
            "transform_quantity": None,
            "type": "recurring",
            "unit_amount": self.unit_amount,
            "unit_amount_decimal": str(self.unit_amount),
        }

    def plan(self) -> dict[str, Any]:
        """The legacy `plan` twin Stripe still puts beside the price on an item."""
        return {
            "id": self.id,
            "object": "plan",
            "active": True,
            "amount": self.unit_amount,
            "amount_decimal": str(self.unit_amount),
            "billing_scheme": "per_unit",
            "created": self.created,
            "currency": self.currency,
            "interval": self.interval,
            "interval_count": 1,
            "livemode": False,
            "metadata": {},
            "meter": None,
            "nickname": None,
            "product": self.product_id,
            "tiers_mode": None,
            "transform_usage": None,
            "trial_period_days": None,
            "usage_type": "licensed",
        }


@dataclass
class Coupon:
    id: str
    terms: CouponTerms
    created: int

    def stripe(self) -> dict[str, Any]:
        terms = self.terms
        return {
            "id": self.id,
            "object": "coupon",
            "amount_off": terms.amount_off,
            "created": self.created,
            "currency": terms.currency,
            "duration": terms.duration,
            "duration_in_months": terms.duration_in_months,
            "livemode": False,
            "max_redemptions": None,
            "metadata": {},
            "name": terms.name,
            "percent_off": terms.percent_off,
            "redeem_by": None,
            "times_redeemed": 0,
            "valid": True,
        }


@dataclass
class Discount:
    id: str
    coupon: Coupon
    customer: str
    subscription: str
    start: int
    end: int | None

    def stripe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "discount",
            "checkout_session": None,
            "customer": self.customer,
            "customer_account": None,
            "end": self.end,
            "invoice": None,
            "invoice_item": None,
            "promotion_code": None,
            "source": {"type": "coupon", "coupon": self.coupon.id},
            "start": self.start,
            "subscription": self.subscription,
            "subscription_item": None,
        }


@dataclass
class Item:
    id: str
    price: Price
    quantity: int
    created: int


@dataclass
class Customer:
    id: str
    name: str
    email: str
    currency: str
    created: int
    subscriptions: list[Subscription] = field(default_factory=list)

    def stripe(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": self.created,
            "currency": self.currency,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": self.email,
            "invoice_prefix": self.id[4:12].upper(),
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": {},
            "name": self.name,
            "next_invoice_sequence": 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }


@dataclass
class Subscription:
    id: str
    customer: Customer
    created: int
    status: str
    items: list[Item]
    anchor: int
    trial_start: int | None = None
    trial_end: int | None = None
    discount: Discount | None = None
    cancel_at_period_end: bool = False
    cancel_at: int | None = None
    canceled_at: int | None = None
    ended_at: int | None = None
    cancellation_reason: str | None = None
    last_event_at: int = 0
    worth: list[tuple[int, int]] = field(default_factory=list)
    """(instant, net MRR from then on), by the generator's own arithmetic."""

    @property
    def currency(self) -> str:
        return self.customer.currency

    @property
    def interval(self) -> str:
        return self.items[0].price.interval

    @property
    def ended(self) -> bool:
        return self.status in ("canceled", "incomplete_expired")

    def period(self, at: int) -> tuple[int, int]:
        if self.status == "trialing" and self.trial_start is not None and self.trial_end is not None:
            return self.trial_start, self.trial_end
        return period_around(self.anchor, self.interval, min(at, self.ended_at or at))

    def stripe(self, at: int) -> dict[str, Any]:
        """The subscription as Stripe would show it at `at`."""
        period_start, period_end = self.period(at)
        return {
            "id": self.id,
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
            "billing_cycle_anchor": self.anchor,
            "billing_cycle_anchor_config": None,
            "billing_mode": {"type": "classic"},
            "billing_thresholds": None,
            "cancel_at": self.cancel_at,
            "cancel_at_period_end": self.cancel_at_period_end,
            "canceled_at": self.canceled_at,
            "cancellation_details": {"comment": None, "feedback": None, "reason": self.cancellation_reason},
            "collection_method": "charge_automatically",
            "created": self.created,
            "currency": self.currency,
            "customer": self.customer.id,
            "customer_account": None,
            "days_until_due": None,
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": [self.discount.id] if self.discount else [],
            "ended_at": self.ended_at,
            "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
            "items": {
                "object": "list",
                "data": [
                    {
                        "id": item.id,
                        "object": "subscription_item",
                        "billing_thresholds": None,
                        "created": item.created,
                        "current_period_end": period_end,
                        "current_period_start": period_start,
                        "discounts": [],
                        "metadata": {},
                        "plan": item.price.plan(),
                        "price": item.price.stripe(),
                        "quantity": item.quantity,
                        "subscription": self.id,
                        "tax_rates": [],
                    }
                    for item in self.items
                ],
                "has_more": False,
                "total_count": len(self.items),
                "url": f"/v1/subscription_items?subscription={self.id}",
            },
            "latest_invoice": None,
            "livemode": False,
            "metadata": {},
            "next_pending_invoice_item_invoice": None,
            "on_behalf_of": None,
            "pause_collection": None,
            "payment_settings": {
                "payment_method_options": None,
                "payment_method_types": None,
                "save_default_payment_method": "off",
            },
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "schedule": None,
            "start_date": self.created,
            "status": self.status,
            "test_clock": None,
            "transfer_data": None,
            "trial_end": self.trial_end,
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
            "trial_start": self.trial_start,
        }


def _worth(subscription: Subscription) -> int:
    """Net MRR of the subscription as it stands, by mrr-rules.md with the default settings.

    §2: only active and past_due count. §3: each item's amount per period ×
    the month factor of its interval, summed exactly. §4: a forever or
    repeating discount is taken off while it is on the subscription (the
    simulation removes a repeating one at its `end`), percent or amount
    normalised like the price; a once discount is ignored; never below 0.
    §1: rounded half-up once.
    """
    if subscription.status not in PAYING:
        return 0
    gross = sum(
        (Fraction(item.price.unit_amount * item.quantity) * MONTHS_PER_INTERVAL[item.price.interval])
        for item in subscription.items
    )
    net = Fraction(gross)
    discount = subscription.discount
    if discount is not None and discount.coupon.terms.duration != "once":
        terms = discount.coupon.terms
        if terms.percent_off is not None:
            net = net * (1 - Fraction(str(terms.percent_off)) / 100)
        elif terms.amount_off is not None:
            net = max(net - terms.amount_off * MONTHS_PER_INTERVAL[subscription.interval], Fraction(0))
    return round_half_up(net)


# --- The account ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveActivity:
    """What one live step did, and its events in delivery order."""

    description: str
    events: list[dict[str, Any]]


class SyntheticAccount:
    """The simulated account: its catalog, customers and subscriptions, and every event sent."""

    def __init__(self, *, customers: int = DEFAULT_CUSTOMERS, seed: int = 0, now: datetime | None = None) -> None:
        if customers < 1:
            raise ValueError("an account needs at least one customer")
        self.rng = random.Random(seed)
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        self.now = int(moment.timestamp())
        self.start = add_months(self.now, -HISTORY_MONTHS)
        today = moment.date()
        tomorrow_end = int(datetime.combine(today + timedelta(days=2), datetime.min.time(), UTC).timestamp())
        self._no_silent_change = (self.now - HOUR, tomorrow_end)
        self._ids: set[str] = set()
        self._sequence = 0
        self.catalog_events: list[dict[str, Any]] = []
        self.history_events: list[tuple[int, int, dict[str, Any]]] = []
        self._live: list[dict[str, Any]] | None = None
        self.live_events: list[dict[str, Any]] = []
        """Every event `live_activity` made, in order."""
        self.customers: list[Customer] = []
        self.products: dict[str, tuple[Product, str]] = {}
        self.prices: dict[tuple[str, str, str], Price] = {}
        self.coupons: dict[str, Coupon] = {}
        self.discounts: list[Discount] = []
        self._build_catalog()
        for _ in range(customers):
            self._customer_history(self._signup_time())
        self.history_events.sort(key=lambda entry: (entry[0], entry[1]))

    # --- ids and events ------------------------------------------------------------------

    def _id(self, prefix: str, length: int = 14) -> str:
        while True:
            body = "".join(self.rng.choice(ALPHANUMERIC) for _ in range(length))
            candidate = f"{prefix}_1{body[1:]}" if length > 20 else f"{prefix}_{body}"
            if candidate not in self._ids:
                self._ids.add(candidate)
                return candidate

    def _event(
        self, kind: str, obj: dict[str, Any], created: int, previous: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        event = {
            "id": self._id("evt", 24),
            "object": "event",
            "api_version": API_VERSION,
            "created": created,
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": self._id("req", 14), "idempotency_key": None},
            "type": kind,
        }
        self._sequence += 1
        if self._live is not None:
            self._live.append(event)
        elif kind.split(".")[0] in ("product", "price", "coupon"):
            self.catalog_events.append(event)
        else:
            self.history_events.append((created, self._sequence, event))
        return event

    # --- catalog -------------------------------------------------------------------------

    def _build_catalog(self) -> None:
        at = self.start - 3 * DAY + self.rng.randrange(9 * HOUR, 17 * HOUR)
        for product in PRODUCTS:
            product_id = self._id("prod")
            self.products[product.key] = (product, product_id)
            self._event("product.created", self._product(product, product_id, at), at)
            at += self.rng.randrange(5, 90)
        for (key, interval), amounts in LIST_PRICES.items():
            product, product_id = self.products[key]
            for currency in CURRENCIES:
                price = Price(self._id("price", 24), product, product_id, interval, currency, amounts[currency], at)
                self.prices[(key, interval, currency)] = price
                self._event("price.created", price.stripe(), at)
                at += self.rng.randrange(5, 90)
        for terms in COUPONS:
            created = at if terms.code != "WINBACK30" else self.start + 200 * DAY + 11 * HOUR
            coupon = Coupon(terms.code, terms, created)
            self.coupons[terms.code] = coupon
            self._event("coupon.created", coupon.stripe(), created)
            at += self.rng.randrange(5, 90)

    @staticmethod
    def _product(product: Product, product_id: str, at: int) -> dict[str, Any]:
        return {
            "id": product_id,
            "object": "product",
            "active": True,
            "created": at,
            "default_price": None,
            "description": None,
            "images": [],
            "livemode": False,
            "marketing_features": [],
            "metadata": {},
            "name": product.name,
            "package_dimensions": None,
            "shippable": None,
            "statement_descriptor": None,
            "tax_code": None,
            "type": "service",
            "unit_label": product.unit_label,
            "updated": at,
            "url": None,
        }

    # --- times ---------------------------------------------------------------------------

    def _signup_time(self) -> int:
        # Density grows linearly over the history: a growing business.
        span = self.now - self.start - 2 * DAY
        return self._daytime(self.start + int(span * math.sqrt(self.rng.random())))

    def _daytime(self, at: int) -> int:
        """`at` moved to a random time of its UTC day, never near midnight."""
        midnight = at - at % DAY
        return midnight + self.rng.randrange(2 * HOUR, 22 * HOUR)

    def _days(self, mean: float) -> int:
        return max(int(self.rng.expovariate(1 / mean) * DAY), HOUR)

    # --- customers -----------------------------------------------------------------------

    def _new_customer(self, at: int) -> Customer:
        company = f"{self.rng.choice(COMPANY_WORDS)} {self.rng.choice(COMPANY_KINDS)}"
        first = self.rng.choice(FIRST_NAMES)
        domain = company.lower().replace(" ", "")
        currency = "eur" if self.rng.random() < 0.22 else "usd"
        customer = Customer(self._id("cus"), company, f"{first.lower()}@{domain}.example", currency, at)
        self.customers.append(customer)
        self._event("customer.created", customer.stripe(), at)
        return customer

    def _customer_history(self, at: int) -> None:
        customer = self._new_customer(at)
        subscription: Subscription | None = self._subscribe(customer, at + self.rng.randrange(30, 600))
        second_at = at + self._days(120)
        if self.rng.random() < 0.08 and second_at < self.now:
            self._run(self._subscribe(customer, self._daytime(second_at), kind="second"))
        while subscription is not None:
            ended_at = self._run(subscription)
            if ended_at is None or self.rng.random() > 0.35:
                return
            back_at = self._daytime(ended_at + self._days(90) + 14 * DAY)
            subscription = self._subscribe(customer, back_at, kind="return") if back_at < self.now else None

    def _plan(self, currency: str, kind: str) -> list[Item]:
        roll = self.rng.random()
        if kind == "second":
            return [self._item("support", "month", currency, 1, 0)]
        if roll < 0.15:
            return [self._item("sprint", "week", currency, self.rng.randint(1, 5), 0)]
        interval = "year" if roll > 0.72 else "month"
        key = self.rng.choices(("starter", "team", "business"), weights=(45, 38, 17))[0]
        quantity = self.rng.randint(2, 25) if key == "team" else 1
        items = [self._item(key, interval, currency, quantity, 0)]
        if key == "business" and self.rng.random() < 0.3:
            items.append(self._item("support", interval, currency, 1, 0))
        return items

    def _item(self, key: str, interval: str, currency: str, quantity: int, at: int) -> Item:
        return Item(self._id("si"), self.prices[(key, interval, currency)], quantity, at)

    # --- a subscription's life -----------------------------------------------------------

    def _subscribe(self, customer: Customer, at: int, *, kind: str = "first") -> Subscription | None:
        """A new subscription: paid, in a trial, or incomplete (its first payment pending)."""
        if at >= self.now:
            return None
        items = self._plan(customer.currency, kind)
        for item in items:
            item.created = at
        roll = self.rng.random()
        status = "trialing" if roll < 0.3 and kind == "first" else "incomplete" if roll > 0.95 else "active"
        status = "active" if kind == "live" else status
        subscription = Subscription(self._id("sub", 24), customer, at, status, items, anchor=at)
        customer.subscriptions.append(subscription)
        if status == "trialing":
            subscription.trial_start, subscription.trial_end = at, at + 14 * DAY
            subscription.anchor = subscription.trial_end
        coupon = self._pick_coupon(subscription, at) if self.rng.random() < 0.25 else None
        if coupon is not None:
            subscription.discount = self._new_discount(subscription, at, coupon)
        self._emit(subscription, "customer.subscription.created", at)
        return subscription

    def _pick_coupon(self, subscription: Subscription, at: int) -> Coupon | None:
        usable = [
            coupon
            for coupon in self.coupons.values()
            if coupon.created < at
            and coupon.terms.currency in (None, subscription.currency)
            and not self._ends_silently(coupon, at)
        ]
        return self.rng.choice(usable) if usable else None

    def _ends_silently(self, coupon: Coupon, start: int) -> bool:
        if coupon.terms.duration != "repeating" or coupon.terms.duration_in_months is None:
            return False
        end = add_months(start, coupon.terms.duration_in_months)
        return self._no_silent_change[0] <= end <= self._no_silent_change[1]

    def _new_discount(self, subscription: Subscription, at: int, coupon: Coupon) -> Discount:
        months = coupon.terms.duration_in_months
        end = add_months(at, months) if coupon.terms.duration == "repeating" and months else None
        discount = Discount(self._id("di", 24), coupon, subscription.customer.id, subscription.id, at, end)
        self.discounts.append(discount)
        # Stripe sends the discount's own event in the same second as the subscription's.
        self._event("customer.discount.created", discount.stripe(), at)
        return discount

    def _emit(
        self,
        subscription: Subscription,
        kind: str,
        at: int,
        previous: dict[str, Any] | None = None,
        *,
        effective: int | None = None,
    ) -> None:
        """Send the subscription's version at `at`; note its worth from `effective` (default `at`) on."""
        assert at > subscription.last_event_at, "two versions of one subscription in one second"
        subscription.last_event_at = at
        self._event(kind, subscription.stripe(at), at, previous)
        worth = _worth(subscription)
        effective = at if effective is None else effective
        if not subscription.worth or subscription.worth[-1][1] != worth:
            subscription.worth.append((effective, worth))

    def _update(self, subscription: Subscription, at: int, change: Any, *, effective: int | None = None) -> None:
        """Apply `change` to the subscription and send `customer.subscription.updated`, with `previous_attributes`."""
        before = subscription.stripe(at)
        change()
        after = subscription.stripe(at)
        previous = {key: value for key, value in before.items() if after.get(key) != value}
        self._emit(subscription, "customer.subscription.updated", at, previous, effective=effective)

    def _run(self, subscription: Subscription | None) -> int | None:
        """Live the subscription's life up to `now`: the instant it ended, or None if it still runs."""
        if subscription is None:
            return None
        at = subscription.created
        plan: tuple[int, str] | None = None
        while True:
            if subscription.ended:
                return subscription.ended_at or at
            due = self._due(subscription, at)
            if plan is None and subscription.status == "active":
                plan = self._next_action(subscription, at)
            candidates = [c for c in (due, plan) if c is not None]
            when, what = min(candidates)
            if due is not None and plan is not None and abs(plan[0] - due[0]) < 5:
                plan = (plan[0] + 60, plan[1])
                continue
            if when >= self.now:
                return None
            if (when, what) == plan:
                plan = None
            at = max(when, subscription.last_event_at + 1)
            self._act(subscription, what, at)

    def _due(self, subscription: Subscription, at: int) -> tuple[int, str] | None:
        """What the subscription's own state brings next: a trial end, a discount end, a period end…"""
        found: list[tuple[int, str]] = []
        if subscription.status == "trialing" and subscription.trial_end is not None:
            found.append((subscription.trial_end, "trial_end"))
        if subscription.status == "incomplete":
            payment = self.rng.random() < 0.5
            found.append((subscription.created + (self.rng.randrange(60, 3000) if payment else 23 * HOUR), "payment"))
        discount_end = self._discount_end(subscription)
        if discount_end is not None:
            found.append((discount_end, "discount_end"))
        if subscription.cancel_at_period_end and subscription.cancel_at is not None:
            found.append((subscription.cancel_at, "period_end"))
        if subscription.status == "past_due":
            recovered = self.rng.random() < 0.75
            found.append((at + (self.rng.randrange(1, 10) * DAY if recovered else 14 * DAY), "recovery"))
            if not recovered:
                found[-1] = (found[-1][0], "dunning_failed")
        return min(found) if found else None

    @staticmethod
    def _discount_end(subscription: Subscription) -> int | None:
        """When the subscription's repeating discount ends, if it sees that happen."""
        discount = subscription.discount
        if discount is None or discount.end is None or subscription.status == "trialing":
            return None
        # A subscription ending at its period end before its discount does never sees the discount end.
        if subscription.cancel_at is not None and discount.end >= subscription.cancel_at:
            return None
        return discount.end

    def _next_action(self, subscription: Subscription, at: int) -> tuple[int, str]:
        when = at + self._days(80)
        weekly = subscription.interval == "week"
        actions = {
            "upgrade": 0 if weekly else 24,
            "downgrade": 0 if weekly else 9,
            "quantity": 14,
            "coupon": 0 if subscription.discount else 5,
            "interval": 5 if subscription.interval == "month" else 0,
            "past_due": 10,
            "cancel_now": 10,
            "cancel_at_period_end": 12,
        }
        if subscription.cancel_at_period_end:
            actions = {"undo_cancel": 1}
            start, end = at, subscription.cancel_at or at
            if end - start < 2 * DAY or self.rng.random() < 0.75:
                return (end + DAY, "nothing")  # comes after the period end: never happens
            when = start + self.rng.randrange(DAY, end - start - DAY)
        what = self.rng.choices(list(actions), weights=list(actions.values()))[0]
        if what == "past_due":
            _, renewal = subscription.period(when)
            when = renewal + self.rng.randrange(300, 3 * HOUR)
        return when, what

    def _act(self, subscription: Subscription, what: str, at: int) -> None:
        getattr(self, f"_on_{what}")(subscription, at)

    # --- what happens to a subscription (history and live mode alike) ---------------------

    def _on_nothing(self, subscription: Subscription, at: int) -> None:
        pass

    def _on_trial_end(self, subscription: Subscription, at: int) -> None:
        if self.rng.random() < 0.7:

            def convert() -> None:
                subscription.status = "active"

            self._update(subscription, at, convert)
        else:
            self._end(subscription, at, "cancellation_requested")

    def _on_payment(self, subscription: Subscription, at: int) -> None:
        paid = at - subscription.created < HOUR

        def settle() -> None:
            subscription.status = "active" if paid else "incomplete_expired"
            if not paid:
                subscription.ended_at = at

        # mrr-rules.md §5: a subscription that starts paid counts from its `start_date`.
        self._update(subscription, at, settle, effective=subscription.created if paid else None)

    def _on_discount_end(self, subscription: Subscription, at: int) -> None:
        discount = subscription.discount
        assert discount is not None
        self._event("customer.discount.deleted", discount.stripe(), at)

        def remove() -> None:
            subscription.discount = None

        self._update(subscription, at, remove)

    def _on_period_end(self, subscription: Subscription, at: int) -> None:
        self._end(subscription, at, subscription.cancellation_reason or "cancellation_requested")

    def _on_recovery(self, subscription: Subscription, at: int) -> None:
        def paid() -> None:
            subscription.status = "active"

        self._update(subscription, at, paid)

    def _on_dunning_failed(self, subscription: Subscription, at: int) -> None:
        self._end(subscription, at, "payment_failed")

    def _end(self, subscription: Subscription, at: int, reason: str) -> None:
        """Canceled now: `customer.subscription.deleted`, ended at this instant."""
        subscription.status = "canceled"
        subscription.canceled_at = subscription.canceled_at or at
        subscription.ended_at = at
        subscription.cancellation_reason = reason
        self._emit(subscription, "customer.subscription.deleted", at)

    def _on_cancel_now(self, subscription: Subscription, at: int) -> None:
        self._end(subscription, at, "cancellation_requested")

    def _on_cancel_at_period_end(self, subscription: Subscription, at: int) -> None:
        def schedule() -> None:
            subscription.cancel_at_period_end = True
            subscription.cancel_at = subscription.period(at)[1]
            subscription.canceled_at = at
            subscription.cancellation_reason = "cancellation_requested"

        self._update(subscription, at, schedule)

    def _on_undo_cancel(self, subscription: Subscription, at: int) -> None:
        def undo() -> None:
            subscription.cancel_at_period_end = False
            subscription.cancel_at = subscription.canceled_at = None
            subscription.cancellation_reason = None

        self._update(subscription, at, undo)

    def _on_past_due(self, subscription: Subscription, at: int) -> None:
        def failed() -> None:
            subscription.status = "past_due"

        self._update(subscription, at, failed)

    def _on_coupon(self, subscription: Subscription, at: int) -> None:
        coupon = self._pick_coupon(subscription, at)
        if coupon is None:
            return
        discount = self._new_discount(subscription, at, coupon)

        def attach() -> None:
            subscription.discount = discount

        self._update(subscription, at, attach)

    def _on_quantity(self, subscription: Subscription, at: int) -> None:
        item = subscription.items[0]
        if item.price.product.unit_label != "seat":
            self._on_upgrade(subscription, at)
            return
        step = self.rng.choice((-3, -2, -1, 1, 1, 2, 3, 5))
        quantity = max(1, item.quantity + step)
        if quantity == item.quantity:
            quantity += 1

        def seats() -> None:
            subscription.items[0] = Item(item.id, item.price, quantity, item.created)

        self._update(subscription, at, seats)

    def _swap(self, subscription: Subscription, at: int, key: str, interval: str | None = None) -> None:
        """Replace the main item by a price of product `key` (same currency, same or given interval)."""
        interval = interval or subscription.interval
        old = subscription.items[0]
        quantity = self.rng.randint(3, 12) if key == "team" else 1
        if key == "team" and old.price.product.key == "team":
            quantity = old.quantity
        new = self._item(key, interval, subscription.currency, quantity, at)
        rest = [
            i
            if i.price.interval == interval
            else self._item(i.price.product.key, interval, subscription.currency, i.quantity, at)
            for i in subscription.items[1:]
        ]

        def swap() -> None:
            subscription.items = [new, *rest]
            if interval != old.price.interval:
                # Changing the billing interval starts a new period now (Stripe resets the anchor).
                subscription.anchor = at

        self._update(subscription, at, swap)

    def _on_upgrade(self, subscription: Subscription, at: int) -> None:
        current = subscription.items[0].price.product
        if current.key == "sprint":  # weekly only: more seats is the way up
            self._on_quantity(subscription, at)
        elif current.key == "business":
            if len(subscription.items) == 1:
                support = self._item("support", subscription.interval, subscription.currency, 1, at)

                def add_support() -> None:
                    subscription.items.append(support)

                self._update(subscription, at, add_support)
        elif current.key == "team" and self.rng.random() < 0.5:
            self._on_quantity(subscription, at)
        else:
            self._swap(subscription, at, "team" if current.key == "starter" else "business")

    def _on_downgrade(self, subscription: Subscription, at: int) -> None:
        current = subscription.items[0].price.product
        if len(subscription.items) > 1:

            def drop_support() -> None:
                subscription.items = subscription.items[:1]

            self._update(subscription, at, drop_support)
        elif current.key == "sprint" or (
            current.key == "team" and subscription.items[0].quantity > 3 and self.rng.random() < 0.5
        ):
            self._on_quantity(subscription, at)
        elif current.key != "starter":
            self._swap(subscription, at, "starter" if current.key == "team" else "team")

    def _on_interval(self, subscription: Subscription, at: int) -> None:
        self._swap(subscription, at, subscription.items[0].price.product.key, "year")

    # --- after the history ---------------------------------------------------------------

    def live_activity(self, at: int) -> LiveActivity:
        """One thing happening now (`at`, after the history): its description and its events."""
        self.now = max(self.now, at)
        try:
            for _ in range(10):  # a step can find nothing to do (a downgrade of the cheapest plan)
                events: list[dict[str, Any]] = []
                self._live = events
                description = self._live_step(at)
                if events:
                    break
            self.live_events.extend(events)
            return LiveActivity(description, events)
        finally:
            self._live = None

    def _live_step(self, at: int) -> str:
        running = [
            s
            for c in self.customers
            for s in c.subscriptions
            if s.status == "active" and not s.cancel_at_period_end and s.last_event_at < at
        ]
        what = self.rng.choices(
            ("signup", "upgrade", "quantity", "downgrade", "cancel_now", "cancel_at_period_end"),
            weights=(36, 20, 16, 8, 12, 8),
        )[0]
        if what == "signup" or not running:
            self.now = at + 1  # _subscribe starts nothing at or after `now`
            customer = self._new_customer(at)
            subscription = self._subscribe(customer, at, kind="live")
            assert subscription is not None
            return f"new signup: {customer.name} ({customer.id}) on {self._describe(subscription)}"
        subscription = self.rng.choice(running)
        before = self._describe(subscription)
        self._act(subscription, what, at)
        name = subscription.customer.name
        if subscription.ended:
            return f"{name} canceled {before}"
        if subscription.cancel_at_period_end:
            return f"{name} will cancel {before} at the end of the period"
        after = self._describe(subscription)
        return f"{name}: {before} → {after}" if after != before else f"{name}: no change ({before})"

    @staticmethod
    def _describe(subscription: Subscription) -> str:
        parts = []
        for item in subscription.items:
            seats = f" ×{item.quantity}" if item.quantity > 1 else ""
            parts.append(f"{item.price.product.name}{seats}")
        worth = f"{subscription.currency.upper()} {_worth(subscription) / 100:,.2f}/mo"
        return f"{' + '.join(parts)} {subscription.interval}ly, {worth}"

    # --- results -------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Every history event in delivery order: the catalog first, then by `created`."""
        return [*self.catalog_events, *(event for _, _, event in self.history_events)]

    def expected_mrr(self) -> dict[str, dict[str, int]]:
        """Per currency, per UTC day of the history: MRR at the end of the day, in minor units."""
        first = datetime.fromtimestamp(self.start, UTC).date()
        last = datetime.fromtimestamp(self.now, UTC).date()
        deltas: dict[str, dict[date, int]] = {currency: {} for currency in CURRENCIES}
        for customer in self.customers:
            for subscription in customer.subscriptions:
                previous = 0
                for instant, worth in subscription.worth:
                    if instant > self.now:
                        break
                    day = datetime.fromtimestamp(instant, UTC).date()
                    per_day = deltas[subscription.currency]
                    per_day[day] = per_day.get(day, 0) + worth - previous
                    previous = worth
        expected: dict[str, dict[str, int]] = {}
        for currency, per_day in deltas.items():
            running = sum(delta for day, delta in per_day.items() if day < first)
            series: dict[str, int] = {}
            for day in _days(first, last):
                running += per_day.get(day, 0)
                series[day.isoformat()] = running
            expected[currency] = series
        return expected

    def objects(self) -> dict[str, list[dict[str, Any]]]:
        """The final state (at `now`) of every object of the account."""
        return {
            "products": [self._product(p, pid, self.start) for p, pid in self.products.values()],
            "prices": [price.stripe() for price in self.prices.values()],
            "coupons": [coupon.stripe() for coupon in self.coupons.values()],
            "customers": [customer.stripe() for customer in self.customers],
            "subscriptions": [s.stripe(self.now) for c in self.customers for s in c.subscriptions],
            "discounts": [discount.stripe() for discount in self.discounts],
        }


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def generate_account(
    *, customers: int = DEFAULT_CUSTOMERS, seed: int = 0, now: datetime | None = None
) -> SyntheticAccount:
    """Simulate an account of `customers` customers over the 24 months up to `now` (default: now)."""
    return SyntheticAccount(customers=customers, seed=seed, now=now)


EXPORT_FILES = ("events.json", "objects.json", "expected_mrr.json")
"""What `export` writes."""


def export(account: SyntheticAccount, directory: Path) -> list[Path]:
    """Write the account's events, final objects and expected MRR as JSON files in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    contents: dict[str, Any] = {
        "events.json": account.events(),
        "objects.json": account.objects(),
        "expected_mrr.json": account.expected_mrr(),
    }
    written = []
    for name in EXPORT_FILES:
        path = directory / name
        path.write_text(json.dumps(contents[name], separators=(",", ":")) + "\n")
        written.append(path)
    return written
