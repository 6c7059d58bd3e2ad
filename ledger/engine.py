"""The MRR engine over stored state: snapshots in, subscription changes and
movements out, per customer.

A customer's ledger is always recomputed whole from its stored snapshots and
compared with what is stored: movements that come out the same keep their
rows (and ids), the rest are replaced. So a late event re-classifies whatever
follows it, a redelivery changes nothing, and `subledger rebuild` after a rule
setting changed is the same operation for every customer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, Table, case, delete, func, insert, select
from sqlalchemy.orm import Session

from ledger.db import add_to_rows, insert_rows
from ledger.intake import CATALOG_EVENTS, DISCOUNT_EVENTS
from ledger.models import (
    AccountMonth,
    Customer,
    CustomerMonthly,
    DailyTotal,
    EventStatus,
    Movement,
    StripeEvent,
    StripeObject,
    SubscriptionChange,
    SubscriptionSnapshot,
)
from ledger.movements import Movement as ComputedMovement
from ledger.movements import customer_movements
from ledger.ordering import TiedVersion, needs_current_state, settle_order
from ledger.resolve import UnreadAppliesTo, fetch_first, resolve_subscription
from ledger.rollup import ACCOUNT_SUMS, CustomerMonth, account_contribution, customer_months
from ledger.settings import RuleSettings
from ledger.state import NEVER_OBSERVED, RANK_HISTORY
from ledger.timeline import Change, Snapshot, subscription_changes

TABLES: dict[str, Table] = {
    model.__name__: model.__table__  # type: ignore[misc]
    for model in (SubscriptionChange, Movement, CustomerMonthly)
}
"""Bulk inserts go to the tables directly (`ledger.db.insert_rows`): no ORM bookkeeping per row."""

CurrentState = Callable[[str], Mapping[str, Any] | None]
"""The subscription as the API shows it now, when a tie needs it (None: unknown)."""


@dataclass(frozen=True)
class Recomputed:
    customer_id: str
    movements_added: int
    movements_removed: int
    movements: tuple[ComputedMovement, ...]


QUEUED_OBJECT_EVENTS = DISCOUNT_EVENTS | CATALOG_EVENTS
"""Events whose object a subscription names by id (discounts, coupons, prices, products)."""


class _Stored:
    """Stored objects by id, each read once per recompute.

    An object that is not stored yet may still have arrived: its event is
    stored and waits to be applied, later in the customer's partition or in
    the object's own (a catalog object's), which another drain pass works
    through. The newest such event says what the object is, so a subscription
    naming it is valued now rather than retried.
    """

    def __init__(self, session: Session, customer_ids: Sequence[str]) -> None:
        self.session = session
        self.customer_ids = customer_ids
        self.rows: dict[str, tuple[Mapping[str, Any], bool] | None] = {}
        self.queued_for_customers: dict[str, tuple[Mapping[str, Any], bool]] | None = None

    def _row(self, object_id: str) -> tuple[Mapping[str, Any], bool] | None:
        if object_id not in self.rows:
            row = self.session.get(StripeObject, object_id)
            found: tuple[Mapping[str, Any], bool] | None = (row.payload, row.deleted) if row is not None else None
            if row is None or row.observed_at == NEVER_OBSERVED:
                # Not stored, or only marked deleted (Stripe answered 404): its own event may know more.
                queued = self._queued(object_id)
                if queued is not None:
                    found = (queued[0], queued[1] or (row is not None and row.deleted))
            self.rows[object_id] = found
        return self.rows[object_id]

    def _queued(self, object_id: str) -> tuple[Mapping[str, Any], bool] | None:
        """The object as its newest stored, unapplied event carries it, and whether one deleted it."""
        if self.queued_for_customers is None:
            # A customer's discounts come in its own partition: one read for the whole batch.
            self.queued_for_customers = self._queued_in(StripeEvent.partition.in_(self.customer_ids))
        if object_id in self.queued_for_customers:
            return self.queued_for_customers[object_id]
        return self._queued_in(StripeEvent.partition == object_id).get(object_id)

    def _queued_in(self, partitions: ColumnElement[bool]) -> dict[str, tuple[Mapping[str, Any], bool]]:
        found: dict[str, tuple[Mapping[str, Any], bool]] = {}
        for kind, payload in self.session.execute(
            select(StripeEvent.type, StripeEvent.payload)
            .where(
                partitions,
                StripeEvent.status.in_([EventStatus.PENDING.value, EventStatus.FAILED.value]),
                StripeEvent.type.in_(sorted(QUEUED_OBJECT_EVENTS)),
            )
            .order_by(StripeEvent.created, StripeEvent.id)
        ):
            obj = payload.get("data", {}).get("object")
            if not isinstance(obj, Mapping) or not isinstance(obj.get("id"), str):
                continue
            deleted = kind.endswith(".deleted") or (obj["id"] in found and found[obj["id"]][1])
            found[obj["id"]] = (obj, deleted)  # the newest event wins; a deletion is final
        return found

    def lookup(self, object_id: str) -> Mapping[str, Any] | None:
        # A deleted coupon or discount still discounts the subscription versions that held it, as in Stripe.
        row = self._row(object_id)
        return row[0] if row is not None else None

    def deleted(self, object_id: str) -> bool:
        row = self._row(object_id)
        return row is not None and row[1]


def customer_snapshots(
    session: Session, customer_ids: Sequence[str], *, unread_applies_to: UnreadAppliesTo | None = None
) -> dict[str, list[Snapshot]]:
    """Every stored version of the customers' subscriptions, references filled in.

    A coupon whose `applies_to` was never read raises `UnresolvedStripeObject`
    (the caller fetches it), except a deleted one, which Stripe no longer gives:
    it reduces every item. A caller that cannot fetch passes `unread_applies_to`
    (see `ledger.resolve`) for every such coupon.
    """
    stored = _Stored(session, customer_ids)

    def unread(coupon_id: str) -> None:
        if unread_applies_to is not None:
            unread_applies_to(coupon_id)
        elif not stored.deleted(coupon_id):
            fetch_first(coupon_id)

    snapshots: dict[str, list[Snapshot]] = {customer_id: [] for customer_id in customer_ids}
    rows = session.execute(
        select(
            SubscriptionSnapshot.subscription_id,
            SubscriptionSnapshot.customer_id,
            SubscriptionSnapshot.observed_at,
            SubscriptionSnapshot.rank,
            SubscriptionSnapshot.source,
            SubscriptionSnapshot.payload,
        ).where(SubscriptionSnapshot.customer_id.in_(customer_ids))
    )
    for row in rows:
        snapshots[row.customer_id].append(
            Snapshot(
                subscription_id=row.subscription_id,
                customer_id=row.customer_id,
                observed_at=row.observed_at,
                rank=row.rank,
                source=row.source,
                subscription=resolve_subscription(row.payload, stored.lookup, unread_applies_to=unread),
            )
        )
    return snapshots


def settle_ties(session: Session, subscription_id: str, observed_at: datetime, current: CurrentState) -> None:
    """Rank the event versions of a subscription stamped with the same second (see ledger.ordering)."""
    rows = session.scalars(
        select(SubscriptionSnapshot).where(
            SubscriptionSnapshot.subscription_id == subscription_id,
            SubscriptionSnapshot.observed_at == observed_at,
            SubscriptionSnapshot.rank < RANK_HISTORY,
        )
    ).all()
    if len(rows) < 2:
        return
    # Identical copies (customer.subscription.paused beside a customer.subscription.updated carrying
    # the same object) settle in event-id order: the same for any arrival order.
    rows = sorted(rows, key=lambda row: (row.content_hash, row.source))
    previous = {
        event.id: event.payload.get("data", {}).get("previous_attributes")
        for event in session.scalars(select(StripeEvent).where(StripeEvent.id.in_([r.source for r in rows])))
    }
    versions = [TiedVersion(row.payload, previous.get(row.source)) for row in rows]
    state = current(subscription_id) if needs_current_state(versions) else None
    ranks = {index: rank for rank, index in enumerate(settle_order(versions, state))}
    moved = [index for index, rank in ranks.items() if rows[index].rank != rank]
    # The unique key (subscription, second, rank, content) is checked row by row: two identical
    # copies trading ranks would collide half-way. The rows that move go through ranks no version
    # holds (below 0) first.
    for index in moved:
        rows[index].rank = -1 - index
    session.flush()
    for index in moved:
        rows[index].rank = ranks[index]


_MOVEMENT_KEY_COLUMNS = (
    Movement.currency,
    Movement.day,
    Movement.at,
    Movement.type,
    Movement.amount,
    Movement.mrr_before,
    Movement.mrr_after,
    Movement.sources,
)
"""What `_movement_key` reads of a stored movement."""


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


def customer_changes(
    session: Session,
    customer_ids: Sequence[str],
    rules: RuleSettings,
    *,
    now: datetime,
    unread_applies_to: UnreadAppliesTo | None = None,
) -> tuple[dict[str, list[Snapshot]], dict[str, list[Change]]]:
    """The customers' stored versions and the changes in value they make up to `now` (mrr-rules.md §5).

    Reads only. Raises `ledger.mrr.UnresolvedStripeObject` as `recompute_customers`
    does, so a caller can fetch what is missing before anything is written.
    """
    snapshots = customer_snapshots(session, customer_ids, unread_applies_to=unread_applies_to)
    changes = {
        customer_id: subscription_changes(snapshots[customer_id], rules, until=now) for customer_id in customer_ids
    }
    return snapshots, changes


def recompute_customers(
    session: Session,
    customer_ids: Sequence[str],
    rules: RuleSettings,
    *,
    now: datetime,
    unread_applies_to: UnreadAppliesTo | None = None,
) -> list[Recomputed]:
    """Recompute the customers' subscription changes and movements and store the difference.

    Set-based: a few statements for the whole batch. Raises
    `ledger.mrr.UnresolvedStripeObject` when a snapshot names an object that is
    not stored, or a coupon whose `applies_to` was never read (unless
    `unread_applies_to` says what to do, see `customer_snapshots`); nothing is
    written then.
    """
    customer_ids = sorted(set(customer_ids))
    snapshots, changes = customer_changes(session, customer_ids, rules, now=now, unread_applies_to=unread_applies_to)
    livemodes: dict[str, bool] = {
        customer_id: livemode
        for customer_id, livemode in session.execute(
            select(Customer.id, Customer.livemode).where(Customer.id.in_(customer_ids))
        )
    }
    computed = {customer_id: customer_movements(changes[customer_id], rules) for customer_id in customer_ids}

    session.execute(delete(SubscriptionChange).where(SubscriptionChange.customer_id.in_(customer_ids)))
    change_rows = [
        {
            "livemode": livemodes.get(customer_id, False),
            "customer_id": customer_id,
            "subscription_id": change.subscription_id,
            "at": change.at,
            "currency": change.currency,
            "gross": change.gross,
            "net": change.net,
            "scheduled_churn": change.scheduled_churn,
            "sources": list(change.sources),
        }
        for customer_id in customer_ids
        for change in changes[customer_id]
    ]
    if change_rows:
        insert_rows(session, TABLES["SubscriptionChange"], change_rows)

    stored: dict[str, list[tuple[int, tuple[Any, ...], str]]] = {customer_id: [] for customer_id in customer_ids}
    # Columns, not ORM objects: a backfill batch reads thousands of rows here.
    for row in session.execute(
        select(*_MOVEMENT_KEY_COLUMNS, Movement.id, Movement.customer_id, Movement.rules_version).where(
            Movement.customer_id.in_(customer_ids)
        )
    ):
        stored[row.customer_id].append((row.id, _movement_key(cast(Movement, row)), row.rules_version))
    stale: list[int] = []
    new_rows: list[dict[str, Any]] = []
    results: list[Recomputed] = []
    totals: dict[tuple[bool, str, date, str], list[int]] = {}

    def count(livemode: bool, currency: str, day: date, kind: str, amount: int, movements: int) -> None:
        total = totals.setdefault((livemode, currency, day, kind), [0, 0])
        total[0] += amount
        total[1] += movements

    for customer_id in customer_ids:
        livemode = livemodes.get(customer_id, False)
        wanted = {_movement_key(movement): movement for movement in computed[customer_id]}
        kept: set[tuple[Any, ...]] = set()
        removed = 0
        for movement_id, key, version in stored[customer_id]:
            if key in wanted and key not in kept and version == rules.version:
                kept.add(key)
            else:
                stale.append(movement_id)
                removed += 1
                count(livemode, key[0], key[1], key[3], -key[4], -1)
        added = [movement for key, movement in wanted.items() if key not in kept]
        for movement in added:
            count(livemode, movement.currency, movement.day, str(movement.type), movement.amount, 1)
        new_rows.extend(
            {
                "livemode": livemode,
                "customer_id": customer_id,
                "currency": movement.currency,
                "day": movement.day,
                "at": movement.at,
                "type": str(movement.type),
                "amount": movement.amount,
                "mrr_before": movement.mrr_before,
                "mrr_after": movement.mrr_after,
                "sources": list(movement.sources),
                "rules_version": rules.version,
                "computed_at": now,
            }
            for movement in added
        )
        results.append(Recomputed(customer_id, len(added), removed, tuple(computed[customer_id])))
    if stale:
        session.execute(delete(Movement).where(Movement.id.in_(stale)))
    if new_rows:
        insert_rows(session, TABLES["Movement"], new_rows)
    add_to_rows(
        session,
        DailyTotal,
        [
            {"livemode": lm, "currency": cur, "day": day, "type": kind, "amount": amount, "movements": n}
            for (lm, cur, day, kind), (amount, n) in totals.items()
            if amount or n
        ],
        key=["livemode", "currency", "day", "type"],
        sums=["amount", "movements"],
    )
    _store_months(session, customer_ids, livemodes, computed, changes, snapshots, now)
    return results


_MONTH_FIELDS = tuple(f.name for f in fields(CustomerMonth))


def _store_months(
    session: Session,
    customer_ids: Sequence[str],
    livemodes: Mapping[str, bool],
    movements: Mapping[str, Sequence[ComputedMovement]],
    changes: Mapping[str, Sequence[Change]],
    snapshots: Mapping[str, Sequence[Snapshot]],
    now: datetime,
) -> None:
    """Replace the customers' monthly rollup rows that changed (most recomputes touch one month)."""
    wanted = {
        (row.customer_id, row.currency, row.month): row
        for customer_id in customer_ids
        for row in customer_months(
            customer_id, movements[customer_id], changes[customer_id], snapshots[customer_id], now=now
        )
    }
    stored = {
        (row.customer_id, row.currency, row.month): row
        for row in session.scalars(select(CustomerMonthly).where(CustomerMonthly.customer_id.in_(customer_ids)))
    }
    deltas: dict[tuple[bool, str, date], dict[str, int]] = {}

    def shift(livemode: bool, currency: str, month: date, contribution: dict[str, int], sign: int) -> None:
        delta = deltas.setdefault((livemode, currency, month), dict.fromkeys(ACCOUNT_SUMS, 0))
        for name, value in contribution.items():
            delta[name] += sign * value

    for key, gone in stored.items():
        if key not in wanted:
            shift(gone.livemode, gone.currency, gone.month, account_contribution(gone), -1)
            session.delete(gone)
    fresh: list[dict[str, Any]] = []
    for key, month in wanted.items():
        livemode = livemodes.get(month.customer_id, False)
        values = {name: getattr(month, name) for name in _MONTH_FIELDS}
        row = stored.get(key)
        if row is None:
            fresh.append(values | {"livemode": livemode})
            shift(livemode, month.currency, month.month, account_contribution(month), 1)
        elif any(getattr(row, name) != value for name, value in values.items()):
            shift(livemode, month.currency, month.month, account_contribution(row), -1)
            shift(livemode, month.currency, month.month, account_contribution(month), 1)
            for name, value in values.items():
                setattr(row, name, value)
    if fresh:
        insert_rows(session, TABLES["CustomerMonthly"], fresh)
    add_to_rows(
        session,
        AccountMonth,
        [
            {"livemode": livemode, "currency": currency, "month": month} | delta
            for (livemode, currency, month), delta in deltas.items()
            if any(delta.values())
        ],
        key=["livemode", "currency", "month"],
        sums=list(ACCOUNT_SUMS),
    )


def recompute_customer(
    session: Session,
    customer_id: str,
    rules: RuleSettings,
    *,
    now: datetime,
    unread_applies_to: UnreadAppliesTo | None = None,
) -> Recomputed:
    """`recompute_customers` for one customer."""
    return recompute_customers(session, [customer_id], rules, now=now, unread_applies_to=unread_applies_to)[0]


def tied_subscriptions(session: Session, customer_ids: Sequence[str]) -> list[tuple[str, datetime]]:
    """(subscription, second) pairs where several event versions share one second."""
    rows = session.execute(
        select(SubscriptionSnapshot.subscription_id, SubscriptionSnapshot.observed_at)
        .where(SubscriptionSnapshot.customer_id.in_(customer_ids), SubscriptionSnapshot.rank < RANK_HISTORY)
        .group_by(SubscriptionSnapshot.subscription_id, SubscriptionSnapshot.observed_at)
        .having(func.count() > 1)
    )
    return [(subscription_id, observed_at) for subscription_id, observed_at in rows]


def customers_with_snapshots(session: Session) -> Iterable[str]:
    """Every customer the ledger has subscriptions for, in a stable order."""
    return session.scalars(
        select(SubscriptionSnapshot.customer_id).distinct().order_by(SubscriptionSnapshot.customer_id)
    ).all()


def resum_totals(session: Session) -> None:
    """Recompute the daily totals and the account's months from the rows they sum (`subledger rebuild`)."""
    resum_daily_totals(session)
    rows = CustomerMonthly
    paying_at_start = rows.mrr_start > 0

    def flag(condition: Any) -> Any:
        return func.sum(case((condition, 1), else_=0))

    sums = {
        "mrr_start": func.sum(rows.mrr_start),
        "mrr": func.sum(rows.mrr),
        "new": func.sum(rows.new),
        "expansion": func.sum(rows.expansion),
        "contraction": func.sum(rows.contraction),
        "churn": func.sum(rows.churn),
        "reactivation": func.sum(rows.reactivation),
        "customers_start": flag(paying_at_start),
        "customers": flag(rows.mrr > 0),
        "new_customers": flag(rows.news > 0),
        "churned_customers": flag(rows.churns > 0),
        "reactivated_customers": flag(rows.reactivations > 0),
        "expanded_customers": flag(rows.expansions > 0),
        "nrr_numerator": func.sum(case((paying_at_start, rows.mrr), else_=0)),
        "grr_numerator": func.sum(
            case((paying_at_start, case((rows.mrr < rows.mrr_start, rows.mrr), else_=rows.mrr_start)), else_=0)
        ),
        "scheduled_churn": func.sum(rows.scheduled_churn),
        "trials_ended": func.sum(rows.trials_ended),
        "trials_converted": func.sum(rows.trials_converted),
    }
    assert tuple(sums) == ACCOUNT_SUMS
    session.execute(delete(AccountMonth))
    session.execute(
        insert(AccountMonth).from_select(
            ["livemode", "currency", "month", *sums],
            select(rows.livemode, rows.currency, rows.month, *sums.values()).group_by(
                rows.livemode, rows.currency, rows.month
            ),
        )
    )


def resum_daily_totals(session: Session) -> None:
    """Recompute the daily totals from the movements themselves."""
    session.execute(delete(DailyTotal))
    session.execute(
        insert(DailyTotal).from_select(
            ["livemode", "currency", "day", "type", "amount", "movements"],
            select(
                Movement.livemode,
                Movement.currency,
                Movement.day,
                Movement.type,
                func.sum(Movement.amount),
                func.count(),
            ).group_by(Movement.livemode, Movement.currency, Movement.day, Movement.type),
        )
    )
