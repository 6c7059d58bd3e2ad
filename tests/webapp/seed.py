"""A six-month account for the dashboard tests, ending in the current month.

Dated relative to today so the dashboard's default range (the last 12 months)
shows all of it. Months are m0 (five months ago) … m5 (this month):

    usd  alice   m0 new 100 (backfill) · m2 expansion +50 (gold → platinum)
         bob     m0 new 200 · m3 churn −200
         carol   m1 new 50 · m4 contraction −20 (found by a reconciliation)
         dave    m1 trial, converts at 30 on its last day
         erin    m2 new 100 (1,200 a year) · m3 churn · m5 reactivation +100
         frank   m5 new 80 (4 seats × 20)
    eur  gustav  m1 new 90
         helene  m3 new 40

USD MRR at the end of m0…m5: 300, 380, 530, 230, 210, 390; EUR: 0, 90, 90, 130, 130, 130.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ledger.db import Database, utcnow
from ledger.engine import recompute_customers
from ledger.models import DriftItem, SyncRun
from ledger.settings import RuleSettings
from ledger.state import RANK_RECONCILE, record_customer, record_object, record_subscription
from tests.ledger.subscription_payloads import item, price, subscription, ts

USD_MRR = (30000, 38000, 53000, 23000, 21000, 39000)
EUR_MRR = (0, 9000, 9000, 13000, 13000, 13000)
BACKFILL_RUN = "backfill_seed_1"
RECONCILE_RUN = "reconcile_seed_2"
PRODUCTS = {
    "prod_gold": "Gold",
    "prod_platinum": "Platinum",
    "prod_pro": "Pro",
    "prod_basic": "Basic",
    "prod_team": "Team",
}


def shift(month: date, months: int) -> date:
    index = month.year * 12 + month.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


@dataclass(frozen=True)
class Seeded:
    months: tuple[date, ...]
    """m0 … m5, first days."""
    now: datetime
    customers: tuple[str, ...] = field(
        default=("cus_alice", "cus_bob", "cus_carol", "cus_dave", "cus_erin", "cus_frank", "cus_gustav", "cus_helene")
    )

    def label(self, index: int) -> str:
        return self.months[index].strftime("%Y-%m")


def _rate(
    price_id: str, product: str, amount: int, *, interval: str = "month", currency: str = "usd"
) -> dict[str, Any]:
    rate = price(amount, interval, price_id=price_id, product=product, currency=currency)
    rate["nickname"] = price_id.removeprefix("price_").replace("_", " ").title()
    return rate


def seed(db: Database, *, now: datetime | None = None) -> Seeded:
    now = now or utcnow()
    m = [shift(now.date().replace(day=1), index - 5) for index in range(6)]

    def at(index: int, day: int) -> datetime:
        # The current month may have just begun: its events are at its first instant.
        return datetime(m[index].year, m[index].month, 1 if index == 5 else day, 0 if index == 5 else 10, tzinfo=UTC)

    def sub(sub_id: str, customer: str, *items: dict[str, Any], start: datetime, **fields: Any) -> dict[str, Any]:
        currency = items[0]["price"]["currency"]
        return subscription(*items, start=start, sub_id=sub_id, customer=customer, currency=currency, **fields) | {
            "livemode": False
        }

    gold, platinum = _rate("price_gold", "prod_gold", 10000), _rate("price_platinum", "prod_platinum", 15000)
    pro, basic = _rate("price_pro", "prod_pro", 20000), _rate("price_basic", "prod_basic", 5000)
    starter = _rate("price_starter", "prod_basic", 3000)
    yearly = _rate("price_gold_yearly", "prod_gold", 120000, interval="year")
    team = _rate("price_team", "prod_team", 2000)
    eur_gold = _rate("price_eur_gold", "prod_gold", 9000, currency="eur")
    eur_basic = _rate("price_eur_basic", "prod_basic", 4000, currency="eur")
    ended = {"status": "canceled"}

    versions: list[tuple[dict[str, Any], datetime, str]] = [
        (sub("sub_alice", "cus_alice", item(gold), start=at(0, 3)), at(0, 3), f"backfill:{BACKFILL_RUN}"),
        (sub("sub_alice", "cus_alice", item(platinum), start=at(0, 3)), at(2, 10), ""),
        (sub("sub_bob", "cus_bob", item(pro), start=at(0, 5)), at(0, 5), ""),
        (
            sub("sub_bob", "cus_bob", item(pro), start=at(0, 5), canceled_at=at(3, 15), ended_at=at(3, 15)) | ended,
            at(3, 15),
            "",
        ),
        (sub("sub_carol", "cus_carol", item(basic), start=at(1, 7)), at(1, 7), ""),
        (sub("sub_carol", "cus_carol", item(starter), start=at(1, 7)), at(4, 2), f"reconcile:{RECONCILE_RUN}"),
        (
            sub("sub_dave", "cus_dave", item(starter), start=at(1, 12), trial_start=at(1, 12), trial_end=at(1, 26))
            | {"status": "trialing"},
            at(1, 12),
            "",
        ),
        (
            sub("sub_dave", "cus_dave", item(starter), start=at(1, 12), trial_start=at(1, 12), trial_end=at(1, 26)),
            at(1, 26) + timedelta(minutes=1),
            "",
        ),
        (sub("sub_erin", "cus_erin", item(yearly), start=at(2, 4)), at(2, 4), ""),
        (
            sub("sub_erin", "cus_erin", item(yearly), start=at(2, 4), canceled_at=at(3, 20), ended_at=at(3, 20))
            | ended,
            at(3, 20),
            "",
        ),
        (sub("sub_erin2", "cus_erin", item(yearly), start=at(5, 1)), at(5, 1), ""),
        (sub("sub_frank", "cus_frank", item(team, 4), start=at(5, 1)), at(5, 1), ""),
        (sub("sub_gustav", "cus_gustav", item(eur_gold), start=at(1, 8)), at(1, 8), ""),
        (sub("sub_helene", "cus_helene", item(eur_basic), start=at(3, 9)), at(3, 9), ""),
    ]
    seeded = Seeded(tuple(m), now)
    with db.transaction() as session:
        for product_id, name in PRODUCTS.items():
            product = {"id": product_id, "object": "product", "name": name, "livemode": False}
            record_object(session, product, observed_at=at(0, 1))
        for customer_id in seeded.customers:
            name = customer_id.removeprefix("cus_")
            customer = {"id": customer_id, "object": "customer", "livemode": False, "email": f"{name}@example.com"}
            record_customer(session, customer | {"name": name.title()}, observed_at=at(0, 1))
        for payload, seen, source in versions:
            rank = RANK_RECONCILE if source.startswith("reconcile:") else 0
            source = source or f"evt_{payload['id']}_{ts(seen)}"
            record_subscription(session, payload, observed_at=seen, source=source, rank=rank)
        recompute_customers(session, list(seeded.customers), RuleSettings(), now=now)
        _runs(session, at(4, 2))
    return seeded


def _runs(session: Any, reconciled_at: datetime) -> None:
    for run_id, kind, status, counts, errors in (
        (BACKFILL_RUN, "backfill", "ok", {"subscriptions": 8, "customers": 8}, []),
        (RECONCILE_RUN, "reconcile", "partial", {"subscriptions": 9, "drift": 1, "errors": 1}, ["sub_gone: not found"]),
    ):
        started = reconciled_at - timedelta(minutes=5 if kind == "reconcile" else 60)
        session.add(
            SyncRun(
                id=run_id,
                kind=kind,
                livemode=False,
                started_at=started,
                finished_at=started + timedelta(minutes=1),
                heartbeat_at=started + timedelta(minutes=1),
                status=status,
                parameters={},
                counts=counts,
                errors=errors,
            )
        )
    session.add(
        DriftItem(
            run_id=RECONCILE_RUN,
            subscription_id="sub_carol",
            customer_id="cus_carol",
            currency="usd",
            ledger_mrr=5000,
            stripe_mrr=3000,
            difference=-2000,
            action=f"recorded Stripe's state effective {reconciled_at:%Y-%m-%dT%H:%M:%SZ}",
            effective_at=reconciled_at,
        )
    )
