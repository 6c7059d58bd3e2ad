"""Migrations up and down on SQLite and PostgreSQL, and the models matching them.

Each test gets a database of its own: a SQLite file, or (when DATABASE_URL
points at PostgreSQL) a database created on that server for the test and
dropped after it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, create_engine, inspect, text
from sqlalchemy.engine import make_url

from ledger import migrate
from ledger.db import make_engine
from ledger.models import Base
from ledger.settings import load_settings

MODEL_TABLES = set(Base.metadata.tables)


def _postgresql_url() -> str | None:
    configured = os.environ.get("DATABASE_URL")
    if not configured:
        return None
    url = load_settings({"DATABASE_URL": configured}).database_url
    return url if url.startswith("postgresql") else None


@pytest.fixture
def own_sqlite(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'migrations.db'}")
    yield engine
    engine.dispose()


@pytest.fixture
def own_postgresql() -> Iterator[Engine]:
    server_url = _postgresql_url()
    if server_url is None:
        pytest.skip("DATABASE_URL does not point at PostgreSQL")
    name = f"subledger_migrations_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    engine = make_engine(make_url(server_url).set(database=name).render_as_string(hide_password=False))
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """An empty database of its own on each backend."""
    found: Engine = request.getfixturevalue(f"own_{request.param}")
    return found


def tables(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_fresh_database_has_no_revision(engine: Engine) -> None:
    assert migrate.current_revision(engine) is None
    assert tables(engine) == set()


def test_upgrade_to_head_creates_every_model_table(engine: Engine) -> None:
    migrate.upgrade(engine)
    assert tables(engine) == MODEL_TABLES | {"alembic_version"}
    assert migrate.current_revision(engine) == migrate.head_revision() is not None


def test_upgrade_twice_changes_nothing(engine: Engine) -> None:
    migrate.upgrade(engine)
    migrate.upgrade(engine)
    assert tables(engine) == MODEL_TABLES | {"alembic_version"}
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_downgrade_to_base_removes_every_table_but_alembic_version(engine: Engine) -> None:
    migrate.upgrade(engine)
    migrate.downgrade(engine, "base")
    assert tables(engine) == {"alembic_version"}
    assert migrate.current_revision(engine) is None


def test_upgrade_after_downgrade_rebuilds_the_schema(engine: Engine) -> None:
    migrate.upgrade(engine)
    migrate.downgrade(engine, "base")
    migrate.upgrade(engine)
    assert tables(engine) == MODEL_TABLES | {"alembic_version"}
    assert migrate.current_revision(engine) == migrate.head_revision()


def test_models_match_the_migrations(engine: Engine) -> None:
    migrate.upgrade(engine)
    with engine.connect() as connection:
        differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert differences == []


def test_stripe_documents_are_compressed_with_lz4_on_postgresql(own_postgresql: Engine) -> None:
    migrate.upgrade(own_postgresql)
    query = text(
        "SELECT attrelid::regclass::text, attcompression FROM pg_attribute "
        "WHERE attname = 'payload' AND attrelid::regclass::text = ANY(:tables)"
    )
    names = ["stripe_events", "stripe_objects", "subscriptions", "subscription_snapshots"]
    with own_postgresql.connect() as connection:
        lz4 = connection.execute(
            text("SELECT 'lz4' = ANY(enumvals) FROM pg_settings WHERE name = 'default_toast_compression'")
        ).scalar()
        if not lz4:
            pytest.skip("this PostgreSQL has no lz4")
        assert dict(connection.execute(query, {"tables": names}).all()) == dict.fromkeys(names, "l")
    migrate.downgrade(own_postgresql, "0008")
    with own_postgresql.connect() as connection:
        assert dict(connection.execute(query, {"tables": names}).all()) == dict.fromkeys(names, "")


def test_an_unfinished_backfill_of_an_earlier_version_gets_its_customers_to_rebuild(engine: Engine) -> None:
    migrate.upgrade(engine, "0007")
    started = datetime(2026, 1, 1, tzinfo=UTC)
    runs, objects = Base.metadata.tables["sync_runs"], Base.metadata.tables["stripe_objects"]

    def run(run_id: str, kind: str, status: str) -> dict[str, Any]:
        common = {"livemode": False, "finished_at": None, "parameters": {}, "counts": {}, "errors": []}
        return common | {"id": run_id, "kind": kind, "status": status, "started_at": started, "heartbeat_at": started}

    def subscription(sub_id: str, customer_id: str, observed_at: datetime) -> dict[str, Any]:
        payload = {"id": sub_id, "object": "subscription", "customer": customer_id}
        return {
            "id": sub_id,
            "object": "subscription",
            "livemode": False,
            "customer_id": customer_id,
            "deleted": False,
            "payload": payload,
            "observed_at": observed_at,
        }

    with engine.begin() as connection:
        connection.execute(
            runs.insert(),
            [
                run("failed_backfill", "backfill", "failed"),
                run("finished_backfill", "backfill", "ok"),
                run("failed_reconcile", "reconcile", "failed"),
            ],
        )
        connection.execute(
            objects.insert(),
            [
                subscription("sub_1", "cus_read", started + timedelta(minutes=1)),
                subscription("sub_2", "cus_read", started + timedelta(minutes=2)),
                subscription("sub_3", "cus_before", started - timedelta(days=1)),
            ],
        )
    migrate.upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT run_id, customer_id, rebuilt FROM backfill_customers")).all()
    assert [tuple(row) for row in rows] == [("failed_backfill", "cus_read", False)]


def test_runs_recorded_before_the_api_version_keep_none(engine: Engine) -> None:
    migrate.upgrade(engine, "0009")
    started = datetime(2026, 1, 1, tzinfo=UTC)
    runs = Base.metadata.tables["sync_runs"]
    earlier = {
        "id": "backfill_earlier",
        "kind": "backfill",
        "livemode": False,
        "started_at": started,
        "heartbeat_at": started,
        "finished_at": None,
        "status": "failed",
        "parameters": {},
        "counts": {},
        "errors": [],
    }
    with engine.begin() as connection:
        connection.execute(runs.insert().values(earlier))
    migrate.upgrade(engine)
    with engine.begin() as connection:
        connection.execute(
            runs.insert().values(earlier | {"id": "reconcile_now", "stripe_api_version": "2025-10-29.clover"})
        )
        rows = connection.execute(text("SELECT id, stripe_api_version FROM sync_runs ORDER BY id")).all()
    assert [tuple(row) for row in rows] == [("backfill_earlier", None), ("reconcile_now", "2025-10-29.clover")]
    migrate.downgrade(engine, "0009")
    assert "stripe_api_version" not in {column["name"] for column in inspect(engine).get_columns("sync_runs")}


def test_versions_an_earlier_backfill_rebuilt_rank_after_the_events_of_their_second(engine: Engine) -> None:
    migrate.upgrade(engine, "0011")
    tie = datetime(2026, 2, 1, tzinfo=UTC)
    snapshots = Base.metadata.tables["subscription_snapshots"]

    def snapshot(source: str, rank: int, content: str) -> dict[str, Any]:
        common = {"subscription_id": "sub_1", "customer_id": "cus_1", "livemode": False, "observed_at": tie}
        return common | {"rank": rank, "source": source, "content_hash": content, "payload": {"id": "sub_1"}}

    with engine.begin() as connection:
        connection.execute(
            snapshots.insert(),
            [
                snapshot("evt_a", 0, "two seats"),
                snapshot("backfill:run_1", 1, "three seats"),  # ranked among the events
                snapshot("evt_b", 2, "three seats"),
                snapshot("backfill:run_2", 0, "three seats"),  # the same rebuilt copy, stored again
            ],
        )
    migrate.upgrade(engine)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT source, rank FROM subscription_snapshots ORDER BY rank, source")).all()
    assert [tuple(row) for row in rows] == [("evt_a", 0), ("evt_b", 2), ("backfill:run_1", 500)]
