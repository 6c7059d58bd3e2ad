"""The dashboard's one blueprint: every page registers its views on it.

Pages share its error pages (HTML, not the API's JSON), its security headers
and its template helpers; `webapp.dashboard.init_app` registers it.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Response, render_template
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException, InternalServerError

bp = Blueprint("dashboard", __name__)
log = logging.getLogger("subledger.web")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
"""Everything from this app: no CDN, no inline script (chart data is JSON, not code).
Plotly sets inline styles on the elements it draws, hence 'unsafe-inline' for styles."""


@bp.errorhandler(HTTPException)
def _error_page(exc: HTTPException) -> ResponseReturnValue:
    return render_template("dashboard/error.html", error=exc), exc.code or 500


@bp.errorhandler(Exception)
def _unexpected(exc: Exception) -> ResponseReturnValue:
    """A page, not the API's JSON, and never a traceback."""
    log.exception("unhandled error in the dashboard")
    return render_template("dashboard/error.html", error=InternalServerError()), 500


@bp.after_request
def _headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "same-origin")
    if response.mimetype == "text/html":
        # Pages show revenue: no shared or back-button cache of them.
        response.headers.setdefault("Cache-Control", "no-store")
    return response
