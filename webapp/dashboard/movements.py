"""`/movements`: every MRR movement, filtered by type, customer and dates, paged by cursor."""

from __future__ import annotations

from flask import abort, render_template, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from ledger.models import Customer
from ledger.queries import decode_cursor, movements_page
from ledger.reporting import MOVEMENT_TYPES
from webapp.dashboard import params
from webapp.dashboard.blueprint import bp
from webapp.dashboard.context import ledger_view
from webapp.dashboard.login import login_required
from webapp.services import services

PAGE_SIZE = 50
"""Movements per page."""


@bp.get("/movements")
@login_required
def movements() -> ResponseReturnValue:
    types = params.choices("type", MOVEMENT_TYPES)
    customer = params.text("customer")
    start, end = params.day("start"), params.day("end")
    if start and end and start > end:
        abort(400, description="start must not be after end")
    cursor = params.text("cursor", max_length=64)
    if cursor is not None:
        try:
            decode_cursor(cursor)
        except ValueError:
            abort(400, description="cursor is not one this page gave out")
    with services().database.session() as session:
        view = ledger_view(session)
        page = movements_page(
            session,
            livemode=view.livemode,
            start=start,
            end=end,
            types=types,
            customer=customer,
            limit=PAGE_SIZE,
            cursor=cursor,
        )
        ids = {movement.customer_id for movement in page.movements}
        names = {
            row.id: row.name for row in session.execute(select(Customer.id, Customer.name).where(Customer.id.in_(ids)))
        }
    filters = {key: values for key, values in request.args.to_dict(flat=False).items() if key != "cursor"}
    return render_template(
        "dashboard/movements.html",
        view=view,
        page=page,
        names={customer_id: name for customer_id, name in names.items() if name},
        types=MOVEMENT_TYPES,
        chosen=types,
        customer=customer,
        start=start,
        end=end,
        first_page=cursor is not None,
        filters=filters,
    )
