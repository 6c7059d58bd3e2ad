"""A small account whose March 2024 KPIs are worked out by hand (tests/ledger/test_summary.py)."""

from __future__ import annotations

from ledger.db import Database
from ledger.engine import recompute_customers
from ledger.settings import RuleSettings
from ledger.state import record_subscription
from tests.ledger.subscription_payloads import item, price, subscription, utc

NOW = utc(6, 15)


def account(db: Database) -> None:
    """March 2024: a upgrades $100 → $150, b ($200) churns, c joins at $50, d converts a trial at $30."""
    gold, platinum = price(10000), price(15000, price_id="price_platinum")
    versions = [
        (subscription(item(gold), start=utc(1, 10), customer="cus_a", sub_id="sub_a"), utc(1, 10)),
        (subscription(item(platinum), start=utc(1, 10), customer="cus_a", sub_id="sub_a"), utc(3, 5)),
        (subscription(item(price(20000)), start=utc(2, 1), customer="cus_b", sub_id="sub_b"), utc(2, 1)),
        (
            subscription(
                item(price(20000)),
                start=utc(2, 1),
                customer="cus_b",
                sub_id="sub_b",
                status="canceled",
                canceled_at=utc(3, 20),
                ended_at=utc(3, 20),
            ),
            utc(3, 20),
        ),
        (subscription(item(price(5000)), start=utc(3, 2), customer="cus_c", sub_id="sub_c"), utc(3, 2)),
        (
            subscription(
                item(price(3000)),
                start=utc(2, 20),
                customer="cus_d",
                sub_id="sub_d",
                status="trialing",
                trial_start=utc(2, 20),
                trial_end=utc(3, 5),
            ),
            utc(2, 20),
        ),
        (
            subscription(
                item(price(3000)),
                start=utc(2, 20),
                customer="cus_d",
                sub_id="sub_d",
                trial_start=utc(2, 20),
                trial_end=utc(3, 5),
            ),
            utc(3, 5, 1),
        ),
    ]
    with db.transaction() as session:
        for payload, seen in versions:
            record_subscription(session, payload, observed_at=seen, source=f"evt_{payload['id']}_{seen:%m%d}")
        recompute_customers(session, ["cus_a", "cus_b", "cus_c", "cus_d"], RuleSettings(), now=NOW)


def with_one_more_currency(db: Database, currency: str, amount: int) -> None:
    """The account above (USD) and a customer paying `amount` a month in `currency` since 5 January
    (`cus_<first letter>`, `sub_…`, `evt_…`)."""
    account(db)
    letter = currency[0]
    other = subscription(
        item(price(amount, currency=currency)),
        start=utc(1, 5),
        customer=f"cus_{letter}",
        sub_id=f"sub_{letter}",
        currency=currency,
    )
    with db.transaction() as session:
        record_subscription(session, other, observed_at=utc(1, 5), source=f"evt_{letter}")
        recompute_customers(session, [f"cus_{letter}"], RuleSettings(), now=NOW)


def usd_and_gbp(db: Database) -> None:
    """The account above (USD) and a customer paying £50 a month since 5 January."""
    with_one_more_currency(db, "gbp", 5000)
