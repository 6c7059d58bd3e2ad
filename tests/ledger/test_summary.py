"""A month's KPIs (docs/mrr-rules.md §8, the metrics table) from the monthly rollup,
on a small account worked by hand."""

from __future__ import annotations

from datetime import date
from fractions import Fraction

import pytest

from ledger.db import Database
from ledger.engine import recompute_customers
from ledger.settings import RuleSettings
from ledger.state import record_subscription
from ledger.summary import kpis, month_figures
from tests.ledger.sample_account import NOW, account, with_one_more_currency
from tests.ledger.subscription_payloads import item, price, subscription, utc


@pytest.fixture
def march(db: Database) -> dict[str, object]:
    account(db)
    with db.session() as session:
        return kpis(month_figures(session, livemode=False, month=date(2024, 3, 1), currency="usd", today=NOW.date()))


@pytest.mark.parametrize(
    ("metric", "expected"),
    [
        ("mrr_start", 30000),
        ("mrr", 23000),
        ("arr", 276000),
        ("customers_start", 2),
        ("customers", 3),
        ("new", 8000),
        ("expansion", 5000),
        ("contraction", 0),
        ("churn", -20000),
        ("reactivation", 0),
        ("net_new", -7000),
        ("new_customers", 2),
        ("churned_customers", 1),
        ("reactivated_customers", 0),
        ("mrr_growth_rate", Fraction(-7, 30)),
        ("arpa", 7667),
        ("customer_churn_rate", Fraction(1, 2)),
        ("retention_rate", Fraction(1, 2)),
        ("gross_mrr_churn_rate", Fraction(2, 3)),
        ("net_mrr_churn_rate", Fraction(1, 2)),
        ("expansion_rate", Fraction(1, 6)),
        ("upsell_rate", Fraction(1, 2)),
        ("nrr", Fraction(1, 2)),
        ("grr", Fraction(1, 3)),
        ("quick_ratio", Fraction(13, 20)),
        ("trial_conversion_rate", Fraction(1, 1)),
        ("scheduled_churn", 0),
    ],
)
def test_march_kpis(march: dict[str, object], metric: str, expected: object) -> None:
    assert march[metric] == expected


def test_ltv_uses_the_average_churn_of_six_full_months(march: dict[str, object]) -> None:
    # Oct 2023 – Mar 2024: only February (0 of 1 churned) and March (1 of 2) are defined → average 1/4.
    assert march["ltv"] == 7667 * 4


def test_an_empty_month_has_null_rates(db: Database) -> None:
    with db.session() as session:
        empty = kpis(month_figures(session, livemode=False, month=date(2024, 3, 1), currency="usd", today=NOW.date()))
    assert (empty["mrr"], empty["customers"], empty["nrr"], empty["arpa"], empty["ltv"]) == (0, 0, None, None, None)


def test_cohorts_group_customers_by_first_paying_month(db: Database) -> None:
    from ledger.queries import cohorts

    account(db)
    with db.session() as session:
        grid = cohorts(session, livemode=False, currency="usd", start=date(2024, 1, 1), end=date(2024, 4, 1))
    rows = {(c.month.isoformat(), c.customers, c.revenue): (c.retained_customers, c.retained_revenue) for c in grid}
    assert rows == {
        ("2024-01-01", 1, 10000): ([1, 1, 1, 1], [10000, 10000, 15000, 15000]),
        ("2024-02-01", 1, 20000): ([1, 0, 0], [20000, 0, 0]),
        ("2024-03-01", 2, 8000): ([2, 2], [8000, 8000]),
    }


def test_a_cohort_counts_a_customer_who_left_within_its_month_so_retention_stays_at_most_100_percent(
    db: Database,
) -> None:
    from ledger.queries import cohorts

    account(db)
    gone = subscription(item(price(4000)), start=utc(3, 3), customer="cus_r", sub_id="sub_r1")
    back = subscription(item(price(4000)), start=utc(5, 2), customer="cus_r", sub_id="sub_r2")
    with db.transaction() as session:
        record_subscription(session, gone, observed_at=utc(3, 3), source="evt_r1")
        ended = {
            "status": "canceled",
            "canceled_at": int(utc(3, 25).timestamp()),
            "ended_at": int(utc(3, 25).timestamp()),
        }
        record_subscription(session, {**gone, **ended}, observed_at=utc(3, 25), source="evt_r2")
        record_subscription(session, back, observed_at=utc(5, 2), source="evt_r3")
        recompute_customers(session, ["cus_r"], RuleSettings(), now=NOW)
        [march] = [
            c for c in cohorts(session, livemode=False, currency="usd", start=date(2024, 3, 1), end=date(2024, 5, 1))
        ]
    assert (march.customers, march.retained_customers) == (3, [2, 2, 3])
    assert all(retained <= march.customers for retained in march.retained_customers)


def test_movements_are_paged_with_a_cursor(db: Database) -> None:
    from ledger.queries import movements_page

    account(db)
    seen = []
    cursor = None
    with db.session() as session:
        while True:
            page = movements_page(session, livemode=False, limit=2, cursor=cursor)
            seen.extend((m.customer_id, m.type) for m in page.movements)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        churns = movements_page(session, livemode=False, types=["churn"]).movements
    assert len(seen) == len(set(seen)) == 6
    assert [(m.customer_id, m.amount) for m in churns] == [("cus_b", -20000)]
    with db.session() as session:
        newest = [(m.day, m.id) for m in movements_page(session, livemode=False).movements]
        oldest = [(m.day, m.id) for m in movements_page(session, livemode=False, newest_first=False).movements]
    assert newest == sorted(newest, reverse=True) == oldest[::-1]


def test_a_two_currency_account_is_summed_in_the_reporting_currency(db: Database) -> None:
    from ledger.fx import load_rates
    from ledger.summary import account_summary

    with_one_more_currency(db, "eur", 10000)
    rates = load_rates("date,currency,rate\n2024-01-01,eur,1.10\n2024-03-10,eur,1.20\n")
    with db.session() as session:
        [march] = account_summary(
            session, livemode=False, month=date(2024, 3, 1), rates=rates, reporting_currency="usd", today=NOW.date()
        )
        separate = account_summary(
            session, livemode=False, month=date(2024, 3, 1), rates=None, reporting_currency="usd", today=NOW.date()
        )
    assert (march["currency"], march["mrr_start"], march["mrr"]) == ("usd", 30000 + 11000, 23000 + 12000)
    assert march["customers"] == 4
    # February 0 of 2 churned, March 1 of 3: every currency's customers count in the LTV's churn rate.
    assert march["ltv"] == 35000 // 4 * 6
    assert march["fx_adjustment"] == 1000  # €100 at 1.10 then 1.20: what the rate moved, not a movement
    assert march["mrr"] == march["mrr_start"] + march["net_new"] + march["fx_adjustment"]
    assert [(s["currency"], s["mrr"]) for s in separate] == [("usd", 23000), ("eur", 10000)]


def test_a_missing_rate_is_named_not_assumed(db: Database) -> None:
    from ledger.fx import load_rates
    from ledger.summary import MissingRates, account_summary

    account(db)
    pound = subscription(
        item(price(5000, currency="gbp")), start=utc(1, 5), customer="cus_g", sub_id="sub_g", currency="gbp"
    )
    with db.transaction() as session:
        record_subscription(session, pound, observed_at=utc(1, 5), source="evt_g")
        recompute_customers(session, ["cus_g"], RuleSettings(), now=NOW)
    with db.session() as session, pytest.raises(MissingRates) as missing:
        account_summary(
            session,
            livemode=False,
            month=date(2024, 3, 1),
            rates=load_rates("date,currency,rate\n2024-01-01,eur,1.1\n"),
            reporting_currency="usd",
            today=NOW.date(),
        )
    assert missing.value.missing == [("gbp", date(2024, 2, 29))]


def test_a_trial_canceled_before_its_trial_end_ends_when_it_is_canceled(db: Database) -> None:
    """§8: a trial ends when the subscription stops trialing. Canceled on 20 January, a trial that would
    have ended on 5 February ended in January, unconverted; one that ran to its end on 10 February and
    became active converted in February."""
    trial = {"status": "trialing", "trial_start": utc(1, 6), "trial_end": utc(2, 5)}
    canceled = subscription(item(price(3000)), start=utc(1, 6), customer="cus_t", sub_id="sub_t", **trial)
    ran = {**trial, "trial_end": utc(2, 10)}
    converted = subscription(item(price(4000)), start=utc(1, 6), customer="cus_u", sub_id="sub_u", **ran)
    with db.transaction() as session:
        record_subscription(session, canceled, observed_at=utc(1, 6), source="evt_t1")
        record_subscription(
            session,
            {
                **canceled,
                "status": "canceled",
                "canceled_at": int(utc(1, 20).timestamp()),
                "ended_at": int(utc(1, 20).timestamp()),
            },
            observed_at=utc(1, 20),
            source="evt_t2",
        )
        record_subscription(session, converted, observed_at=utc(1, 6), source="evt_u1")
        record_subscription(session, {**converted, "status": "active"}, observed_at=utc(2, 10), source="evt_u2")
        recompute_customers(session, ["cus_t", "cus_u"], RuleSettings(), now=NOW)
        trials = {
            month: (f.trials_ended, f.trials_converted)
            for month in (date(2024, 1, 1), date(2024, 2, 1))
            for f in [month_figures(session, livemode=False, month=month, currency="usd", today=NOW.date())]
        }
    assert trials == {date(2024, 1, 1): (1, 0), date(2024, 2, 1): (1, 1)}


@pytest.mark.parametrize(
    ("item", "label"),
    [
        (
            {"price": {"id": "price_t", "nickname": "Team", "recurring": {"interval": "month"}}, "quantity": 5},
            "Team ×5 monthly",
        ),
        (
            {"price": {"id": "price_q", "recurring": {"interval": "month", "interval_count": 3}}, "quantity": 1},
            "price_q every 3 months",
        ),
        (
            {
                "plan": {
                    "id": "plan_y",
                    "nickname": "Pro",
                    "interval": "year",
                    "product": {"id": "prod_p", "name": "Pro"},
                }
            },
            "Pro yearly",
        ),
    ],
    ids=["nickname, quantity", "no names: the id", "2020 plan, product expanded"],
)
def test_an_item_reads_as_product_price_quantity_and_interval(item: dict[str, object], label: str) -> None:
    from ledger.queries import item_view

    assert item_view(item, lambda object_id: {})["label"] == label
