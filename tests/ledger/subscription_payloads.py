"""Subscription payloads and snapshots for the timeline and movement tests.

Built from the current-API `subscription` of the Stripe fixtures (tests/fixtures/stripe), with
every life-cycle field (trial, cancellation, pause) reset so a test sets only
what it is about.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from functools import cache
from typing import Any

from ledger.timeline import Change, Snapshot
from tests.stripe_payloads import resource


def ts(instant: datetime) -> int:
    return int(instant.timestamp())


def utc(month: int, day: int, hour: int = 0, minute: int = 0, year: int = 2024) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@cache
def _subscription_template() -> dict[str, Any]:
    template = resource("subscription")
    template.update(
        cancel_at=None,
        cancel_at_period_end=False,
        canceled_at=None,
        ended_at=None,
        pause_collection=None,
        trial_start=None,
        trial_end=None,
        pending_update=None,
        discounts=[],
        discount=None,
    )
    template["items"]["data"] = []
    return template


def price(
    unit_amount: int = 10000,
    interval: str = "month",
    *,
    price_id: str = "price_gold",
    product: str = "prod_gold",
    currency: str = "usd",
) -> dict[str, Any]:
    return {
        "id": price_id,
        "object": "price",
        "billing_scheme": "per_unit",
        "currency": currency,
        "product": product,
        "recurring": {"interval": interval, "interval_count": 1, "usage_type": "licensed"},
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring",
        "unit_amount": unit_amount,
        "unit_amount_decimal": str(unit_amount),
    }


def item(rate: dict[str, Any], quantity: int = 1, *, item_id: str = "si_1") -> dict[str, Any]:
    return {
        "id": item_id,
        "object": "subscription_item",
        "price": rate,
        "quantity": quantity,
        "discounts": [],
    }


def repeating_discount(percent_off: int, start: datetime, end: datetime) -> dict[str, Any]:
    coupon = {
        "id": f"OFF{percent_off}",
        "object": "coupon",
        "percent_off": percent_off,
        "amount_off": None,
        "currency": None,
        "duration": "repeating",
        "duration_in_months": None,
        "applies_to": None,
    }
    return {
        "id": "di_1",
        "object": "discount",
        "start": ts(start),
        "end": ts(end),
        "source": {"type": "coupon", "coupon": coupon},
    }


def subscription(
    *items: dict[str, Any],
    start: datetime,
    status: str = "active",
    sub_id: str = "sub_1",
    customer: str = "cus_1",
    currency: str = "usd",
    **fields: Any,
) -> dict[str, Any]:
    """A subscription; datetime values in `fields` become Unix timestamps."""
    result = copy.deepcopy(_subscription_template())
    result.update(id=sub_id, customer=customer, currency=currency, status=status)
    result.update(start_date=ts(start), created=ts(start), billing_cycle_anchor=ts(start))
    result["items"]["data"] = list(items) or [item(price(currency=currency))]
    result.update({key: ts(value) if isinstance(value, datetime) else value for key, value in fields.items()})
    return result


def snapshot(payload: dict[str, Any], observed_at: datetime, source: str = "", rank: int = 0) -> Snapshot:
    return Snapshot(
        subscription_id=payload["id"],
        customer_id=payload["customer"],
        observed_at=observed_at,
        rank=rank,
        source=source or f"evt_{payload['id']}_{ts(observed_at)}_{rank}",
        subscription=payload,
    )


def net_at(changes: list[Change], at: datetime) -> int:
    """Sum over subscriptions of the net MRR in force at `at`."""
    latest: dict[str, int] = {}
    for change in changes:
        if change.at <= at:
            latest[change.subscription_id] = change.net
    return sum(latest.values())


def many_items(count: int) -> list[dict[str, Any]]:
    """`count` items, each on a monthly price of its own: item n (from 0) costs (n + 1) × 1.00, `si_<nn>`."""
    return [
        item(price(100 * (n + 1), price_id=f"price_{n:02d}", product=f"prod_{n:02d}"), item_id=f"si_{n:02d}")
        for n in range(count)
    ]
