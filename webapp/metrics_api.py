"""The metrics endpoints of /api/v1: MRR over time, movements, a month's summary,
cohorts and one customer — each a thin view over `ledger` queries.

Money is integers in minor units beside its currency; rates are decimal
fractions (0.25 = 25 %), null where undefined; dates are ISO 8601 UTC.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from fractions import Fraction
from typing import Any

from flask import Blueprint, Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy.orm import Session

from ledger.db import utcnow
from ledger.fx import RatesInfo, convert
from ledger.models import Movement
from ledger.queries import cohorts as cohort_grid
from ledger.queries import customer_story, movements_page
from ledger.reporting import MOVEMENT_TYPES, Interval, Series, mrr_series
from ledger.rollup import month_text
from ledger.summary import MissingRates, MonthNotStarted, account_currencies, account_summary, default_livemode
from webapp.api import csv_response, iso, wants_csv, whole_number
from webapp.auth import require_api_token
from webapp.services import services

bp = Blueprint("metrics_api", __name__, url_prefix="/api/v1")
bp.before_request(require_api_token)

MIN_YEAR, MAX_YEAR = 1970, 2999
"""Dates outside these years cannot be about a Stripe account."""

MAX_POINTS = 2000
"""Points one /mrr answer may hold (e.g. five years of days)."""


def _day(name: str) -> date | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        parsed = date.fromisoformat(raw) if len(raw) == 10 else datetime.strptime(raw, "%Y-%m").date()
    except ValueError:
        abort(400, description=f"{name} must be a date, YYYY-MM-DD (or YYYY-MM)")
    if not MIN_YEAR <= parsed.year <= MAX_YEAR:
        abort(400, description=f"{name} must be a date between {MIN_YEAR} and {MAX_YEAR}")
    return parsed


def _month(name: str) -> date | None:
    raw = request.args.get(name)
    if raw is None:
        return None
    try:
        return datetime.strptime(raw, "%Y-%m").date()
    except ValueError:
        abort(400, description=f"{name} must be a month, YYYY-MM")


def _choice(name: str, choices: tuple[str, ...], default: str) -> str:
    value = request.args.get(name, default)
    if value not in choices:
        abort(400, description=f"{name} must be one of {', '.join(choices)}")
    return value


def _plain(value: object) -> object:
    return round(float(value), 6) if isinstance(value, Fraction) else value


def _missing(pairs: Any) -> list[dict[str, str]]:
    return [{"currency": currency, "from": day.isoformat()} for currency, day in sorted(pairs)]


def _livemode(session: Session) -> bool:
    return default_livemode(session, services().settings.livemode)


def _points(series: Series) -> list[dict[str, Any]]:
    points = []
    for bucket in series.buckets:
        point: dict[str, Any] = {
            "date": bucket.end.isoformat(),
            "mrr": bucket.mrr,
            "arr": None if bucket.mrr is None else 12 * bucket.mrr,
            "customers": bucket.customers,
        }
        point |= {kind: bucket.movements.get(kind) for kind in MOVEMENT_TYPES}
        point |= {"net_new": bucket.net_new, "fx_adjustment": bucket.fx_adjustment}
        points.append(point)
    return points


@bp.get("/mrr")
def mrr() -> ResponseReturnValue:
    """MRR at the end of each day, week or month, with the movements that made it; up to today unless
    `future=true` (the future holds only what is already scheduled)."""
    today = utcnow().date()
    future = _choice("future", ("true", "false"), "false") == "true"
    end = _day("end") or today
    start = _day("start") or (end.replace(day=1) - timedelta(days=365)).replace(day=1)
    interval: Interval = _choice("interval", ("day", "week", "month"), "month")  # type: ignore[assignment]
    if start > end:
        abort(400, description="start must not be after end")
    if not future:
        if start > today:
            abort(400, description=f"start is after today ({today.isoformat()}): add future=true to ask for it")
        end = min(end, today)
    if interval == "day" and (end - start).days >= MAX_POINTS:
        abort(400, description=f"start to end spans more than {MAX_POINTS} days: use interval=week or month")
    found = services()
    with found.database.session() as session:
        series = mrr_series(
            session,
            livemode=_livemode(session),
            start=start,
            end=end,
            interval=interval,
            rates=found.rates,
            reporting_currency=found.settings.reporting_currency,
        )
    missing = _missing(pair for s in series for pair in s.missing_rates)
    if wants_csv():
        fields = ("currency", "date", "mrr", "arr", "customers", *MOVEMENT_TYPES, "net_new", "fx_adjustment")
        rows = ([s.currency, *p.values()] for s in series for p in _points(s))
        return csv_response(fields, rows, filename="mrr.csv")
    about = _rates_info(today)
    if len(series) == 1:
        points = _points(series[0])
        return jsonify(
            currency=series[0].currency, interval=interval, points=points, missing_rates=missing, rates=about
        )
    by_currency = [{"currency": s.currency, "points": _points(s)} for s in series]
    return jsonify(
        currency=None, interval=interval, points=[], by_currency=by_currency, missing_rates=missing, rates=about
    )


def _rates_info(today: date) -> dict[str, Any] | None:
    """Which rates converted the answer's reporting-currency figures, and whether they are a week old."""
    rates = services().rates
    if rates is None:
        return None
    info = RatesInfo.of(rates, today)
    last = info.last_date.isoformat() if info.last_date else None
    return {"source": info.source, "last_date": last, "stale": info.stale, "warning": info.warning}


def _movement(movement: Movement, reporting_currency: str) -> dict[str, Any]:
    rates = services().rates
    if movement.currency == reporting_currency:
        reporting: int | None = movement.amount
    else:
        reporting = convert(movement.amount, movement.currency, movement.day, rates) if rates else None
    return {
        "id": movement.id,
        "date": movement.day.isoformat(),
        "customer": movement.customer_id,
        "type": movement.type,
        "amount": movement.amount,
        "currency": movement.currency,
        "amount_reporting": reporting,
        "mrr_before": movement.mrr_before,
        "mrr_after": movement.mrr_after,
        "sources": movement.sources,
    }


@bp.get("/movements")
def movements() -> ResponseReturnValue:
    """Movements newest first (`order=oldest`: oldest first), filtered, paged with `next_cursor`."""
    order = _choice("order", ("newest", "oldest"), "newest")
    types = [t for t in request.args.get("type", "").split(",") if t]
    for kind in types:
        if kind not in MOVEMENT_TYPES:
            abort(400, description=f"type must be among {', '.join(MOVEMENT_TYPES)}")
    limit = whole_number("limit", default=100, low=1, high=1000)
    cursor = request.args.get("cursor") or None
    start, end = _day("start"), _day("end")
    found = services()
    with found.database.session() as session:
        try:
            page = movements_page(
                session,
                livemode=_livemode(session),
                start=start,
                end=end,
                types=types,
                customer=_customer_id(request.args["customer"], "customer") if request.args.get("customer") else None,
                limit=limit,
                cursor=cursor,
                newest_first=order == "newest",
            )
        except ValueError:
            abort(400, description="cursor is not one this API gave out")
        data = [_movement(m, found.settings.reporting_currency) for m in page.movements]
    if wants_csv():
        fields = list(data[0]) if data else ["id", "date", "customer", "type", "amount", "currency"]
        return csv_response(fields, ([*row.values()] for row in data), filename="movements.csv")
    return jsonify(data=data, next_cursor=page.next_cursor)


@bp.get("/summary")
def summary() -> ResponseReturnValue:
    """Every metric of mrr-rules.md §8 for one month (default: this month)."""
    today = utcnow().date()
    month = _month("month") or today.replace(day=1)
    found = services()
    with found.database.session() as session:
        livemode = _livemode(session)
        missing: list[dict[str, str]] = []
        try:
            summaries = account_summary(
                session,
                livemode=livemode,
                month=month,
                rates=found.rates,
                reporting_currency=found.settings.reporting_currency,
                today=today,
            )
        except MonthNotStarted as exc:
            abort(400, description=f"month: {exc}")
        except MissingRates as exc:
            missing = _missing(exc.missing)
            summaries = account_summary(
                session, livemode=livemode, month=month, rates=None, reporting_currency="", today=today
            )
    rows = [{key: _plain(value) for key, value in s.items()} for s in summaries]
    if wants_csv():
        return csv_response(
            list(rows[0]), ([*row.values()] for row in rows), filename=f"summary-{month_text(month)}.csv"
        )
    about = _rates_info(today)
    for row in rows:
        row["rates"] = about
    if len(rows) == 1 and not missing:
        return jsonify(rows[0])
    return jsonify(month=month_text(month), currency=None, by_currency=rows, missing_rates=missing, rates=about)


@bp.get("/cohorts")
def cohorts() -> ResponseReturnValue:
    """Customers grouped by the month they first paid, and what is left of each group since."""
    today = utcnow().date()
    end = _month("end") or today.replace(day=1)
    start = _month("start") or date(end.year - 1, end.month, 1)
    if start > end:
        abort(400, description="start must not be after end")
    found = services()
    with found.database.session() as session:
        livemode = _livemode(session)
        currencies = account_currencies(session, livemode=livemode) or [found.settings.reporting_currency]
        currency = request.args.get("currency", currencies[0]).lower()
        if currency not in currencies:
            abort(400, description=f"currency must be one of {', '.join(currencies)}")
        grid = cohort_grid(session, livemode=livemode, currency=currency, start=start, end=end)
    result: list[dict[str, Any]] = [
        {
            "month": month_text(cohort.month),
            "customers": cohort.customers,
            "revenue": cohort.revenue,
            "retention": [
                {
                    "months_after": offset,
                    "customers": customers,
                    "revenue": revenue,
                    "customer_retention": _plain(Fraction(customers, cohort.customers)) if cohort.customers else None,
                    "revenue_retention": _plain(Fraction(revenue, cohort.revenue)) if cohort.revenue else None,
                }
                for offset, (customers, revenue) in enumerate(
                    zip(cohort.retained_customers, cohort.retained_revenue, strict=True)
                )
            ],
        }
        for cohort in grid
    ]
    if wants_csv():
        fields = ("cohort", "cohort_customers", "cohort_revenue", "months_after", "customers", "revenue")
        rows = (
            [c["month"], c["customers"], c["revenue"], r["months_after"], r["customers"], r["revenue"]]
            for c in result
            for r in c["retention"]
        )
        return csv_response(fields, rows, filename="cohorts.csv")
    return jsonify(currency=currency, cohorts=result)


def _customer_id(value: str, name: str) -> str:
    if "\x00" in value or len(value) > 255:
        abort(400, description=f"{name} is not a Stripe customer id")
    return value


@bp.get("/customers/<customer_id>")
def customer(customer_id: str) -> ResponseReturnValue:
    """One customer's MRR timeline, subscriptions and movements with their sources."""
    customer_id = _customer_id(customer_id, "customer")
    found = services()
    with found.database.session() as session:
        story = customer_story(session, customer_id, now=utcnow())
        if story is None:
            abort(404, description=f"no customer {customer_id} in the ledger")
        body = {
            "id": story.customer.id,
            "email": story.customer.email,
            "name": story.customer.name,
            "livemode": story.customer.livemode,
            "deleted": story.customer.deleted,
            "timeline": story.timeline,
            "subscriptions": [s | {"observed_at": iso(s["observed_at"])} for s in story.subscriptions],
            "movements": [_movement(m, found.settings.reporting_currency) for m in story.movements],
        }
    return jsonify(body)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
