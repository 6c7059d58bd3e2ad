"""Filling in what a subscription payload names only by id.

Webhook payloads carry discounts as ids, coupons (in the newest API versions)
as ids inside the discount, and tiered prices without their tiers. The MRR
rules need them whole; stored versions (from their own events, or fetched
from the API) fill them in here. What is still missing is left as it is, and
`ledger.mrr` names it in an `UnresolvedStripeObject`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

Lookup = Callable[[str], Mapping[str, Any] | None]
"""The stored version of a Stripe object by id, or None."""


def _resolve_coupon(discount: dict[str, Any], lookup: Lookup) -> None:
    if isinstance(discount.get("coupon"), str):
        coupon = lookup(discount["coupon"])
        if coupon is not None:
            discount["coupon"] = dict(coupon)
    source = discount.get("source")
    if isinstance(source, dict) and isinstance(source.get("coupon"), str):
        coupon = lookup(source["coupon"])
        if coupon is not None:
            source["coupon"] = dict(coupon)


def _resolve_discounts(entries: list[Any], lookup: Lookup) -> list[Any]:
    resolved: list[Any] = []
    for entry in entries:
        if isinstance(entry, str):
            found = lookup(entry)
            entry = copy.deepcopy(dict(found)) if found is not None else entry
        if isinstance(entry, dict):
            _resolve_coupon(entry, lookup)
        resolved.append(entry)
    return resolved


def _resolve_price(item: dict[str, Any], lookup: Lookup) -> None:
    price = item.get("price")
    if isinstance(price, dict) and "type" not in price and "recurring" not in price:
        stored = lookup(str(price.get("id")))
        if stored is not None:
            item["price"] = dict(stored)
        return
    if isinstance(price, dict) and price.get("billing_scheme") == "tiered" and price.get("tiers") is None:
        stored = lookup(str(price.get("id")))
        if stored is not None and stored.get("tiers") is not None:
            item["price"] = dict(stored)


def _needs_resolving(subscription: Mapping[str, Any]) -> bool:
    """Does the payload name anything by id, or lack a tiered price's tiers?"""

    def discounts_need(entries: Any) -> bool:
        for entry in entries or []:
            if isinstance(entry, str):
                return True
            source = entry.get("source") if isinstance(entry, Mapping) else None
            if isinstance(entry, Mapping) and (
                isinstance(entry.get("coupon"), str)
                or (isinstance(source, Mapping) and isinstance(source.get("coupon"), str))
            ):
                return True
        return False

    if discounts_need(subscription.get("discounts")) or discounts_need(
        [subscription.get("discount")] if subscription.get("discount") else []
    ):
        return True
    items = subscription.get("items")
    for item in items.get("data") or [] if isinstance(items, Mapping) else []:
        price = item.get("price")
        if discounts_need(item.get("discounts")):
            return True
        if isinstance(price, Mapping) and (
            ("type" not in price and "recurring" not in price)
            or (price.get("billing_scheme") == "tiered" and price.get("tiers") is None)
        ):
            return True
    return False


def resolve_subscription(subscription: Mapping[str, Any], lookup: Lookup) -> Mapping[str, Any]:
    """`subscription` with every reference `lookup` knows filled in (a copy; itself when complete)."""
    if not _needs_resolving(subscription):
        return subscription
    resolved = copy.deepcopy(dict(subscription))
    if isinstance(resolved.get("discounts"), list):
        resolved["discounts"] = _resolve_discounts(resolved["discounts"], lookup)
    if isinstance(resolved.get("discount"), dict):
        _resolve_coupon(resolved["discount"], lookup)
    items = resolved.get("items")
    for item in items.get("data") or [] if isinstance(items, dict) else []:
        if isinstance(item.get("discounts"), list):
            item["discounts"] = _resolve_discounts(item["discounts"], lookup)
        _resolve_price(item, lookup)
    return resolved
