"""Engines and sessions for PostgreSQL and SQLite, configured the same way everywhere."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import DateTime, Engine, Select, Table, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import TypeDecorator

from ledger import jsoncodec

SQLITE_BUSY_TIMEOUT_S = 30
"""How long a SQLite writer waits for another one before giving up."""

DEADLOCK_ATTEMPTS = 5
"""How often `retrying_deadlocks` runs its work before letting a deadlock through."""


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, whatever the backend keeps.

    SQLite has no time zones, so values are stored as naive UTC and made aware
    again on the way out; PostgreSQL keeps `timestamptz`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given where UTC is required")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(UTC)


def from_timestamp(seconds: int | float) -> datetime:
    """A Stripe Unix timestamp as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`, with SQLite made safe for several processes.

    JSON columns go through `ledger.jsoncodec` (orjson, exact for any integer).

    SQLite gets WAL (readers don't block the writer), a busy timeout, and
    `BEGIN IMMEDIATE` so two writers queue up instead of failing on a lock
    upgrade half-way through a transaction.
    """
    kwargs.setdefault("json_serializer", jsoncodec.dumps)
    kwargs.setdefault("json_deserializer", jsoncodec.loads)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None}, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    return create_engine(url, **kwargs)


class Database:
    """One engine and its session factory, re-created after a fork.

    A forking RQ worker must not share database connections with its parent:
    the child would talk on the parent's sockets. `engine` notices the new
    process id and starts a fresh pool.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self._pid = -1
        self._engine: Engine | None = None
        self._sessions: sessionmaker[Session] | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None or self._pid != os.getpid():
            if self._engine is not None:
                # Drop the inherited pool without closing the parent's connections.
                self._engine.dispose(close=False)
            self._engine = make_engine(self.url)
            self._sessions = sessionmaker(self._engine, expire_on_commit=False)
            self._pid = os.getpid()
        return self._engine

    def session(self) -> Session:
        self.engine  # noqa: B018 - (re)creates the factory in this process
        assert self._sessions is not None
        return self._sessions()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits at the end of the block, or rolls back."""
        with self.session() as session, session.begin():
            yield session

    def dispose(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


T = TypeVar("T")


def retrying_deadlocks(session: Session, work: Callable[[], T]) -> T:
    """`work()` in a savepoint, run again when PostgreSQL cancels it to break a deadlock.

    Many rows written in one transaction (a backfill's page, a batch of
    histories) can meet a worker's event locking some of the same rows in
    another order. PostgreSQL cancels one of the two; rolled back to the
    savepoint, this one releases the rows it took since, the other goes on,
    and the work is done again. The transaction's earlier work is kept.
    """
    for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
        try:
            with session.begin_nested():
                return work()
        except OperationalError as exc:
            if getattr(exc.orig, "sqlstate", None) != "40P01" or attempt == DEADLOCK_ATTEMPTS:
                raise
            time.sleep(0.05 * attempt)
    raise AssertionError("unreachable")


def commit_without_waiting_for_disk(session: Session) -> None:
    """This transaction's commit returns before PostgreSQL has flushed it (`synchronous_commit`).

    For work a crash may lose whole because it is done again from its source:
    a backfill page and its checkpoint are lost together, and read again on
    resume. Either all of the transaction survives a crash or none of it.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL synchronous_commit TO OFF"))


def _insert(session: Session) -> Any:
    """The dialect's INSERT (with ON CONFLICT). The bulk helpers below give it a table, not a model:
    the Core statement skips the ORM's per-row bookkeeping, a fair share of a backfill page's CPU."""
    return (postgresql if session.get_bind().dialect.name == "postgresql" else sqlite).insert


def insert_unless_present(session: Session, model: type[Any], values: dict[str, Any], *, key: list[str]) -> bool:
    """Insert a row unless one with the same `key` exists; True when inserted.

    The database settles the race (ON CONFLICT DO NOTHING), so two processes
    inserting the same row at once still store it once.
    """
    statement = (
        _insert(session)(model)
        .values(values)
        .on_conflict_do_nothing(index_elements=key)
        .returning(*(model.__table__.c[column] for column in key))
    )
    # RETURNING, not rowcount: the ORM's execution path does not report rowcount.
    return session.execute(statement).first() is not None


def insert_all_unless_present(
    session: Session, model: type[Any], rows: list[dict[str, Any]], *, key: list[str]
) -> None:
    """`insert_unless_present` for many rows, as one batched statement.

    Rows go in key order, so two writers inserting some of the same keys lock
    them in the same order and never deadlock.
    """
    if rows:
        ordered = sorted(rows, key=lambda row: tuple(row[column] for column in key))
        session.execute(_insert(session)(model.__table__).on_conflict_do_nothing(index_elements=key), ordered)


def insert_selected_unless_present(
    session: Session, model: type[Any], columns: list[str], rows: Select[Any], *, key: list[str]
) -> None:
    """`insert_all_unless_present` for the rows a query selects, in one statement."""
    statement = _insert(session)(model.__table__).from_select(columns, rows)
    session.execute(statement.on_conflict_do_nothing(index_elements=key))


def insert_rows(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert new rows (each with the same columns). On PostgreSQL through `COPY`, in this transaction.

    A backfill inserts hundreds of thousands of small rows (monthly rollups,
    movements); one statement per row costs the client and the server several
    times what `COPY` does. Values go through the columns' own bind processing,
    as with an INSERT. A table column left out that has a client-side default
    takes the INSERT.
    """
    if not rows:
        return
    columns = list(rows[0])
    dialect = session.get_bind().dialect
    defaulted = any(column.default is not None and column.name not in rows[0] for column in table.columns)
    if dialect.name != "postgresql" or defaulted:
        session.execute(table.insert(), rows)
        return
    processors = [(name, table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) for name in columns]
    names = ", ".join(dialect.identifier_preparer.quote(name) for name in columns)
    driver = session.connection().connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor, cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[name] if process is None else process(row[name]) for name, process in processors])


def upsert_newer(session: Session, model: type[Any], rows: list[dict[str, Any]], *, key: str, version: str) -> None:
    """Insert rows, or overwrite stored ones whose `version` column is not newer.

    An older version arriving late never replaces a newer one. `rows` must
    hold each key once; they go in key order, so concurrent writers never deadlock.
    """
    if not rows:
        return
    rows = sorted(rows, key=lambda row: row[key])
    statement = _insert(session)(model.__table__)
    statement = statement.on_conflict_do_update(
        index_elements=[key],
        set_={column: statement.excluded[column] for column in rows[0] if column != key},
        where=model.__table__.c[version] <= statement.excluded[version],
    )
    session.execute(statement, rows)


def add_to_rows(
    session: Session, model: type[Any], rows: list[dict[str, Any]], *, key: list[str], sums: list[str]
) -> None:
    """Insert rows, or add their `sums` columns to the stored row with the same key.

    The addition happens in the database (`SET amount = amount + excluded.amount`),
    so concurrent writers never lose each other's increments. Rows are applied
    in key order, so two writers lock them in the same order.
    """
    if not rows:
        return
    rows = sorted(rows, key=lambda row: tuple(str(row[column]) for column in key))
    table = model.__table__
    statement = _insert(session)(table)
    statement = statement.on_conflict_do_update(
        index_elements=key, set_={column: table.c[column] + statement.excluded[column] for column in sums}
    )
    session.execute(statement, rows)
