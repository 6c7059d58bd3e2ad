"""Applying Stripe objects to the stored state: customers, subscriptions and the
objects they refer to.

Every write here is idempotent and order-free: an older version never
overwrites a newer one, and the same subscription version is stored once, so
events may arrive late, twice or shuffled (mrr-rules.md §5) and the state comes
out the same.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import literal, select
from sqlalchemy.orm import Session

from ledger.db import (
    from_timestamp,
    insert_all_unless_present,
    insert_selected_unless_present,
    insert_unless_present,
    upsert_newer,
)
from ledger.errors import SubledgerError
from ledger.history import invoice_subscription
from ledger.intake import (
    CATALOG_EVENTS,
    CUSTOMER_EVENTS,
    DISCOUNT_EVENTS,
    INVOICE_EVENTS,
    SUBSCRIPTION_EVENTS,
)
from ledger.models import Customer, StripeEvent, StripeObject, Subscription, SubscriptionSnapshot

RANK_EVENT = 0
"""Snapshot rank of a version carried by an event. Versions of one subscription
stamped with the same second are re-ranked 0, 1, 2, … in the order
ledger.ordering settles."""
RANK_HISTORY = 500
"""Snapshot rank of a version a backfill rebuilt from Stripe's records: the state once everything at
its instant is done, so inside its second it comes after the events' versions (the clock's events
catch-up stores them beside a backfill), which are ranked among themselves only."""
RANK_RECONCILE = 1000
"""Snapshot rank of a reconciliation's correcting version: inside its second it comes last."""


class UnusableEvent(SubledgerError, ValueError):
    """A used event type whose object lacks what processing needs."""


@dataclass(frozen=True)
class Applied:
    """What applying one event touched; the MRR engine recomputes from here."""

    customer_id: str | None
    subscription_id: str | None
    observed_at: datetime
    paid_invoice: str | None = None
    """A paid invoice of a subscription: what it billed is evidence about the ledger (§10)."""


def content_hash(document: Mapping[str, Any]) -> str:
    """A stable digest of a JSON document (key order does not matter)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def customer_of(obj: Mapping[str, Any]) -> str | None:
    """The id of the customer an object belongs to (`customer`, an id or expanded), if any."""
    customer = obj.get("customer")
    if isinstance(customer, Mapping):
        customer = customer.get("id")
    return customer if isinstance(customer, str) and customer else None


NEVER_OBSERVED = from_timestamp(0)
"""`observed_at` of a customer known only by id: any real version is newer."""


def ensure_customer(session: Session, customer_id: str, *, livemode: bool) -> None:
    """A placeholder row for a customer known only by id so far."""
    insert_unless_present(
        session,
        Customer,
        {"id": customer_id, "livemode": livemode, "deleted": False, "observed_at": NEVER_OBSERVED},
        key=["id"],
    )


def record_customer(
    session: Session, customer: Mapping[str, Any], *, observed_at: datetime, deleted: bool = False
) -> str:
    """Store a customer version unless a newer one is stored."""
    customer_id = customer.get("id")
    if not isinstance(customer_id, str):
        raise UnusableEvent("customer object has no id")
    livemode = bool(customer.get("livemode"))
    ensure_customer(session, customer_id, livemode=livemode)
    row = session.get(Customer, customer_id)
    assert row is not None
    if observed_at >= row.observed_at:
        created = customer.get("created")
        row.email = customer.get("email") if isinstance(customer.get("email"), str) else None
        row.name = customer.get("name") if isinstance(customer.get("name"), str) else None
        row.created = from_timestamp(created) if isinstance(created, int) else row.created
        row.observed_at = observed_at
    if deleted:
        row.deleted = True
    return customer_id


@dataclass(frozen=True)
class SubscriptionVersion:
    """A subscription as observed at one time, and where that observation came from."""

    subscription: Mapping[str, Any]
    observed_at: datetime
    source: str
    rank: int = RANK_EVENT


def record_subscriptions(session: Session, versions: Sequence[SubscriptionVersion]) -> list[Applied]:
    """Store observed versions of subscriptions and keep each one's latest version current.

    A handful of statements whatever the number of versions, so a worker can
    apply a whole batch of events at once.
    """
    customers: dict[str, bool] = {}
    snapshots: list[dict[str, Any]] = []
    latest: dict[str, dict[str, Any]] = {}
    applied: list[Applied] = []
    for version in versions:
        subscription = version.subscription
        subscription_id = subscription.get("id")
        customer_id = customer_of(subscription)
        status = subscription.get("status")
        if not isinstance(subscription_id, str) or customer_id is None or not isinstance(status, str):
            raise UnusableEvent("subscription object lacks id, customer or status")
        livemode = bool(subscription.get("livemode"))
        customers[customer_id] = livemode
        snapshots.append(
            {
                "subscription_id": subscription_id,
                "customer_id": customer_id,
                "livemode": livemode,
                "observed_at": version.observed_at,
                "rank": version.rank,
                "source": version.source,
                "content_hash": content_hash(subscription),
                "payload": dict(subscription),
            }
        )
        newest = latest.get(subscription_id)
        if newest is None or version.observed_at >= newest["observed_at"]:
            latest[subscription_id] = {
                "id": subscription_id,
                "customer_id": customer_id,
                "livemode": livemode,
                "status": status,
                "payload": dict(subscription),
                "observed_at": version.observed_at,
            }
        applied.append(Applied(customer_id, subscription_id, version.observed_at))
    if not applied:
        return applied
    snapshots = _not_stored_yet(session, snapshots)
    insert_all_unless_present(
        session,
        Customer,
        [
            {"id": customer_id, "livemode": livemode, "deleted": False, "observed_at": NEVER_OBSERVED}
            for customer_id, livemode in customers.items()
        ],
        key=["id"],
    )
    insert_all_unless_present(
        session, SubscriptionSnapshot, snapshots, key=["subscription_id", "observed_at", "rank", "content_hash"]
    )
    upsert_newer(session, Subscription, list(latest.values()), key="id", version="observed_at")
    return applied


_IDS_PER_QUERY = 500
"""Subscriptions per query when looking up stored versions (bound parameters stay few)."""


def _not_stored_yet(session: Session, snapshots: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The snapshots whose source has not stored this very version already, at whatever rank.

    An event is applied again when it is retried, or when its batch is redone
    partition by partition. Its version may have been ranked behind a same-second
    version since (`ledger.engine.settle_ties`); inserted again at its first rank,
    it would be a second copy of itself, and settling the two would put the
    event on both sides of its neighbours.
    """
    subscription_ids = sorted({row["subscription_id"] for row in snapshots})
    stored: set[tuple[str, datetime, str, str]] = set()
    for start in range(0, len(subscription_ids), _IDS_PER_QUERY):
        rows = session.execute(
            select(
                SubscriptionSnapshot.subscription_id,
                SubscriptionSnapshot.observed_at,
                SubscriptionSnapshot.source,
                SubscriptionSnapshot.content_hash,
            ).where(SubscriptionSnapshot.subscription_id.in_(subscription_ids[start : start + _IDS_PER_QUERY]))
        )
        stored.update((row[0], row[1], row[2], row[3]) for row in rows)
    return [
        row
        for row in snapshots
        if (row["subscription_id"], row["observed_at"], row["source"], row["content_hash"]) not in stored
    ]


def record_subscription(
    session: Session,
    subscription: Mapping[str, Any],
    *,
    observed_at: datetime,
    source: str,
    rank: int = RANK_EVENT,
) -> Applied:
    """Store one observed version of a subscription (see record_subscriptions)."""
    return record_subscriptions(session, [SubscriptionVersion(subscription, observed_at, source, rank)])[0]


def _keep_read_applies_to(kept: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """`kept`, with the coupon's `applies_to` from `other` when only `other` read it.

    Stripe includes `applies_to` only when it is expanded, so a webhook copy of a
    coupon lacks it; it is set when the coupon is created and never changes, so
    a copy without it, older or newer, never erases one that was read.
    """
    if kept.get("object") != "coupon" or "applies_to" in kept or "applies_to" not in other:
        return dict(kept)
    return {**kept, "applies_to": other["applies_to"]}


_INVOICE_STAGE = {"draft": 0, "open": 1, "paid": 2, "uncollectible": 2, "void": 2}
"""How far along its life an invoice is: Stripe stamps `invoice.created`, `.finalized` and `.paid` of
an automatic charge with the same second, and their events arrive in any order."""


def _earlier_stage(obj: Mapping[str, Any], stored: Mapping[str, Any]) -> bool:
    """Whether `obj` is an invoice at an earlier stage of its life than the stored copy of it."""
    if obj.get("object") != "invoice":
        return False
    return _INVOICE_STAGE.get(str(obj.get("status")), 0) < _INVOICE_STAGE.get(str(stored.get("status")), 0)


def record_object(session: Session, obj: Mapping[str, Any], *, observed_at: datetime, deleted: bool = False) -> Applied:
    """Store the latest version of a price, coupon, discount, product or invoice.

    A coupon keeps the `applies_to` any copy of it was read with. Of two copies
    of an invoice stamped with the same second, the one further along its life
    (draft, open, paid) is kept.
    """
    object_id = obj.get("id")
    kind = obj.get("object")
    if not isinstance(object_id, str) or not isinstance(kind, str):
        raise UnusableEvent("object lacks id or type")
    customer_id = customer_of(obj)
    livemode = bool(obj.get("livemode"))
    values = {
        "id": object_id,
        "object": kind,
        "livemode": livemode,
        "customer_id": customer_id,
        "deleted": deleted,
        "payload": dict(obj),
        "observed_at": observed_at,
    }
    if not insert_unless_present(session, StripeObject, values, key=["id"]):
        row = session.get(StripeObject, object_id)
        assert row is not None
        if observed_at > row.observed_at or (observed_at == row.observed_at and not _earlier_stage(obj, row.payload)):
            row.payload = _keep_read_applies_to(obj, row.payload)
            row.observed_at = observed_at
            row.customer_id = customer_id or row.customer_id
        elif "applies_to" not in row.payload and "applies_to" in obj:
            row.payload = _keep_read_applies_to(row.payload, obj)
        # A deletion is final whatever order the events came in.
        row.deleted = row.deleted or deleted
    if customer_id is not None:
        ensure_customer(session, customer_id, livemode=livemode)
    paid = kind == "invoice" and obj.get("status") == "paid" and invoice_subscription(obj) is not None
    return Applied(
        customer_id=customer_id, subscription_id=None, observed_at=observed_at, paid_invoice=object_id if paid else None
    )


def record_objects(
    session: Session, objects: Sequence[Mapping[str, Any]], *, observed_at: datetime, customers: bool = True
) -> None:
    """`record_object` for a page of objects read from the API at `observed_at`: a few statements.

    The stored `deleted` mark is left as it is (a list never returns deleted objects).
    `customers=False` leaves the customers the objects name to the caller
    (`record_named_customers`, once for many pages).
    """
    rows: dict[str, dict[str, Any]] = {}
    named: dict[str, bool] = {}
    for obj in objects:
        object_id, kind = obj.get("id"), obj.get("object")
        if not isinstance(object_id, str) or not isinstance(kind, str):
            raise UnusableEvent("object lacks id or type")
        customer_id = customer_of(obj)
        livemode = bool(obj.get("livemode"))
        if customer_id is not None and customers:
            named[customer_id] = livemode
        rows[object_id] = {
            "id": object_id,
            "object": kind,
            "livemode": livemode,
            "customer_id": customer_id,
            "payload": dict(obj),
            "observed_at": observed_at,
        }
    insert_all_unless_present(
        session,
        Customer,
        [
            {"id": customer_id, "livemode": livemode, "deleted": False, "observed_at": NEVER_OBSERVED}
            for customer_id, livemode in named.items()
        ],
        key=["id"],
    )
    upsert_newer(session, StripeObject, list(rows.values()), key="id", version="observed_at")


def record_named_customers(session: Session, kind: str, *, observed_since: datetime) -> None:
    """A customer row, known only by id, for each customer that stored objects of `kind` observed since
    then name and that has none yet: what `record_objects` does page by page, in one statement."""
    named = (
        select(
            StripeObject.customer_id,
            StripeObject.livemode,
            literal(False),
            literal(NEVER_OBSERVED, Customer.__table__.c.observed_at.type),
        )
        .distinct()
        .where(
            StripeObject.object == kind,
            StripeObject.customer_id.is_not(None),
            StripeObject.observed_at >= observed_since,
        )
        .order_by(StripeObject.customer_id)  # key order: concurrent writers never deadlock
    )
    insert_selected_unless_present(session, Customer, ["id", "livemode", "deleted", "observed_at"], named, key=["id"])


def record_customers(session: Session, customers: Sequence[Mapping[str, Any]], *, observed_at: datetime) -> None:
    """`record_customer` for a page of customers read from the API at `observed_at`."""
    rows: dict[str, dict[str, Any]] = {}
    for customer in customers:
        customer_id = customer.get("id")
        if not isinstance(customer_id, str):
            raise UnusableEvent("customer object has no id")
        created = customer.get("created")
        rows[customer_id] = {
            "id": customer_id,
            "livemode": bool(customer.get("livemode")),
            "email": customer.get("email") if isinstance(customer.get("email"), str) else None,
            "name": customer.get("name") if isinstance(customer.get("name"), str) else None,
            "created": from_timestamp(created) if isinstance(created, int) else None,
            "observed_at": observed_at,
        }
    upsert_newer(session, Customer, list(rows.values()), key="id", version="observed_at")


def apply_events(session: Session, events: Sequence[StripeEvent]) -> list[Applied]:
    """Apply a batch of stored events; subscription versions are written together."""
    versions = [
        SubscriptionVersion(event.payload["data"]["object"], event.created, event.id)
        for event in events
        if event.type in SUBSCRIPTION_EVENTS
    ]
    applied = [apply_event(session, event) for event in events if event.type not in SUBSCRIPTION_EVENTS]
    return applied + record_subscriptions(session, versions)


def apply_event(session: Session, event: StripeEvent) -> Applied:
    """Apply one stored event to the state tables."""
    obj = event.payload["data"]["object"]
    observed_at = event.created
    kind = event.type
    if kind in SUBSCRIPTION_EVENTS:
        return record_subscription(session, obj, observed_at=observed_at, source=event.id)
    if kind in CUSTOMER_EVENTS:
        customer_id = record_customer(session, obj, observed_at=observed_at, deleted=kind == "customer.deleted")
        return Applied(customer_id=customer_id, subscription_id=None, observed_at=observed_at)
    if kind in DISCOUNT_EVENTS | INVOICE_EVENTS | CATALOG_EVENTS:
        return record_object(session, obj, observed_at=observed_at, deleted=kind.endswith(".deleted"))
    raise UnusableEvent(f"event type {kind} is not processed")
