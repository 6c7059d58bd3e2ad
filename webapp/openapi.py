"""The API's OpenAPI 3.1 description, served at `/api/v1/openapi.json` and rendered at `/api/v1/docs`.

Kept by hand beside the routes it describes. The test suite checks that every
`/api/v1` route is described and that every JSON answer any test receives from
the API validates against it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Flask, jsonify, render_template
from flask.typing import ResponseReturnValue

from ledger.reporting import MOVEMENT_TYPES
from webapp import report

bp = Blueprint("openapi", __name__, url_prefix="/api/v1")

MONEY = {"type": ["integer", "null"], "description": "minor units of the currency (cents); null when unknown"}
COUNT = {"type": "integer", "minimum": 0}
RATE = {"type": ["number", "null"], "description": "a ratio (0.05 is 5 %), rounded to 6 decimals; null when undefined"}
DAY = {"type": "string", "format": "date"}
MONTH = {"type": "string", "pattern": r"^\d{4}-\d{2}$"}
CURRENCY = {"type": "string", "pattern": "^[a-z]{3}$", "description": "ISO 4217, lower case"}
INSTANT = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
    }


def _query(name: str, description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema or {}}


FORMAT = _query(
    "format", "`csv` for a CSV file (an `Accept: text/csv` header does the same)", {"enum": ["json", "csv"]}
)
DAY_OR_MONTH = {"type": "string", "pattern": r"^\d{4}-\d{2}(-\d{2})?$"}

MOVEMENT_FIELDS = {
    "id": COUNT,
    "date": DAY,
    "customer": {"type": "string"},
    "type": {"enum": list(MOVEMENT_TYPES)},
    "amount": {"type": "integer"},
    "currency": CURRENCY,
    "amount_reporting": MONEY,
    "mrr_before": {"type": "integer"},
    "mrr_after": {"type": "integer"},
    "sources": {
        "type": "array",
        "items": {"type": "string"},
        "description": "the Stripe events (`evt_…`) or runs (`backfill:…`, `reconcile:…`) behind the movement",
    },
}

POINT_FIELDS = {
    "date": DAY,
    "mrr": MONEY,
    "arr": MONEY,
    "customers": {"type": ["integer", "null"]},
    **{kind: MONEY for kind in MOVEMENT_TYPES},
    "net_new": MONEY,
    "fx_adjustment": MONEY,
}

MISSING_RATES = {
    "type": "array",
    "description": "currencies the rates do not cover, from the first day one is missing",
    "items": _object({"currency": CURRENCY, "from": DAY}),
}

RATES = {
    **_object(
        {
            "source": {"type": "string", "description": "FX_RATES_FILE, or the ECB's reference rates"},
            "last_date": {"type": ["string", "null"], "format": "date", "description": "the newest rate's day"},
            "stale": {"type": "boolean", "description": "the newest rate is more than a week old"},
            "warning": {"type": ["string", "null"], "description": "says so when stale"},
        }
    ),
    "type": ["object", "null"],
    "description": "the rates figures in the reporting currency are converted at; null with FX_REFERENCE_RATES=off "
    "and no FX_RATES_FILE",
}

SCHEMAS: dict[str, Any] = {
    "Error": _object({"error": {"type": "string", "description": "what is wrong, naming the parameter"}}),
    "Movement": _object(MOVEMENT_FIELDS),
    "Point": _object(POINT_FIELDS),
    "Summary": _object(
        {
            "month": MONTH,
            "currency": CURRENCY,
            **{name: MONEY for name in (*report.BRIDGE, *report.MONEY)},
            **{name: COUNT for name in report.COUNTS},
            **{name: RATE for name in report.RATES},
            "rates": RATES,
        }
    ),
    "MrrSeries": {
        "oneOf": [
            _object(
                {
                    "currency": CURRENCY,
                    "interval": {"enum": ["day", "week", "month"]},
                    "points": {"type": "array", "items": _ref("Point")},
                    "missing_rates": MISSING_RATES,
                    "rates": RATES,
                }
            ),
            _object(
                {
                    "currency": {"type": "null"},
                    "interval": {"enum": ["day", "week", "month"]},
                    "points": {"type": "array", "maxItems": 0},
                    "by_currency": {
                        "type": "array",
                        "items": _object({"currency": CURRENCY, "points": {"type": "array", "items": _ref("Point")}}),
                    },
                    "missing_rates": MISSING_RATES,
                    "rates": RATES,
                }
            ),
        ],
        "description": "one series in one currency (converted at `rates` when the account has several), "
        "else one per currency",
    },
    "MovementPage": _object(
        {
            "data": {"type": "array", "items": _ref("Movement")},
            "next_cursor": {"type": ["string", "null"], "description": "pass as `cursor` for the next page"},
        }
    ),
    "Summaries": {
        "oneOf": [
            _ref("Summary"),
            _object(
                {
                    "month": MONTH,
                    "currency": {"type": "null"},
                    "by_currency": {"type": "array", "items": _ref("Summary")},
                    "missing_rates": MISSING_RATES,
                    "rates": RATES,
                }
            ),
        ]
    },
    "Cohorts": _object(
        {
            "currency": CURRENCY,
            "cohorts": {
                "type": "array",
                "items": _object(
                    {
                        "month": MONTH,
                        "customers": COUNT,
                        "revenue": {"type": "integer"},
                        "retention": {
                            "type": "array",
                            "items": _object(
                                {
                                    "months_after": COUNT,
                                    "customers": COUNT,
                                    "revenue": {"type": "integer"},
                                    "customer_retention": {"type": ["number", "null"], "maximum": 1},
                                    "revenue_retention": RATE,
                                }
                            ),
                        },
                    }
                ),
            },
        }
    ),
    "Customer": _object(
        {
            "id": {"type": "string"},
            "email": {"type": ["string", "null"]},
            "name": {"type": ["string", "null"]},
            "livemode": {"type": "boolean"},
            "deleted": {"type": "boolean"},
            "timeline": {
                "type": "array",
                "items": _object(
                    {
                        "date": DAY,
                        "currency": CURRENCY,
                        "mrr": {"type": "integer"},
                        "type": {"enum": list(MOVEMENT_TYPES)},
                    }
                ),
            },
            "subscriptions": {
                "type": "array",
                "items": _object(
                    {
                        "id": {"type": "string"},
                        "status": {"type": "string"},
                        "currency": {"type": ["string", "null"]},
                        "mrr": {"type": "integer"},
                        "gross_mrr": {"type": "integer"},
                        "scheduled_churn": {"type": "boolean"},
                        "cancel_at_period_end": {"type": "boolean"},
                        "observed_at": INSTANT,
                        "items": {
                            "type": "array",
                            "items": _object(
                                {
                                    "label": {"type": "string", "description": "e.g. `Team ×5 monthly`"},
                                    "price": {"type": ["string", "null"]},
                                    "product": {"type": ["string", "null"]},
                                    "quantity": {"type": ["integer", "null"]},
                                }
                            ),
                        },
                    }
                ),
            },
            "movements": {"type": "array", "items": _ref("Movement")},
        }
    ),
    "Reconciliation": _object(
        {
            "runs": {
                "type": "array",
                "items": _object(
                    {
                        "id": {"type": "string"},
                        "kind": {"enum": ["reconcile", "repair"]},
                        "status": {"type": "string"},
                        "started_at": INSTANT,
                        "finished_at": INSTANT,
                        "counts": {"type": ["object", "null"], "additionalProperties": {"type": "integer"}},
                        "errors": {"type": ["array", "null"], "items": {"type": "string"}},
                        "drift": {
                            "type": "array",
                            "items": _object(
                                {
                                    "subscription": {"type": "string"},
                                    "customer": {"type": ["string", "null"]},
                                    "currency": {"type": ["string", "null"]},
                                    "ledger_mrr": {"type": "integer"},
                                    "stripe_mrr": {"type": "integer"},
                                    "difference": {"type": "integer"},
                                    "action": {"type": "string"},
                                    "effective_at": INSTANT,
                                    "dated_by": {"type": "string"},
                                }
                            ),
                        },
                    }
                ),
            }
        }
    ),
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref("Error")}}}


def _answer(schema: str, description: str, *, csv: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(schema)}}
    if csv:
        content["text/csv"] = {"schema": {"type": "string"}}
    return {
        "200": {"description": description, "content": content},
        "400": _error("a parameter is malformed or out of range: the message names it"),
        "401": _error("no bearer token, or a wrong one"),
        "500": _error("the server failed (the database is unreachable, …): its log says why"),
        "503": _error("the server has no SUBLEDGER_API_TOKEN: the API is off"),
    }


def _get(summary: str, parameters: list[dict[str, Any]], responses: dict[str, Any]) -> dict[str, Any]:
    return {"get": {"summary": summary, "parameters": parameters, "responses": responses}}


PATHS: dict[str, Any] = {
    "/api/v1/mrr": _get(
        "MRR, ARR, customers and the movement bridge at the end of each day, week or month",
        [
            _query("start", "first day (default: a year before `end`'s month)", DAY_OR_MONTH),
            _query("end", "last day (default: today)", DAY_OR_MONTH),
            _query("interval", "bucket size (at most 2,000 days a request)", {"enum": ["day", "week", "month"]}),
            _query("future", "`true`: up to `end` even past today (what is scheduled)", {"enum": ["true", "false"]}),
            FORMAT,
        ],
        _answer("MrrSeries", "the series", csv=True),
    ),
    "/api/v1/movements": _get(
        "MRR movements with the Stripe events behind each, paged",
        [
            _query("start", "first day", DAY_OR_MONTH),
            _query("end", "last day", DAY_OR_MONTH),
            _query("type", "comma-separated movement types", {"type": "string"}),
            _query("customer", "a Stripe customer id", {"type": "string"}),
            _query("limit", "movements a page (default 100)", {"type": "integer", "minimum": 1, "maximum": 1000}),
            _query("cursor", "`next_cursor` of the previous page", {"type": "string"}),
            _query("order", "`newest` (default) or `oldest` first", {"enum": ["newest", "oldest"]}),
            FORMAT,
        ],
        _answer("MovementPage", "a page of movements", csv=True),
    ),
    "/api/v1/summary": _get(
        "every metric of docs/mrr-rules.md §8 for one month",
        [_query("month", "YYYY-MM (default: this month; a month not started yet is a 400)", MONTH), FORMAT],
        _answer("Summaries", "the month's metrics", csv=True),
    ),
    "/api/v1/cohorts": _get(
        "customer and revenue retention of the monthly cohorts",
        [
            _query("start", "first cohort month (default: a year before `end`)", MONTH),
            _query("end", "last month (default: this month)", MONTH),
            _query("currency", "one of the account's currencies (default: the one with most movements)", CURRENCY),
            FORMAT,
        ],
        _answer("Cohorts", "the cohort grid", csv=True),
    ),
    "/api/v1/customers/{customer_id}": {
        "get": {
            "summary": "one customer's MRR timeline, subscriptions and movements with their sources",
            "parameters": [
                {"name": "customer_id", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 255}}
            ],
            "responses": _answer("Customer", "the customer") | {"404": _error("no such customer in the ledger")},
        }
    },
    "/api/v1/reconciliation": _get(
        "the latest reconcile and repair runs, newest first, each with its drift items",
        [_query("limit", "runs (default 10)", {"type": "integer", "minimum": 1, "maximum": 100}), FORMAT],
        _answer("Reconciliation", "the runs", csv=True),
    ),
    "/api/v1/openapi.json": {
        "get": {
            "summary": "this description (no token needed)",
            "security": [],
            "responses": {
                "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}
            },
        }
    },
    "/api/v1/docs": {
        "get": {
            "summary": "this description as a page (no token needed)",
            "security": [],
            "responses": {"200": {"description": "HTML", "content": {"text/html": {"schema": {"type": "string"}}}}},
        }
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "subledger API",
        "version": "1",
        "description": "Reconciled subscription metrics from Stripe. Money is in minor units (cents), never "
        "floats. Every endpoint but this document and its page needs `Authorization: Bearer "
        "$SUBLEDGER_API_TOKEN`.",
    },
    "servers": [{"url": "/"}],
    "security": [{"bearer": []}],
    "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    "paths": PATHS,
}


@bp.get("/openapi.json")
def document() -> ResponseReturnValue:
    """The description, public: it holds no data."""
    return jsonify(DOCUMENT)


@bp.get("/docs")
def page() -> ResponseReturnValue:
    """The description as a page, rendered here: no script, nothing fetched from elsewhere."""
    return render_template("api_docs.html", document=DOCUMENT)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
