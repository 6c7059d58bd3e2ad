"""MRR movements: mrr-rules.md §6.

A customer's MRR, per currency, is the sum of the latest net MRR of each of its
subscriptions in that currency. Movements compare it at two moments: the ends
of consecutive UTC days (NETTING=day: everything that happened in one day nets
into one movement) or just before and just after each change instant
(NETTING=none). Either way, per currency, MRR after any step equals the sum of
all movements up to it.

Movements are recomputed for the whole customer from all its changes: a
customer has at most hundreds, and the state before any day is then simply
what the earlier changes made it. A caller that only needs the movements from
a day on (the worker, after a late event) passes `since=` and replaces its
stored movements from that day on.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from enum import StrEnum
from itertools import groupby

from ledger.settings import RuleSettings
from ledger.timeline import Change


class MovementType(StrEnum):
    """§6's five kinds of movement."""

    NEW = "new"
    EXPANSION = "expansion"
    CONTRACTION = "contraction"
    CHURN = "churn"
    REACTIVATION = "reactivation"


@dataclass(frozen=True)
class Movement:
    """A change of one customer's MRR in one currency."""

    customer_id: str
    currency: str
    at: datetime
    """NETTING=day: the UTC day's midnight; NETTING=none: the change instant."""
    day: date
    """UTC day."""
    type: MovementType
    amount: int
    """mrr_after − mrr_before: negative for contraction and churn."""
    mrr_before: int
    mrr_after: int
    sources: tuple[str, ...]
    """Sources of the changes netted into it, sorted."""


def classify_movement(
    prev: int, cur: int, *, paid_before: bool, gap_days: int | None, rules: RuleSettings
) -> MovementType | None:
    """§6's table; None when MRR did not change.

    `paid_before`: the customer had MRR > 0 (in any currency) at an earlier step.
    `gap_days`: UTC days since the customer stopped paying (0 while it still
    pays in another currency; None if it never stopped). A return after more
    than REACTIVATION_WINDOW_DAYS is new business, not a reactivation.
    """
    if prev < 0 or cur < 0:
        raise ValueError(f"MRR is never negative (got {prev} → {cur})")
    if prev == cur:
        return None
    if prev == 0:
        window = rules.reactivation_window_days
        if not paid_before or (window is not None and gap_days is not None and gap_days > window):
            return MovementType.NEW
        return MovementType.REACTIVATION
    if cur == 0:
        return MovementType.CHURN
    return MovementType.EXPANSION if cur > prev else MovementType.CONTRACTION


@dataclass(frozen=True)
class _Step:
    """A customer's MRR per currency after one netting step, and the sources of the step's changes."""

    at: datetime
    day: date
    mrr: dict[str, int]
    sources: dict[str, frozenset[str]]


def _change_order(change: Change) -> tuple[datetime, str, str, int, int, tuple[str, ...]]:
    return (change.at, change.subscription_id, change.currency, change.net, change.gross, change.sources)


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


def _steps(changes: Sequence[Change], *, by_day: bool) -> Iterator[_Step]:
    """The customer's MRR after each UTC day (by_day) or each change instant, where something changed."""
    latest: dict[str, tuple[str, int]] = {}  # subscription → (currency, net)
    ordered = sorted(changes, key=_change_order)

    def step_key(change: Change) -> datetime:
        day = change.at.astimezone(UTC).date()
        return _midnight(day) if by_day else change.at

    for at, group in groupby(ordered, key=step_key):
        sources: dict[str, set[str]] = {}
        for change in group:
            before = latest.get(change.subscription_id, (change.currency, 0))
            after = (change.currency, change.net)
            if before != after:
                for currency in {before[0], after[0]}:
                    sources.setdefault(currency, set()).update(change.sources)
            latest[change.subscription_id] = after
        mrr: dict[str, int] = {}
        for currency, net in latest.values():
            mrr[currency] = mrr.get(currency, 0) + net
        yield _Step(
            at=at,
            day=at.astimezone(UTC).date(),
            mrr=mrr,
            sources={currency: frozenset(found) for currency, found in sources.items()},
        )


def customer_mrr_series(changes: Sequence[Change]) -> dict[str, list[tuple[date, int]]]:
    """Per currency: (day, MRR at the end of that UTC day) for each day on which it changed."""
    series: dict[str, list[tuple[date, int]]] = {}
    for step in _steps(changes, by_day=True):
        for currency, mrr in sorted(step.mrr.items()):
            points = series.setdefault(currency, [])
            if mrr != (points[-1][1] if points else 0):
                points.append((step.day, mrr))
    return {currency: points for currency, points in series.items() if points}


def customer_movements(changes: Sequence[Change], rules: RuleSettings, *, since: date | None = None) -> list[Movement]:
    """§6 movements of the changes' customer(s), sorted by customer, time and currency.

    All of a customer's changes must be given, whatever `since`: the state
    before `since` comes from them. With `since`, only movements dated that day
    or later are returned, to replace the stored ones from that day on.
    """
    by_customer: dict[str, list[Change]] = {}
    for change in changes:
        by_customer.setdefault(change.customer_id, []).append(change)
    movements: list[Movement] = []
    for customer_id in sorted(by_customer):
        movements.extend(_one_customer(customer_id, by_customer[customer_id], rules))
    return [movement for movement in movements if since is None or movement.day >= since]


def _one_customer(customer_id: str, changes: Sequence[Change], rules: RuleSettings) -> Iterator[Movement]:
    before: dict[str, int] = {}
    paid_before = False
    stopped_on: date | None = None  # the UTC day the customer last went from paying to not paying
    for step in _steps(changes, by_day=rules.netting == "day"):
        paying = any(mrr > 0 for mrr in before.values())
        gap_days = 0 if paying else None if stopped_on is None else (step.day - stopped_on).days
        for currency in sorted(before.keys() | step.mrr.keys()):
            prev, cur = before.get(currency, 0), step.mrr.get(currency, 0)
            kind = classify_movement(prev, cur, paid_before=paid_before, gap_days=gap_days, rules=rules)
            if kind is None:
                continue
            yield Movement(
                customer_id=customer_id,
                currency=currency,
                at=step.at,
                day=step.day,
                type=kind,
                amount=cur - prev,
                mrr_before=prev,
                mrr_after=cur,
                sources=tuple(sorted(step.sources.get(currency, frozenset()))),
            )
        paying_after = any(mrr > 0 for mrr in step.mrr.values())
        paid_before = paid_before or paying_after
        if paying and not paying_after:
            stopped_on = step.day
        before = step.mrr
