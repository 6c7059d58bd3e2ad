"""The database and Redis the web process talks to, attached to the app."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app
from redis import Redis

from ledger.db import Database
from ledger.fx import Rates, configured_rates
from ledger.settings import Settings

REDIS_TIMEOUT_S = 2.0
"""A webhook must not hang on a Redis that does not answer."""


@dataclass
class Services:
    settings: Settings
    database: Database
    redis: Redis | None
    rates: Rates | None
    """FX_RATES_FILE, read once (its content was checked when the settings loaded), or the reference rates."""


def init_app(app: Flask, settings: Settings) -> None:
    redis = (
        Redis.from_url(settings.redis_url, socket_timeout=REDIS_TIMEOUT_S, socket_connect_timeout=REDIS_TIMEOUT_S)
        if settings.redis_url
        else None
    )
    app.extensions["subledger"] = Services(settings, Database(settings.database_url), redis, configured_rates(settings))


def services() -> Services:
    found: Services = current_app.extensions["subledger"]
    return found
