"""Subscriptions with more items than Stripe embeds (`items.has_more`): valued with every item,
whether the subscription came by webhook (the worker completes the stored version) or from a
list read (reconcile pages the rest). Backfill's list is in test_backfill.py, the client's
single read in test_stripe_api.py. Stripe is simulated at the HTTP level (`responses`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
import responses
from flask.testing import FlaskClient
from sqlalchemy import select

from ledger.db import Database
from ledger.models import DriftItem, Movement, StripeEvent, Subscription, SubscriptionSnapshot
from ledger.settings import Settings
from tests.ledger.subscription_payloads import many_items, subscription, ts, utc
from tests.stripe_payloads import current_event, signed
from tests.worker.stripe_http import BASE, EMBEDDED_ITEMS, FakeStripe
from worker import processing
from worker.recompute import after_apply_for
from worker.reconcile import reconcile
from worker.stripe_api import StripeAPI
from worker.subscription_items import with_items_listed

ITEMS = 25
WORTH = 100 * sum(range(1, ITEMS + 1))
"""The monthly worth of all 25 items: 325.00."""


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeStripe(mock)


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return replace(settings, stripe_api_key="sk_test_subledger", stripe_api_base=BASE)


def many_item_subscription() -> dict[str, Any]:
    return subscription(*many_items(ITEMS), start=utc(1, 10), sub_id="sub_many")


def as_a_webhook_carries_it(whole: dict[str, Any]) -> dict[str, Any]:
    cut = copy.deepcopy(whole)
    cut["items"].update(data=cut["items"]["data"][:EMBEDDED_ITEMS], has_more=True)
    return cut


def movements(db: Database) -> list[tuple[str, str, str, int, tuple[str, ...]]]:
    with db.session() as session:
        rows = session.scalars(select(Movement).order_by(Movement.customer_id, Movement.at))
        return [(m.customer_id, m.day.isoformat(), m.type, m.amount, tuple(m.sources)) for m in rows]


def test_a_webhook_with_a_cut_item_list_is_valued_with_every_item(
    client: FlaskClient, db: Database, keyed: Settings, stripe: FakeStripe
) -> None:
    whole = many_item_subscription()
    stripe.add("subscriptions", whole)
    event = current_event(
        "customer.subscription.created", as_a_webhook_carries_it(whole), event_id="evt_many", created=ts(utc(1, 10))
    )
    body, headers = signed(event)
    assert client.post("/webhooks/stripe", data=body, headers=headers).status_code == 200

    processing.drain(db, None, budget_s=60, after_apply=after_apply_for(keyed))

    with db.session() as session:
        [stored] = session.scalars(select(StripeEvent))
        assert (stored.status, stored.attempts, stored.last_error) == ("processed", 1, None)
        versions = [*session.scalars(select(SubscriptionSnapshot)), session.get_one(Subscription, "sub_many")]
        for version in versions:
            assert [i["id"] for i in version.payload["items"]["data"]] == [i["id"] for i in whole["items"]["data"]]
            assert version.payload["items"]["has_more"] is False
    assert movements(db) == [("cus_1", "2024-01-10", "new", WORTH, ("evt_many",))]
    [asked] = stripe.calls("/v1/subscription_items")
    assert (asked["subscription"], asked["limit"]) == ("sub_many", "100")


def test_a_version_gets_only_the_items_that_existed_when_it_was_observed() -> None:
    whole = many_item_subscription()
    listed = copy.deepcopy(whole["items"]["data"])
    for entry in listed:
        entry["created"] = ts(utc(1, 10))
    listed[-1]["created"] = ts(utc(3, 1))  # added in March
    cut = as_a_webhook_carries_it(whole)

    in_february = with_items_listed(cut, listed, utc(2, 1))
    in_march = with_items_listed(cut, listed, utc(3, 1))

    assert [entry["id"] for entry in in_february["items"]["data"]] == [f"si_{n:02d}" for n in range(ITEMS - 1)]
    assert [entry["id"] for entry in in_march["items"]["data"]] == [f"si_{n:02d}" for n in range(ITEMS)]
    assert in_march["items"]["has_more"] is False
    assert cut["items"]["has_more"] is True, "the version as stored is left as it came"


def test_reconcile_pages_the_items_its_list_read_leaves_out(db: Database, keyed: Settings, stripe: FakeStripe) -> None:
    stripe.add("subscriptions", many_item_subscription())

    report = reconcile(db, keyed, api=StripeAPI(keyed, sleep=lambda _: None))

    assert report.status.value == "ok", report.errors
    with db.session() as session:
        [drift] = session.scalars(select(DriftItem))
    assert (drift.subscription_id, drift.ledger_mrr, drift.stripe_mrr) == ("sub_many", 0, WORTH)
    assert movements(db) == [("cus_1", "2024-01-10", "new", WORTH, (f"reconcile:{report.run_id}",))]
    [asked] = stripe.calls("/v1/subscription_items")
    assert (asked["subscription"], asked["starting_after"]) == ("sub_many", "si_19")
