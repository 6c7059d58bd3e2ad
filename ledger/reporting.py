"""MRR and its movement bridge over time, in the reporting currency (mrr-rules.md §6–§7).

Summed in SQL (movements grouped by day, currency and type, plus one opening
balance per currency), never by loading movements one by one. Each day's
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

from ledger.fx import RateTable, convert
from ledger.models import Movement

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


def _native(
    session: Session, *, livemode: bool, start: date, end: date
) -> tuple[dict[str, int], dict[date, dict[str, dict[str, int]]]]:
    """Opening MRR per currency (end of the day before `start`) and movement sums per day."""
    opening = {
        currency: int(total)
        for currency, total in session.execute(
            select(Movement.currency, func.sum(Movement.amount))
            .where(Movement.livemode == livemode, Movement.day < start)
            .group_by(Movement.currency)
        )
    }
    daily: dict[date, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(dict))
    for day, currency, kind, total in session.execute(
        select(Movement.day, Movement.currency, Movement.type, func.sum(Movement.amount))
        .where(Movement.livemode == livemode, Movement.day >= start, Movement.day <= end)
        .group_by(Movement.day, Movement.currency, Movement.type)
    ):
        daily[day][currency][kind] = int(total)
    return opening, daily


def mrr_series(
    session: Session,
    *,
    livemode: bool,
    start: date,
    end: date,
    interval: Interval,
    rates: RateTable | None,
    reporting_currency: str,
) -> list[Series]:
    """The MRR series: one in the reporting currency when rates are given (or the
    account has one currency), else one per currency."""
    opening, daily = _native(session, livemode=livemode, start=start, end=end)
    currencies = sorted(set(opening) | {c for per_day in daily.values() for c in per_day})
    if rates is None and len(currencies) > 1:
        return [_one_currency(c, opening, daily, start, end, interval) for c in currencies]
    if rates is None or currencies in ([], [reporting_currency]):
        only = currencies[0] if currencies else reporting_currency
        return [_one_currency(only, opening, daily, start, end, interval)]
    return [_converted(currencies, opening, daily, start, end, interval, rates, reporting_currency)]


def _one_currency(
    currency: str,
    opening: dict[str, int],
    daily: dict[date, dict[str, dict[str, int]]],
    start: date,
    end: date,
    interval: Interval,
) -> Series:
    mrr = opening.get(currency, 0)
    result = []
    for first, last in buckets(start, end, interval):
        sums = dict.fromkeys(MOVEMENT_TYPES, 0)
        mrr_start = mrr
        day = first
        while day <= last:
            for kind, amount in daily.get(day, {}).get(currency, {}).items():
                sums[kind] += amount
                mrr += amount
            day += timedelta(days=1)
        result.append(Bucket(first, last, currency, mrr, mrr_start, dict(sums), 0))
    return Series(currency, result, frozenset(), (currency,))


def _converted(
    currencies: list[str],
    opening: dict[str, int],
    daily: dict[date, dict[str, dict[str, int]]],
    start: date,
    end: date,
    interval: Interval,
    rates: RateTable,
    reporting_currency: str,
) -> Series:
    native = dict.fromkeys(currencies, 0) | opening
    missing: dict[str, date] = {}

    def at_rate(amount: int, currency: str, day: date) -> int | None:
        converted = convert(amount, currency, day, rates)
        if converted is None:
            missing[currency] = min(day, missing.get(currency, day))
        return converted

    def total(day: date) -> int | None:
        parts = [at_rate(amount, currency, day) for currency, amount in native.items() if amount]
        return None if any(p is None for p in parts) else sum(p for p in parts if p is not None)

    result = []
    closing = total(start - timedelta(days=1))
    for first, last in buckets(start, end, interval):
        sums: dict[str, int | None] = dict.fromkeys(MOVEMENT_TYPES, 0)
        mrr_start = closing
        day = first
        while day <= last:
            for currency, kinds in daily.get(day, {}).items():
                for kind, amount in kinds.items():
                    native[currency] += amount
                    converted = at_rate(amount, currency, day)
                    current = sums[kind]
                    sums[kind] = None if converted is None or current is None else current + converted
            day += timedelta(days=1)
        closing = total(last)
        moved = [v for v in sums.values()]
        fx = (
            None
            if closing is None or mrr_start is None or any(v is None for v in moved)
            else closing - mrr_start - sum(v for v in moved if v is not None)
        )
        result.append(Bucket(first, last, reporting_currency, closing, mrr_start, sums, fx))
    return Series(reporting_currency, result, frozenset(missing.items()), tuple(currencies))
