"""A customer's ledger summed by calendar month: what the §8 metrics read.

Computed from the customer's movements and subscription changes each time the
customer is recomputed, and stored (`customer_months`), so a month's summary or
a cohort grid sums one row per customer instead of every movement ever booked.
Pure functions; `ledger.engine` stores the rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ledger.movements import Movement
from ledger.timeline import Change, Snapshot


@dataclass
class CustomerMonth:
    """One customer's month in one currency."""

    customer_id: str
    currency: str
    month: date
    """First day of the month."""
    mrr: int = 0
    """At the end of the month (for the current month: as of now)."""
    mrr_start: int = 0
    """At the end of the previous month."""
    new: int = 0
    expansion: int = 0
    contraction: int = 0
    churn: int = 0
    reactivation: int = 0
    expansions: int = 0
    """Expansion movements in the month (the upsell rate counts customers with one)."""
    churns: int = 0
    reactivations: int = 0
    news: int = 0
    scheduled_churn: int = 0
    """−MRR at the month's end of live subscriptions set to cancel (≤ 0)."""
    trials_ended: int = 0
    trials_converted: int = 0
    first_paid_month: date | None = None
    """The customer's cohort: the month it first had MRR (any currency)."""


COUNTED = {"new": "news", "expansion": "expansions", "churn": "churns", "reactivation": "reactivations"}
"""Movement types whose number per month is kept beside their sum."""


def month_of(day: date) -> date:
    return day.replace(day=1)


def month_text(month: date) -> str:
    """YYYY-MM, four digits of year always (`strftime("%Y")` gives `669` for the year 669)."""
    return f"{month.year:04d}-{month.month:02d}"


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _month_end(month: date, now: datetime) -> datetime:
    """The instant a month's closing figures are read at: its last moment, or now if it has not ended."""
    end = datetime(next_month(month).year, next_month(month).month, 1, tzinfo=UTC) - timedelta(microseconds=1)
    return min(end, now)


def _in_force(changes: Sequence[Change], at: datetime) -> dict[str, Change]:
    """Each subscription's change in force at `at`."""
    latest: dict[str, Change] = {}
    for change in changes:
        if change.at <= at:
            latest[change.subscription_id] = change
    return latest


def _trials(
    snapshots: Iterable[Snapshot], changes: Sequence[Change], now: datetime
) -> list[tuple[str | None, date, bool]]:
    """(currency, month the trial ended, converted?) for every subscription whose trial ended by now.

    A trial ends when the subscription stops trialing (§8): at its `trial_end`, or earlier when a version
    after a trialing one is no longer trialing (canceled, paused, expired while trialing). Converted:
    the subscription was worth more than 0 once its trial ended.
    """
    trial_ends: dict[str, datetime] = {}
    stopped: dict[str, datetime] = {}
    trialing: set[str] = set()
    for snapshot in sorted(snapshots, key=lambda s: (s.observed_at, s.rank)):
        subscription_id = snapshot.subscription_id
        value = snapshot.subscription.get("trial_end")
        if isinstance(value, int):
            trial_ends[subscription_id] = datetime.fromtimestamp(value, UTC)
        if snapshot.subscription.get("status") == "trialing":
            trialing.add(subscription_id)
            stopped.pop(subscription_id, None)  # a trial extended or begun again
        elif subscription_id in trialing:
            stopped.setdefault(subscription_id, snapshot.observed_at)
    trials = []
    for subscription_id, trial_end in trial_ends.items():
        ended = min(trial_end, stopped.get(subscription_id, trial_end))
        if ended > now:
            continue
        after = [c for c in changes if c.subscription_id == subscription_id and c.at >= ended]
        converted = bool(after) and after[0].net > 0
        currency = next((c.currency for c in changes if c.subscription_id == subscription_id), None)
        trials.append((currency, month_of(ended.date()), converted))
    return trials


def customer_months(
    customer_id: str,
    movements: Sequence[Movement],
    changes: Sequence[Change],
    snapshots: Sequence[Snapshot],
    *,
    now: datetime,
) -> list[CustomerMonth]:
    """The customer's months, from the first with anything to report to the month of `now`."""
    trials = _trials(snapshots, changes, now)
    firsts = [month_of(m.day) for m in movements] + [month for _, month, _ in trials]
    if not firsts:
        return []
    currencies = sorted({m.currency for m in movements} | {c.currency for c in changes}) or ["usd"]
    rows: dict[tuple[str, date], CustomerMonth] = {}
    month, last = min(firsts), month_of(now.date())
    running: dict[str, int] = dict.fromkeys(currencies, 0)
    by_month: Mapping[date, list[Movement]] = _group(movements)
    while month <= last:
        in_force = _in_force(changes, _month_end(month, now))
        for currency in currencies:
            row = CustomerMonth(customer_id, currency, month, mrr_start=running[currency])
            for movement in by_month.get(month, []):
                if movement.currency != currency:
                    continue
                kind = str(movement.type)
                setattr(row, kind, getattr(row, kind) + movement.amount)
                if kind in COUNTED:
                    setattr(row, COUNTED[kind], getattr(row, COUNTED[kind]) + 1)
                running[currency] += movement.amount
            row.mrr = running[currency]
            row.scheduled_churn = -sum(
                c.net for c in in_force.values() if c.scheduled_churn and c.currency == currency and c.net > 0
            )
            rows[(currency, month)] = row
        month = next_month(month)
    for trial_currency, ended_in, converted in trials:
        row = rows[(trial_currency or currencies[0], ended_in)]
        row.trials_ended += 1
        row.trials_converted += int(converted)
    paid = [row.month for row in rows.values() if row.mrr > 0 or row.new or row.reactivation]
    cohort = min(paid) if paid else None
    kept = [row for row in rows.values() if _worth_keeping(row)]
    for row in kept:
        row.first_paid_month = cohort
    return kept


def _group(movements: Iterable[Movement]) -> dict[date, list[Movement]]:
    grouped: dict[date, list[Movement]] = {}
    for movement in movements:
        grouped.setdefault(month_of(movement.day), []).append(movement)
    return grouped


def _worth_keeping(row: CustomerMonth) -> bool:
    """Rows of a month with nothing in it (not paying, no movement, no trial) are left out."""
    return bool(
        row.mrr or row.new or row.expansion or row.contraction or row.churn or row.reactivation or row.trials_ended
    )


ACCOUNT_SUMS = (
    "mrr_start",
    "mrr",
    "new",
    "expansion",
    "contraction",
    "churn",
    "reactivation",
    "customers_start",
    "customers",
    "new_customers",
    "churned_customers",
    "reactivated_customers",
    "expanded_customers",
    "nrr_numerator",
    "grr_numerator",
    "scheduled_churn",
    "trials_ended",
    "trials_converted",
)
"""The columns of the account's month, each a sum over its customers' months."""


def account_contribution(row: Any) -> dict[str, int]:
    """What one customer's month adds to the account's month (a CustomerMonth or a stored row).

    Every customer paying at the end of the previous month has a row in this
    one (still paying, or churned in it), so the pairs NRR and GRR need are
    all here.
    """
    paying_at_start = row.mrr_start > 0
    return {
        "mrr_start": row.mrr_start,
        "mrr": row.mrr,
        "new": row.new,
        "expansion": row.expansion,
        "contraction": row.contraction,
        "churn": row.churn,
        "reactivation": row.reactivation,
        "customers_start": int(paying_at_start),
        "customers": int(row.mrr > 0),
        "new_customers": int(row.news > 0),
        "churned_customers": int(row.churns > 0),
        "reactivated_customers": int(row.reactivations > 0),
        "expanded_customers": int(row.expansions > 0),
        "nrr_numerator": row.mrr if paying_at_start else 0,
        "grr_numerator": min(row.mrr, row.mrr_start) if paying_at_start else 0,
        "scheduled_churn": row.scheduled_churn,
        "trials_ended": row.trials_ended,
        "trials_converted": row.trials_converted,
    }
