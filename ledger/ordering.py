"""Ordering two or more versions of one subscription that Stripe stamped with
the same second (mrr-rules.md §5: ties are settled from object state, never by
arrival order).

1. `previous_attributes`: an `*.updated` event lists the values its change
   replaced. Version B follows version A when A holds exactly those values.
2. Failing that, the subscription as the API shows it now: the version that
   matches it on every field the MRR rules read came last.
3. Failing both, a fixed order: lifecycle stage of the status, then content.
   It depends only on the versions themselves, so any arrival order gives it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

STATUS_STAGE = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "past_due": 3,
    "unpaid": 4,
    "paused": 4,
    "canceled": 5,
    "incomplete_expired": 5,
}
"""Where a status sits in a subscription's life; later stages cannot precede earlier ones."""

MRR_FIELDS = (
    "status",
    "items",
    "discounts",
    "discount",
    "cancel_at_period_end",
    "cancel_at",
    "canceled_at",
    "ended_at",
    "pause_collection",
    "trial_end",
    "quantity",
    "plan",
)
"""The fields the MRR rules read; two versions equal on these are worth the same."""


@dataclass(frozen=True)
class TiedVersion:
    subscription: Mapping[str, Any]
    previous_attributes: Mapping[str, Any] | None


def _holds(previous: Mapping[str, Any], version: Mapping[str, Any]) -> bool:
    """Does `version` hold the values `previous` says were replaced?"""
    for key, value in previous.items():
        current = version.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            if not _holds(value, current):
                return False
        elif current != value:
            return False
    return True


def _digest(document: Any) -> str:
    return hashlib.sha256(json.dumps(document, sort_keys=True, default=str).encode()).hexdigest()


def _essentials(subscription: Mapping[str, Any]) -> str:
    """A digest of what the MRR rules read, ignoring how deeply things were expanded."""

    def ids(value: Any) -> Any:
        if isinstance(value, Mapping):
            if "id" in value and value.get("object") in {"discount", "price", "plan", "coupon"}:
                return value["id"]
            return {k: ids(v) for k, v in value.items() if k not in {"url", "has_more", "total_count"}}
        if isinstance(value, list):
            return [ids(v) for v in value]
        return value

    essentials = {field: ids(subscription.get(field)) for field in MRR_FIELDS if field != "items"}
    # Of an item, what it bills: its periods move on at every renewal since the tie.
    items = subscription.get("items")
    items = items if isinstance(items, Mapping) else {}
    essentials["items"] = sorted(
        (
            (
                str(item.get("id")),
                ids(item.get("price") or item.get("plan")),
                item.get("quantity"),
                ids(item.get("discounts")),
            )
            for item in items.get("data") or []
            if isinstance(item, Mapping)
        ),
        key=repr,
    )
    return _digest(essentials)


def _by_previous_attributes(versions: Sequence[TiedVersion]) -> list[int] | None:
    """A total order in which each version's previous_attributes match its predecessor, if one exists."""
    count = len(versions)
    follows = {
        (before, after)
        for after, version in enumerate(versions)
        if version.previous_attributes
        for before in range(count)
        if before != after and _holds(version.previous_attributes, versions[before].subscription)
    }
    order: list[int] = []
    remaining = set(range(count))
    while remaining:
        # The next one follows none of the versions still to place.
        heads = [i for i in remaining if not any((j, i) in follows for j in remaining)]
        if len(heads) != 1:
            return None
        order.append(heads[0])
        remaining.remove(heads[0])
    # Every step must be explained by an edge; otherwise the chain is a guess.
    if all((a, b) in follows for a, b in itertools.pairwise(order)):
        return order
    return None


def _fixed_order(versions: Sequence[TiedVersion], indices: Sequence[int]) -> list[int]:
    def key(index: int) -> tuple[int, str]:
        subscription = versions[index].subscription
        return STATUS_STAGE.get(str(subscription.get("status")), 2), _digest(subscription)

    return sorted(indices, key=key)


def settle_order(versions: Sequence[TiedVersion], current: Mapping[str, Any] | None = None) -> list[int]:
    """Indices of `versions`, earliest first."""
    by_attributes = _by_previous_attributes(versions)
    if by_attributes is not None:
        return by_attributes
    indices = list(range(len(versions)))
    if current is not None:
        target = _essentials(current)
        last = [i for i in indices if _essentials(versions[i].subscription) == target]
        if len(last) == 1:
            return [*_fixed_order(versions, [i for i in indices if i != last[0]]), last[0]]
    return _fixed_order(versions, indices)


def needs_current_state(versions: Sequence[TiedVersion]) -> bool:
    """True when previous_attributes alone cannot order the versions."""
    return _by_previous_attributes(versions) is None
