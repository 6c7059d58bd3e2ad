"""MRR by product and by price at one instant (mrr-rules.md §8, "Breakdown").

The subscriptions in force then are those whose latest subscription change at
that instant has a net MRR above 0. Each is valued again, item by item, from
its latest observed version before the instant with the same rules as the
ledger, so a price's share is what its items are worth after their discounts.
Items are rounded on their own (see `ledger.mrr.SubscriptionMRR`), so the
breakdown can differ from the ledger's MRR by a cent per subscription.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ledger.models import StripeObject, SubscriptionChange, SubscriptionSnapshot
from ledger.mrr import UnresolvedStripeObject, subscription_mrr
from ledger.resolve import Lookup, resolve_subscription
from ledger.settings import RuleSettings


@dataclass(frozen=True)
class PriceMRR:
    """One price's monthly worth over every subscription holding it."""

    currency: str
    price_id: str
    product_id: str | None
    product_name: str | None
    price_nickname: str | None
    subscriptions: int
    mrr: int


@dataclass(frozen=True)
class Breakdown:
    at: datetime
    prices: list[PriceMRR]
    """Largest first, per currency."""
    unvalued: list[str] = field(default_factory=list)
    """Subscriptions that could not be valued (a referenced object is not stored)."""


def _latest_rows(model: Any, order: tuple[Any, ...], *where: Any) -> Any:
    """Each subscription's first row in `order` among those matching `where`."""
    ranked = (
        select(model, func.row_number().over(partition_by=model.subscription_id, order_by=order).label("newest"))
        .where(*where)
        .subquery()
    )
    return select(ranked).where(ranked.c.newest == 1)


def _lookup(session: Session) -> Lookup:
    cache: dict[str, Mapping[str, Any] | None] = {}

    def lookup(object_id: str) -> Mapping[str, Any] | None:
        if object_id not in cache:
            row = session.get(StripeObject, object_id)
            cache[object_id] = row.payload if row is not None else None
        return cache[object_id]

    return lookup


def mrr_by_price(session: Session, *, livemode: bool, at: datetime, rules: RuleSettings) -> Breakdown:
    """MRR per (currency, price) of the subscriptions in force at `at`."""
    changes = _latest_rows(
        SubscriptionChange,
        (SubscriptionChange.at.desc(), SubscriptionChange.id.desc()),
        SubscriptionChange.livemode == livemode,
        SubscriptionChange.at <= at,
    )
    paying = [row.subscription_id for row in session.execute(changes) if row.net > 0]
    if not paying:
        return Breakdown(at, [])
    snapshots = _latest_rows(
        SubscriptionSnapshot,
        (SubscriptionSnapshot.observed_at.desc(), SubscriptionSnapshot.rank.desc(), SubscriptionSnapshot.id.desc()),
        SubscriptionSnapshot.subscription_id.in_(paying),
        SubscriptionSnapshot.observed_at <= at,
    )
    lookup = _lookup(session)
    products: dict[tuple[str, str], str | None] = {}
    holders: dict[tuple[str, str], set[str]] = {}
    amounts: dict[tuple[str, str], int] = {}
    unvalued: list[str] = []
    for row in session.execute(snapshots):
        try:
            valued = subscription_mrr(resolve_subscription(row.payload, lookup), at, rules)
        except UnresolvedStripeObject:
            unvalued.append(row.subscription_id)
            continue
        for item in valued.items:
            key = (item.currency, item.price_id)
            products[key] = item.product_id
            holders.setdefault(key, set()).add(row.subscription_id)
            amounts[key] = amounts.get(key, 0) + item.net
    prices = []
    for (currency, price_id), product_id in products.items():
        product, price = lookup(product_id) if product_id else None, lookup(price_id)
        prices.append(
            PriceMRR(
                currency=currency,
                price_id=price_id,
                product_id=product_id,
                product_name=_text(product, "name"),
                price_nickname=_text(price, "nickname"),
                subscriptions=len(holders[(currency, price_id)]),
                mrr=amounts[(currency, price_id)],
            )
        )
    prices.sort(key=lambda p: (p.currency, -p.mrr, p.price_id))
    return Breakdown(at, prices, sorted(unvalued))


def _text(obj: Mapping[str, Any] | None, key: str) -> str | None:
    value = obj.get(key) if obj is not None else None
    return value if isinstance(value, str) and value else None


def by_product(prices: list[PriceMRR]) -> list[tuple[str, str | None, str | None, int]]:
    """(currency, product id, product name, MRR) summed over the product's prices, largest first."""
    sums: dict[tuple[str, str | None], tuple[str | None, int]] = {}
    for price in prices:
        name, mrr = sums.get((price.currency, price.product_id), (price.product_name, 0))
        sums[(price.currency, price.product_id)] = (name or price.product_name, mrr + price.mrr)
    rows = [(currency, product, name, mrr) for (currency, product), (name, mrr) in sums.items()]
    return sorted(rows, key=lambda row: (row[0], -row[3], row[1] or ""))
