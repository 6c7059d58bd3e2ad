"""A month's KPIs (mrr-rules.md §8), read from the account's monthly totals.

One currency at a time: the caller picks the account's currency, or converts
(see `ledger.reporting` for the bridge with its FX adjustment). Rates are
exact fractions; a rate whose denominator is 0 is None.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import date, timedelta
from fractions import Fraction

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ledger import metrics
from ledger.errors import SubledgerError
from ledger.fx import Rates, convert
from ledger.models import AccountMonth, CustomerMonthly, DailyTotal
from ledger.reporting import mrr_series
from ledger.rollup import ACCOUNT_SUMS, month_text, next_month

LTV_MONTHS = 6
"""LTV divides by the average customer churn rate of this many full months."""


def previous_month(month: date) -> date:
    return date(month.year - (month.month == 1), (month.month - 2) % 12 + 1, 1)


@dataclass(frozen=True)
class MonthFigures:
    """The sums one month's KPIs are computed from, in one currency."""

    month: date
    currency: str
    mrr_start: int
    mrr: int
    customers_start: int
    customers: int
    new: int
    expansion: int
    contraction: int
    churn: int
    reactivation: int
    new_customers: int
    churned_customers: int
    reactivated_customers: int
    expanded_customers: int
    nrr_numerator: int
    grr_numerator: int
    scheduled_churn: int
    trials_ended: int
    trials_converted: int
    churn_window: tuple[tuple[int, int] | None, ...]
    """(churned customers, customers at the start) of each month of the LTV window, oldest first; None for a
    month without a row."""

    @property
    def monthly_churn_rates(self) -> list[Fraction | None]:
        return [metrics.customer_churn_rate(*month) if month is not None else None for month in self.churn_window]


def month_figures(session: Session, *, livemode: bool, month: date, currency: str, today: date) -> MonthFigures:
    """Everything §8 needs about `month` in `currency`: one row of the account's months, and its LTV window."""
    window = _ltv_window(month, today)
    rows = {
        row.month: row
        for row in session.scalars(
            select(AccountMonth).where(
                AccountMonth.livemode == livemode,
                AccountMonth.currency == currency,
                AccountMonth.month.in_([month, *window]),
            )
        )
    }
    found = rows.get(month)
    sums = {name: int(getattr(found, name)) if found is not None else 0 for name in ACCOUNT_SUMS}
    churn_window = tuple(
        (int(row.churned_customers), int(row.customers_start)) if row is not None else None
        for row in (rows.get(m) for m in window)
    )
    return MonthFigures(month=month, currency=currency, churn_window=churn_window, **sums)


def _ltv_window(month: date, today: date) -> list[date]:
    """The LTV_MONTHS full months ending with `month` (or the month before it while it runs)."""
    last = month if next_month(month) <= today else previous_month(month)
    window = [last]
    while len(window) < LTV_MONTHS:
        window.insert(0, previous_month(window[0]))
    return window


def kpis(figures: MonthFigures) -> dict[str, object]:
    """Every metric of §8 for the month, keyed as the API names them."""
    f = figures
    arpa = metrics.arpa(f.mrr, f.customers)
    return {
        "month": month_text(f.month),
        "currency": f.currency,
        "mrr_start": f.mrr_start,
        "mrr": f.mrr,
        "arr": metrics.arr(f.mrr),
        "customers_start": f.customers_start,
        "customers": f.customers,
        "new": f.new,
        "expansion": f.expansion,
        "contraction": f.contraction,
        "churn": f.churn,
        "reactivation": f.reactivation,
        "net_new": metrics.net_new_mrr(f.new, f.expansion, f.reactivation, f.contraction, f.churn),
        "new_customers": f.new_customers,
        "churned_customers": f.churned_customers,
        "reactivated_customers": f.reactivated_customers,
        "mrr_growth_rate": metrics.mrr_growth_rate(f.mrr_start, f.mrr),
        "arpa": arpa,
        "customer_churn_rate": metrics.customer_churn_rate(f.churned_customers, f.customers_start),
        "retention_rate": metrics.retention_rate(f.churned_customers, f.customers_start),
        "gross_mrr_churn_rate": metrics.gross_mrr_churn_rate(f.churn, f.contraction, f.mrr_start),
        "net_mrr_churn_rate": metrics.net_mrr_churn_rate(
            f.churn, f.contraction, f.expansion, f.reactivation, f.mrr_start
        ),
        "expansion_rate": metrics.expansion_rate(f.expansion, f.mrr_start),
        "upsell_rate": metrics.upsell_rate(f.expanded_customers, f.customers_start),
        "nrr": metrics.nrr(f.nrr_numerator, f.mrr_start),
        "grr": metrics.grr(f.grr_numerator, f.mrr_start),
        "quick_ratio": metrics.quick_ratio(f.new, f.expansion, f.reactivation, f.contraction, f.churn),
        "ltv": metrics.ltv(arpa, f.monthly_churn_rates),
        "trial_conversion_rate": metrics.trial_conversion_rate(f.trials_converted, f.trials_ended),
        "scheduled_churn": f.scheduled_churn,
    }


def account_currencies(session: Session, *, livemode: bool) -> list[str]:
    """Currencies the ledger has seen, most movements first (read from the small daily totals)."""
    rows = session.execute(
        select(DailyTotal.currency, func.sum(DailyTotal.movements))
        .where(DailyTotal.livemode == livemode)
        .group_by(DailyTotal.currency)
        .order_by(func.sum(DailyTotal.movements).desc(), DailyTotal.currency)
    )
    return [currency for currency, _ in rows]


def _converted(figures: list[MonthFigures], rates: Rates, reporting_currency: str, today: date) -> MonthFigures:
    """Several currencies' figures as one, in the reporting currency.

    Opening amounts (and NRR/GRR numerators, so retention is measured at
    constant rates) convert at the rate of the day before the month, closing
    ones at its last day's (today's while it runs); movement sums come from
    the daily bridge. A missing rate raises MissingRates.
    """
    month = figures[0].month
    opening_day = month - timedelta(days=1)
    closing_day = min(next_month(month) - timedelta(days=1), today)
    missing: set[tuple[str, date]] = set()

    def at(amount: int, currency: str, day: date) -> int:
        value = convert(amount, currency, day, rates)
        if value is None:
            missing.add((currency, day))
            return 0
        return value

    def opening(name: str) -> int:
        return sum(at(getattr(f, name), f.currency, opening_day) for f in figures)

    def closing(name: str) -> int:
        return sum(at(getattr(f, name), f.currency, closing_day) for f in figures)

    counts = {
        name: sum(getattr(f, name) for f in figures)
        for name in (
            "customers_start",
            "customers",
            "new_customers",
            "churned_customers",
            "reactivated_customers",
            "expanded_customers",
            "trials_ended",
            "trials_converted",
        )
    }
    if missing:
        raise MissingRates(frozenset(missing))
    return MonthFigures(
        month=month,
        currency=reporting_currency,
        mrr_start=opening("mrr_start"),
        mrr=closing("mrr"),
        new=0,
        expansion=0,
        contraction=0,
        churn=0,
        reactivation=0,
        nrr_numerator=opening("nrr_numerator"),
        grr_numerator=opening("grr_numerator"),
        scheduled_churn=closing("scheduled_churn"),
        churn_window=tuple(_summed(months) for months in zip(*(f.churn_window for f in figures), strict=True)),
        **counts,
    )


def _summed(months: Sequence[tuple[int, int] | None]) -> tuple[int, int] | None:
    """One window month of several currencies: their churned customers and customers at the start, summed."""
    known = [month for month in months if month is not None]
    return (sum(churned for churned, _ in known), sum(start for _, start in known)) if known else None


class MissingRates(SubledgerError, LookupError):
    """Rates the conversion needs are missing (from FX_RATES_FILE or the reference rates)."""

    def __init__(self, missing: frozenset[tuple[str, date]]) -> None:
        first: dict[str, date] = {}
        for currency, day in missing:
            first[currency] = min(day, first.get(currency, day))
        self.missing = sorted(first.items())
        super().__init__(", ".join(f"{currency} from {day}" for currency, day in self.missing))


class MonthNotStarted(SubledgerError, ValueError):
    """A summary was asked for a month after today's: nothing has happened in it yet."""

    def __init__(self, month: date, today: date) -> None:
        super().__init__(f"{month_text(month)} has not started (today is {today.isoformat()})")


def account_summary(
    session: Session,
    *,
    livemode: bool,
    month: date,
    rates: Rates | None,
    reporting_currency: str,
    today: date,
) -> list[dict[str, object]]:
    """The month's KPIs: one summary in a single currency when the account has one
    (or rates convert them), else one per currency. Each carries its FX adjustment.

    Raises MonthNotStarted for a month after today's, MissingRates when `rates` lack some.
    """
    if month > today.replace(day=1):
        raise MonthNotStarted(month, today)
    currencies = account_currencies(session, livemode=livemode) or [reporting_currency]
    if rates is None or currencies == [reporting_currency]:
        summaries = []
        for currency in currencies:
            result = kpis(month_figures(session, livemode=livemode, month=month, currency=currency, today=today))
            result["fx_adjustment"] = 0
            summaries.append(result)
        return summaries
    figures = [month_figures(session, livemode=livemode, month=month, currency=c, today=today) for c in currencies]
    combined = _converted(figures, rates, reporting_currency, today)
    [series] = mrr_series(
        session,
        livemode=livemode,
        start=month,
        end=min(next_month(month) - timedelta(days=1), today),
        interval="month",
        rates=rates,
        reporting_currency=reporting_currency,
    )
    if series.missing_rates:
        raise MissingRates(series.missing_rates)
    [bridge] = series.buckets
    moved = {kind: int(amount or 0) for kind, amount in bridge.movements.items()}
    combined = replace(
        combined,
        new=moved["new"],
        expansion=moved["expansion"],
        contraction=moved["contraction"],
        churn=moved["churn"],
        reactivation=moved["reactivation"],
    )
    result = kpis(combined)
    result["fx_adjustment"] = (bridge.mrr or 0) - (bridge.mrr_start or 0) - sum(moved.values())
    return [result]


def default_livemode(session: Session, configured: bool | None) -> bool:
    """Which ledger to show: the API key's mode, else live if there is live data, else test."""
    if configured is not None:
        return configured
    live = session.scalar(select(CustomerMonthly.customer_id).where(CustomerMonthly.livemode.is_(True)).limit(1))
    return live is not None
