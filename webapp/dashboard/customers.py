"""`/customers`: the largest customers by current MRR, a search, and one customer's story."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from flask import abort, render_template
from flask.typing import ResponseReturnValue
from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from ledger.models import Customer, Movement
from ledger.queries import customer_story
from webapp.dashboard import charts, params
from webapp.dashboard.blueprint import bp
from webapp.dashboard.context import ledger_view
from webapp.dashboard.login import login_required
from webapp.services import services

LIST_SIZE = 50
"""Customers listed per currency, or found by a search."""


@dataclass(frozen=True)
class CustomerRow:
    id: str
    email: str | None
    name: str | None
    currency: str | None
    mrr: int


def _customer_rows(session: Session, *, livemode: bool, search: str | None) -> list[CustomerRow]:
    """Current MRR is the sum of every movement (mrr-rules.md §6's invariant), per currency."""
    mrr = (
        select(Movement.customer_id, Movement.currency, func.sum(Movement.amount).label("mrr"))
        .where(Movement.livemode == livemode)
        .group_by(Movement.customer_id, Movement.currency)
        .subquery()
    )
    query = select(Customer.id, Customer.email, Customer.name, mrr.c.currency, func.coalesce(mrr.c.mrr, 0))
    if search is None:
        query = query.join(mrr, mrr.c.customer_id == Customer.id).where(mrr.c.mrr > 0)
    else:
        pattern = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        query = query.outerjoin(mrr, mrr.c.customer_id == Customer.id).where(
            Customer.livemode == livemode,
            or_(
                Customer.id == search,
                func.lower(Customer.email).like(pattern, escape="\\"),
                func.lower(Customer.name).like(pattern, escape="\\"),
            ),
        )
    query = query.order_by(func.coalesce(mrr.c.mrr, 0).desc(), Customer.id).limit(LIST_SIZE * 4)
    return [CustomerRow(*row) for row in session.execute(query)]


@bp.get("/customers")
@login_required
def customers() -> ResponseReturnValue:
    search = params.text("q")
    with services().database.session() as session:
        view = ledger_view(session)
        rows = _customer_rows(session, livemode=view.livemode, search=search)
    sections: dict[str, list[CustomerRow]] = {}
    for row in rows:
        listed = sections.setdefault(row.currency or "", [])
        if len(listed) < LIST_SIZE:
            listed.append(row)
    return render_template("dashboard/customers.html", view=view, sections=sections, search=search)


@bp.get("/customers/<customer_id>")
@login_required
def customer(customer_id: str) -> ResponseReturnValue:
    with services().database.session() as session:
        view = ledger_view(session)
        story = customer_story(session, customer_id, now=view.now)
    if story is None:
        abort(404, description=f"No customer {customer_id} in the ledger.")
    points: dict[str, list[tuple[date, int]]] = {}
    for movement in story.movements:
        points.setdefault(movement.currency, []).append((movement.day, movement.mrr_after))
    chart_data = {
        f"chart-customer-{currency}": charts.timeline_figure(timeline, currency=currency, today=view.today)
        for currency, timeline in points.items()
    }
    return render_template("dashboard/customer.html", view=view, story=story, chart_data=chart_data)
