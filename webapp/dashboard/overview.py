"""`/`: headline MRR and ARR, MRR over time with its movements, and the month's KPIs."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from flask import render_template
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from ledger.reporting import Interval, Series, mrr_series
from ledger.summary import MissingRates, account_currencies, account_summary
from webapp.dashboard import charts, params
from webapp.dashboard.blueprint import bp
from webapp.dashboard.context import LedgerView, ledger_view
from webapp.dashboard.login import login_required
from webapp.services import services


@dataclass(frozen=True)
class Section:
    """One currency's figures (or the single converted one)."""

    currency: str
    chart_id: str
    summary: dict[str, object] | None


def missing_notice(source: str, missing: list[tuple[str, date]] | frozenset[tuple[str, date]]) -> str:
    listed = ", ".join(f"{currency.upper()} from {day:%Y-%m-%d}" for currency, day in sorted(missing))
    return f"{source} has no rates for {listed}: each currency is shown apart, unconverted."


def figures(
    session: Session, view: LedgerView, *, start: date, end: date, month: date, interval: Interval
) -> tuple[list[Series], list[dict[str, object]], list[str]]:
    """The series and the month's summaries, converted when the rates allow, else per currency."""
    notices = [view.rates_error] if view.rates_error else []
    common: dict[str, Any] = {"livemode": view.livemode, "reporting_currency": view.reporting_currency}
    rates = view.rates
    if rates is not None:
        series = mrr_series(session, start=start, end=end, interval=interval, rates=rates, **common)
        try:
            summaries = account_summary(session, month=month, rates=rates, today=view.today, **common)
        except MissingRates as exc:
            notices.append(missing_notice(rates.source, exc.missing))
            rates = None
        else:
            if series[0].missing_rates:
                notices.append(missing_notice(rates.source, series[0].missing_rates))
                rates = None
            else:
                stale = view.rates_info.warning if view.rates_info and len(series[0].currencies) > 1 else None
                return series, summaries, [*notices, stale] if stale else notices
    series = mrr_series(session, start=start, end=end, interval=interval, rates=None, **common)
    summaries = account_summary(session, month=month, rates=None, today=view.today, **common)
    if len(series) > 1 and view.rates is None:
        notices.append(
            "The account bills in several currencies and no rates are set (FX_REFERENCE_RATES=off, no FX_RATES_FILE): "
            "each is shown apart."
        )
    return series, summaries, notices


@bp.get("/")
@login_required
def overview() -> ResponseReturnValue:
    with services().database.session() as session:
        view = ledger_view(session)
        start, end = params.month_range(view.today)
        interval = params.interval()
        last_day = min(params.month_end(end), view.today)
        series, summaries, notices = figures(session, view, start=start, end=last_day, month=end, interval=interval)
        empty = not account_currencies(session, livemode=view.livemode)
    by_currency = {summary["currency"]: summary for summary in summaries}
    order = [str(c) for c in by_currency] + [s.currency for s in series if s.currency not in by_currency]
    sections = [Section(c, f"chart-mrr-{c}", by_currency.get(c)) for c in order]
    converted = view.rates is not None and len(series) == 1 and len(series[0].currencies) > 1
    chart_data = {
        f"chart-mrr-{s.currency}": charts.mrr_figure(s, with_fx=converted, interval=interval)
        for s in series
        if not empty
    }
    return render_template(
        "dashboard/overview.html",
        view=view,
        sections=sections,
        notices=notices,
        empty=empty,
        converted=converted and not empty,
        chart_data=chart_data,
        start=start,
        end=end,
        interval=interval,
        month_running=end == view.today.replace(day=1),
        presets=[(label, params.shift_months(view.today.replace(day=1), 1 - months)) for label, months in PRESETS],
    )


PRESETS = (("3 months", 3), ("6 months", 6), ("12 months", 12), ("24 months", 24))
"""Quick choices beside the date-range picker."""
