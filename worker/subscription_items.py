"""A subscription with more items than Stripe embeds: the stored versions get the rest.

A subscription object carries its first 20 items (`items.has_more`: true past
that), in webhooks as in API answers. Reads from the API page the rest
(`StripeAPI.with_every_item`); a webhook's version is stored as it came, and
the MRR rules refuse to value a cut list (`ledger.mrr` raises
`UnresolvedStripeObject` naming `items`). The worker then reads the items
Stripe has now and completes every stored version of the subscription that
was cut.

What a version held past its first 20 items is not in the event: it gets the
items listed now that already existed when it was observed (an item's
`created`). An item removed since is no longer listed, so an older version
cannot get it back.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ledger.models import Subscription, SubscriptionSnapshot
from worker.stripe_api import StripeAPI


def _cut(payload: Mapping[str, Any]) -> bool:
    items = payload.get("items")
    return isinstance(items, Mapping) and bool(items.get("has_more"))


def with_items_listed(
    payload: Mapping[str, Any], listed: Sequence[Mapping[str, Any]], observed_at: datetime
) -> dict[str, Any]:
    """`payload` with its cut item list completed from `listed`: the items it lacks that existed at `observed_at`."""
    items: Mapping[str, Any] = payload["items"]
    data = list(items.get("data") or [])
    embedded = {item.get("id") for item in data}
    moment = observed_at.timestamp()
    data.extend(
        dict(item) for item in listed if item.get("id") not in embedded and (item.get("created") or 0) <= moment
    )
    every = dict(items, data=data, has_more=False)
    if "total_count" in every:
        every["total_count"] = len(data)
    return dict(payload, items=every)


def complete_stored_items(session: Session, api: StripeAPI, subscription_id: str) -> None:
    """Give every stored version of the subscription whose item list was cut the rest of its items.

    The stored `content_hash` stays that of the version as Stripe sent it, so
    the same cut version delivered again is still recognised as stored.
    """
    listed = list(api.subscription_items(subscription_id))
    versions: list[SubscriptionSnapshot | Subscription] = list(
        session.scalars(select(SubscriptionSnapshot).where(SubscriptionSnapshot.subscription_id == subscription_id))
    )
    latest = session.get(Subscription, subscription_id)
    if latest is not None:
        versions.append(latest)
    for version in versions:
        if _cut(version.payload):
            version.payload = with_items_listed(version.payload, listed, version.observed_at)
