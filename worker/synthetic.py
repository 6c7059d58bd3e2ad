"""A synthetic Stripe account with its ground truth: the one account simulator
of the demo (`subledger demo`), the tests and the whole-account replay
benchmark (bench/account_replay.py).

`SyntheticAccount(customers=, seed=, now=, months=, behaviour=, api_version=)`
simulates an account second by second over the `months` up to `now`, one
customer after another, and keeps:

- `events()`: every webhook event Stripe would have sent, in the order of
  `created` (then of emission); catalog events (products, prices, coupons
  created) first;
- `objects()`: every object as the API serves it at `now` (current API shape,
  whatever `api_version` the events use);
- `expected_customer_mrr()` / `expected_mrr()`: the MRR at the end of every
  UTC day, per customer and currency / per currency, computed from the
  simulation's own state (`_worth`), written from docs/mrr-rules.md with the
  default settings (DISCOUNTS_ONCE=ignore, CHURN_RECOGNITION=ended, no
  past-due grace, NETTING=day). It never calls ledger code, so comparing it
  with the ledger checks the ledger;
- `history_limits()`: the customers with a change no Stripe record shows
  (what an import from invoices alone cannot date), with the reason.

The same arguments always give the same account. After the history,
`live_activity(at)` keeps the account going: one signup, upgrade,
cancellation… per call, as events stamped `at` (the demo).

What is simulated (rates in `Behaviour`):

- Catalog: products on an upgrade path (Starter, Team per seat, Business),
  weekly ones (Sprint, Sprint Plus, per seat) and an add-on (Priority
  support); licensed per-unit prices monthly, every 3 and 6 months, yearly,
  weekly and every 2 weeks, in three currencies. Coupons of each duration,
  percent and amount off, some restricted to a product (`applies_to`), some
  created and deleted during the history while discounts made from them stay
  applied (`coupon.deleted`; the coupon is gone from `objects()`, listed by
  `deleted_coupons()`).
- Signups with a trial (a zero-amount `subscription_create` invoice with the
  trial lines), paid at once, or incomplete (paid within the hour, or
  `incomplete_expired` after 23 hours, its invoice voided). Subscriptions
  with a monthly and a yearly item side by side (`billing_mode` flexible,
  each item on its own period). A second subscription; customers coming back
  after a churn with a new subscription.
- Billing: an invoice for every creation, trial conversion, renewal
  (`subscription_cycle`, finalized and paid about an hour later, or in the
  same second) and immediately invoiced change (`subscription_update`), with
  Stripe's current shape: `parent.subscription_details`, lines under
  `parent.subscription_item_details` naming their price under
  `pricing.price_details`, `discount_amounts`, invoice `discounts` and
  `total_discount_amounts`. Items of a mixed subscription are each billed on
  the invoices of their own period.
- Changes: upgrades, downgrades, seat changes, add-ons added and removed, on
  every interval; a switch from monthly to yearly (new period, invoiced at
  once). Each is prorated as `proration_behavior` says: `create_prorations`
  (a credit for the unused time of what was removed and a debit for the
  time left of what was added, both from the change instant: invoice items,
  `invoiceitem.created`, billed on the next invoice), `always_invoice` (the
  same items on a `subscription_update` invoice at once) or `none` (no
  record at all). Proration amounts are the exact share of the period left,
  rounded half-up; proration lines carry no discount.
- Discounts on the subscription (up to two: percentages before amounts) or
  on one item, at signup or later, removed by hand, repeating ones ending
  at their `end` (`customer.discount.deleted` and an update).
- Trials that convert, lapse (canceled at `trial_end`), are extended (an
  update moving `trial_end`), end `paused` (no payment method; resumed later
  or canceled) or convert into a failed payment. Renewals that fail:
  `past_due`, then paid, or `unpaid` (later paid, canceled or left), or
  canceled. `pause_collection` set and cleared (renewal invoices voided,
  left as drafts or marked uncollectible). Cancellations now, at the period
  end and at a date (`cancel_at`), some undone.
- Three currencies (USD, EUR, GBP by default); with `api_version=
  API_VERSION_2020`, events in the 2020-03-02 shape (a subscription's
  period, `plan`, `quantity` and singular `discount` with its coupon on top;
  invoices with a top-level `subscription`, lines of `type` subscription or
  invoiceitem with `plan` and `price`), and what such an account could
  hold: one discount per subscription, none on items, no mixed intervals.
- Several events of one customer in one second: a subscription update with
  its invoice's events; two updates of one subscription (a change and a
  second change at once; a discount ending at a renewal; a renewal whose
  payment fails at once). `previous_attributes` always say exactly what each
  update replaced, so the order inside the second is in the objects.

What is kept out, so every expected number is one the rules define exactly:

- no event at midnight UTC;
- no repeating discount ends between an hour before `now` and the end of the
  day after (such an end changes MRR with no event, so a ledger books it only
  once it happened, while "the end of today" would already include it);
- amount-off coupons only on subscriptions in their own currency;
- two updates of one subscription in one second never undo each other;
- mixed intervals only from a signup, and such subscriptions are never
  switched to another interval, given or relieved of an add-on, or canceled
  at a period end or date (which period would be ambiguous);
- no metered, tiered or one-time prices, taxes, credit notes, refunds,
  customer-level discounts, promotion codes or subscription schedules;
  `invoice.payment_succeeded` (sent beside `invoice.paid`) and
  `invoice.updated` are not sent.

`objects()` holds, by kind: products, prices, coupons (not the deleted ones),
customers, subscriptions (every status; discounts as ids), discounts (every
one ever made, also those removed since, which invoices still name),
invoices (every one, all its lines) and invoiceitems (every proration).

Payload notes. A restricted coupon's `applies_to` is in its object in
`objects()` (so a fake API can serve it when `expand[]=applies_to` is asked)
but never in webhook payloads, as Stripe sends it only when expanded: a fake
server must remove it from what it serves otherwise. Events share unchanged
parts of their payloads (a price, an invoice's lines, constant sub-objects):
treat them as read-only, or copy them (a JSON round trip) before changing
them.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import math
import random
import string
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

API_VERSION = "2025-10-29.clover"
"""The API version events are rendered in by default (the synthetic webhook endpoint's)."""

API_VERSION_2020 = "2020-03-02"
"""The older shape `api_version` can ask for instead."""

HISTORY_MONTHS = 24
"""How far back the account's history goes from `now`, by default."""

DEFAULT_CUSTOMERS = 300
"""Customers of a default-size account."""

DAY = 86_400
HOUR = 3_600
MINUTE = 60

MONTHS_PER_INTERVAL = {
    "month": Fraction(1),
    "year": Fraction(1, 12),
    "week": Fraction("365.2425") / 12 / 7,
    "day": Fraction("365.2425") / 12,
}
"""mrr-rules.md §3: the factor that turns one interval's amount into a month's."""

PAYING = frozenset({"active", "past_due"})
"""mrr-rules.md §2: the statuses whose items count (no grace period by default)."""

ALPHANUMERIC = string.ascii_letters + string.digits

ACCOUNT_NAME = "Synthetic SaaS Inc."

Weights = tuple[tuple[str, float], ...]
"""Choices and their relative weights."""


# --- How the account behaves ---------------------------------------------------------------


@dataclass(frozen=True)
class Behaviour:
    """How often each kind of thing happens in the account.

    A rate is a probability per occasion (a signup, a renewal, a change); the
    weights of a `Weights` are relative to each other. The defaults give every
    behaviour of the module docstring in a 300-customer account over 12 months.
    """

    currencies: Weights = (("usd", 62), ("eur", 22), ("gbp", 16))
    """The customers' currencies (each customer pays in one)."""
    plans: Weights = (
        ("monthly", 52),
        ("yearly", 17),
        ("quarterly", 7),
        ("half_yearly", 5),
        ("weekly", 12),
        ("mixed", 7),
    )
    """First plans by billing interval; `mixed`: a monthly and a yearly item in one subscription."""
    trial_rate: float = 0.3
    """First subscriptions that start with a trial."""
    trial_outcomes: Weights = (("convert", 66), ("lapse", 20), ("pause", 7), ("fail", 7))
    """At `trial_end`: paid, canceled, `paused` (no payment method), or its first payment fails."""
    trial_extension_rate: float = 0.12
    """Trials whose end is moved later during the trial."""
    incomplete_rate: float = 0.05
    """Signups whose first payment fails (`incomplete`); half are paid within the hour."""
    signup_coupon_rate: float = 0.22
    """Signups with a coupon."""
    item_coupon_rate: float = 0.25
    """Coupons applied to one item rather than to the whole subscription."""
    restricted_coupons: bool = True
    """Coupons restricted to a product (`applies_to`) exist."""
    deleted_coupons: bool = True
    """Campaign coupons are created and deleted during the history."""
    second_subscription_rate: float = 0.08
    """Customers who take a second subscription beside the first."""
    return_rate: float = 0.35
    """Churned customers who come back later with a new subscription."""
    days_between_changes: float = 80.0
    """Mean days between two changes of a running subscription."""
    changes: Weights = (
        ("upgrade", 22),
        ("downgrade", 9),
        ("quantity", 14),
        ("add_item", 4),
        ("remove_item", 3),
        ("interval", 4),
        ("coupon", 7),
        ("remove_coupon", 4),
        ("cancel_now", 9),
        ("cancel_at_period_end", 10),
        ("cancel_at", 6),
        ("pause", 4),
    )
    """What a change is (among those that apply to the subscription)."""
    prorations: Weights = (("create_prorations", 60), ("always_invoice", 25), ("none", 15))
    """The `proration_behavior` of a change of items."""
    same_second_change_rate: float = 0.08
    """Changes followed by a second change of the same subscription in the same second."""
    undo_cancel_rate: float = 0.3
    """Scheduled cancellations undone before they happen."""
    renewal_failure_rate: float = 0.04
    """Renewal payments that fail (the subscription becomes `past_due`)."""
    dunning_outcomes: Weights = (("recover", 60), ("unpaid", 20), ("cancel", 20))
    """How a `past_due` spell ends."""
    unpaid_outcomes: Weights = (("pay", 40), ("cancel", 40), ("stay", 20))
    """How an `unpaid` spell ends (`stay`: still unpaid at `now` unless paid after it)."""
    instant_payment_rate: float = 0.3
    """Renewal invoices finalized and paid in the second they are created (else about an hour later)."""
    billing_events: bool = True
    """Send invoice and invoice item events and the renewal updates (the objects are kept either way)."""

    @classmethod
    def all_invoiced(cls) -> Behaviour:
        """An account whose every change an invoice or a proration shows (`history_limits()` is empty):
        no `proration_behavior=none`, no coupon added or removed after signup, no pause, no `unpaid` spell."""
        default = cls()
        return cls(
            trial_outcomes=tuple((outcome, weight) for outcome, weight in default.trial_outcomes if outcome != "pause"),
            # A coupon added mid-life may end before what it reduces is invoiced again: only signups get them.
            changes=tuple(
                (change, w) for change, w in default.changes if change not in ("coupon", "remove_coupon", "pause")
            ),
            prorations=tuple((proration, w) for proration, w in default.prorations if proration != "none"),
            dunning_outcomes=tuple((outcome, w) for outcome, w in default.dunning_outcomes if outcome != "unpaid"),
        )

    @classmethod
    def demo(cls) -> Behaviour:
        """The demo's account: USD and EUR, nothing a webhook cannot show, no billing events (a faster demo).

        Webhook payloads never carry a coupon's `applies_to`, so restricted
        coupons are left out: the demo has no Stripe API to read them from.
        """
        return cls(currencies=(("usd", 78), ("eur", 22)), restricted_coupons=False, billing_events=False)


# --- The catalog ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Product:
    key: str
    name: str
    unit_label: str | None
    tier: int
    """Position on its upgrade path (0: an add-on, on no path)."""
    weekly: bool = False
    """Sold by the week (the other products by the month, quarter, half-year or year)."""


PRODUCTS = (
    Product("starter", "Starter", None, 1),
    Product("team", "Team", "seat", 2),
    Product("business", "Business", None, 3),
    Product("sprint", "Sprint (weekly)", "seat", 1, weekly=True),
    Product("sprint_plus", "Sprint Plus (weekly)", "seat", 2, weekly=True),
    Product("support", "Priority support", None, 0),
)

BASE_AMOUNTS = {"starter": 1900, "team": 1200, "business": 19900, "support": 2900, "sprint": 900, "sprint_plus": 1500}
"""US cents for a month (for a week, weekly products)."""

CYCLE_MULTIPLIERS = {
    ("month", 1): Fraction(1),
    ("month", 3): Fraction("2.85"),
    ("month", 6): Fraction("5.4"),
    ("year", 1): Fraction(10),
    ("week", 1): Fraction(1),
    ("week", 2): Fraction("1.9"),
}
"""A period's price in base amounts: longer periods are cheaper per month."""

MONTHLY_CYCLES = (("month", 1), ("month", 3), ("month", 6), ("year", 1))
WEEKLY_CYCLES = (("week", 1), ("week", 2))

CURRENCY_FACTORS = {"usd": Fraction(1), "eur": Fraction("0.9"), "gbp": Fraction("0.8")}
"""Local list prices from the US ones (rounded to a whole unit of the currency)."""

CURRENCY_SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£"}


def list_amount(product: Product, interval: str, count: int, currency: str) -> int:
    """The unit amount of a product's price for one period, in the currency's minor unit."""
    amount = BASE_AMOUNTS[product.key] * CYCLE_MULTIPLIERS[(interval, count)] * CURRENCY_FACTORS[currency]
    return max(100, round_half_up(amount / 100) * 100)


@dataclass(frozen=True)
class CouponTerms:
    code: str
    name: str
    duration: str
    percent_off: float | None = None
    amount_off: int | None = None
    currency: str | None = None
    duration_in_months: int | None = None
    applies_to: tuple[str, ...] = ()
    """Product keys the coupon is restricted to (none: every item)."""
    created_at: float = 0.0
    """When it is created, as a share of the history (0: with the catalog)."""
    deleted_at: float | None = None
    """When it is deleted, as a share of the history (None: never)."""


COUPONS = (
    CouponTerms("LAUNCH50", "50% off for 3 months", "repeating", percent_off=50, duration_in_months=3),
    CouponTerms("FRIENDS20", "20% off forever", "forever", percent_off=20),
    CouponTerms("NONPROFIT", "12.5% off forever", "forever", percent_off=12.5),
    CouponTerms("WELCOME25", "25% off the first invoice", "once", percent_off=25),
    CouponTerms("WINBACK30", "30% off for 2 months", "repeating", percent_off=30, duration_in_months=2,
                created_at=0.25),
    CouponTerms("SAVE5", "$5 off forever", "forever", amount_off=500, currency="usd"),
    CouponTerms("FIRST15", "$15 off the first invoice", "once", amount_off=1500, currency="usd"),
    CouponTerms("EURO10X6", "€10 off for 6 months", "repeating", amount_off=1000, currency="eur", duration_in_months=6),
    CouponTerms("POUND4", "£4 off forever", "forever", amount_off=400, currency="gbp"),
    CouponTerms("SUPPORT50", "50% off Priority support", "forever", percent_off=50, applies_to=("support",)),
    CouponTerms("TEAM15X6", "15% off Team for 6 months", "repeating", percent_off=15, duration_in_months=6,
                applies_to=("team",)),
    CouponTerms("SEATS3", "$3 off Team forever", "forever", amount_off=300, currency="usd", applies_to=("team",)),
    CouponTerms("SUMMER15", "15% off forever (summer campaign)", "forever", percent_off=15, created_at=0.3,
                deleted_at=0.42),
    CouponTerms("FALL20X4", "20% off for 4 months (fall campaign)", "repeating", percent_off=20,
                duration_in_months=4, created_at=0.6, deleted_at=0.7),
    CouponTerms("CYBER10", "€10 off forever (cyber week)", "forever", amount_off=1000, currency="eur",
                created_at=0.8, deleted_at=0.88),
)  # fmt: skip

FIRST_NAMES = (
    "Ada", "Alan", "Grace", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances", "Edsger",
    "Radia", "Guido", "Katherine", "Tim", "Hedy", "Bjarne", "Annie", "Niklaus", "Shafi", "John",
)  # fmt: skip
COMPANY_WORDS = (
    "Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell", "Cyberdyne",
    "Soylent", "Wonka", "Gringotts", "Oscorp", "Aperture", "Monarch", "Pied Piper", "Dunder", "Massive", "Nakatomi",
)  # fmt: skip
COMPANY_KINDS = ("Labs", "Systems", "Analytics", "Studio", "GmbH", "SAS", "Inc", "Cloud", "Health", "Logistics")


# --- Arithmetic ----------------------------------------------------------------------------


def add_months(instant: int, months: int) -> int:
    """`months` calendar months after `instant`, the day clamped to the month's end (as Stripe bills)."""
    moment = datetime.fromtimestamp(instant, UTC)
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return int(moment.replace(year=year, month=month, day=day).timestamp())


def add_periods(anchor: int, interval: str, count: int) -> int:
    """`count` intervals after `anchor` (weeks and days are fixed lengths; months and years calendar ones)."""
    if interval == "week":
        return anchor + count * 7 * DAY
    if interval == "day":
        return anchor + count * DAY
    return add_months(anchor, count * (12 if interval == "year" else 1))


def round_half_up(amount: Fraction) -> int:
    """To the nearest integer, halves away from zero (mrr-rules.md §1)."""
    magnitude = math.floor(abs(amount) + Fraction(1, 2))
    return magnitude if amount >= 0 else -magnitude


def split(total: int, weights: Sequence[int]) -> list[int]:
    """`total` shared in proportion to `weights` in whole units; the remainder goes to the largest fractions."""
    whole = sum(weights)
    if whole <= 0:
        return [0] * len(weights)
    shares = [total * weight // whole for weight in weights]
    order = sorted(range(len(weights)), key=lambda n: (-(total * weights[n] % whole), n))
    for n in order[: total - sum(shares)]:
        shares[n] += 1
    return shares


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """A `Stripe-Signature` header: `t=…,v1=HMAC-SHA256(secret, "{t}.{payload}")`, as Stripe signs."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def _money(amount: int, currency: str) -> str:
    return f"{CURRENCY_SYMBOLS.get(currency, currency.upper() + ' ')}{amount / 100:,.2f}"


def _day(instant: int) -> date:
    return datetime.fromtimestamp(instant, UTC).date()


# --- The simulated objects -----------------------------------------------------------------


@dataclass(eq=False)
class Price:
    id: str
    product: Product
    product_id: str
    interval: str
    currency: str
    unit_amount: int
    created: int
    interval_count: int = 1
    _rendered: dict[str, Any] | None = field(default=None, repr=False)
    _plan: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def factor(self) -> Fraction:
        """What one period's amount is worth a month (mrr-rules.md §3)."""
        return MONTHS_PER_INTERVAL[self.interval] / self.interval_count

    @property
    def cycle(self) -> tuple[str, int]:
        return self.interval, self.interval_count

    def describe_period(self) -> str:
        return self.interval if self.interval_count == 1 else f"{self.interval_count} {self.interval}s"

    def stripe(self) -> dict[str, Any]:
        """The price object (one shared copy: events carry it unchanged)."""
        if self._rendered is None:
            self._rendered = {
                "id": self.id,
                "object": "price",
                "active": True,
                "billing_scheme": "per_unit",
                "created": self.created,
                "currency": self.currency,
                "custom_unit_amount": None,
                "livemode": False,
                "lookup_key": f"{self.product.key}_{self.interval}_{self.interval_count}_{self.currency}",
                "metadata": {},
                "nickname": f"{self.product.name} every {self.describe_period()} ({self.currency.upper()})",
                "product": self.product_id,
                "recurring": {
                    "interval": self.interval,
                    "interval_count": self.interval_count,
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
        return self._rendered

    def plan(self) -> dict[str, Any]:
        """The legacy `plan` twin Stripe still puts beside the price on an item (one shared copy)."""
        if self._plan is None:
            self._plan = {
                "id": self.id,
                "object": "plan",
                "active": True,
                "aggregate_usage": None,
                "amount": self.unit_amount,
                "amount_decimal": str(self.unit_amount),
                "billing_scheme": "per_unit",
                "created": self.created,
                "currency": self.currency,
                "interval": self.interval,
                "interval_count": self.interval_count,
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
        return self._plan


@dataclass(eq=False)
class Coupon:
    id: str
    terms: CouponTerms
    created: int
    deleted_at: int | None = None
    product_ids: tuple[str, ...] = ()
    """Stripe ids of the products of `terms.applies_to`."""
    redemptions: int = 0

    def stripe(self, *, applies_to: bool = False, redemptions: int | None = None) -> dict[str, Any]:
        """The coupon; `applies_to` (restricted coupons only) is includable: in Stripe's answers only when expanded."""
        terms = self.terms
        coupon: dict[str, Any] = {
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
            "times_redeemed": self.redemptions if redemptions is None else redemptions,
            "valid": True,
        }
        if applies_to and self.product_ids:
            coupon["applies_to"] = {"products": list(self.product_ids)}
        return coupon


@dataclass(eq=False)
class Discount:
    id: str
    coupon: Coupon
    customer: str
    subscription: str
    start: int
    end: int | None
    item: str | None = None
    """The subscription item it applies to (None: the whole subscription)."""
    used: bool = False
    """A once-coupon's discount has taken its one invoice."""
    removed_at: int | None = None
    _with_coupon: dict[str, Any] | None = field(default=None, repr=False)

    def stripe(self, api_version: str = API_VERSION) -> dict[str, Any]:
        """The discount; in the 2020 shape with its coupon inside, as it was when the discount was made
        (one shared copy, so versions of a subscription differ only where the subscription changed)."""
        if api_version == API_VERSION_2020 and self._with_coupon is not None:
            return self._with_coupon
        discount: dict[str, Any] = {
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
            "subscription_item": self.item,
        }
        if api_version == API_VERSION_2020:
            del discount["source"], discount["customer_account"], discount["subscription_item"]
            discount["coupon"] = self.coupon.stripe()
            self._with_coupon = discount
        return discount


@dataclass(eq=False)
class Item:
    id: str
    price: Price
    quantity: int
    created: int
    anchor: int = 0
    """The instant its billing periods are counted from."""
    cycle: int = 0
    """Which period since `anchor` runs now (-1: the trial)."""
    period_start: int = 0
    period_end: int = 0
    discounts: list[Discount] = field(default_factory=list)
    billed_by: tuple[str, str] | None = None
    """(invoice, line) that billed the current period: what a proration credit reverses."""

    def start_periods(self, anchor: int) -> None:
        """Periods counted from `anchor`, the first one running now."""
        self.anchor, self.cycle = anchor, 0
        self.period_start, self.period_end = anchor, self.period_after(0)

    def period_after(self, cycle: int) -> int:
        """When period number `cycle` (from the anchor) ends."""
        interval, count = self.price.cycle
        return add_periods(self.anchor, interval, count * (cycle + 1))

    def renew(self) -> None:
        self.cycle += 1
        self.period_start, self.period_end = self.period_end, self.period_after(self.cycle)


@dataclass(eq=False)
class Customer:
    id: str
    name: str
    email: str
    currency: str
    created: int
    invoice_prefix: str = "SYNTH000"
    invoices: int = 0
    """Invoices finalized so far (their numbers)."""
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
            "delinquent": any(s.status in ("past_due", "unpaid") for s in self.subscriptions),
            "description": None,
            "discount": None,
            "email": self.email,
            "invoice_prefix": self.invoice_prefix,
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": False,
            "metadata": {},
            "name": self.name,
            "next_invoice_sequence": self.invoices + 1,
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }


@dataclass(eq=False)
class Charge:
    """One line of an invoice (or a pending invoice item) before it is rendered."""

    item: Item
    price: Price
    quantity: int
    amount: int
    start: int
    end: int
    proration: bool
    description: str
    invoice_item: str | None = None
    credited: tuple[str, str] | None = None
    """(invoice, line) a proration credit reverses."""
    line_id: str = ""
    discount_amounts: list[tuple[int, str]] = field(default_factory=list)
    """(amount taken off, discount id), item discounts first."""
    line_discounts: list[str] = field(default_factory=list)
    """The item's own discounts (the invoice lists the subscription's)."""


@dataclass(eq=False)
class InvoiceItem:
    """A pending proration (`proration_behavior=create_prorations`), billed on the next invoice."""

    id: str
    subscription: Subscription
    charge: Charge
    created: int
    invoice: str | None = None


@dataclass(eq=False)
class Invoice:
    id: str
    subscription: Subscription
    created: int
    billing_reason: str
    period_start: int
    period_end: int
    charges: list[Charge]
    discounts: list[Discount] = field(default_factory=list)
    """The subscription's discounts that applied (its items' are on the lines)."""
    status: str = "draft"
    number: str | None = None
    collection: str = "charge"
    """How it is collected: `charge`; `open` (an unpaid subscription's: never attempted); or while
    collection is paused, its behavior (`void`, `keep_as_draft`, `mark_uncollectible`)."""
    attempts: int = 0
    finalized_at: int | None = None
    paid_at: int | None = None
    voided_at: int | None = None
    uncollectible_at: int | None = None
    _lines: dict[str, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def subtotal(self) -> int:
        return sum(charge.amount for charge in self.charges)

    def discount_totals(self) -> list[tuple[int, str]]:
        """(amount, discount id) per discount, in the order they first appear on the lines."""
        totals: dict[str, int] = {}
        for charge in self.charges:
            for amount, discount_id in charge.discount_amounts:
                totals[discount_id] = totals.get(discount_id, 0) + amount
        return [(amount, discount_id) for discount_id, amount in totals.items()]

    @property
    def total(self) -> int:
        return self.subtotal - sum(amount for amount, _ in self.discount_totals())


@dataclass(eq=False)
class Subscription:
    id: str
    customer: Customer
    created: int
    status: str
    items: list[Item]
    anchor: int
    billing_mode: str = "classic"
    """`classic` (every item on one period) or `flexible` (each item on its own: mixed intervals)."""
    trial_start: int | None = None
    trial_end: int | None = None
    discounts: list[Discount] = field(default_factory=list)
    cancel_at_period_end: bool = False
    cancel_at: int | None = None
    canceled_at: int | None = None
    ended_at: int | None = None
    cancellation_reason: str | None = None
    pause_collection: dict[str, Any] | None = None
    latest_invoice: str | None = None
    invoices: list[Invoice] = field(default_factory=list)
    pending: list[InvoiceItem] = field(default_factory=list)
    """Proration items not billed yet."""
    unsettled: Invoice | None = None
    """A renewal invoice waiting for its finalization and payment attempt."""
    timers: dict[str, int] = field(default_factory=dict)
    """What the subscription's own state brings, by name: when."""
    outcome: str = ""
    """What the running spell (first payment, dunning, unpaid, trial pause) ends with."""
    last_event_at: int = 0
    rendered: dict[str, Any] | None = field(default=None, repr=False)
    """The payload of the last version sent (in the events' API shape)."""
    worth: list[tuple[int, int]] = field(default_factory=list)
    """(instant, net MRR from then on), by the simulation's own arithmetic."""

    @property
    def currency(self) -> str:
        return self.customer.currency

    @property
    def ended(self) -> bool:
        return self.status in ("canceled", "incomplete_expired")

    @property
    def main(self) -> Item:
        return self.items[0]

    @property
    def mixed(self) -> bool:
        return self.billing_mode == "flexible"

    def all_discounts(self) -> list[Discount]:
        return [*self.discounts, *(d for item in self.items for d in item.discounts)]

    def describe(self) -> str:
        parts = [f"{i.price.product.name}{f' ×{i.quantity}' if i.quantity > 1 else ''}" for i in self.items]
        cycles = sorted({i.price.describe_period() for i in self.items})
        return f"{' + '.join(parts)} every {'/'.join(cycles)}"


# --- The rules, as the simulation's own arithmetic -----------------------------------------


def _applies(discount: Discount, item: Item) -> bool:
    """mrr-rules.md §4: a coupon restricted with `applies_to` only touches items of its products."""
    products = discount.coupon.terms.applies_to
    return not products or item.price.product.key in products


def _counts(discount: Discount, currency: str) -> bool:
    """§4 with DISCOUNTS_ONCE=ignore: forever and repeating (while on the subscription) count, once never;
    an amount off in another currency never applies."""
    terms = discount.coupon.terms
    if terms.duration == "once":
        return False
    return terms.amount_off is None or terms.currency == currency


def _off(value: Fraction, terms: CouponTerms, factor: Fraction) -> Fraction:
    """`value` after one coupon: a percentage, or an amount normalised like a price (§3), never below 0."""
    if terms.percent_off is not None:
        return value * (1 - Fraction(str(terms.percent_off)) / 100)
    return max(value - (terms.amount_off or 0) * factor, Fraction(0))


def _worth(subscription: Subscription) -> int:
    """Net MRR of the subscription as it stands, by docs/mrr-rules.md with the default settings.

    §2: only active and past_due count, and not while collection is paused.
    §3: each item's amount per period × its month factor (÷ interval_count),
    summed exactly. §4: item discounts first, then the subscription's, each
    in list order (the simulation keeps percentages before amounts); an
    item's amount off is normalised by its own interval, a subscription's by
    the shortest interval among the items it applies to; `applies_to`
    honoured; repeating ones while on the subscription (the simulation takes
    them off at their `end`), once never; never below 0. §1: the total
    rounded half-up once.
    """
    if subscription.status not in PAYING or subscription.pause_collection is not None:
        return 0
    currency = subscription.currency
    values: list[Fraction] = []
    for item in subscription.items:
        value = Fraction(item.price.unit_amount * item.quantity) * item.price.factor
        for discount in item.discounts:
            if _counts(discount, currency) and _applies(discount, item):
                value = _off(value, discount.coupon.terms, item.price.factor)
        values.append(value)
    for discount in subscription.discounts:
        applicable = [n for n, item in enumerate(subscription.items) if _applies(discount, item)]
        if not _counts(discount, currency) or not applicable:
            continue
        terms = discount.coupon.terms
        if terms.percent_off is not None:
            for n in applicable:
                values[n] = _off(values[n], terms, Fraction(1))
            continue
        shortest = max(subscription.items[n].price.factor for n in applicable)
        left = sum((values[n] for n in applicable), Fraction(0))
        after = _off(left, terms, shortest)
        for n in applicable:  # shared in proportion (the total is what counts)
            values[n] = values[n] * after / left if left else Fraction(0)
    return round_half_up(max(sum(values, Fraction(0)), Fraction(0)))


# --- Constant parts of payloads (shared: read-only) ----------------------------------------

_SUBSCRIPTION_TAX = {"disabled_reason": None, "enabled": False, "liability": None}
_SUBSCRIPTION_INVOICE_SETTINGS = {"account_tax_ids": None, "issuer": {"type": "self"}}
_SUBSCRIPTION_PAYMENT_SETTINGS = {
    "payment_method_options": None,
    "payment_method_types": None,
    "save_default_payment_method": "off",
}
_TRIAL_SETTINGS = {"end_behavior": {"missing_payment_method": "create_invoice"}}
_BILLING_MODES = {"classic": {"type": "classic"}, "flexible": {"type": "flexible", "flexible": {}}}
_INVOICE_TAX = {"disabled_reason": None, "enabled": False, "liability": None, "provider": None, "status": None}
_INVOICE_PAYMENT_SETTINGS = {"default_mandate": None, "payment_method_options": None, "payment_method_types": None}
_ISSUER = {"type": "self"}


TIMER_PRIORITY = {
    "payment": 1,
    "extend_trial": 3,
    "settle": 6,
    "dunning": 7,
    "unpaid_end": 7,
    "resume": 7,
    "undo_cancel": 7,
    "resume_paused": 7,
    "cancel_paused": 7,
}
"""Order of what falls in one second: a first payment, a scheduled end, a trial end, a discount end,
a renewal (after the discount that ends with it), the renewal's payment, the rest."""


@dataclass(frozen=True)
class LiveActivity:
    """What one live step did, and its events in delivery order."""

    description: str
    events: list[dict[str, Any]]


# --- The account ---------------------------------------------------------------------------


class SyntheticAccount:
    """The simulated account: catalog, customers, subscriptions, invoices, every event sent and the truth."""

    def __init__(
        self,
        *,
        customers: int = DEFAULT_CUSTOMERS,
        seed: int = 0,
        now: datetime | None = None,
        months: int = HISTORY_MONTHS,
        behaviour: Behaviour | None = None,
        api_version: str = API_VERSION,
    ) -> None:
        if customers < 1:
            raise ValueError("an account needs at least one customer")
        if months < 1:
            raise ValueError("the history needs at least one month")
        if api_version not in (API_VERSION, API_VERSION_2020):
            raise ValueError(f"api_version must be {API_VERSION} or {API_VERSION_2020}")
        self.behaviour = behaviour or Behaviour()
        unknown = [c for c, _ in self.behaviour.currencies if c not in CURRENCY_FACTORS]
        if unknown:
            raise ValueError(f"no list prices in {', '.join(unknown)}")
        self.api_version = api_version
        self.currencies = tuple(currency for currency, _ in self.behaviour.currencies)
        self.rng = random.Random(seed)
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        self.now = int(moment.timestamp())
        self.months = months
        self.start = add_months(self.now, -months)
        today = moment.date()
        tomorrow_end = int(datetime.combine(today + timedelta(days=2), datetime.min.time(), UTC).timestamp())
        self._no_silent_change = (self.now - HOUR, tomorrow_end)
        self._sequence = 0
        self.catalog_events: list[dict[str, Any]] = []
        self.history_events: list[tuple[int, int, dict[str, Any]]] = []
        self._live: list[dict[str, Any]] | None = None
        self.live_events: list[dict[str, Any]] = []
        """Every event `live_activity` made, in order."""
        self.customers: list[Customer] = []
        self.products: dict[str, tuple[Product, str]] = {}
        self._product_created: dict[str, int] = {}
        self.prices: dict[tuple[str, str, int, str], Price] = {}
        self.coupons: dict[str, Coupon] = {}
        self.discounts: list[Discount] = []
        self.invoices: list[Invoice] = []
        self.invoice_items: list[InvoiceItem] = []
        self.limits: dict[str, list[str]] = {}
        self._build_catalog()
        for _ in range(customers):
            self._customer_history(self._signup_time())
        self.history_events.sort()

    # --- ids and events ------------------------------------------------------------------

    def _id(self, prefix: str, length: int = 14) -> str:
        bits = self.rng.getrandbits(6 * length)
        chars = []
        for _ in range(length):
            bits, index = divmod(bits, 62)
            chars.append(ALPHANUMERIC[index])
        body = "".join(chars)
        return f"{prefix}_1{body[1:]}" if length > 20 else f"{prefix}_{body}"

    def _event(
        self,
        kind: str,
        obj: dict[str, Any],
        created: int,
        previous: dict[str, Any] | None = None,
        *,
        automatic: bool = False,
        catalog: bool = False,
    ) -> None:
        """Send an event; `automatic` ones (renewals, trial ends…) come from no API request."""
        if not self.behaviour.billing_events and kind.startswith("invoice"):  # invoice.* and invoiceitem.*
            return
        data: dict[str, Any] = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        event = {
            "id": self._id("evt", 24),
            "object": "event",
            "api_version": self.api_version,
            "created": created,
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None if automatic else self._id("req", 14), "idempotency_key": None},
            "type": kind,
        }
        self._sequence += 1
        if self._live is not None:
            self._live.append(event)
        elif catalog:
            self.catalog_events.append(event)
        else:
            self.history_events.append((created, self._sequence, event))

    def _limit(self, subscription: Subscription, at: int, reason: str) -> None:
        """Note a change of the subscription that no Stripe record (invoice, object) shows."""
        self.limits.setdefault(subscription.customer.id, []).append(
            f"{subscription.id}: {reason} on {_day(at).isoformat()}"
        )

    def _pick(self, weights: Weights) -> str:
        names = [name for name, _ in weights]
        return self.rng.choices(names, weights=[weight for _, weight in weights])[0]

    # --- catalog -------------------------------------------------------------------------

    def _build_catalog(self) -> None:
        at = self.start - 3 * DAY + self.rng.randrange(9 * HOUR, 17 * HOUR)
        for product in PRODUCTS:
            product_id = self._id("prod")
            self.products[product.key] = (product, product_id)
            self._product_created[product.key] = at
            self._event("product.created", self._product(product, product_id, at), at, catalog=True)
            at += self.rng.randrange(5, 90)
        for product in PRODUCTS:
            for interval, count in WEEKLY_CYCLES if product.weekly else MONTHLY_CYCLES:
                for currency in self.currencies:
                    amount = list_amount(product, interval, count, currency)
                    product_id = self.products[product.key][1]
                    price = Price(self._id("price", 24), product, product_id, interval, currency, amount, at, count)
                    self.prices[(product.key, interval, count, currency)] = price
                    self._event("price.created", price.stripe(), at, catalog=True)
                    at += self.rng.randrange(5, 90)
        for terms in COUPONS:
            if (terms.applies_to and not self.behaviour.restricted_coupons) or (
                terms.deleted_at is not None and not self.behaviour.deleted_coupons
            ):
                continue
            if terms.currency is not None and terms.currency not in self.currencies:
                continue
            created = at if not terms.created_at else self._history_instant(terms.created_at)
            if created >= self.now:
                continue
            deleted = None if terms.deleted_at is None else self._history_instant(terms.deleted_at)
            products = tuple(self.products[key][1] for key in terms.applies_to)
            coupon = Coupon(terms.code, terms, created, deleted if deleted and deleted < self.now else None, products)
            self.coupons[terms.code] = coupon
            self._event("coupon.created", coupon.stripe(redemptions=0), created, catalog=True)
            if coupon.deleted_at is not None:
                # Deleting a coupon stops new redemptions; the discounts made from it stay.
                self._event("coupon.deleted", coupon.stripe(redemptions=0), coupon.deleted_at)
            at += self.rng.randrange(5, 90)

    def _history_instant(self, share: float) -> int:
        return self._daytime(self.start + int((self.now - self.start) * share))

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
        currency = self._pick(self.behaviour.currencies)
        customer_id = self._id("cus")
        prefix = self._id("x", 8)[2:].upper()
        customer = Customer(customer_id, company, f"{first.lower()}@{domain}.example", currency, at, prefix)
        self.customers.append(customer)
        self._event("customer.created", customer.stripe(), at)
        return customer

    def _customer_history(self, at: int) -> None:
        customer = self._new_customer(at)
        subscription = self._subscribe(customer, at + self.rng.randrange(30, 600))
        second_at = at + self._days(120)
        if self.rng.random() < self.behaviour.second_subscription_rate and second_at < self.now:
            self._run(self._subscribe(customer, self._daytime(second_at), kind="second"))
        while subscription is not None:
            ended_at = self._run(subscription)
            if ended_at is None or self.rng.random() > self.behaviour.return_rate:
                return
            back_at = self._daytime(ended_at + self._days(90) + 14 * DAY)
            subscription = self._subscribe(customer, back_at, kind="return") if back_at < self.now else None

    def _plan(self, currency: str, kind: str) -> tuple[list[tuple[str, str, int, int]], str]:
        """The items (product, interval, interval count, quantity) of a new subscription, and its billing mode."""
        if kind == "second":
            return [("support", "month", 1, 1)], "classic"
        plan = self._pick(self.behaviour.plans)
        if plan == "mixed" and self.api_version == API_VERSION_2020:
            plan = "monthly"  # one period per subscription before flexible billing
        if plan == "weekly":
            key = "sprint" if self.rng.random() < 0.7 else "sprint_plus"
            count = 1 if self.rng.random() < 0.75 else 2
            return [(key, "week", count, self.rng.randint(1, 5))], "classic"
        key = self.rng.choices(("starter", "team", "business"), weights=(45, 38, 17))[0]
        quantity = self.rng.randint(2, 25) if key == "team" else 1
        if plan == "mixed":
            main, add_on = (("month", 1), ("year", 1)) if self.rng.random() < 0.6 else (("year", 1), ("month", 1))
            return [(key, *main, quantity), ("support", *add_on, 1)], "flexible"
        interval, count = {"monthly": ("month", 1), "yearly": ("year", 1), "quarterly": ("month", 3)}.get(
            plan, ("month", 6)
        )
        items = [(key, interval, count, quantity)]
        if key == "business" and self.rng.random() < 0.3:
            items.append(("support", interval, count, 1))
        return items, "classic"

    def _price(self, key: str, cycle: tuple[str, int], currency: str) -> Price:
        return self.prices[(key, cycle[0], cycle[1], currency)]

    def _item(self, key: str, cycle: tuple[str, int], currency: str, quantity: int, at: int) -> Item:
        return Item(self._id("si"), self._price(key, cycle, currency), quantity, at)

    # --- a subscription's life -----------------------------------------------------------

    def _subscribe(self, customer: Customer, at: int, *, kind: str = "first") -> Subscription | None:
        """A new subscription: paid, in a trial, or incomplete (its first payment failed)."""
        if at >= self.now:
            return None
        behaviour = self.behaviour
        specs, mode = self._plan(customer.currency, kind)
        items = [
            self._item(key, (interval, count), customer.currency, quantity, at)
            for key, interval, count, quantity in specs
        ]
        roll = self.rng.random()
        status = "active"
        if kind == "first" and roll < behaviour.trial_rate:
            status = "trialing"
        elif kind != "live" and roll > 1 - behaviour.incomplete_rate:
            status = "incomplete"
        subscription = Subscription(self._id("sub", 24), customer, at, status, items, anchor=at, billing_mode=mode)
        customer.subscriptions.append(subscription)
        if status == "trialing":
            trial_end = at + self.rng.choice((7, 14, 14, 30)) * DAY
            subscription.trial_start, subscription.trial_end, subscription.anchor = at, trial_end, trial_end
            for item in items:
                item.anchor, item.cycle, item.period_start, item.period_end = trial_end, -1, at, trial_end
            if self.rng.random() < behaviour.trial_extension_rate:
                self._set_timer(subscription, "extend_trial", at + self.rng.randrange(DAY, trial_end - at - DAY))
        else:
            for item in items:
                item.start_periods(at)
        if self.rng.random() < behaviour.signup_coupon_rate:
            self._attach_coupon(subscription, at, signup=True)
        if status == "trialing":
            charges = [self._trial_charge(item) for item in items]
        else:
            charges = [self._regular_charge(item) for item in items]
        invoice = self._new_invoice(subscription, at, "subscription_create", charges, (at, at))
        subscription.latest_invoice = invoice.id
        self._emit(subscription, "customer.subscription.created", at)
        self._open(invoice, at)
        if status == "incomplete":
            self._finalize(invoice, at)
            self._payment_failed(invoice, at)
            paid = self.rng.random() < 0.5
            subscription.outcome = "paid" if paid else "expired"
            self._set_timer(subscription, "payment", at + (self.rng.randrange(60, 3000) if paid else 23 * HOUR))
        else:
            self._finalize(invoice, at)
            self._pay(invoice, at)
        return subscription

    def _emit(
        self,
        subscription: Subscription,
        kind: str,
        at: int,
        previous: dict[str, Any] | None = None,
        *,
        effective: int | None = None,
        send: bool = True,
        automatic: bool = False,
    ) -> None:
        """Send the subscription's version at `at`; note its worth from `effective` (default `at`) on."""
        assert at >= subscription.last_event_at, "a subscription version older than the last one"
        subscription.last_event_at = at
        payload = self._render_subscription(subscription, self.api_version)
        subscription.rendered = payload
        if send:
            self._event(kind, payload, at, previous, automatic=automatic)
        self._note_worth(subscription, at if effective is None else effective)

    @staticmethod
    def _note_worth(subscription: Subscription, effective: int) -> None:
        worth = _worth(subscription)
        entries = subscription.worth
        while entries and entries[-1][0] >= effective:  # the same second, or a first payment dated back
            entries.pop()
        if (entries[-1][1] if entries else 0) != worth:
            entries.append((effective, worth))

    def _before(self, subscription: Subscription) -> dict[str, Any]:
        """The subscription's last sent version: what an update's `previous_attributes` compare with."""
        if subscription.rendered is None:
            subscription.rendered = self._render_subscription(subscription, self.api_version)
        return subscription.rendered

    def _changed(
        self,
        subscription: Subscription,
        at: int,
        before: dict[str, Any],
        *,
        effective: int | None = None,
        billing: bool = False,
        automatic: bool = False,
    ) -> None:
        """Send `customer.subscription.updated` for what changed since `before`, with `previous_attributes`.

        `billing`: a renewal, sent only with `Behaviour.billing_events` (it changes no MRR).
        """
        after = self._render_subscription(subscription, self.api_version)
        previous = {key: value for key, value in before.items() if after.get(key) != value}
        previous.update({key: None for key in after if key not in before})
        if not previous:
            subscription.rendered = after
            return
        send = not billing or self.behaviour.billing_events
        self._emit(
            subscription,
            "customer.subscription.updated",
            at,
            previous,
            effective=effective,
            send=send,
            automatic=automatic,
        )

    def _run(self, subscription: Subscription | None) -> int | None:
        """Live the subscription's life up to `now`: the instant it ended, or None if it still runs."""
        if subscription is None:
            return None
        clock = subscription.created
        plan: tuple[int, str] | None = None
        while not subscription.ended:
            due = self._due(subscription)
            if plan is None and self._steady(subscription):
                plan = (clock + self._days(self.behaviour.days_between_changes), self._next_change(subscription))
            options = [option for option in (due, plan and (plan[0], 9, plan[1])) if option is not None]
            if not options:
                return None
            when, priority, what = min(options)
            if when >= self.now:
                return None
            if priority == 9:
                assert plan is not None
                plan = None
                if not self._steady(subscription):
                    continue
                if subscription.unsettled is not None or (due is not None and due[0] - when < MINUTE):
                    # Not while a renewal invoice waits for its payment, nor in the second of a due change.
                    plan = (max(when, due[0] if due else when) + self.rng.randrange(2 * MINUTE, HOUR), what)
                    continue
                when = max(when, subscription.last_event_at + 1)
                when += 1 if when % DAY == 0 else 0
                clock = when
                self._act(subscription, what, when)
                if self.rng.random() < self.behaviour.same_second_change_rate and self._steady(subscription):
                    # A second change in the same second (two API calls at once): a different kind of
                    # change, so neither undoes the other and `previous_attributes` chain them.
                    coupons = any(change == "coupon" for change, _ in self.behaviour.changes)
                    second = "quantity" if what == "coupon" or not coupons else "coupon"
                    if second != what:
                        self._act(subscription, second, when)
                continue
            clock = when
            if what in subscription.timers:
                del subscription.timers[what]
            self._act(subscription, what, when)
        return subscription.ended_at

    def _due(self, subscription: Subscription) -> tuple[int, int, str] | None:
        """What the subscription's own state brings next: (when, order in its second, what)."""
        found = [(when, TIMER_PRIORITY[name], name) for name, when in subscription.timers.items()]
        if subscription.cancel_at is not None:
            found.append((subscription.cancel_at, 2, "scheduled_end"))
        if subscription.status == "trialing" and subscription.trial_end is not None:
            found.append((subscription.trial_end, 3, "trial_end"))
        ends = [d.end for d in subscription.all_discounts() if d.end is not None]
        if ends:
            found.append((min(ends), 4, "discount_end"))
        if subscription.status in ("active", "past_due", "unpaid"):
            found.append((min(item.period_end for item in subscription.items), 5, "renewal"))
        return min(found) if found else None

    @staticmethod
    def _steady(subscription: Subscription) -> bool:
        """Running normally, so a change can be planned: active, not paused, no cancellation scheduled."""
        return (
            subscription.status == "active"
            and subscription.pause_collection is None
            and subscription.cancel_at is None
            and not subscription.ended
        )

    def _next_change(self, subscription: Subscription) -> str:
        mixed, weekly = subscription.mixed, subscription.main.price.interval == "week"
        single_cycle = {item.price.cycle for item in subscription.items} == {("month", 1)}
        allowed = {
            "add_item": not mixed and not weekly and len(subscription.items) == 1,
            "remove_item": not mixed and len(subscription.items) > 1,
            "interval": not mixed and single_cycle,
            "remove_coupon": bool(subscription.all_discounts()),
            "cancel_at_period_end": not mixed,
            "cancel_at": not mixed,
        }
        return self._pick(tuple((name, weight) for name, weight in self.behaviour.changes if allowed.get(name, True)))

    @staticmethod
    def _set_timer(subscription: Subscription, name: str, when: int) -> None:
        """Something the subscription's state brings at `when` (a second later if that is midnight UTC)."""
        subscription.timers[name] = when + 1 if when % DAY == 0 else when

    def _act(self, subscription: Subscription, what: str, at: int) -> None:
        getattr(self, f"_on_{what}")(subscription, at)

    # --- billing -------------------------------------------------------------------------

    def _regular_charge(self, item: Item) -> Charge:
        price = item.price
        description = f"{item.quantity} × {price.product.name} (at {_money(price.unit_amount, price.currency)} / "
        description += f"{price.describe_period()})"
        amount = price.unit_amount * item.quantity
        return Charge(item, price, item.quantity, amount, item.period_start, item.period_end, False, description)

    @staticmethod
    def _trial_charge(item: Item) -> Charge:
        description = f"Trial period for {item.price.product.name}"
        return Charge(item, item.price, item.quantity, 0, item.period_start, item.period_end, False, description)

    @staticmethod
    def _proration(item: Item, at: int, direction: int) -> Charge:
        """The credit (-1) for the unused time of an item, or the debit (+1) for the time left, from `at`.

        The exact share of the period, rounded half-up to the minor unit.
        """
        span = item.period_end - item.period_start
        left = Fraction(item.price.unit_amount * item.quantity * (item.period_end - at), span)
        when = _day(at).strftime("%d %b %Y")
        name = f"{item.quantity} × {item.price.product.name}"
        description = (
            f"Unused time on {name} after {when}" if direction < 0 else f"Remaining time on {name} after {when}"
        )
        return Charge(
            item,
            item.price,
            item.quantity,
            direction * round_half_up(left),
            at,
            item.period_end,
            True,
            description,
            credited=item.billed_by if direction < 0 else None,
        )

    @staticmethod
    def _active(discount: Discount, at: int) -> bool:
        """Does the discount take something off an invoice made at `at`?"""
        if discount.removed_at is not None or discount.start > at:
            return False
        if discount.end is not None and at >= discount.end:
            return False
        return not (discount.coupon.terms.duration == "once" and discount.used)

    def _new_invoice(
        self,
        subscription: Subscription,
        at: int,
        reason: str,
        charges: list[Charge],
        period: tuple[int, int],
    ) -> Invoice:
        """An invoice of the subscription (not sent yet), with its pending items and its discounts."""
        invoice_id = self._id("in", 24)
        if reason != "subscription_create":
            for pending in subscription.pending:
                pending.invoice = invoice_id
                charges = [*charges, pending.charge]
            subscription.pending = []
        invoice = Invoice(invoice_id, subscription, at, reason, period[0], period[1], charges)
        if subscription.pause_collection is not None:
            invoice.collection = subscription.pause_collection["behavior"]
        elif subscription.status == "unpaid":
            invoice.collection = "open"
        for charge in charges:
            charge.line_id = self._id("il", 24)
            if not charge.proration:
                charge.item.billed_by = (invoice_id, charge.line_id)
        self._apply_discounts(invoice, at)
        subscription.invoices.append(invoice)
        self.invoices.append(invoice)
        return invoice

    def _apply_discounts(self, invoice: Invoice, at: int) -> None:
        """What each discount takes off each regular line, as Stripe bills.

        Item discounts first, then the subscription's, each on what is left: a
        percentage per line (rounded half-up), an amount off a line up to what
        is left, a subscription's amount shared across the lines it applies
        to. Proration lines carry no discount here.
        """
        subscription = invoice.subscription
        regular = [charge for charge in invoice.charges if not charge.proration]
        left = {id(charge): charge.amount for charge in regular}
        used: list[Discount] = []

        def take(charge: Charge, discount: Discount, amount: int) -> None:
            charge.discount_amounts.append((amount, discount.id))
            left[id(charge)] -= amount

        def percent(discount: Discount, charge: Charge) -> int:
            return round_half_up(left[id(charge)] * Fraction(str(discount.coupon.terms.percent_off)) / 100)

        for charge in regular:
            for discount in charge.item.discounts:
                if not self._active(discount, at) or not _applies(discount, charge.item):
                    continue
                charge.line_discounts.append(discount.id)
                terms = discount.coupon.terms
                off = percent(discount, charge) if terms.amount_off is None else min(terms.amount_off, left[id(charge)])
                take(charge, discount, off)
                used.append(discount)
        for discount in subscription.discounts:
            if not self._active(discount, at):
                continue
            invoice.discounts.append(discount)
            applicable = [charge for charge in regular if _applies(discount, charge.item)]
            terms = discount.coupon.terms
            if terms.amount_off is None:
                for charge in applicable:
                    take(charge, discount, percent(discount, charge))
            else:
                weights = [max(left[id(charge)], 0) for charge in applicable]
                for charge, share in zip(applicable, split(min(terms.amount_off, sum(weights)), weights), strict=True):
                    take(charge, discount, share)
            used.append(discount)
        if invoice.subtotal > 0:
            for discount in used:
                discount.used = True

    def _open(self, invoice: Invoice, at: int) -> None:
        self._invoice_event("invoice.created", invoice, at)

    def _finalize(self, invoice: Invoice, at: int) -> None:
        customer = invoice.subscription.customer
        customer.invoices += 1
        invoice.number = f"{customer.invoice_prefix}-{customer.invoices:04d}"
        invoice.status, invoice.finalized_at = "open", at
        self._invoice_event("invoice.finalized", invoice, at)

    def _pay(self, invoice: Invoice, at: int) -> None:
        if invoice.total > 0:
            invoice.attempts += 1
        invoice.status, invoice.paid_at = "paid", at
        self._invoice_event("invoice.paid", invoice, at)

    def _payment_failed(self, invoice: Invoice, at: int) -> None:
        invoice.attempts += 1
        self._invoice_event("invoice.payment_failed", invoice, at)

    def _void(self, invoice: Invoice, at: int) -> None:
        invoice.status, invoice.voided_at = "void", at
        self._invoice_event("invoice.voided", invoice, at)

    def _invoice_event(self, kind: str, invoice: Invoice, at: int) -> None:
        automatic = invoice.billing_reason == "subscription_cycle" or kind != "invoice.created"
        self._event(kind, self._render_invoice(invoice, self.api_version), at, automatic=automatic)

    def _prorate(self, subscription: Subscription, charges: list[Charge], at: int) -> list[InvoiceItem]:
        """Proration invoice items for `charges`, pending until an invoice takes them (not sent yet)."""
        made = []
        for charge in charges:
            pending = InvoiceItem(self._id("ii", 24), subscription, charge, at)
            charge.invoice_item = pending.id
            subscription.pending.append(pending)
            self.invoice_items.append(pending)
            made.append(pending)
        return made

    def _send_items(self, made: list[InvoiceItem], at: int) -> None:
        for pending in made:
            self._event("invoiceitem.created", self._render_invoice_item(pending, self.api_version), at)

    def _collect(self, subscription: Subscription, invoice: Invoice, at: int) -> None:
        """Finalize a renewal's invoice and attempt its payment now, or about an hour later."""
        if invoice.collection == "keep_as_draft":
            return  # a pause that keeps the invoices as drafts
        instant = self._live is not None or self.rng.random() < self.behaviour.instant_payment_rate
        if instant:
            self._settle(subscription, invoice, at)
        else:
            subscription.unsettled = invoice
            self._set_timer(subscription, "settle", at + self.rng.randrange(55 * MINUTE, 75 * MINUTE))

    def _on_settle(self, subscription: Subscription, at: int) -> None:
        invoice = subscription.unsettled
        subscription.unsettled = None
        if invoice is not None:
            self._settle(subscription, invoice, at)

    def _settle(self, subscription: Subscription, invoice: Invoice, at: int) -> None:
        self._finalize(invoice, at)
        if invoice.collection == "void":
            self._void(invoice, at)
        elif invoice.collection == "mark_uncollectible":
            invoice.status, invoice.uncollectible_at = "uncollectible", at
            self._invoice_event("invoice.marked_uncollectible", invoice, at)
        elif invoice.total <= 0:
            self._pay(invoice, at)
        elif invoice.collection == "open" or subscription.status == "unpaid":
            pass  # an unpaid subscription's invoices stay open, never attempted
        elif subscription.status == "past_due":
            self._payment_failed(invoice, at)  # still in dunning: paid with the rest if it recovers
        elif self._live is None and self.rng.random() < self.behaviour.renewal_failure_rate:
            self._payment_failed(invoice, at)
            self._become_past_due(subscription, at)
        else:
            self._pay(invoice, at)

    def _become_past_due(self, subscription: Subscription, at: int) -> None:
        before = self._before(subscription)
        subscription.status = "past_due"
        self._changed(subscription, at, before, automatic=True)
        subscription.outcome = self._pick(self.behaviour.dunning_outcomes)
        days = self.rng.randint(1, 12) if subscription.outcome == "recover" else self.rng.randint(14, 21)
        self._set_timer(subscription, "dunning", at + days * DAY)

    def _pay_open_invoices(self, subscription: Subscription, at: int) -> None:
        for invoice in subscription.invoices:
            if invoice.status == "open":
                self._pay(invoice, at)

    # --- what the subscription's own state brings ----------------------------------------

    def _on_payment(self, subscription: Subscription, at: int) -> None:
        invoice = subscription.invoices[0]
        before = self._before(subscription)
        if subscription.outcome == "paid":
            self._pay(invoice, at)
            subscription.status = "active"
            # mrr-rules.md §5: a subscription that starts paid counts from its `start_date`.
            self._changed(subscription, at, before, effective=subscription.created, automatic=True)
        else:
            self._void(invoice, at)  # Stripe voids the first invoice of an expired subscription
            subscription.status = "incomplete_expired"
            subscription.ended_at = at
            self._changed(subscription, at, before, automatic=True)

    def _on_extend_trial(self, subscription: Subscription, at: int) -> None:
        assert subscription.trial_end is not None
        before = self._before(subscription)
        trial_end = subscription.trial_end + self.rng.choice((7, 14)) * DAY
        subscription.trial_end = subscription.anchor = trial_end
        for item in subscription.items:
            item.anchor = item.period_end = trial_end
        self._changed(subscription, at, before)

    def _on_trial_end(self, subscription: Subscription, at: int) -> None:
        outcome = self._pick(self.behaviour.trial_outcomes)
        if outcome == "lapse":
            self._end(subscription, at, "cancellation_requested")
            return
        before = self._before(subscription)
        if outcome == "pause":
            subscription.status = "paused"
            self._changed(subscription, at, before, automatic=True)
            self._event("customer.subscription.paused", self._before(subscription), at, automatic=True)
            self._limit(subscription, at, "paused at the end of its trial (no invoice shows it)")
            later = at + self.rng.randint(5, 60) * DAY
            self._set_timer(subscription, "resume_paused" if self.rng.random() < 0.6 else "cancel_paused", later)
            return
        subscription.status = "active"
        trial_start = subscription.trial_start or subscription.created
        for item in subscription.items:
            item.renew()
        charges = [self._regular_charge(item) for item in subscription.items]
        invoice = self._new_invoice(subscription, at, "subscription_cycle", charges, (trial_start, at))
        subscription.latest_invoice = invoice.id
        self._changed(subscription, at, before, automatic=True)
        self._open(invoice, at)
        if outcome == "fail":
            self._finalize(invoice, at)
            self._payment_failed(invoice, at)
            self._become_past_due(subscription, at)
        else:
            self._collect(subscription, invoice, at)

    def _on_resume_paused(self, subscription: Subscription, at: int) -> None:
        """A paused subscription resumed: a new billing period from now, invoiced at once."""
        before = self._before(subscription)
        subscription.status = "active"
        subscription.anchor = at
        for item in subscription.items:
            item.start_periods(at)
        charges = [self._regular_charge(item) for item in subscription.items]
        invoice = self._new_invoice(subscription, at, "subscription_update", charges, (at, at))
        subscription.latest_invoice = invoice.id
        self._changed(subscription, at, before)
        self._event("customer.subscription.resumed", self._before(subscription), at)
        self._open(invoice, at)
        self._finalize(invoice, at)
        self._pay(invoice, at)

    def _on_cancel_paused(self, subscription: Subscription, at: int) -> None:
        self._end(subscription, at, "cancellation_requested")

    def _on_discount_end(self, subscription: Subscription, at: int) -> None:
        """Repeating discounts reach their `end`: Stripe removes them (`customer.discount.deleted`)."""
        ending = [d for d in subscription.all_discounts() if d.end is not None and d.end <= at]
        before = self._before(subscription)
        for discount in ending:
            self._event("customer.discount.deleted", discount.stripe(self.api_version), at, automatic=True)
            self._detach(subscription, discount, at)
        self._changed(subscription, at, before, automatic=True)

    def _on_renewal(self, subscription: Subscription, at: int) -> None:
        renewing = [item for item in subscription.items if item.period_end == at]
        before = self._before(subscription)
        period_start = min(item.period_start for item in renewing)
        for item in renewing:
            item.renew()
        charges = [self._regular_charge(item) for item in renewing]
        invoice = self._new_invoice(subscription, at, "subscription_cycle", charges, (period_start, at))
        subscription.latest_invoice = invoice.id
        self._changed(subscription, at, before, billing=True, automatic=True)
        self._open(invoice, at)
        if subscription.status == "unpaid" and invoice.collection == "open":
            self._settle(subscription, invoice, at)  # finalized, never attempted
        else:
            self._collect(subscription, invoice, at)

    def _on_scheduled_end(self, subscription: Subscription, at: int) -> None:
        self._end(subscription, at, subscription.cancellation_reason or "cancellation_requested")

    def _on_undo_cancel(self, subscription: Subscription, at: int) -> None:
        before = self._before(subscription)
        subscription.cancel_at_period_end = False
        subscription.cancel_at = subscription.canceled_at = None
        subscription.cancellation_reason = None
        self._changed(subscription, at, before)

    def _on_dunning(self, subscription: Subscription, at: int) -> None:
        if subscription.outcome == "cancel":
            self._end(subscription, at, "payment_failed")
            return
        before = self._before(subscription)
        if subscription.outcome == "recover":
            self._pay_open_invoices(subscription, at)
            subscription.status = "active"
            self._changed(subscription, at, before, automatic=True)
            return
        subscription.status = "unpaid"
        self._changed(subscription, at, before, automatic=True)
        self._limit(subscription, at, "became unpaid (no invoice shows it)")
        subscription.outcome = self._pick(self.behaviour.unpaid_outcomes)
        if subscription.outcome != "stay":
            self._set_timer(subscription, "unpaid_end", at + self.rng.randint(5, 45) * DAY)

    def _on_unpaid_end(self, subscription: Subscription, at: int) -> None:
        if subscription.outcome == "cancel":
            self._end(subscription, at, "payment_failed")
            return
        before = self._before(subscription)
        self._pay_open_invoices(subscription, at)
        subscription.status = "active"
        self._changed(subscription, at, before)

    def _on_resume(self, subscription: Subscription, at: int) -> None:
        before = self._before(subscription)
        subscription.pause_collection = None
        self._changed(subscription, at, before)

    def _end(self, subscription: Subscription, at: int, reason: str) -> None:
        """Canceled now: `customer.subscription.deleted`, ended at this instant."""
        if subscription.unsettled is not None:
            self._on_settle(subscription, at)
        subscription.status = "canceled"
        subscription.canceled_at = subscription.canceled_at or at
        subscription.ended_at = at
        subscription.cancellation_reason = reason
        subscription.timers.clear()
        self._emit(subscription, "customer.subscription.deleted", at, automatic=reason != "cancellation_requested")

    # --- changes -------------------------------------------------------------------------

    def _on_nothing(self, subscription: Subscription, at: int) -> None:
        pass

    def _on_cancel_now(self, subscription: Subscription, at: int) -> None:
        self._end(subscription, at, "cancellation_requested")

    def _schedule_cancel(self, subscription: Subscription, at: int, cancel_at: int, at_period_end: bool) -> None:
        before = self._before(subscription)
        subscription.cancel_at_period_end = at_period_end
        subscription.cancel_at = cancel_at
        subscription.canceled_at = at
        subscription.cancellation_reason = "cancellation_requested"
        self._changed(subscription, at, before)
        if cancel_at - at > 2 * HOUR and self.rng.random() < self.behaviour.undo_cancel_rate:
            self._set_timer(subscription, "undo_cancel", self.rng.randrange(at + HOUR, cancel_at - HOUR))

    def _on_cancel_at_period_end(self, subscription: Subscription, at: int) -> None:
        self._schedule_cancel(subscription, at, subscription.main.period_end, True)

    def _on_cancel_at(self, subscription: Subscription, at: int) -> None:
        """Cancel at a date: the end of this period or of the next (no proration)."""
        main = subscription.main
        self._schedule_cancel(subscription, at, main.period_after(main.cycle + self.rng.randint(0, 1)), False)

    def _on_pause(self, subscription: Subscription, at: int) -> None:
        before = self._before(subscription)
        behavior = self.rng.choice(("void", "keep_as_draft", "mark_uncollectible"))
        subscription.pause_collection = {"behavior": behavior, "resumes_at": None}
        self._changed(subscription, at, before)
        self._limit(subscription, at, f"collection paused ({behavior}; no invoice shows it)")
        self._set_timer(subscription, "resume", at + self.rng.randint(20, 100) * DAY)

    def _coupon_choices(self, subscription: Subscription, at: int, item: Item | None) -> list[Coupon]:
        taken = {d.coupon.id for d in subscription.all_discounts()}
        return [
            coupon
            for coupon in self.coupons.values()
            if coupon.created < at
            and (coupon.deleted_at is None or at < coupon.deleted_at)
            and coupon.id not in taken
            and coupon.terms.currency in (None, subscription.currency)
            and (item is None or not coupon.terms.applies_to or item.price.product.key in coupon.terms.applies_to)
            and not self._ends_silently(coupon, at)
        ]

    def _ends_silently(self, coupon: Coupon, start: int) -> bool:
        if coupon.terms.duration != "repeating" or coupon.terms.duration_in_months is None:
            return False
        end = add_months(start, coupon.terms.duration_in_months)
        return self._no_silent_change[0] <= end <= self._no_silent_change[1]

    def _attach_coupon(self, subscription: Subscription, at: int, *, signup: bool = False) -> bool:
        """A new discount on the subscription or on one of its items; False if none can be added."""
        item: Item | None = None
        if self.api_version != API_VERSION_2020 and self.rng.random() < self.behaviour.item_coupon_rate:
            item = self.rng.choice(subscription.items)
            if item.discounts:
                return False
        elif len(subscription.discounts) >= (1 if self.api_version == API_VERSION_2020 else 2):
            return False
        usable = self._coupon_choices(subscription, at, item)
        if not usable:
            return False
        # A running campaign is what most new discounts come from.
        coupon = self.rng.choices(usable, weights=[1 if c.terms.deleted_at is None else 6 for c in usable])[0]
        months = coupon.terms.duration_in_months
        end = add_months(at, months) if coupon.terms.duration == "repeating" and months else None
        discount = Discount(
            self._id("di", 24), coupon, subscription.customer.id, subscription.id, at, end, item.id if item else None
        )
        coupon.redemptions += 1
        self.discounts.append(discount)
        # Stripe sends the discount's own event in the same second as the subscription's.
        self._event("customer.discount.created", discount.stripe(self.api_version), at)
        before = None if signup else self._before(subscription)
        if item is not None:
            item.discounts.append(discount)
        elif coupon.terms.percent_off is not None:
            # Percentages before amounts: the order the rules apply them in is the list's.
            subscription.discounts.insert(0, discount)
        else:
            subscription.discounts.append(discount)
        if before is not None:
            self._changed(subscription, at, before)
        return True

    def _detach(self, subscription: Subscription, discount: Discount, at: int) -> None:
        discount.removed_at = at
        if discount in subscription.discounts:
            subscription.discounts.remove(discount)
        for item in subscription.items:
            if discount in item.discounts:
                item.discounts.remove(discount)

    def _on_coupon(self, subscription: Subscription, at: int) -> None:
        self._attach_coupon(subscription, at)

    def _on_remove_coupon(self, subscription: Subscription, at: int) -> None:
        discounts = subscription.all_discounts()
        if not discounts:
            return
        discount = self.rng.choice(discounts)
        self._event("customer.discount.deleted", discount.stripe(self.api_version), at)
        before = self._before(subscription)
        self._detach(subscription, discount, at)
        self._changed(subscription, at, before)
        self._limit(subscription, at, f"coupon {discount.coupon.id} removed by hand (no invoice shows when)")

    def _reprice(self, subscription: Subscription, at: int, items: list[Item]) -> None:
        """The subscription's items replaced mid-period (same periods), prorated as `proration_behavior` says.

        An item keeps its id when only its price or quantity changes, as an
        update of `items[].price` / `quantity` does in Stripe.
        """
        behavior = self._pick(self.behaviour.prorations)
        old = {item.id: item for item in subscription.items}
        new = {item.id: item for item in items}

        def same(a: Item | None, b: Item | None) -> bool:
            return a is not None and b is not None and a.price is b.price and a.quantity == b.quantity

        charges = [self._proration(item, at, -1) for item in subscription.items if not same(item, new.get(item.id))]
        charges += [self._proration(item, at, +1) for item in items if not same(item, old.get(item.id))]
        # Prorations are invoice items: pending until the next invoice, or invoiced at once.
        made = [] if behavior == "none" else self._prorate(subscription, charges, at)
        before = self._before(subscription)
        subscription.items = items
        invoice = None
        if behavior == "always_invoice":
            invoice = self._new_invoice(subscription, at, "subscription_update", [], (at, at))
            subscription.latest_invoice = invoice.id
        self._changed(subscription, at, before)
        self._send_items(made, at)
        if invoice is not None:
            self._open(invoice, at)
            self._finalize(invoice, at)
            self._pay(invoice, at)
        elif behavior == "none":
            self._limit(subscription, at, "items changed with proration_behavior=none (no invoice shows when)")

    def _with(self, subscription: Subscription, item: Item, price: Price, quantity: int) -> list[Item]:
        """The subscription's items with `item` at a new price or quantity (same id and period)."""
        changed = replace(item, price=price, quantity=quantity, discounts=list(item.discounts))
        return [changed if i is item else i for i in subscription.items]

    def _on_quantity(self, subscription: Subscription, at: int) -> None:
        if subscription.main.price.product.unit_label != "seat":
            self._on_upgrade(subscription, at)
            return
        self._seats(subscription, at, self.rng.choice((-3, -2, -1, 1, 1, 2, 3, 5)))

    def _seats(self, subscription: Subscription, at: int, step: int) -> None:
        item = subscription.main
        quantity = max(1, item.quantity + step)
        if quantity == item.quantity:
            quantity += 1
        self._reprice(subscription, at, self._with(subscription, item, item.price, quantity))

    def _swap(self, subscription: Subscription, at: int, key: str) -> None:
        """The main item moved to product `key` (same currency and period)."""
        item = subscription.main
        price = self._price(key, item.price.cycle, subscription.currency)
        quantity = item.quantity if PRODUCTS_BY_KEY[key].unit_label == "seat" else 1
        if key == "team" and item.price.product.key != "team":
            quantity = self.rng.randint(3, 12)
        self._reprice(subscription, at, self._with(subscription, item, price, quantity))

    def _on_upgrade(self, subscription: Subscription, at: int) -> None:
        product = subscription.main.price.product
        if product.key == "sprint" and self.rng.random() < 0.6:
            self._swap(subscription, at, "sprint_plus")
        elif product.weekly or (product.key == "team" and self.rng.random() < 0.5):
            self._seats(subscription, at, self.rng.randint(1, 5))
        elif product.key == "business":
            self._on_add_item(subscription, at)
        else:
            self._swap(subscription, at, "team" if product.key == "starter" else "business")

    def _on_downgrade(self, subscription: Subscription, at: int) -> None:
        main = subscription.main
        product = main.price.product
        if len(subscription.items) > 1 and not subscription.mixed:
            self._on_remove_item(subscription, at)
        elif product.key == "sprint_plus":
            self._swap(subscription, at, "sprint")
        elif product.unit_label == "seat" and main.quantity > 3 and (product.weekly or self.rng.random() < 0.5):
            quantity = max(1, main.quantity - self.rng.randint(1, 3))
            self._reprice(subscription, at, self._with(subscription, main, main.price, quantity))
        elif product.key in ("team", "business"):
            self._swap(subscription, at, "starter" if product.key == "team" else "team")

    def _on_add_item(self, subscription: Subscription, at: int) -> None:
        """The support add-on added to a classic subscription, on its period."""
        main = subscription.main
        if subscription.mixed or any(i.price.product.key == "support" for i in subscription.items):
            return
        add_on = self._item("support", main.price.cycle, subscription.currency, 1, at)
        add_on.anchor, add_on.cycle = main.anchor, main.cycle
        add_on.period_start, add_on.period_end = main.period_start, main.period_end
        self._reprice(subscription, at, [*subscription.items, add_on])

    def _on_remove_item(self, subscription: Subscription, at: int) -> None:
        if subscription.mixed or len(subscription.items) < 2:
            return
        self._reprice(subscription, at, subscription.items[:-1])

    def _on_interval(self, subscription: Subscription, at: int) -> None:
        """Monthly to yearly: a new period from now, invoiced at once (with credits for the unused month)."""
        if subscription.mixed or {i.price.cycle for i in subscription.items} != {("month", 1)}:
            return
        behavior = self._pick(self.behaviour.prorations)
        credits = [] if behavior == "none" else [self._proration(item, at, -1) for item in subscription.items]
        made = self._prorate(subscription, credits, at)
        before = self._before(subscription)
        items: list[Item] = []
        for item in subscription.items:
            price = self._price(item.price.product.key, ("year", 1), subscription.currency)
            changed = replace(item, price=price, discounts=list(item.discounts))
            changed.start_periods(at)
            items.append(changed)
        subscription.items = items
        subscription.anchor = at
        charges = [self._regular_charge(item) for item in items]
        invoice = self._new_invoice(subscription, at, "subscription_update", charges, (at, at))
        subscription.latest_invoice = invoice.id
        self._changed(subscription, at, before)
        self._send_items(made, at)
        self._open(invoice, at)
        self._finalize(invoice, at)
        self._pay(invoice, at)

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
        running = [s for c in self.customers for s in c.subscriptions if self._steady(s) and s.last_event_at < at]
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
        if what == "cancel_at_period_end" and subscription.mixed:
            what = "cancel_now"
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
        worth = f"{subscription.currency.upper()} {_worth(subscription) / 100:,.2f}/mo"
        return f"{subscription.describe()}, {worth}"

    # --- rendering -----------------------------------------------------------------------

    def _render_subscription(self, subscription: Subscription, api_version: str) -> dict[str, Any]:
        """The subscription as Stripe shows it, in the API version's shape."""
        if api_version == API_VERSION_2020:
            return self._subscription_2020(subscription)
        items = [self._render_item(subscription, item) for item in subscription.items]
        rendered = {
            "id": subscription.id,
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": _SUBSCRIPTION_TAX,
            "billing_cycle_anchor": subscription.anchor,
            "billing_cycle_anchor_config": None,
            "billing_mode": _BILLING_MODES[subscription.billing_mode],
            "billing_thresholds": None,
            "cancel_at": subscription.cancel_at,
            "cancel_at_period_end": subscription.cancel_at_period_end,
            "canceled_at": subscription.canceled_at,
            "cancellation_details": {"comment": None, "feedback": None, "reason": subscription.cancellation_reason},
            "collection_method": "charge_automatically",
            "created": subscription.created,
            "currency": subscription.currency,
            "customer": subscription.customer.id,
            "customer_account": None,
            "days_until_due": None,
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": [discount.id for discount in subscription.discounts],
            "ended_at": subscription.ended_at,
            "invoice_settings": _SUBSCRIPTION_INVOICE_SETTINGS,
            "items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={subscription.id}",
            },
            "latest_invoice": subscription.latest_invoice,
            "livemode": False,
            "metadata": {},
            "next_pending_invoice_item_invoice": None,
            "on_behalf_of": None,
            "pause_collection": subscription.pause_collection,
            "payment_settings": _SUBSCRIPTION_PAYMENT_SETTINGS,
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "schedule": None,
            "start_date": subscription.created,
            "status": subscription.status,
            "test_clock": None,
            "transfer_data": None,
            "trial_end": subscription.trial_end,
            "trial_settings": _TRIAL_SETTINGS,
            "trial_start": subscription.trial_start,
        }
        return rendered

    @staticmethod
    def _render_item(subscription: Subscription, item: Item) -> dict[str, Any]:
        return {
            "id": item.id,
            "object": "subscription_item",
            "billing_thresholds": None,
            "created": item.created,
            "current_period_end": item.period_end,
            "current_period_start": item.period_start,
            "discounts": [discount.id for discount in item.discounts],
            "metadata": {},
            "plan": item.price.plan(),
            "price": item.price.stripe(),
            "quantity": item.quantity,
            "subscription": subscription.id,
            "tax_rates": [],
        }

    @staticmethod
    def _subscription_2020(subscription: Subscription) -> dict[str, Any]:
        """The 2020-03-02 shape: the period, a single item's `plan` and `quantity` and the one
        `discount` (its coupon inside) on the subscription; items with `plan` and `price`."""
        items: list[dict[str, Any]] = [
            {
                "id": item.id,
                "object": "subscription_item",
                "billing_thresholds": None,
                "created": item.created,
                "metadata": {},
                "plan": item.price.plan(),
                "price": item.price.stripe(),
                "quantity": item.quantity,
                "subscription": subscription.id,
                "tax_rates": [],
            }
            for item in subscription.items
        ]
        single = subscription.items[0] if len(subscription.items) == 1 else None
        discount = subscription.discounts[0].stripe(API_VERSION_2020) if subscription.discounts else None
        return {
            "id": subscription.id,
            "object": "subscription",
            "application_fee_percent": None,
            "billing_cycle_anchor": subscription.anchor,
            "billing_thresholds": None,
            "cancel_at": subscription.cancel_at,
            "cancel_at_period_end": subscription.cancel_at_period_end,
            "canceled_at": subscription.canceled_at,
            "collection_method": "charge_automatically",
            "created": subscription.created,
            "current_period_end": subscription.main.period_end,
            "current_period_start": subscription.main.period_start,
            "customer": subscription.customer.id,
            "days_until_due": None,
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "discount": discount,
            "ended_at": subscription.ended_at,
            "items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={subscription.id}",
            },
            "latest_invoice": subscription.latest_invoice,
            "livemode": False,
            "metadata": {},
            "next_pending_invoice_item_invoice": None,
            "pause_collection": subscription.pause_collection,
            "pending_invoice_item_interval": None,
            "pending_setup_intent": None,
            "pending_update": None,
            "plan": single.price.plan() if single else None,
            "quantity": single.quantity if single else None,
            "schedule": None,
            "start_date": subscription.created,
            "status": subscription.status,
            "tax_percent": None,
            "transfer_data": None,
            "trial_end": subscription.trial_end,
            "trial_start": subscription.trial_start,
        }

    def _render_lines(self, invoice: Invoice, api_version: str) -> dict[str, Any]:
        """The invoice's lines (rendered once per shape: every event of the invoice shares them)."""
        lines = invoice._lines.get(api_version)
        if lines is None:
            data = [self._render_line(invoice, charge, api_version) for charge in invoice.charges]
            lines = {
                "object": "list",
                "data": data,
                "has_more": False,
                "total_count": len(data),
                "url": f"/v1/invoices/{invoice.id}/lines",
            }
            invoice._lines[api_version] = lines
        return lines

    def _render_line(self, invoice: Invoice, charge: Charge, api_version: str) -> dict[str, Any]:
        subscription = invoice.subscription
        if api_version == API_VERSION_2020:
            return self._line_2020(invoice, charge)
        credited = None
        if charge.credited is not None:
            credited = {"invoice": charge.credited[0], "invoice_line_items": [charge.credited[1]]}
        return {
            "id": charge.line_id,
            "object": "line_item",
            "amount": charge.amount,
            "currency": subscription.currency,
            "description": charge.description,
            "discount_amounts": [{"amount": amount, "discount": d} for amount, d in charge.discount_amounts],
            "discountable": True,
            "discounts": list(charge.line_discounts),
            "invoice": invoice.id,
            "livemode": False,
            "metadata": {},
            "parent": {
                "invoice_item_details": None,
                "subscription_item_details": {
                    "invoice_item": charge.invoice_item,
                    "proration": charge.proration,
                    "proration_details": {"credited_items": credited},
                    "subscription": subscription.id,
                    "subscription_item": charge.item.id,
                },
                "type": "subscription_item_details",
            },
            "period": {"end": charge.end, "start": charge.start},
            "pretax_credit_amounts": [],
            "pricing": {
                "price_details": {"price": charge.price.id, "product": charge.price.product_id},
                "type": "price_details",
                "unit_amount_decimal": str(charge.price.unit_amount),
            },
            "quantity": charge.quantity,
            "subtotal": charge.amount,
            "taxes": [],
        }

    @staticmethod
    def _line_2020(invoice: Invoice, charge: Charge) -> dict[str, Any]:
        """A 2020-03-02 line: `type` subscription (a period) or invoiceitem (a proration), whole price and plan."""
        line = {
            "id": charge.line_id,
            "object": "line_item",
            "amount": charge.amount,
            "currency": invoice.subscription.currency,
            "description": charge.description,
            "discount_amounts": [{"amount": amount, "discount": d} for amount, d in charge.discount_amounts],
            "discountable": True,
            "discounts": list(charge.line_discounts),
            "livemode": False,
            "metadata": {},
            "period": {"end": charge.end, "start": charge.start},
            "plan": charge.price.plan(),
            "price": charge.price.stripe(),
            "proration": charge.proration,
            "quantity": charge.quantity,
            "subscription": invoice.subscription.id,
            "subscription_item": charge.item.id,
            "tax_amounts": [],
            "tax_rates": [],
            "type": "invoiceitem" if charge.invoice_item else "subscription",
        }
        if charge.invoice_item:
            line["invoice_item"] = charge.invoice_item
        return line

    def _render_invoice(self, invoice: Invoice, api_version: str) -> dict[str, Any]:
        if api_version == API_VERSION_2020:
            return self._invoice_2020(invoice)
        subscription = invoice.subscription
        customer = subscription.customer
        due = max(invoice.total, 0)
        paid = invoice.status == "paid"
        settled = invoice.status in ("paid", "void", "uncollectible")
        return {
            "id": invoice.id,
            "object": "invoice",
            "account_country": "US",
            "account_name": ACCOUNT_NAME,
            "account_tax_ids": None,
            "amount_due": due,
            "amount_overpaid": 0,
            "amount_paid": due if paid else 0,
            "amount_remaining": 0 if settled else due,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": invoice.attempts,
            "attempted": invoice.attempts > 0,
            "auto_advance": invoice.status in ("draft", "open") and invoice.collection == "charge",
            "automatic_tax": _INVOICE_TAX,
            "automatically_finalizes_at": invoice.created + HOUR if invoice.status == "draft" else None,
            "billing_reason": invoice.billing_reason,
            "collection_method": "charge_automatically",
            "created": invoice.created,
            "currency": subscription.currency,
            "custom_fields": None,
            "customer": customer.id,
            "customer_account": None,
            "customer_address": None,
            "customer_email": customer.email,
            "customer_name": customer.name,
            "customer_phone": None,
            "customer_shipping": None,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": [discount.id for discount in invoice.discounts],
            "due_date": None,
            "effective_at": invoice.finalized_at,
            "ending_balance": 0 if invoice.finalized_at is not None else None,
            "footer": None,
            "from_invoice": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "issuer": _ISSUER,
            "last_finalization_error": None,
            "latest_revision": None,
            "lines": self._render_lines(invoice, api_version),
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": None,
            "number": invoice.number,
            "on_behalf_of": None,
            "parent": {
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": subscription.id},
                "type": "subscription_details",
            },
            "payment_settings": _INVOICE_PAYMENT_SETTINGS,
            "period_end": invoice.period_end,
            "period_start": invoice.period_start,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "rendering": None,
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": 0,
            "statement_descriptor": None,
            "status": invoice.status,
            "status_transitions": {
                "finalized_at": invoice.finalized_at,
                "marked_uncollectible_at": invoice.uncollectible_at,
                "paid_at": invoice.paid_at,
                "voided_at": invoice.voided_at,
            },
            "subtotal": invoice.subtotal,
            "subtotal_excluding_tax": invoice.subtotal,
            "test_clock": None,
            "total": invoice.total,
            "total_discount_amounts": [{"amount": a, "discount": d} for a, d in invoice.discount_totals()],
            "total_excluding_tax": invoice.total,
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
            "webhooks_delivered_at": invoice.created,
        }

    def _invoice_2020(self, invoice: Invoice) -> dict[str, Any]:
        """A 2020-03-02 invoice: a top-level `subscription`, the subscription's discount as the singular
        `discount` (its coupon inside) beside the `discounts` ids."""
        subscription = invoice.subscription
        customer = subscription.customer
        due = max(invoice.total, 0)
        paid = invoice.status == "paid"
        settled = invoice.status in ("paid", "void", "uncollectible")
        return {
            "id": invoice.id,
            "object": "invoice",
            "account_country": "US",
            "account_name": ACCOUNT_NAME,
            "account_tax_ids": None,
            "amount_due": due,
            "amount_paid": due if paid else 0,
            "amount_remaining": 0 if settled else due,
            "application_fee_amount": None,
            "attempt_count": invoice.attempts,
            "attempted": invoice.attempts > 0,
            "auto_advance": invoice.status in ("draft", "open") and invoice.collection == "charge",
            "automatic_tax": {"enabled": False, "status": None},
            "billing_reason": invoice.billing_reason,
            "charge": None,
            "collection_method": "charge_automatically",
            "created": invoice.created,
            "currency": subscription.currency,
            "custom_fields": None,
            "customer": customer.id,
            "customer_address": None,
            "customer_email": customer.email,
            "customer_name": customer.name,
            "customer_phone": None,
            "customer_shipping": None,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discount": invoice.discounts[0].stripe(API_VERSION_2020) if invoice.discounts else None,
            "discounts": [discount.id for discount in invoice.discounts],
            "due_date": None,
            "ending_balance": 0 if invoice.finalized_at is not None else None,
            "footer": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "last_finalization_error": None,
            "lines": self._render_lines(invoice, API_VERSION_2020),
            "livemode": False,
            "metadata": {},
            "next_payment_attempt": None,
            "number": invoice.number,
            "on_behalf_of": None,
            "paid": paid,
            "paid_out_of_band": False,
            "payment_intent": None,
            "payment_settings": {"payment_method_options": None, "payment_method_types": None},
            "period_end": invoice.period_end,
            "period_start": invoice.period_start,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "quote": None,
            "receipt_number": None,
            "starting_balance": 0,
            "statement_descriptor": None,
            "status": invoice.status,
            "status_transitions": {
                "finalized_at": invoice.finalized_at,
                "marked_uncollectible_at": invoice.uncollectible_at,
                "paid_at": invoice.paid_at,
                "voided_at": invoice.voided_at,
            },
            "subscription": subscription.id,
            "subtotal": invoice.subtotal,
            "tax": None,
            "tax_percent": None,
            "total": invoice.total,
            "total_discount_amounts": [{"amount": a, "discount": d} for a, d in invoice.discount_totals()],
            "total_tax_amounts": [],
            "transfer_data": None,
            "webhooks_delivered_at": invoice.created,
        }

    @staticmethod
    def _render_invoice_item(pending: InvoiceItem, api_version: str) -> dict[str, Any]:
        charge = pending.charge
        subscription = pending.subscription
        if api_version == API_VERSION_2020:
            return {
                "id": pending.id,
                "object": "invoiceitem",
                "amount": charge.amount,
                "currency": subscription.currency,
                "customer": subscription.customer.id,
                "date": pending.created,
                "description": charge.description,
                "discountable": True,
                "discounts": [],
                "invoice": pending.invoice,
                "livemode": False,
                "metadata": {},
                "period": {"end": charge.end, "start": charge.start},
                "plan": charge.price.plan(),
                "price": charge.price.stripe(),
                "proration": True,
                "quantity": charge.quantity,
                "subscription": subscription.id,
                "subscription_item": charge.item.id,
                "tax_rates": [],
                "unit_amount": charge.price.unit_amount,
                "unit_amount_decimal": str(charge.price.unit_amount),
            }
        return {
            "id": pending.id,
            "object": "invoiceitem",
            "amount": charge.amount,
            "currency": subscription.currency,
            "customer": subscription.customer.id,
            "customer_account": None,
            "date": pending.created,
            "description": charge.description,
            "discountable": True,
            "discounts": [],
            "invoice": pending.invoice,
            "livemode": False,
            "metadata": {},
            "net_amount": charge.amount,
            "parent": {
                "subscription_details": {"subscription": subscription.id, "subscription_item": charge.item.id},
                "type": "subscription_details",
            },
            "period": {"end": charge.end, "start": charge.start},
            "pricing": {
                "price_details": {"price": charge.price.id, "product": charge.price.product_id},
                "type": "price_details",
                "unit_amount_decimal": str(charge.price.unit_amount),
            },
            "proration": True,
            "proration_details": {"discount_amounts": []},
            "quantity": charge.quantity,
            "quantity_decimal": str(charge.quantity),
            "tax_rates": [],
            "test_clock": None,
        }

    # --- results -------------------------------------------------------------------------

    def events(self) -> list[dict[str, Any]]:
        """Every history event in delivery order: the catalog first, then by `created` (then as sent)."""
        return [*self.catalog_events, *(event for _, _, event in self.history_events)]

    def _deltas(self) -> dict[str, dict[tuple[date, str], int]]:
        """Per customer: how much its MRR moves on each (UTC day, currency), up to `now`."""
        deltas: dict[str, dict[tuple[date, str], int]] = {}
        for customer in self.customers:
            moves: dict[tuple[date, str], int] = {}
            for subscription in customer.subscriptions:
                previous = 0
                for instant, worth in subscription.worth:
                    if instant > self.now:
                        break
                    key = (_day(instant), subscription.currency)
                    moves[key] = moves.get(key, 0) + worth - previous
                    previous = worth
            deltas[customer.id] = moves
        return deltas

    def expected_customer_mrr(self) -> dict[str, list[tuple[date, str, int]]]:
        """Per customer: the days its end-of-day MRR changes, as (UTC day, currency, MRR from that day's end on).

        Every customer is listed (an empty list: it never paid). Changes that
        cancel out within a day leave no entry (NETTING=day).
        """
        expected: dict[str, list[tuple[date, str, int]]] = {}
        for customer_id, moves in self._deltas().items():
            running: dict[str, int] = {}
            points = []
            for (day, currency), delta in sorted(moves.items()):
                if delta:
                    running[currency] = running.get(currency, 0) + delta
                    points.append((day, currency, running[currency]))
            expected[customer_id] = points
        return expected

    def expected_mrr(self) -> dict[str, dict[str, int]]:
        """Per currency, per UTC day of the history: MRR at the end of the day, in minor units."""
        first, last = _day(self.start), _day(self.now)
        per_day: dict[str, dict[date, int]] = {currency: {} for currency in self.currencies}
        for moves in self._deltas().values():
            for (day, currency), delta in moves.items():
                per_day[currency][day] = per_day[currency].get(day, 0) + delta
        expected: dict[str, dict[str, int]] = {}
        for currency, deltas in per_day.items():
            running = sum(delta for day, delta in deltas.items() if day < first)
            series: dict[str, int] = {}
            for day in _days(first, last):
                running += deltas.get(day, 0)
                series[day.isoformat()] = running
            expected[currency] = series
        return expected

    def history_limits(self) -> dict[str, list[str]]:
        """Customers with a change no Stripe record shows, each with what it was and when.

        A change made with `proration_behavior=none`, a coupon removed by hand,
        paused collection, a switch to `unpaid`, a trial ending paused, and a
        discount that began and ended between two invoices of what it reduced
        (a repeating coupon on a yearly item). Prorations still pending at
        `now` are records too: Stripe lists them (`GET /v1/invoiceitems?pending=true`).
        """
        limits = {customer: list(reasons) for customer, reasons in self.limits.items()}
        billed = [invoice for invoice in self.invoices if invoice.status not in ("draft", "void")]
        invoiced = {discount.id for invoice in billed for discount in invoice.discounts} | {
            discount_id
            for invoice in billed
            for charge in invoice.charges
            for _, discount_id in charge.discount_amounts
        }
        subscriptions = {s.id: s for customer in self.customers for s in customer.subscriptions}
        for discount in self.discounts:
            ended = discount.removed_at if discount.removed_at is not None else discount.end
            if ended is None or ended > self.now or ended <= discount.start or discount.id in invoiced:
                continue
            subscription = subscriptions[discount.subscription]
            if subscription.trial_end is not None and ended <= subscription.trial_end:
                continue  # it reduced nothing: the subscription was on trial
            if subscription.ended_at is not None and subscription.ended_at <= discount.start:
                continue
            reason = (
                f"{discount.subscription}: discount {discount.id} ({discount.coupon.id}) from {_day(discount.start)} "
                f"to {_day(ended)} on no invoice (no record shows it)"
            )
            limits.setdefault(discount.customer, []).append(reason)
        return limits

    def deleted_coupons(self) -> list[dict[str, Any]]:
        """Coupons deleted during the history (Stripe answers 404 for them; discounts made from them stay)."""
        return [c.stripe() for c in self.coupons.values() if c.deleted_at is not None and c.deleted_at <= self.now]

    def objects(self) -> dict[str, list[dict[str, Any]]]:
        """Every object as the API serves it at `now`, in the current API shape, by kind.

        Deleted coupons are left out (see `deleted_coupons`). Subscriptions
        list their discounts by id; `discounts` holds every discount ever made
        (also those removed since, which invoices still name). Invoices carry
        all their lines (`has_more` false). `invoiceitems`: every proration
        invoice item, billed (`invoice` set) or pending.
        """
        return {
            "products": [self._product(p, pid, self._product_created[p.key]) for p, pid in self.products.values()],
            "prices": [price.stripe() for price in self.prices.values()],
            "coupons": [
                coupon.stripe(applies_to=True)
                for coupon in self.coupons.values()
                if coupon.deleted_at is None or coupon.deleted_at > self.now
            ],
            "customers": [customer.stripe() for customer in self.customers],
            "subscriptions": [
                self._render_subscription(s, API_VERSION) for c in self.customers for s in c.subscriptions
            ],
            "discounts": [discount.stripe() for discount in self.discounts],
            "invoices": [self._render_invoice(invoice, API_VERSION) for invoice in self.invoices],
            "invoiceitems": [self._render_invoice_item(item, API_VERSION) for item in self.invoice_items],
        }


PRODUCTS_BY_KEY = {product.key: product for product in PRODUCTS}


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += timedelta(days=1)


def generate_account(
    *,
    customers: int = DEFAULT_CUSTOMERS,
    seed: int = 0,
    now: datetime | None = None,
    months: int = HISTORY_MONTHS,
    behaviour: Behaviour | None = None,
    api_version: str = API_VERSION,
) -> SyntheticAccount:
    """Simulate an account of `customers` customers over the `months` up to `now` (default: now)."""
    return SyntheticAccount(
        customers=customers, seed=seed, now=now, months=months, behaviour=behaviour, api_version=api_version
    )


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
