"""What a worker process needs, loaded once per process.

Jobs take their Redis connection from RQ (the one the worker was started
with), and their database from the settings; the database pool is rebuilt
after a fork (ledger.db.Database).
"""

from __future__ import annotations

from functools import cache

from ledger.db import Database
from ledger.settings import Settings, load_settings


@cache
def settings() -> Settings:
    return load_settings()


@cache
def database() -> Database:
    return Database(settings().database_url)
