"""The bulk-write helpers of `ledger.db`, on SQLite and PostgreSQL alike."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import select

from ledger.db import Database, insert_rows
from ledger.models import Movement


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
