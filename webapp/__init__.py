"""The web process: Stripe webhook receiver, health check, API and dashboard."""

from __future__ import annotations

import sys

from flask import Flask

from ledger.logs import configure_logging
from ledger.settings import ConfigError, Settings, load_settings
from webapp import api, dashboard, errors, health, metrics, metrics_api, openapi, services, webhooks

MAX_BODY_BYTES = 1024 * 1024
"""Largest request body accepted (Stripe events are far smaller)."""


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask app; settings come from the environment unless given."""
    if settings is None:
        try:
            settings = load_settings()
        except ConfigError as exc:
            # gunicorn would print a traceback; one line says it better.
            print(f"subledger: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    configure_logging()
    services.init_app(app, settings)
    errors.init_app(app)
    webhooks.init_app(app)
    health.init_app(app)
    api.init_app(app)
    metrics_api.init_app(app)
    openapi.init_app(app)
    metrics.init_app(app)
    dashboard.init_app(app)
    return app
