"""A deterministic synthetic Stripe account, built object by object on demand.

`Account(sizes)` draws every random choice once, into compact per-subscription
arrays (a few dozen bytes a subscription) and one sorted array of invoice
timestamps; a customer, subscription, invoice or invoice line is rendered from
those when asked for, in the current API shape (`fixtures3.json`): items carry
`current_period_*`, invoices carry `parent.subscription_details`, lines carry
`parent.subscription_item_details` and `pricing.price_details`, discounts hold
`source.coupon`. Ids encode the object's rank in `created` order
(`sub_00000042` is the 43rd subscription created), so a cursor resolves in O(1).

The history: customers subscribe to one of four plans (monthly, annual or
weekly prices; 2-item subscriptions add graduated seats, 6-item bundles add
every add-on), some with a 14-day trial; about a third change plan or
quantity once mid-period (the next invoice carries the proration lines; a
bundle's seat change gives invoices of more than 10 lines); some carry a
coupon; a quarter are canceled, immediately or at period end; a few are
past_due or cancel at period end; a few stay on an archived legacy price.
"""

from __future__ import annotations

import calendar
import random
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DAY = 86_400
WEEK = 7 * DAY
DEFAULT_NOW = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
"""The account's "now": every object was created before it (a fixed instant keeps runs identical)."""

LINES_EMBEDDED = 10
"""Lines an invoice carries inline; the rest are read from /v1/invoices/{id}/lines."""

MONTH, YEAR, WEEKLY = 0, 1, 2
INTERVALS = ("month", "year", "week")
INTERVAL_LETTER = "MYW"
NOMINAL_SECONDS = (2_629_746, 31_556_952, WEEK)

ACTIVE, PAST_DUE, TRIALING, CANCELED = 0, 1, 2, 3
STATUSES = ("active", "past_due", "trialing", "canceled")

NO_CHANGE, PRICE_CHANGE, QUANTITY_CHANGE = 0, 1, 2

# Products: (name, monthly unit amount or None for tiered, tiers_mode, active)
PRODUCTS: tuple[tuple[str, int | None, str | None, bool], ...] = (
    ("Pro (legacy)", 1900, None, False),
    ("Starter", 900, None, True),
    ("Team", 2900, None, True),
    ("Business", 9900, None, True),
    ("Enterprise", 29900, None, True),
    ("Extra seats", None, "graduated", True),
    ("Storage", None, "volume", True),
    ("Priority support", 4900, None, True),
    ("Analytics", 1900, None, True),
    ("SSO", 9900, None, True),
)
LEGACY, FIRST_PLAN, LAST_PLAN, SEATS = 0, 1, 4, 5
BUNDLE_ADDONS = (5, 6, 7, 8, 9)
MONTHLY_TIERS = {
    "graduated": ((5, 800, None), (20, 600, None), (None, 400, None)),
    "volume": ((10, 300, None), (100, 200, None), (None, 100, 500)),
}
"""(up_to, unit_amount, flat_amount) per tier, monthly; annual ×10, weekly ×3/13."""

# Coupons: (id, percent_off, amount_off, duration, duration_in_months, applies_to products)
COUPONS: tuple[tuple[str, float | None, int | None, str, int | None, tuple[int, ...] | None], ...] = (
    ("LAUNCH20", 20.0, None, "forever", None, None),
    ("WELCOME50", 50.0, None, "repeating", 3, None),
    ("FIRSTMONTH", None, 1000, "once", None, None),
    ("SAVE5", None, 500, "repeating", 6, None),
    ("PARTNER12", 12.5, None, "forever", None, (SEATS,)),
    ("PLANS15", 15.0, None, "forever", None, (1, 2, 3, 4)),
    ("BUNDLE25", 25.0, None, "forever", None, None),
)


@dataclass(frozen=True)
class Sizes:
    customers: int = 15_000
    subscriptions: int = 20_000
    invoices: int = 200_000
    seed: int = 7
    now: int = DEFAULT_NOW


def add_interval(ts: int, interval: int, count: int) -> int:
    """`ts` moved by `count` billing intervals, the way Stripe bills (same day of month, clamped)."""
    if interval == WEEKLY:
        return ts + count * WEEK
    months = count if interval == MONTH else 12 * count
    moment = datetime.fromtimestamp(ts, UTC)
    year, month0 = divmod(moment.year * 12 + moment.month - 1 + months, 12)
    day = min(moment.day, calendar.monthrange(year, month0 + 1)[1])
    return int(moment.replace(year=year, month=month0 + 1, day=day).timestamp())


def scaled(monthly: int, interval: int) -> int:
    return monthly if interval == MONTH else monthly * 10 if interval == YEAR else monthly * 3 // 13


class Account:
    """The whole account as compact tables; `customer(n)`, `subscription(n)`, `invoice(n)` render one."""

    def __init__(self, sizes: Sizes | None = None) -> None:
        sizes = sizes or Sizes()
        if sizes.invoices < sizes.subscriptions:
            raise ValueError("need at least one invoice per subscription")
        self.sizes = sizes
        self.now = sizes.now
        rng = random.Random(sizes.seed)
        self._draw_subscriptions(rng)
        self._draw_customers(rng)
        self._index_invoices()
        self.catalog_created = self.origin - 30 * DAY
        self._build_catalog()

    # --- drawing the account ------------------------------------------------------------------

    def _draw_subscriptions(self, rng: random.Random) -> None:
        count, now = self.sizes.subscriptions, self.now
        intervals = [rng.choices((MONTH, YEAR, WEEKLY), (70, 15, 15))[0] for _ in range(count)]
        weights = [(1.0, 0.15, 4.0)[i] * rng.uniform(0.2, 1.8) for i in intervals]
        invoices = _allocate(self.sizes.invoices, weights)
        longest = max(n * NOMINAL_SECONDS[i] for n, i in zip(invoices, intervals, strict=True))
        self.origin = now - max(4 * 365 * DAY, int(longest * 1.1) + 90 * DAY)
        rows = []
        for interval, n in zip(intervals, invoices, strict=True):
            status = CANCELED if rng.random() < 0.25 else ACTIVE
            trial = rng.random() < 0.1
            if n == 1 and status == ACTIVE and trial:
                status = TRIALING
            rows.append(self._draw_one(rng, interval, n, status, trial))
        rows.sort(key=lambda row: row[0])
        columns = list(zip(*rows, strict=True))
        (
            self.sub_created,
            self.sub_trial_end,
            self.sub_interval,
            self.sub_invoices,
            self.sub_status,
            self.sub_ended,
            self.sub_canceled_at,
            self.sub_cancel_at,
            self.sub_items,
            self.sub_plan,
            self.sub_plan_after,
            self.sub_quantity,
            self.sub_quantity_after,
            self.sub_change_invoice,
            self.sub_change_at,
            self.sub_coupon,
            self.sub_item_coupon,
        ) = (array("q", column) for column in columns)

    def _draw_one(self, rng: random.Random, interval: int, n: int, status: int, trial: bool) -> tuple[int, ...]:
        now = self.now
        trial_days = 14 * DAY if trial else 0
        nominal = NOMINAL_SECONDS[interval]
        if status == CANCELED:
            latest = now - int(n * nominal * 1.05) - trial_days - 3 * DAY
            start = rng.randrange(self.origin + DAY, max(self.origin + 2 * DAY, latest))
        else:
            if trial and n == 1:
                start = now - int(rng.random() * trial_days)
            else:
                start = now - trial_days - int((n - (2 if trial else 1) + rng.random()) * nominal)
            start = _fit_active(start, trial_days, interval, n, now)
        trial_end = start + trial_days if trial else 0
        ends = _period_start(start, trial_end, interval, n)
        last = _period_start(start, trial_end, interval, n - 1)
        ended = canceled_at = cancel_at = 0
        if status == CANCELED:
            if rng.random() < 0.6:  # at period end, asked for some time during the last period
                ended = cancel_at = ends
                canceled_at = last + int((ends - last) * rng.uniform(0.1, 0.9))
            else:  # immediately, without proration
                ended = canceled_at = last + int((ends - last) * rng.uniform(0.05, 0.95))
        elif status == ACTIVE and n >= 2:
            draw = rng.random()
            if draw < 0.03:
                status = PAST_DUE
            elif draw < 0.07:
                cancel_at = ends
                canceled_at = last + int((min(now, ends) - last) * rng.uniform(0.1, 0.9))
        items = rng.choices((1, 2, 6), (85, 13, 2))[0]
        plan = rng.choices(range(FIRST_PLAN, LAST_PLAN + 1), (40, 35, 18, 7))[0]
        if items == 1 and rng.random() < 0.03:
            plan = LEGACY
        quantity = rng.choices((1, 2, 3, 5, 8, 12, 25), (50, 15, 10, 10, 7, 5, 3))[0]
        plan_after, quantity_after, change_invoice, change_at = plan, quantity, 0, 0
        first_paid = 2 if trial else 1
        if n > first_paid and rng.random() < 0.35:
            change_invoice = rng.randrange(first_paid, n)
            before = _period_start(start, trial_end, interval, change_invoice - 1)
            after = _period_start(start, trial_end, interval, change_invoice)
            change_at = before + int((after - before) * rng.uniform(0.1, 0.9))
            if items == 6 or rng.random() < 0.5:
                quantity_after = max(1, quantity + rng.choice((-2, -1, 1, 2, 3, 5)))
                if quantity_after == quantity:
                    quantity_after += 1
            else:
                plan_after = plan + 1 if plan < LAST_PLAN and (plan == LEGACY or rng.random() < 0.7) else plan - 1
                if plan_after == LEGACY:
                    plan_after = FIRST_PLAN + 1
        coupon = item_coupon = -1
        if rng.random() < 0.15:
            coupon = 6 if items == 6 else rng.randrange(0, 6)
        elif rng.random() < 0.03:
            item_coupon = 0
        return (
            start,
            trial_end,
            interval,
            n,
            status,
            ended,
            canceled_at,
            cancel_at,
            items,
            plan,
            plan_after,
            quantity,
            quantity_after,
            change_invoice,
            change_at,
            coupon,
            item_coupon,
        )

    def _draw_customers(self, rng: random.Random) -> None:
        """The first subscription of most customers opens them; a few come back for a second one."""
        subscriptions, customers = self.sizes.subscriptions, self.sizes.customers
        owner: list[int] = []  # subscription rank -> customer draw number
        opened: list[int] = []  # customer draw number -> created
        for rank in range(subscriptions):
            fresh = rank == 0 or (rank * customers) // subscriptions != ((rank - 1) * customers) // subscriptions
            if fresh or customers >= subscriptions:
                opened.append(self.sub_created[rank] - rng.randrange(0, 5 * DAY))
                owner.append(len(opened) - 1)
            else:
                owner.append(rng.randrange(len(opened)))
        while len(opened) < customers:
            opened.append(rng.randrange(self.origin, self.now))
        order = sorted(range(len(opened)), key=lambda draw: (opened[draw], draw))
        rank_of = [0] * len(opened)
        for rank, draw in enumerate(order):
            rank_of[draw] = rank
        self.customer_created = array("q", (opened[draw] for draw in order))
        self.sub_customer = array("q", (rank_of[draw] for draw in owner))
        subscriptions_of: dict[int, list[int]] = {}
        for rank, customer in enumerate(self.sub_customer):
            subscriptions_of.setdefault(customer, []).append(rank)
        self.subscriptions_of = subscriptions_of

    def _index_invoices(self) -> None:
        """Every invoice's (created, subscription, number) in created order, and the way back."""
        keys: list[tuple[int, int, int]] = []
        offsets = array("q", [0] * (self.sizes.subscriptions + 1))
        for rank in range(self.sizes.subscriptions):
            start, trial_end, interval = self.sub_created[rank], self.sub_trial_end[rank], self.sub_interval[rank]
            n = self.sub_invoices[rank]
            offsets[rank + 1] = offsets[rank] + n
            keys.extend((_period_start(start, trial_end, interval, m), rank, m) for m in range(n))
        keys.sort()
        self.invoice_offset = offsets
        self.invoice_created = array("q", (key[0] for key in keys))
        self.invoice_sub = array("q", (key[1] for key in keys))
        self.invoice_number = array("q", (key[2] for key in keys))
        rank_of = array("q", [0] * len(keys))
        for rank, (_, sub, m) in enumerate(keys):
            rank_of[offsets[sub] + m] = rank
        self.invoice_rank = rank_of

    def _build_catalog(self) -> None:
        self.products: list[dict[str, Any]] = []
        self.prices: list[dict[str, Any]] = []
        self.tiers: dict[str, list[dict[str, Any]]] = {}
        for number, (name, monthly, tiers_mode, active) in enumerate(PRODUCTS):
            created = self.catalog_created + number * 3600
            product_id = f"prod_{number:04d}"
            self.products.append(
                {
                    "id": product_id,
                    "object": "product",
                    "active": active,
                    "created": created,
                    "default_price": price_id(number, MONTH),
                    "description": None,
                    "images": [],
                    "livemode": True,
                    "marketing_features": [],
                    "metadata": {},
                    "name": name,
                    "package_dimensions": None,
                    "shippable": None,
                    "statement_descriptor": None,
                    "tax_code": None,
                    "type": "service",
                    "unit_label": "seat" if number == SEATS else None,
                    "updated": created,
                    "url": None,
                }
            )
            for interval in (MONTH, YEAR, WEEKLY):
                unit = None if monthly is None else scaled(monthly, interval)
                price: dict[str, Any] = {
                    "id": price_id(number, interval),
                    "object": "price",
                    "active": active,
                    "billing_scheme": "per_unit" if tiers_mode is None else "tiered",
                    "created": created + interval,
                    "currency": "usd",
                    "custom_unit_amount": None,
                    "livemode": True,
                    "lookup_key": None,
                    "metadata": {},
                    "nickname": f"{name} {INTERVALS[interval]}ly",
                    "product": product_id,
                    "recurring": {
                        "interval": INTERVALS[interval],
                        "interval_count": 1,
                        "meter": None,
                        "trial_period_days": None,
                        "usage_type": "licensed",
                    },
                    "tax_behavior": "unspecified",
                    "tiers_mode": tiers_mode,
                    "transform_quantity": None,
                    "type": "recurring",
                    "unit_amount": unit,
                    "unit_amount_decimal": None if unit is None else str(unit),
                }
                self.prices.append(price)
                if tiers_mode is not None:
                    self.tiers[price["id"]] = [
                        {
                            "flat_amount": None if flat is None else scaled(flat, interval),
                            "flat_amount_decimal": None if flat is None else str(scaled(flat, interval)),
                            "unit_amount": scaled(amount, interval),
                            "unit_amount_decimal": str(scaled(amount, interval)),
                            "up_to": up_to,
                        }
                        for up_to, amount, flat in MONTHLY_TIERS[tiers_mode]
                    ]
        self.price_by_id = {price["id"]: price for price in self.prices}
        self.product_by_id = {product["id"]: product for product in self.products}
        self.coupons: list[dict[str, Any]] = []
        for number, (coupon_id, percent, amount, duration, months, _) in enumerate(COUPONS):
            self.coupons.append(
                {
                    "id": coupon_id,
                    "object": "coupon",
                    "amount_off": amount,
                    "created": self.catalog_created + DAY + number * 3600,
                    "currency": "usd" if amount is not None else None,
                    "duration": duration,
                    "duration_in_months": months,
                    "livemode": True,
                    "max_redemptions": None,
                    "metadata": {},
                    "name": coupon_id,
                    "percent_off": percent,
                    "redeem_by": None,
                    "times_redeemed": 0,
                    "valid": True,
                }
            )
        self.coupon_by_id = {coupon["id"]: coupon for coupon in self.coupons}

    # --- sizes and lookups --------------------------------------------------------------------

    @property
    def invoice_count(self) -> int:
        return len(self.invoice_created)

    def coupon_applies_to(self, coupon_id: str) -> dict[str, Any] | None:
        number = next(n for n, row in enumerate(COUPONS) if row[0] == coupon_id)
        products = COUPONS[number][5]
        return {"products": [f"prod_{p:04d}" for p in products]} if products else {"products": []}

    def line_count(self, invoice: int) -> int:
        sub, m = self.invoice_sub[invoice], self.invoice_number[invoice]
        items = int(self.sub_items[sub])
        if m and m == self.sub_change_invoice[sub]:
            return items + 2 * len(self._changed_items(sub))
        return items

    # --- rendering ----------------------------------------------------------------------------

    def customer(self, rank: int) -> dict[str, Any]:
        created = self.customer_created[rank]
        return {
            "id": customer_id(rank),
            "object": "customer",
            "address": None,
            "balance": 0,
            "created": created,
            "currency": "usd" if rank in self.subscriptions_of else None,
            "default_source": None,
            "delinquent": False,
            "description": None,
            "discount": None,
            "email": f"billing+{rank}@customer{rank % 997}.example",
            "invoice_prefix": f"C{rank:07d}",
            "invoice_settings": {
                "custom_fields": None,
                "default_payment_method": None,
                "footer": None,
                "rendering_options": None,
            },
            "livemode": True,
            "metadata": {},
            "name": f"Customer {rank}",
            "next_invoice_sequence": 1 + sum(self.sub_invoices[s] for s in self.subscriptions_of.get(rank, ())),
            "phone": None,
            "preferred_locales": [],
            "shipping": None,
            "tax_exempt": "none",
            "test_clock": None,
        }

    def _items(self, sub: int, after: bool) -> list[tuple[int, int]]:
        """(product, quantity) of each subscription item, before or after the subscription's change."""
        plan = self.sub_plan_after[sub] if after else self.sub_plan[sub]
        quantity = self.sub_quantity_after[sub] if after else self.sub_quantity[sub]
        items = self.sub_items[sub]
        if items == 1:
            return [(plan, quantity)]
        if items == 2:
            return [(plan, 1), (SEATS, quantity)]
        return [(plan, quantity)] + [(addon, 1 if addon == 7 else quantity) for addon in BUNDLE_ADDONS]

    def _changed_items(self, sub: int) -> list[int]:
        before, after = self._items(sub, False), self._items(sub, True)
        return [i for i, (old, new) in enumerate(zip(before, after, strict=True)) if old != new]

    def period_start(self, sub: int, m: int) -> int:
        return _period_start(self.sub_created[sub], self.sub_trial_end[sub], self.sub_interval[sub], m)

    def item_amount(self, product: int, interval: int, quantity: int) -> int:
        monthly, mode = PRODUCTS[product][1], PRODUCTS[product][2]
        if monthly is not None:
            return scaled(monthly, interval) * quantity
        tiers = self.tiers[price_id(product, interval)]
        if mode == "volume":
            for tier in tiers:
                if tier["up_to"] is None or quantity <= tier["up_to"]:
                    return int(tier["unit_amount"]) * quantity + int(tier["flat_amount"] or 0)
        total, floor = 0, 0
        for tier in tiers:
            top = quantity if tier["up_to"] is None else min(quantity, tier["up_to"])
            if top > floor:
                total += (top - floor) * int(tier["unit_amount"]) + int(tier["flat_amount"] or 0)
            floor = top
        return total

    def discount(self, sub: int, level: str) -> dict[str, Any]:
        """The subscription's discount (`level` "S") or its first item's ("I")."""
        coupon = COUPONS[self.sub_coupon[sub] if level == "S" else self.sub_item_coupon[sub]]
        start = self.sub_created[sub]
        end = add_interval(start, MONTH, coupon[4]) if coupon[3] == "repeating" and coupon[4] else None
        return {
            "id": f"di_{sub:08d}{level}",
            "object": "discount",
            "checkout_session": None,
            "customer": customer_id(self.sub_customer[sub]),
            "customer_account": None,
            "end": end,
            "invoice": None,
            "invoice_item": None,
            "promotion_code": None,
            "source": {"coupon": coupon[0], "type": "coupon"},
            "start": start,
            "subscription": subscription_id(sub),
            "subscription_item": f"si_{sub:08d}00" if level == "I" else None,
        }

    def discount_by_id(self, discount_id: str) -> dict[str, Any] | None:
        try:
            sub, level = int(discount_id[3:11]), discount_id[11:]
        except ValueError:
            return None
        if not 0 <= sub < self.sizes.subscriptions or level not in ("S", "I"):
            return None
        if (self.sub_coupon if level == "S" else self.sub_item_coupon)[sub] < 0:
            return None
        return self.discount(sub, level)

    def _discount_active(self, sub: int, level: str, at: int, m: int) -> bool:
        coupon_number = (self.sub_coupon if level == "S" else self.sub_item_coupon)[sub]
        if coupon_number < 0:
            return False
        _, _, _, duration, months, _ = COUPONS[coupon_number]
        if duration == "once":
            return m == (1 if self.sub_trial_end[sub] else 0)
        if duration == "repeating" and months:
            return at < add_interval(self.sub_created[sub], MONTH, months)
        return True

    def subscription(self, sub: int) -> dict[str, Any]:
        n, interval, status = self.sub_invoices[sub], self.sub_interval[sub], self.sub_status[sub]
        sid, created = subscription_id(sub), self.sub_created[sub]
        period_start, period_end = self.period_start(sub, n - 1), self.period_start(sub, n)
        discounts = [f"di_{sub:08d}S"] if self._discount_active(sub, "S", self.now, n) else []
        items = []
        for number, (product, quantity) in enumerate(self._items(sub, True)):
            price = dict(self.price_by_id[price_id(product, interval)])
            item_discounts = [f"di_{sub:08d}I"] if number == 0 and self.sub_item_coupon[sub] >= 0 else []
            items.append(
                {
                    "id": f"si_{sub:08d}{number:02d}",
                    "object": "subscription_item",
                    "billing_thresholds": None,
                    "created": created,
                    "current_period_end": period_end,
                    "current_period_start": period_start,
                    "discounts": item_discounts,
                    "metadata": {},
                    "price": price,
                    "quantity": quantity,
                    "subscription": sid,
                    "tax_rates": [],
                }
            )
        trial_end = self.sub_trial_end[sub] or None
        return {
            "id": sid,
            "object": "subscription",
            "application": None,
            "application_fee_percent": None,
            "automatic_tax": {"disabled_reason": None, "enabled": False, "liability": None},
            "billing_cycle_anchor": trial_end or created,
            "billing_cycle_anchor_config": None,
            "billing_mode": {"type": "classic"},
            "billing_thresholds": None,
            "cancel_at": self.sub_cancel_at[sub] or None,
            "cancel_at_period_end": bool(self.sub_cancel_at[sub]),
            "canceled_at": self.sub_canceled_at[sub] or None,
            "cancellation_details": {
                "comment": None,
                "feedback": None,
                "reason": "cancellation_requested" if self.sub_canceled_at[sub] else None,
            },
            "collection_method": "charge_automatically",
            "created": created,
            "currency": "usd",
            "customer": customer_id(self.sub_customer[sub]),
            "customer_account": None,
            "days_until_due": None,
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": discounts,
            "ended_at": self.sub_ended[sub] or None,
            "invoice_settings": {"account_tax_ids": None, "issuer": {"type": "self"}},
            "items": {
                "object": "list",
                "data": items,
                "has_more": False,
                "total_count": len(items),
                "url": f"/v1/subscription_items?subscription={sid}",
            },
            "latest_invoice": invoice_id(self.invoice_rank[self.invoice_offset[sub] + n - 1]),
            "livemode": True,
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
            "start_date": created,
            "status": STATUSES[status],
            "test_clock": None,
            "transfer_data": None,
            "trial_end": trial_end,
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
            "trial_start": created if trial_end else None,
        }

    def lines(self, invoice: int) -> list[dict[str, Any]]:
        """Every line of an invoice, in Stripe's order: prorations first, then the subscription items."""
        sub, m = self.invoice_sub[invoice], self.invoice_number[invoice]
        interval, iid = self.sub_interval[sub], invoice_id(invoice)
        start, end = self.period_start(sub, m), self.period_start(sub, m + 1)
        trial = m == 0 and bool(self.sub_trial_end[sub])
        change = self.sub_change_invoice[sub]
        after = bool(change) and m >= change
        sub_discount = self._discount_active(sub, "S", start, m)
        percent, amount_off, scope = _coupon_terms(self.sub_coupon[sub]) if sub_discount else (None, None, None)
        rows: list[tuple[int, int, int, bool, int, int, int, str]] = []  # item, product, qty, proration, amount, period
        if change and m == change:
            before_items, after_items = self._items(sub, False), self._items(sub, True)
            since = self.sub_change_at[sub]
            fraction = (start - since) / (start - self.period_start(sub, m - 1))
            for number in self._changed_items(sub):
                old_product, old_quantity = before_items[number]
                new_product, new_quantity = after_items[number]
                old = round(self.item_amount(old_product, interval, old_quantity) * fraction)
                new = round(self.item_amount(new_product, interval, new_quantity) * fraction)
                rows.append((number, old_product, old_quantity, True, -old, since, start, "Unused time on"))
                rows.append((number, new_product, new_quantity, True, new, since, start, "Remaining time on"))
        for number, (product, quantity) in enumerate(self._items(sub, after)):
            amount = 0 if trial else self.item_amount(product, interval, quantity)
            rows.append((number, product, quantity, False, amount, start, end, "Trial period for" if trial else ""))
        lines = []
        off_left = amount_off
        for index, (number, product, quantity, proration, amount, since, until, label) in enumerate(rows):
            name = PRODUCTS[product][0]
            discount_amounts = []
            line_discounts = []
            if number == 0 and self.sub_item_coupon[sub] >= 0:
                line_discounts = [f"di_{sub:08d}I"]
                if amount > 0:
                    item_percent = COUPONS[self.sub_item_coupon[sub]][1] or 0
                    discount_amounts.append(
                        {"amount": round(amount * item_percent / 100), "discount": line_discounts[0]}
                    )
            if sub_discount and (scope is None or product in scope) and amount > 0:
                if percent is not None:
                    taken = round(amount * percent / 100)
                else:
                    taken = min(amount, off_left or 0)
                    off_left = (off_left or 0) - taken
                discount_amounts.append({"amount": taken, "discount": f"di_{sub:08d}S"})
            lines.append(
                {
                    "id": f"il_{invoice:08d}{index:03d}",
                    "object": "line_item",
                    "amount": amount,
                    "currency": "usd",
                    "description": f"{label} {name}".strip()
                    if proration or trial
                    else f"{quantity} × {name} (at ${self.item_amount(product, interval, 1) / 100:.2f} / "
                    f"{INTERVALS[interval]})",
                    "discount_amounts": discount_amounts,
                    "discountable": True,
                    "discounts": line_discounts,
                    "invoice": iid,
                    "livemode": True,
                    "metadata": {},
                    "parent": {
                        "invoice_item_details": None,
                        "subscription_item_details": {
                            "invoice_item": f"ii_{invoice:08d}{index:03d}" if proration else None,
                            "proration": proration,
                            "proration_details": {"credited_items": None},
                            "subscription": subscription_id(sub),
                            "subscription_item": f"si_{sub:08d}{number:02d}",
                        },
                        "type": "subscription_item_details",
                    },
                    "period": {"end": until, "start": since},
                    "pretax_credit_amounts": [],
                    "pricing": {
                        "price_details": {"price": price_id(product, interval), "product": f"prod_{product:04d}"},
                        "type": "price_details",
                        "unit_amount_decimal": str(self.item_amount(product, interval, 1)),
                    },
                    "quantity": quantity,
                    "quantity_decimal": str(quantity),
                    "subscription": None,
                    "subtotal": amount,
                    "taxes": [],
                }
            )
        return lines

    def invoice(self, invoice: int) -> dict[str, Any]:
        sub, m = self.invoice_sub[invoice], self.invoice_number[invoice]
        iid, created = invoice_id(invoice), self.invoice_created[invoice]
        lines = self.lines(invoice)
        subtotal = sum(line["amount"] for line in lines)
        totals: dict[str, int] = {}
        for line in lines:
            for entry in line["discount_amounts"]:
                totals[entry["discount"]] = totals.get(entry["discount"], 0) + entry["amount"]
        total = subtotal - sum(totals.values())
        latest = m == self.sub_invoices[sub] - 1
        open_ = latest and self.sub_status[sub] == PAST_DUE
        paid_at = None if open_ else created + 3600
        customer = self.sub_customer[sub]
        discounts = [f"di_{sub:08d}S"] if f"di_{sub:08d}S" in totals else []
        reason = "subscription_create" if m == 0 else "subscription_cycle"
        return {
            "id": iid,
            "object": "invoice",
            "account_country": "US",
            "account_name": "Synthetic SaaS Inc.",
            "account_tax_ids": None,
            "amount_due": total,
            "amount_overpaid": 0,
            "amount_paid": 0 if open_ else total,
            "amount_remaining": total if open_ else 0,
            "amount_shipping": 0,
            "application": None,
            "attempt_count": 1 if total else 0,
            "attempted": bool(total),
            "auto_advance": open_,
            "automatic_tax": {
                "disabled_reason": None,
                "enabled": False,
                "liability": None,
                "provider": None,
                "status": None,
            },
            "automatically_finalizes_at": None,
            "billing_reason": reason,
            "collection_method": "charge_automatically",
            "created": created,
            "currency": "usd",
            "custom_fields": None,
            "customer": customer_id(customer),
            "customer_account": None,
            "customer_address": None,
            "customer_email": f"billing+{customer}@customer{customer % 997}.example",
            "customer_name": f"Customer {customer}",
            "customer_phone": None,
            "customer_shipping": None,
            "customer_tax_exempt": "none",
            "customer_tax_ids": [],
            "default_payment_method": None,
            "default_source": None,
            "default_tax_rates": [],
            "description": None,
            "discounts": discounts,
            "due_date": None,
            "effective_at": created + 3600,
            "ending_balance": 0,
            "footer": None,
            "from_invoice": None,
            "hosted_invoice_url": None,
            "invoice_pdf": None,
            "issuer": {"type": "self"},
            "last_finalization_error": None,
            "latest_revision": None,
            "lines": {
                "object": "list",
                "data": lines[:LINES_EMBEDDED],
                "has_more": len(lines) > LINES_EMBEDDED,
                "total_count": len(lines),
                "url": f"/v1/invoices/{iid}/lines",
            },
            "livemode": True,
            "metadata": {},
            "next_payment_attempt": created + 3 * DAY if open_ else None,
            "number": f"C{customer:07d}-{m + 1:04d}",
            "on_behalf_of": None,
            "parent": {
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": subscription_id(sub)},
                "type": "subscription_details",
            },
            "payment_settings": {"default_mandate": None, "payment_method_options": None, "payment_method_types": None},
            "period_end": created,
            "period_start": self.period_start(sub, m - 1) if m else created,
            "post_payment_credit_notes_amount": 0,
            "pre_payment_credit_notes_amount": 0,
            "receipt_number": None,
            "rendering": None,
            "shipping_cost": None,
            "shipping_details": None,
            "starting_balance": 0,
            "statement_descriptor": None,
            "status": "open" if open_ else "paid",
            "status_transitions": {
                "finalized_at": created + 3600,
                "marked_uncollectible_at": None,
                "paid_at": paid_at,
                "voided_at": None,
            },
            "subscription": None,
            "subtotal": subtotal,
            "subtotal_excluding_tax": subtotal,
            "test_clock": None,
            "total": total,
            "total_discount_amounts": [{"amount": a, "discount": d} for d, a in totals.items()],
            "total_excluding_tax": total,
            "total_pretax_credit_amounts": [],
            "total_taxes": [],
            "webhooks_delivered_at": created + 60,
        }

    def subscription_status(self, sub: int) -> str:
        return STATUSES[self.sub_status[sub]]

    def invoices_of(self, sub: int) -> Iterator[int]:
        base = self.invoice_offset[sub]
        return (self.invoice_rank[base + m] for m in range(self.sub_invoices[sub]))


def _allocate(total: int, weights: list[float]) -> list[int]:
    """`total` split into one positive integer per weight, proportionally, summing exactly to `total`."""
    spare = total - len(weights)
    whole = sum(weights)
    counts, running, given = [], 0.0, 0
    for weight in weights:
        running += weight
        upto = int(spare * running / whole)
        counts.append(1 + upto - given)
        given = upto
    counts[-1] += spare - given
    return counts


def _period_start(start: int, trial_end: int, interval: int, m: int) -> int:
    if trial_end:
        return start if m == 0 else add_interval(trial_end, interval, m - 1)
    return add_interval(start, interval, m)


def _fit_active(start: int, trial_days: int, interval: int, n: int, now: int) -> int:
    """Move `start` by days until `now` falls inside the subscription's n-th period."""
    for _ in range(200):
        trial_end = start + trial_days if trial_days else 0
        if _period_start(start, trial_end, interval, n) <= now:
            start += DAY
        elif _period_start(start, trial_end, interval, n - 1) > now:
            start -= DAY
        else:
            return start
    raise AssertionError("no start puts now inside the last period")


def _coupon_terms(number: int) -> tuple[float | None, int | None, frozenset[int] | None]:
    _, percent, amount, _, _, products = COUPONS[number]
    return percent, amount, frozenset(products) if products else None


def customer_id(rank: int) -> str:
    return f"cus_{rank:08d}"


def subscription_id(rank: int) -> str:
    return f"sub_{rank:08d}"


def invoice_id(rank: int) -> str:
    return f"in_{rank:08d}"


def price_id(product: int, interval: int) -> str:
    return f"price_{product:04d}{INTERVAL_LETTER[interval]}"


def rank_of(object_id: str, prefix: str, count: int) -> int | None:
    """The rank an id of ours encodes, or None for an id that is not one."""
    digits = object_id[len(prefix) :]
    if not object_id.startswith(prefix) or len(digits) != 8 or not digits.isdigit():
        return None
    rank = int(digits)
    return rank if rank < count else None
