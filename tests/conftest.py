"""Shared fixtures: a real database and a real Redis for every test.

DATABASE_URL / REDIS_URL in the environment point the suite at a running
PostgreSQL and Redis (CI does this); without them it runs on a SQLite file and
an embedded Redis server.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import text

from ledger import migrate
from ledger.db import Database
from ledger.models import Base
from ledger.settings import Settings, load_settings
from tests.openapi_check import ValidatingClient
from tests.stripe_payloads import WEBHOOK_SECRET
from webapp import create_app


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    configured = os.environ.get("DATABASE_URL")
    if configured:
        return load_settings({"DATABASE_URL": configured}).database_url
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'subledger.db'}"


@pytest.fixture(scope="session")
def migrated_database(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    migrate.downgrade(database.engine, "base")
    migrate.upgrade(database.engine)
    yield database
    database.dispose()


@pytest.fixture
def db(migrated_database: Database) -> Iterator[Database]:
    """The migrated database, emptied after each test."""
    yield migrated_database
    with migrated_database.engine.begin() as connection:
        tables = [table.name for table in reversed(Base.metadata.sorted_tables)]
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
        else:
            for table in tables:
                connection.execute(text(f"DELETE FROM {table}"))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    configured = os.environ.get("REDIS_URL")
    if configured:
        yield configured
        return
    from worker.embedded import embedded_redis

    with embedded_redis() as url:
        yield url


@pytest.fixture
def redis(redis_url: str) -> Iterator[Redis]:
    connection = Redis.from_url(redis_url)
    connection.flushdb()
    yield connection
    connection.flushdb()
    connection.close()


@pytest.fixture
def settings(db: Database, redis_url: str) -> Settings:
    return Settings(
        database_url=db.url,
        redis_url=redis_url,
        webhook_secrets=(WEBHOOK_SECRET,),
        api_token="test-token",
    )


@pytest.fixture
def worker_env(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The environment a worker process reads its settings from."""
    from worker import context

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url or "")
    context.settings.cache_clear()
    context.database.cache_clear()
    yield settings
    if context.database.cache_info().currsize:
        context.database().dispose()
    context.settings.cache_clear()
    context.database.cache_clear()


@pytest.fixture
def make_app(redis: Redis) -> Iterator[Callable[[Settings], Flask]]:
    """Build apps for given settings; their connection pools are closed afterwards."""
    apps: list[Flask] = []

    def make(settings: Settings) -> Flask:
        app = create_app(settings)
        app.config["TESTING"] = True
        app.test_client_class = ValidatingClient  # every API answer a test receives is checked against OpenAPI
        apps.append(app)
        return app

    yield make
    for app in apps:
        found = app.extensions["subledger"]
        found.database.dispose()
        if found.redis is not None:
            found.redis.close()


@pytest.fixture
def app(settings: Settings, make_app: Callable[[Settings], Flask]) -> Flask:
    return make_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def project_root() -> Path:
    return Path(__file__).resolve().parents[1]
