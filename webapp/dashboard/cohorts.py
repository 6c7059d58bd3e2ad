"""`/cohorts`: customer and revenue retention of each month's new customers, as heat-maps."""

from __future__ import annotations

from flask import render_template
from flask.typing import ResponseReturnValue

from ledger.queries import cohorts as cohort_grid
from ledger.summary import account_currencies
from webapp.dashboard import charts, params
from webapp.dashboard.blueprint import bp
from webapp.dashboard.context import ledger_view
from webapp.dashboard.login import login_required
from webapp.services import services


@bp.get("/cohorts")
@login_required
def cohorts() -> ResponseReturnValue:
    """Per currency: cohorts are never converted, a customer's revenue stays in its own currency."""
    with services().database.session() as session:
        view = ledger_view(session)
        start, end = params.month_range(view.today)
        grids = {
            currency: cohort_grid(session, livemode=view.livemode, currency=currency, start=start, end=end)
            for currency in account_currencies(session, livemode=view.livemode)
        }
    grids = {currency: grid for currency, grid in grids.items() if grid}
    chart_data = {}
    for currency, grid in grids.items():
        chart_data[f"chart-cohort-customers-{currency}"] = charts.cohort_figure(grid, revenue=False, currency=currency)
        chart_data[f"chart-cohort-revenue-{currency}"] = charts.cohort_figure(grid, revenue=True, currency=currency)
    return render_template(
        "dashboard/cohorts.html", view=view, grids=grids, chart_data=chart_data, start=start, end=end
    )
