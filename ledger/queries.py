"""Read-side queries the API, the dashboard and the report share: movements,
cohorts and one customer's story. All in SQL, paged where lists grow."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.orm import Session

from ledger.models import (
    Customer,
    CustomerMonthly,
    Movement,
    StripeObject,
    Subscription,
    SubscriptionChange,
    SyncRun,
)


@dataclass(frozen=True)
class MovementPage:
    movements: list[Movement]
    next_cursor: str | None


def encode_cursor(movement: Movement) -> str:
    return f"{movement.day.isoformat()}_{movement.id}"


def decode_cursor(cursor: str) -> tuple[date, int]:
    """The (day, id) a page continues after; ValueError if malformed."""
    day, _, movement_id = cursor.partition("_")
    return date.fromisoformat(day), int(movement_id)


def movements_page(
    session: Session,
    *,
    livemode: bool,
    start: date | None = None,
    end: date | None = None,
    types: Sequence[str] = (),
    customer: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
    newest_first: bool = True,
) -> MovementPage:
    """Movements newest first (or oldest first), keyset-paged on (day, id)."""
    query = select(Movement).where(Movement.livemode == livemode)
    if start is not None:
        query = query.where(Movement.day >= start)
    if end is not None:
        query = query.where(Movement.day <= end)
    if types:
        query = query.where(Movement.type.in_(types))
    if customer is not None:
        query = query.where(Movement.customer_id == customer)
    if cursor is not None:
        day, movement_id = decode_cursor(cursor)
        if newest_first:
            query = query.where(or_(Movement.day < day, and_(Movement.day == day, Movement.id < movement_id)))
        else:
            query = query.where(or_(Movement.day > day, and_(Movement.day == day, Movement.id > movement_id)))
    order = (Movement.day.desc(), Movement.id.desc()) if newest_first else (Movement.day, Movement.id)
    rows = list(session.scalars(query.order_by(*order).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return MovementPage(rows, encode_cursor(rows[-1]) if more and rows else None)


@dataclass(frozen=True)
class Cohort:
    month: date
    customers: int
    """Customers whose first paying month it is."""
    revenue: int
    """Their MRR at the end of that month."""
    retained_customers: list[int]
    """Paying at the end of each month since, starting with the cohort's own."""
    retained_revenue: list[int]


def cohorts(session: Session, *, livemode: bool, currency: str, start: date, end: date) -> list[Cohort]:
    """The cohort grid for cohorts first paying in [start, end], followed up to `end`."""
    rows = CustomerMonthly
    cohort_rows = (
        rows.livemode == livemode,
        rows.currency == currency,
        rows.first_paid_month >= start,
        rows.first_paid_month <= end,
        rows.month <= end,
    )
    cells: dict[tuple[date, date], tuple[int, int]] = {}
    for cohort_month, month, paying, revenue in session.execute(
        select(
            rows.first_paid_month,
            rows.month,
            func.count(func.distinct(case((rows.mrr > 0, rows.customer_id), else_=None))),
            func.coalesce(func.sum(case((rows.mrr > 0, rows.mrr), else_=0)), 0),
        )
        .where(*cohort_rows)
        .group_by(rows.first_paid_month, rows.month)
    ):
        cells[(cohort_month, month)] = (int(paying), int(revenue))
    # A cohort's customers: every customer whose first paying month it is, paying at its end or not (one
    # who joined and left within it counts), so no later month can retain more than the cohort holds.
    sizes = dict(
        session.execute(
            select(rows.first_paid_month, func.count(func.distinct(rows.customer_id)))
            .where(*cohort_rows)
            .group_by(rows.first_paid_month)
        ).all()
    )
    months = sorted({month for _, month in cells} | {cohort for cohort, _ in cells})
    grid = []
    for cohort_month in sorted({cohort for cohort, _ in cells}):
        later = [m for m in months if m >= cohort_month]
        revenue = cells.get((cohort_month, cohort_month), (0, 0))[1]
        grid.append(
            Cohort(
                cohort_month,
                int(sizes.get(cohort_month, 0)),
                revenue,
                [cells.get((cohort_month, m), (0, 0))[0] for m in later],
                [cells.get((cohort_month, m), (0, 0))[1] for m in later],
            )
        )
    return grid


@dataclass(frozen=True)
class CustomerStory:
    customer: Customer
    subscriptions: list[dict[str, Any]]
    movements: list[Movement]
    timeline: list[dict[str, Any]]
    """(date, currency, mrr) after each movement day."""


def customer_story(session: Session, customer_id: str, *, now: datetime) -> CustomerStory | None:
    """Everything the ledger knows about one customer, with each movement's sources."""
    customer = session.get(Customer, customer_id)
    if customer is None:
        return None
    movements = list(
        session.scalars(select(Movement).where(Movement.customer_id == customer_id).order_by(Movement.day, Movement.id))
    )
    timeline = [
        {"date": m.day.isoformat(), "currency": m.currency, "mrr": m.mrr_after, "type": m.type} for m in movements
    ]
    subscriptions = []

    def stored(object_id: Any) -> dict[str, Any]:
        found = session.get(StripeObject, object_id) if isinstance(object_id, str) else None
        return dict(found.payload) if found is not None else {}

    for subscription in session.scalars(
        select(Subscription).where(Subscription.customer_id == customer_id).order_by(Subscription.id)
    ):
        current = session.scalars(
            select(SubscriptionChange)
            .where(SubscriptionChange.subscription_id == subscription.id, SubscriptionChange.at <= now)
            .order_by(SubscriptionChange.at.desc())
            .limit(1)
        ).first()
        subscriptions.append(
            {
                "id": subscription.id,
                "status": subscription.status,
                "currency": current.currency if current else subscription.payload.get("currency"),
                "mrr": current.net if current else 0,
                "gross_mrr": current.gross if current else 0,
                "scheduled_churn": bool(current and current.scheduled_churn),
                "cancel_at_period_end": bool(subscription.payload.get("cancel_at_period_end")),
                "observed_at": subscription.observed_at,
                "items": [
                    item_view(item, stored) for item in (subscription.payload.get("items") or {}).get("data") or []
                ],
            }
        )
    return CustomerStory(customer, subscriptions, movements, timeline)


INTERVAL_WORDS = {"day": "daily", "week": "weekly", "month": "monthly", "year": "yearly"}


def item_view(item: Mapping[str, Any], stored: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """A subscription item as people read it: `Team ×5 monthly` (product name, price nickname, quantity,
    interval), with the ids it comes from."""
    price = item.get("price") or item.get("plan") or {}
    if isinstance(price, str):
        price = stored(price) or {"id": price}
    product = price.get("product")
    product_id = product.get("id") if isinstance(product, Mapping) else product
    product_name = (product if isinstance(product, Mapping) else stored(product_id)).get("name")
    recurring: Mapping[str, Any] = price.get("recurring") or price
    interval, count = recurring.get("interval"), recurring.get("interval_count") or 1
    quantity = item.get("quantity")
    nickname = price.get("nickname")
    label = " ".join(str(part) for part in dict.fromkeys((product_name, nickname)) if part) or str(price.get("id"))
    if quantity not in (None, 1):
        label += f" ×{quantity}"
    if interval:
        label += f" {INTERVAL_WORDS.get(interval, interval)}" if count == 1 else f" every {count} {interval}s"
    return {"price": price.get("id"), "product": product_id, "quantity": quantity, "label": label}


def latest_runs(session: Session, *, kind: str | None = None, limit: int = 10) -> list[SyncRun]:
    """Backfill, reconcile and catch-up runs, newest first."""
    query = select(SyncRun).order_by(SyncRun.started_at.desc()).limit(limit)
    if kind is not None:
        query = query.where(SyncRun.kind == kind)
    return list(session.scalars(query))
