"""Filling in what a subscription payload names only by id.

Webhook payloads carry discounts as ids, coupons (in the newest API versions)
as ids inside the discount, and tiered prices without their tiers. The MRR
rules need them whole; stored versions (from their own events, or fetched
from the API) fill them in here. A discount or price still missing is left as
it is, and `ledger.mrr` names it in an `UnresolvedStripeObject`. A coupon named
by id that is not stored is named here, by its own id: a coupon has an endpoint
of its own, so the caller fetches the coupon itself, never the subscription the
discount was on (which no longer carries a discount that was removed since).

A coupon's `applies_to` is an includable field: Stripe sends it only when it is
expanded, so a coupon seen without the key (every webhook copy) says nothing
about which items it reduces. Such a coupon takes `applies_to` from a stored
copy that was read; when none was, `unread_applies_to` decides (see
`resolve_subscription`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from ledger.mrr import UnresolvedStripeObject

Lookup = Callable[[str], Mapping[str, Any] | None]
"""The stored version of a Stripe object by id, or None."""

UnreadAppliesTo = Callable[[str], None]
"""Told the id of a coupon about to value a subscription although its `applies_to`
was never read: raises to have it fetched first (`fetch_first`), or returns to
have it valued as applying to every item (`every_item`)."""


def applies_to_read(coupon: Mapping[str, Any]) -> bool:
    """Was this copy of a coupon read with `applies_to` expanded?

    Expanded, Stripe always includes the field: an object listing the products
    (an empty list, or null, means every item). Without the key the copy says
    nothing about it.
    """
    return "applies_to" in coupon


def fetch_first(coupon_id: str) -> None:
    """`UnreadAppliesTo` of a caller that can fetch: name the coupon, to be read expanded first."""
    raise UnresolvedStripeObject(
        f"coupon {coupon_id} was never read with applies_to expanded, so which items it reduces is unknown: "
        f"fetch it (GET /v1/coupons/{coupon_id}?expand[]=applies_to) and call again",
        object_id=coupon_id,
        missing="applies_to",
    )


def every_item(coupon_id: str) -> None:
    """`UnreadAppliesTo` of a caller that cannot fetch: the coupon reduces every item, as `ledger.mrr`
    reads a coupon without the field."""


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


def _read_coupon(coupon: dict[str, Any], lookup: Lookup, unread: UnreadAppliesTo) -> dict[str, Any]:
    """`coupon` with the `applies_to` a stored copy read, if it carries none itself."""
    coupon_id = coupon.get("id")
    if applies_to_read(coupon) or not isinstance(coupon_id, str) or not coupon_id:
        return coupon
    stored = lookup(coupon_id)
    if stored is not None and applies_to_read(stored):
        # Set when the coupon is created and never changed: any copy that read it will do.
        return {**coupon, "applies_to": copy.deepcopy(stored["applies_to"])}
    unread(coupon_id)
    return coupon


def _resolve_coupon(discount: dict[str, Any], lookup: Lookup, unread: UnreadAppliesTo) -> None:
    if isinstance(discount.get("coupon"), str):
        discount["coupon"] = _stored_coupon(discount["coupon"], discount, lookup)
    if isinstance(discount.get("coupon"), dict):
        discount["coupon"] = _read_coupon(discount["coupon"], lookup, unread)
    source = discount.get("source")
    if isinstance(source, dict) and isinstance(source.get("coupon"), str):
        source["coupon"] = _stored_coupon(source["coupon"], discount, lookup)
    if isinstance(source, dict) and isinstance(source.get("coupon"), dict):
        source["coupon"] = _read_coupon(source["coupon"], lookup, unread)


def _resolve_discounts(entries: list[Any], lookup: Lookup, unread: UnreadAppliesTo) -> list[Any]:
    resolved: list[Any] = []
    for entry in entries:
        if isinstance(entry, str):
            found = lookup(entry)
            entry = copy.deepcopy(dict(found)) if found is not None else entry
        if isinstance(entry, dict):
            _resolve_coupon(entry, lookup, unread)
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
    """Does the payload name anything by id, hold a coupon not read whole, or lack a tiered price's tiers?"""

    def discounts_need(entries: Any) -> bool:
        for entry in entries or []:
            if not isinstance(entry, Mapping):
                return True
            source = entry.get("source")
            coupon = entry.get("coupon") or (source.get("coupon") if isinstance(source, Mapping) else None)
            if isinstance(coupon, str) or (isinstance(coupon, Mapping) and not applies_to_read(coupon)):
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


def resolve_subscription(
    subscription: Mapping[str, Any], lookup: Lookup, *, unread_applies_to: UnreadAppliesTo = every_item
) -> Mapping[str, Any]:
    """`subscription` with every reference `lookup` knows filled in (a copy; itself when complete).

    Raises `UnresolvedStripeObject` naming a coupon that a discount names by id
    and `lookup` does not know. A coupon whose `applies_to` no copy read is
    passed to `unread_applies_to` before it values anything: by default it
    reduces every item; a caller that can fetch passes `fetch_first`.
    """
    if not _needs_resolving(subscription):
        return subscription
    resolved = copy.deepcopy(dict(subscription))
    if isinstance(resolved.get("discounts"), list):
        resolved["discounts"] = _resolve_discounts(resolved["discounts"], lookup, unread_applies_to)
    if isinstance(resolved.get("discount"), dict):
        _resolve_coupon(resolved["discount"], lookup, unread_applies_to)
    items = resolved.get("items")
    for item in items.get("data") or [] if isinstance(items, dict) else []:
        if isinstance(item.get("discounts"), list):
            item["discounts"] = _resolve_discounts(item["discounts"], lookup, unread_applies_to)
        _resolve_price(item, lookup)
    return resolved
