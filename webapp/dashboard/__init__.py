"""The dashboard: server-rendered pages over the ledger, behind a token login.

Pages: overview `/`, `/cohorts`, `/plans`, `/movements`, `/customers`,
`/customers/<id>`, `/reconciliation`; `/login` and `/logout`. Charts are
Plotly, drawn in the browser from JSON embedded in each page (see
docs/dashboard.md).
"""

from __future__ import annotations

from flask import Flask

from webapp.dashboard import (
    cohorts,
    customers,
    formatting,
    login,
    movements,
    overview,
    plans,
    reconciliation,
    vendor,
)
from webapp.dashboard.blueprint import bp

PAGES = (overview, cohorts, plans, movements, customers, reconciliation, vendor)
"""Modules whose views are registered on the blueprint when imported."""


def init_app(app: Flask) -> None:
    login.configure(app)
    formatting.init_app(app)
    app.register_blueprint(bp)
