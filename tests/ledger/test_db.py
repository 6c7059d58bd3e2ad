"""The bulk-write helpers of `ledger.db`, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from ledger.db import Database, insert_rows, retrying_deadlocks
from ledger.models import Customer, Movement


def movement(n: int, sources: list[str]) -> dict[str, object]:
    return {
        "livemode": n % 2 == 0,
        "customer_id": f"cus_{n}",
        "currency": "usd",
        "day": date(2024, 2, 29),
        "at": datetime(2024, 2, 29, 23, 59, 59, 123456, tzinfo=UTC),
        "type": "new",
        "amount": -(2**62) + n,
        "mrr_before": 0,
        "mrr_after": 2**62,
        "sources": sources,
        "rules_version": "v1",
        "computed_at": datetime(2024, 3, 1, tzinfo=UTC),
    }


def test_inserted_rows_read_back_as_written(db: Database) -> None:
    """On PostgreSQL the rows go through COPY: every type must come back as an INSERT stores it."""
    awkward = ["evt_1", 'quote " and \\ backslash', "tab\tnew line\n", "ünïcödé ✓", "\\N", ""]
    rows = [movement(n, awkward[: n + 1]) for n in range(len(awkward))]
    with db.transaction() as session:
        insert_rows(session, Movement.__table__, rows)  # type: ignore[arg-type]
    with db.session() as session:
        stored = session.execute(
            select(*(Movement.__table__.c[name] for name in rows[0])).order_by(Movement.customer_id)
        ).all()
    assert [dict(row._mapping) for row in stored] == rows


def test_nothing_to_insert_is_no_statement(db: Database) -> None:
    with db.transaction() as session:
        insert_rows(session, Movement.__table__, [])  # type: ignore[arg-type]
    with db.session() as session:
        assert session.scalars(select(Movement)).all() == []


def test_work_cancelled_to_break_a_deadlock_is_done_again(db: Database) -> None:
    """Two transactions lock cus_a and cus_b in opposite orders. PostgreSQL cancels the one that waits
    least (its `deadlock_timeout`); in `retrying_deadlocks`, that one's work is done again once the
    other commits, and both writes are kept."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("DATABASE_URL does not point at PostgreSQL: SQLite has one writer, it cannot deadlock")
    with db.transaction() as session:
        for customer_id in ("cus_a", "cus_b"):
            session.add(Customer(id=customer_id, livemode=False, observed_at=datetime(2024, 1, 1, tzinfo=UTC)))
    first_locks = threading.Barrier(2, timeout=10)
    attempts: list[int] = []

    def lock(session: Session, customer_id: str, by: str) -> None:
        session.execute(text("UPDATE customers SET name = name || :by WHERE id = :id"), {"by": by, "id": customer_id})

    def retried(session: Session) -> None:
        def work() -> None:
            attempts.append(len(attempts) + 1)
            lock(session, "cus_a", "R")
            if len(attempts) == 1:
                first_locks.wait()
            lock(session, "cus_b", "R")

        retrying_deadlocks(session, work)

    def other() -> None:
        with db.transaction() as session:
            session.execute(text("SET LOCAL deadlock_timeout = '10s'"))
            lock(session, "cus_b", "O")
            first_locks.wait()
            lock(session, "cus_a", "O")

    with db.transaction() as session:
        session.execute(text("UPDATE customers SET name = ''"))
    thread = threading.Thread(target=other)
    thread.start()
    with db.transaction() as session:
        session.execute(text("SET LOCAL deadlock_timeout = '100ms'"))
        retried(session)
    thread.join(timeout=30)
    assert attempts == [1, 2]
    with db.session() as session:
        names = {row.id: row.name for row in session.execute(select(Customer.id, Customer.name))}
    assert names == {"cus_a": "OR", "cus_b": "OR"}
