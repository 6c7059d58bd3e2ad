"""The database and Redis the web process talks to, attached to the app."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app
from redis import Redis

from ledger.db import Database
from ledger.fx import RateTable, load_rates
from ledger.settings import Settings

REDIS_TIMEOUT_S = 2.0
"""A webhook must not hang on a Redis that does not answer."""


@dataclass
class Services:
    settings: Settings
    database: Database
    redis: Redis | None
    rates: RateTable | None
    """FX_RATES_FILE, read once (its content was checked when the settings loaded)."""


def init_app(app: Flask, settings: Settings) -> None:
    redis = (
        Redis.from_url(settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        if settings.redis_url
        else None
    )
    rates = (
        load_rates(settings.fx_rates_file, reporting_currency=settings.reporting_currency)
        if settings.fx_rates_file
        else None
    )
    app.extensions["subledger"] = Services(settings, Database(settings.database_url), redis, rates)


def services() -> Services:
    found: Services = current_app.extensions["subledger"]
    return found
