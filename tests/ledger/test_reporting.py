"""MRR series and the FX adjustment (docs/mrr-rules.md §7) over stored movements."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from ledger.db import Database
from ledger.engine import resum_totals
from ledger.fx import load_rates
from ledger.models import Movement
from ledger.reporting import buckets, mrr_series

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def book(db: Database, *rows: tuple[str, str, str, str, int]) -> None:
    """(customer, ISO day, currency, type, amount) movements."""
    with db.transaction() as session:
        for customer, day, currency, kind, amount in rows:
            when = date.fromisoformat(day)
            session.add(
                Movement(
                    livemode=False,
                    customer_id=customer,
                    currency=currency,
                    day=when,
                    at=datetime(when.year, when.month, when.day, tzinfo=UTC),
                    type=kind,
                    amount=amount,
                    mrr_before=0,
                    mrr_after=0,
                    sources=["evt_x"],
                    rules_version="test",
                    computed_at=NOW,
                )
            )
        resum_totals(session)


def series(db: Database, start: str, end: str, interval: str = "month", rates=None):
    with db.session() as session:
        return mrr_series(
            session,
            livemode=False,
            start=date.fromisoformat(start),
            end=date.fromisoformat(end),
            interval=interval,  # type: ignore[arg-type]
            rates=rates,
            reporting_currency="usd",
        )


def test_single_currency_series_is_the_running_sum_of_movements(db: Database) -> None:
    book(
        db,
        ("cus_a", "2023-12-20", "usd", "new", 5000),
        ("cus_b", "2024-01-03", "usd", "new", 10000),
        ("cus_b", "2024-01-20", "usd", "expansion", 5000),
        ("cus_a", "2024-02-10", "usd", "churn", -5000),
    )
    [usd] = series(db, "2024-01-01", "2024-02-29")
    assert usd.currency == "usd"
    january, february = usd.buckets
    assert (january.mrr_start, january.mrr, january.net_new, january.customers) == (5000, 20000, 15000, 2)
    assert january.movements == {"new": 10000, "expansion": 5000, "reactivation": 0, "contraction": 0, "churn": 0}
    assert (february.mrr_start, february.mrr, february.movements["churn"], february.fx_adjustment) == (
        20000,
        15000,
        -5000,
        0,
    )


def test_several_currencies_without_rates_are_reported_apart(db: Database) -> None:
    book(db, ("cus_a", "2024-01-03", "usd", "new", 1000), ("cus_b", "2024-01-04", "eur", "new", 2000))
    reported = series(db, "2024-01-01", "2024-01-31")
    assert [(s.currency, s.buckets[-1].mrr) for s in reported] == [("eur", 2000), ("usd", 1000)]


RATES = """date,currency,rate
2023-12-01,eur,1.10
2024-02-01,eur,1.20
"""


def test_fx_adjustment_is_what_the_rates_moved(db: Database) -> None:
    book(
        db,
        ("cus_a", "2023-12-20", "eur", "new", 10000),
        ("cus_b", "2024-02-15", "usd", "new", 3000),
        ("cus_a", "2024-02-20", "eur", "expansion", 1000),
    )
    [usd] = series(db, "2024-01-01", "2024-02-29", rates=load_rates(RATES))
    january, february = usd.buckets
    assert (january.mrr_start, january.mrr, january.fx_adjustment) == (11000, 11000, 0)
    # €10,000 → $12,000 at the new rate: +$1,000 of FX, not a movement.
    assert february.movements["new"] == 3000
    assert february.movements["expansion"] == 1200
    assert february.mrr == 11000 * 12 // 10 + 3000
    assert february.fx_adjustment == 1000
    assert february.mrr == february.mrr_start + february.net_new + february.fx_adjustment
    assert usd.missing_rates == frozenset()
    assert usd.currencies == ("eur", "usd")


def test_a_missing_rate_is_reported_never_assumed(db: Database) -> None:
    book(db, ("cus_a", "2024-01-05", "gbp", "new", 10000), ("cus_b", "2024-01-05", "usd", "new", 500))
    [usd] = series(db, "2024-01-01", "2024-01-31", rates=load_rates(RATES))
    [january] = usd.buckets
    assert january.mrr is None
    assert january.fx_adjustment is None
    assert january.movements["new"] is None
    assert usd.missing_rates == frozenset({("gbp", date(2024, 1, 5))})


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ("day", [("2024-01-30", "2024-01-30"), ("2024-01-31", "2024-01-31"), ("2024-02-01", "2024-02-01")]),
        ("week", [("2024-01-30", "2024-02-01")]),
        ("month", [("2024-01-30", "2024-01-31"), ("2024-02-01", "2024-02-01")]),
    ],
)
def test_buckets_are_clipped_to_the_range(interval: str, expected: list[tuple[str, str]]) -> None:
    got = [(a.isoformat(), b.isoformat()) for a, b in buckets(date(2024, 1, 30), date(2024, 2, 1), interval)]  # type: ignore[arg-type]
    assert got == expected
