"""Filling in what a subscription payload names only by id.

Webhook payloads carry discounts as ids, coupons (in the newest API versions)
as ids inside the discount, and tiered prices without their tiers. The MRR
rules need them whole; stored versions (from their own events, or fetched
from the API) fill them in here. A discount or price still missing is left as
it is, and `ledger.mrr` names it in an `UnresolvedStripeObject`. A coupon named
by id that is not stored is named here, by its own id: a coupon has an endpoint
of its own, so the caller fetches the coupon itself, never the subscription the
discount was on (which no longer carries a discount that was removed since).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from ledger.mrr import UnresolvedStripeObject

Lookup = Callable[[str], Mapping[str, Any] | None]
"""The stored version of a Stripe object by id, or None."""


def _stored_coupon(coupon_id: str, discount: Mapping[str, Any], lookup: Lookup) -> dict[str, Any]:
    coupon = lookup(coupon_id)
    if coupon is None:
        raise UnresolvedStripeObject(
            f"coupon {coupon_id} of discount {discount.get('id')} is named by id and not stored: "
            f"fetch it (GET /v1/coupons/{coupon_id}?expand[]=applies_to) and call again",
            object_id=coupon_id,
            missing="coupon object",
        )
    return dict(coupon)


def _resolve_coupon(discount: dict[str, Any], lookup: Lookup) -> None:
    if isinstance(discount.get("coupon"), str):
        discount["coupon"] = _stored_coupon(discount["coupon"], discount, lookup)
    source = discount.get("source")
    if isinstance(source, dict) and isinstance(source.get("coupon"), str):
        source["coupon"] = _stored_coupon(source["coupon"], discount, lookup)


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
    """`subscription` with every reference `lookup` knows filled in (a copy; itself when complete).

    Raises `UnresolvedStripeObject` naming a coupon that a discount names by id
    and `lookup` does not know.
    """
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
