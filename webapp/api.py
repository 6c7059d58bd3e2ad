"""The JSON API under /api/v1: bearer-token auth, JSON by default, CSV for lists.

Each endpoint is a small view over ledger data; the helpers here (whole-number
parameters, CSV negotiation, ISO dates) are shared by all of them. Amounts are
integers in minor units next to their currency; dates are ISO 8601 UTC.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Flask, Response, abort, jsonify, request
from flask.typing import ResponseReturnValue
from sqlalchemy import select

from ledger.models import DriftItem, SyncRun
from webapp.auth import require_api_token
from webapp.services import services

bp = Blueprint("api", __name__, url_prefix="/api/v1")
bp.before_request(require_api_token)


def iso(instant: datetime | None) -> str | None:
    """ISO 8601 in UTC with a `Z`, or None."""
    return None if instant is None else instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


def whole_number(name: str, *, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within [low, high]; 400 naming it otherwise."""
    raw = request.args.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit()) or not low <= int(raw) <= high:
        abort(400, description=f"{name} must be a whole number from {low} to {high}")
    return int(raw)


def wants_csv() -> bool:
    """`?format=csv`, or an Accept header that prefers text/csv to JSON."""
    chosen = request.args.get("format")
    if chosen is not None:
        if chosen not in ("json", "csv"):
            abort(400, description="format must be json or csv")
        return chosen == "csv"
    return request.accept_mimetypes.best_match(["application/json", "text/csv"]) == "text/csv"


def csv_response(header: Sequence[str], rows: Iterable[Sequence[Any]], *, filename: str) -> Response:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return Response(
        buffer.getvalue(),
        mimetype="text/csv",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


DRIFT_FIELDS = (
    "subscription",
    "customer",
    "currency",
    "ledger_mrr",
    "stripe_mrr",
    "difference",
    "action",
    "effective_at",
    "dated_by",
)


def _drift(item: DriftItem) -> dict[str, Any]:
    return {
        "subscription": item.subscription_id,
        "customer": item.customer_id,
        "currency": item.currency,
        "ledger_mrr": item.ledger_mrr,
        "stripe_mrr": item.stripe_mrr,
        "difference": item.difference,
        "action": item.action,
        "effective_at": iso(item.effective_at),
        "dated_by": item.dated_by,
    }


RECONCILING_KINDS = ("reconcile", "repair")
"""The nightly (or on demand) runs, and the repairs a paid invoice contradicting the ledger queued."""


@bp.get("/reconciliation")
def reconciliation() -> ResponseReturnValue:
    """The latest reconcile and repair runs, newest first, each with its drift items."""
    limit = whole_number("limit", default=10, low=1, high=100)
    as_csv = wants_csv()
    with services().database.session() as session:
        runs = list(
            session.scalars(
                select(SyncRun)
                .where(SyncRun.kind.in_(RECONCILING_KINDS))
                .order_by(SyncRun.started_at.desc())
                .limit(limit)
            )
        )
        drift: dict[str, list[DriftItem]] = {run.id: [] for run in runs}
        items = select(DriftItem).where(DriftItem.run_id.in_(drift)).order_by(DriftItem.customer_id, DriftItem.id)
        for item in session.scalars(items):
            drift[item.run_id].append(item)
    if as_csv:
        rows = ([run.id, *_drift(item).values()] for run in runs for item in drift[run.id])
        return csv_response(("run", *DRIFT_FIELDS), rows, filename="reconciliation.csv")
    return jsonify(
        runs=[
            {
                "id": run.id,
                "kind": run.kind,
                "status": run.status,
                "started_at": iso(run.started_at),
                "finished_at": iso(run.finished_at),
                "counts": run.counts,
                "errors": run.errors,
                "drift": [_drift(item) for item in drift[run.id]],
            }
            for run in runs
        ]
    )


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
