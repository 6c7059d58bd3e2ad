"""MRR and its movement bridge over time, in the reporting currency (mrr-rules.md §6–§7).

Read from the daily totals the engine keeps (`daily_totals`: one row per day,
currency and movement type), never by loading movements one by one. Each day's
movement sums convert at that day's rate, each bucket's closing MRR at its last
day's rate; what the rates moved in between is the bucket's FX adjustment, on
its own line. Without a needed rate the converted figures are None and the
missing (currency, first day) pairs are listed; nothing is assumed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Literal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ledger.fx import Rates, convert
from ledger.models import DailyTotal

MOVEMENT_TYPES = ("new", "expansion", "reactivation", "contraction", "churn")
Interval = Literal["day", "week", "month"]


@dataclass(frozen=True)
class Bucket:
    """One day, ISO week or calendar month of the series."""

    start: date
    end: date
    currency: str
    mrr: int | None
    """At the end of the bucket."""
    mrr_start: int | None
    """At the end of the day before the bucket."""
    movements: dict[str, int | None]
    fx_adjustment: int | None
    customers: int = 0
    """Paying customers at the end of the bucket (per currency they pay in)."""

    @property
    def net_new(self) -> int | None:
        values = list(self.movements.values())
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)


@dataclass(frozen=True)
class Series:
    currency: str
    """The reporting currency, or the account's only currency when no rates are configured."""
    buckets: list[Bucket]
    missing_rates: frozenset[tuple[str, date]] = field(default_factory=frozenset)
    currencies: tuple[str, ...] = ()


def bucket_start(day: date, interval: Interval) -> date:
    if interval == "week":
        return day - timedelta(days=day.weekday())
    if interval == "month":
        return day.replace(day=1)
    return day


def _bucket_end(start: date, interval: Interval) -> date:
    if interval == "week":
        return start + timedelta(days=6)
    if interval == "month":
        following = date(start.year + start.month // 12, start.month % 12 + 1, 1)
        return following - timedelta(days=1)
    return start


def buckets(start: date, end: date, interval: Interval) -> Iterator[tuple[date, date]]:
    """(first, last) day of every bucket touching [start, end], clipped to it."""
    current = bucket_start(start, interval)
    while current <= end:
        last = _bucket_end(current, interval)
        yield max(current, start), min(last, end)
        current = last + timedelta(days=1)


JOINS = {"new": 1, "reactivation": 1, "churn": -1}
"""How a movement type changes the number of paying customers."""


@dataclass
class _Native:
    opening: dict[str, int]
    """MRR per currency at the end of the day before the range."""
    customers: dict[str, int]
    """Paying customers per currency at the same moment."""
    daily: dict[date, dict[str, dict[str, tuple[int, int]]]]
    """day → currency → type → (amount, movements)."""


def _native(session: Session, *, livemode: bool, start: date, end: date) -> _Native:
    opening: dict[str, int] = defaultdict(int)
    customers: dict[str, int] = defaultdict(int)
    for currency, kind, amount, count in session.execute(
        select(DailyTotal.currency, DailyTotal.type, func.sum(DailyTotal.amount), func.sum(DailyTotal.movements))
        .where(DailyTotal.livemode == livemode, DailyTotal.day < start)
        .group_by(DailyTotal.currency, DailyTotal.type)
    ):
        opening[currency] += int(amount)
        customers[currency] += JOINS.get(kind, 0) * int(count)
    daily: dict[date, dict[str, dict[str, tuple[int, int]]]] = defaultdict(lambda: defaultdict(dict))
    for day, currency, kind, amount, count in session.execute(
        select(DailyTotal.day, DailyTotal.currency, DailyTotal.type, DailyTotal.amount, DailyTotal.movements).where(
            DailyTotal.livemode == livemode, DailyTotal.day >= start, DailyTotal.day <= end
        )
    ):
        daily[day][currency][kind] = (int(amount), int(count))
    return _Native(dict(opening), dict(customers), daily)


def mrr_series(
    session: Session,
    *,
    livemode: bool,
    start: date,
    end: date,
    interval: Interval,
    rates: Rates | None,
    reporting_currency: str,
) -> list[Series]:
    """The MRR series: one in the reporting currency when rates are given (or the
    account has one currency), else one per currency."""
    native = _native(session, livemode=livemode, start=start, end=end)
    currencies = sorted(set(native.opening) | {c for per_day in native.daily.values() for c in per_day})
    if rates is None and len(currencies) > 1:
        return [_series(native, [c], c, start, end, interval, None) for c in currencies]
    if rates is None or currencies in ([], [reporting_currency]):
        only = currencies[0] if currencies else reporting_currency
        return [_series(native, [only], only, start, end, interval, None)]
    return [_series(native, currencies, reporting_currency, start, end, interval, rates)]


def _series(
    native: _Native,
    currencies: list[str],
    currency: str,
    start: date,
    end: date,
    interval: Interval,
    rates: Rates | None,
) -> Series:
    """Walk the days once, keeping native MRR per currency, converting when rates are given."""
    mrr = {c: native.opening.get(c, 0) for c in currencies}
    customers = sum(native.customers.get(c, 0) for c in currencies)
    missing: dict[str, date] = {}

    def at_rate(amount: int, from_currency: str, day: date) -> int | None:
        if rates is None or not amount:
            return amount
        converted = convert(amount, from_currency, day, rates)
        if converted is None:
            missing[from_currency] = min(day, missing.get(from_currency, day))
        return converted

    def total(day: date) -> int | None:
        parts = [at_rate(amount, c, day) for c, amount in mrr.items()]
        return None if None in parts else sum(p for p in parts if p is not None)

    result = []
    closing = total(start - timedelta(days=1))
    for first, last in buckets(start, end, interval):
        sums: dict[str, int | None] = dict.fromkeys(MOVEMENT_TYPES, 0)
        opening = closing
        day = first
        while day <= last:
            for from_currency, kinds in native.daily.get(day, {}).items():
                if from_currency not in mrr:
                    continue
                for kind, (amount, count) in kinds.items():
                    mrr[from_currency] += amount
                    customers += JOINS.get(kind, 0) * count
                    converted, so_far = at_rate(amount, from_currency, day), sums.get(kind, 0)
                    sums[kind] = None if converted is None or so_far is None else so_far + converted
            day += timedelta(days=1)
        closing = total(last)
        moved = list(sums.values())
        fx = (
            None
            if closing is None or opening is None or None in moved
            else closing - opening - sum(v for v in moved if v is not None)
        )
        result.append(Bucket(first, last, currency, closing, opening, sums, fx, customers))
    return Series(currency, result, frozenset(missing.items()), tuple(currencies))
