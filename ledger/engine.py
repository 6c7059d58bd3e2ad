"""The MRR engine over stored state: snapshots in, subscription changes and
movements out, per customer.

A customer's ledger is always recomputed whole from its stored snapshots and
compared with what is stored: movements that come out the same keep their
rows (and ids), the rest are replaced. So a late event re-classifies whatever
follows it, a redelivery changes nothing, and `subledger rebuild` after a rule
setting changed is the same operation for every customer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ledger.models import (
    Customer,
    Movement,
    StripeEvent,
    StripeObject,
    SubscriptionChange,
    SubscriptionSnapshot,
)
from ledger.movements import Movement as ComputedMovement
from ledger.movements import customer_movements
from ledger.ordering import TiedVersion, needs_current_state, settle_order
from ledger.resolve import resolve_subscription
from ledger.settings import RuleSettings
from ledger.state import RANK_RECONCILE
from ledger.timeline import Snapshot, subscription_changes

CurrentState = Callable[[str], Mapping[str, Any] | None]
"""The subscription as the API shows it now, when a tie needs it (None: unknown)."""


@dataclass(frozen=True)
class Recomputed:
    customer_id: str
    movements_added: int
    movements_removed: int
    movements: tuple[ComputedMovement, ...]


def _lookup(session: Session) -> Callable[[str], Mapping[str, Any] | None]:
    cache: dict[str, Mapping[str, Any] | None] = {}

    def lookup(object_id: str) -> Mapping[str, Any] | None:
        if object_id not in cache:
            # A deleted coupon still discounts the subscriptions that hold it, as in Stripe.
            row = session.get(StripeObject, object_id)
            cache[object_id] = row.payload if row is not None else None
        return cache[object_id]

    return lookup


def customer_snapshots(session: Session, customer_id: str) -> list[Snapshot]:
    """Every stored version of the customer's subscriptions, references filled in."""
    lookup = _lookup(session)
    rows = session.scalars(select(SubscriptionSnapshot).where(SubscriptionSnapshot.customer_id == customer_id)).all()
    return [
        Snapshot(
            subscription_id=row.subscription_id,
            customer_id=row.customer_id,
            observed_at=row.observed_at,
            rank=row.rank,
            source=row.source,
            subscription=resolve_subscription(row.payload, lookup),
        )
        for row in rows
    ]


def settle_ties(session: Session, subscription_id: str, observed_at: datetime, current: CurrentState) -> None:
    """Rank the event versions of a subscription stamped with the same second (see ledger.ordering)."""
    rows = session.scalars(
        select(SubscriptionSnapshot).where(
            SubscriptionSnapshot.subscription_id == subscription_id,
            SubscriptionSnapshot.observed_at == observed_at,
            SubscriptionSnapshot.rank < RANK_RECONCILE,
        )
    ).all()
    if len(rows) < 2:
        return
    rows = sorted(rows, key=lambda row: row.content_hash)
    previous = {
        event.id: event.payload.get("data", {}).get("previous_attributes")
        for event in session.scalars(select(StripeEvent).where(StripeEvent.id.in_([r.source for r in rows])))
    }
    versions = [TiedVersion(row.payload, previous.get(row.source)) for row in rows]
    state = current(subscription_id) if needs_current_state(versions) else None
    for rank, index in enumerate(settle_order(versions, state)):
        rows[index].rank = rank


def _movement_key(movement: ComputedMovement | Movement) -> tuple[Any, ...]:
    return (
        movement.currency,
        movement.day,
        movement.at,
        str(movement.type),
        movement.amount,
        movement.mrr_before,
        movement.mrr_after,
        tuple(movement.sources),
    )


def recompute_customer(session: Session, customer_id: str, rules: RuleSettings, *, now: datetime) -> Recomputed:
    """Recompute the customer's subscription changes and movements and store the difference.

    Raises `ledger.mrr.UnresolvedStripeObject` when a snapshot names an object
    that is not stored; nothing is written then.
    """
    customer = session.get(Customer, customer_id)
    livemode = bool(customer.livemode) if customer is not None else False
    snapshots = customer_snapshots(session, customer_id)
    changes = subscription_changes(snapshots, rules, until=now)
    computed = customer_movements(changes, rules)

    session.execute(delete(SubscriptionChange).where(SubscriptionChange.customer_id == customer_id))
    session.add_all(
        SubscriptionChange(
            livemode=livemode,
            customer_id=customer_id,
            subscription_id=change.subscription_id,
            at=change.at,
            currency=change.currency,
            gross=change.gross,
            net=change.net,
            scheduled_churn=change.scheduled_churn,
            sources=list(change.sources),
        )
        for change in changes
    )

    stored = session.scalars(select(Movement).where(Movement.customer_id == customer_id)).all()
    wanted = {_movement_key(movement): movement for movement in computed}
    kept: set[tuple[Any, ...]] = set()
    removed = 0
    for row in stored:
        key = _movement_key(row)
        if key in wanted and key not in kept and row.rules_version == rules.version:
            kept.add(key)
        else:
            session.delete(row)
            removed += 1
    added = [movement for key, movement in wanted.items() if key not in kept]
    session.add_all(
        Movement(
            livemode=livemode,
            customer_id=customer_id,
            currency=movement.currency,
            day=movement.day,
            at=movement.at,
            type=str(movement.type),
            amount=movement.amount,
            mrr_before=movement.mrr_before,
            mrr_after=movement.mrr_after,
            sources=list(movement.sources),
            rules_version=rules.version,
            computed_at=now,
        )
        for movement in added
    )
    return Recomputed(customer_id, len(added), removed, tuple(computed))


def customers_with_snapshots(session: Session) -> Iterable[str]:
    """Every customer the ledger has subscriptions for, in a stable order."""
    return session.scalars(
        select(SubscriptionSnapshot.customer_id).distinct().order_by(SubscriptionSnapshot.customer_id)
    ).all()
