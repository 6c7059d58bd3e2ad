"""`/reconciliation`: the latest backfill, reconcile and catch-up runs, and each reconciliation's drift."""

from __future__ import annotations

from flask import render_template
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from ledger.models import DriftItem
from ledger.queries import latest_runs
from webapp.dashboard.blueprint import bp
from webapp.dashboard.context import ledger_view
from webapp.dashboard.login import login_required
from webapp.services import services

RUNS_SHOWN = 20
"""Runs listed, newest first."""


@bp.get("/reconciliation")
@login_required
def reconciliation() -> ResponseReturnValue:
    with services().database.session() as session:
        view = ledger_view(session)
        runs = latest_runs(session, limit=RUNS_SHOWN)
        drift: dict[str, list[DriftItem]] = {run.id: [] for run in runs}
        items = select(DriftItem).where(DriftItem.run_id.in_(drift)).order_by(DriftItem.customer_id, DriftItem.id)
        for item in session.scalars(items):
            drift[item.run_id].append(item)
    return render_template("dashboard/reconciliation.html", view=view, runs=runs, drift=drift)
