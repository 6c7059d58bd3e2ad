"""MRR by price at the end of a month (docs/mrr-rules.md §8, the metrics table, "Breakdown"),
on the hand-worked sample account."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from ledger.breakdown import Breakdown, PriceMRR, by_product, mrr_by_price
from ledger.db import Database
from ledger.engine import recompute_customers
from ledger.settings import RuleSettings
from ledger.state import record_object, record_subscription
from tests.ledger.sample_account import NOW, account
from tests.ledger.subscription_payloads import item, price, repeating_discount, subscription, utc

END_OF_FEBRUARY = utc(3, 1) - timedelta(microseconds=1)
END_OF_MARCH = utc(4, 1) - timedelta(microseconds=1)


def breakdown(db: Database, at: datetime) -> Breakdown:
    with db.session() as session:
        return mrr_by_price(session, livemode=False, at=at, rules=RuleSettings())


def amounts(result: Breakdown) -> dict[str, tuple[int, int]]:
    return {p.price_id: (p.subscriptions, p.mrr) for p in result.prices}


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        pytest.param(
            END_OF_FEBRUARY,
            {"price_gold": (2, 30000)},
            id="February: a and b on gold; d's trial is worth 0 and left out",
        ),
        pytest.param(
            END_OF_MARCH,
            {"price_platinum": (1, 15000), "price_gold": (2, 8000)},
            id="March: a upgraded, b churned, c joined, d converted",
        ),
    ],
)
def test_mrr_by_price_at_the_end_of_a_month(db: Database, at: datetime, expected: dict[str, tuple[int, int]]) -> None:
    account(db)
    result = breakdown(db, at)
    assert amounts(result) == expected
    assert result.unvalued == []
    assert [p.price_id for p in result.prices] == list(expected)  # largest first


def test_names_come_from_the_stored_product_and_price(db: Database) -> None:
    account(db)
    with db.transaction() as session:
        record_object(session, {"id": "prod_gold", "object": "product", "name": "Gold plan"}, observed_at=utc(1, 1))
    [platinum, gold] = breakdown(db, END_OF_MARCH).prices
    assert (gold.product_id, gold.product_name) == ("prod_gold", "Gold plan")
    assert platinum.price_nickname is None


def test_items_are_valued_after_their_discounts(db: Database) -> None:
    discounted = subscription(item(price(10000)), start=utc(3, 1), customer="cus_x", sub_id="sub_x")
    discounted["discounts"] = [repeating_discount(20, utc(3, 1), utc(9, 1))]
    with db.transaction() as session:
        record_subscription(session, discounted, observed_at=utc(3, 1), source="evt_x")
        recompute_customers(session, ["cus_x"], RuleSettings(), now=NOW)
    assert amounts(breakdown(db, END_OF_MARCH)) == {"price_gold": (1, 8000)}


def test_a_subscription_that_cannot_be_valued_is_listed_not_raised(db: Database) -> None:
    account(db)
    unresolvable = subscription(item(price(5000)), start=utc(3, 2), customer="cus_c", sub_id="sub_c")
    unresolvable["discounts"] = ["di_not_stored"]
    with db.transaction() as session:
        # Stored without recomputing: the ledger's change from before stays in force.
        record_subscription(session, unresolvable, observed_at=utc(3, 25), source="evt_c_late")
    result = breakdown(db, END_OF_MARCH)
    assert result.unvalued == ["sub_c"]
    assert amounts(result) == {"price_platinum": (1, 15000), "price_gold": (1, 3000)}


def test_an_empty_ledger_has_no_breakdown(db: Database) -> None:
    assert breakdown(db, END_OF_MARCH) == Breakdown(END_OF_MARCH, [])


def test_by_product_sums_prices_per_currency() -> None:
    prices = [
        PriceMRR("usd", "price_a", "prod_1", "One", None, 1, 1000),
        PriceMRR("usd", "price_b", "prod_1", "One", None, 2, 3000),
        PriceMRR("usd", "price_c", "prod_2", None, None, 1, 5000),
        PriceMRR("eur", "price_d", "prod_1", "One", None, 1, 700),
    ]
    assert by_product(prices) == [
        ("eur", "prod_1", "One", 700),
        ("usd", "prod_2", None, 5000),
        ("usd", "prod_1", "One", 4000),
    ]
