"""`/plans`: MRR by product and by price at the end of a month (ledger.breakdown)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import abort, render_template
from flask.typing import ResponseReturnValue

from ledger.breakdown import by_product, mrr_by_price
from ledger.rollup import next_month
from webapp.dashboard import charts, params
from webapp.dashboard.blueprint import bp
from webapp.dashboard.context import ledger_view
from webapp.dashboard.login import login_required
from webapp.services import services


@bp.get("/plans")
@login_required
def plans() -> ResponseReturnValue:
    with services().database.session() as session:
        view = ledger_view(session)
        this_month = view.today.replace(day=1)
        month = params.month("month", this_month)
        if month > this_month:
            abort(400, description=f"month must not be after this month ({this_month:%Y-%m})")
        following = next_month(month)
        end_of_month = datetime(following.year, following.month, 1, tzinfo=UTC) - timedelta(microseconds=1)
        at = min(end_of_month, view.now)
        breakdown = mrr_by_price(session, livemode=view.livemode, at=at, rules=view.settings.rules)
    # The reporting currency first, then the others alphabetically.
    currencies = sorted({price.currency for price in breakdown.prices}, key=lambda c: (c != view.reporting_currency, c))
    products = by_product(breakdown.prices)
    chart_data = {}
    for currency in currencies:
        rows = [row for row in products if row[0] == currency]
        labels = [name or product_id or "(no product)" for _, product_id, name, _ in rows]
        chart_data[f"chart-plans-{currency}"] = charts.bars_figure(labels, [mrr for *_, mrr in rows], currency=currency)
    return render_template(
        "dashboard/plans.html",
        view=view,
        month=month,
        at=at,
        breakdown=breakdown,
        currencies=currencies,
        products=products,
        chart_data=chart_data,
    )
