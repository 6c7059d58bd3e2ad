"""The backfill's history phase (worker/history.py): which discounts only their invoices can value, and
the notes it keeps beside its errors. The whole run: tests/worker/test_backfill.py."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
import responses
from redis import Redis

from ledger.db import Database
from ledger.settings import Settings
from ledger.state import record_object
from tests.worker.stripe_http import BASE, FakeStripe
from worker.history import HISTORY_STREAM, HistoryProgress, HistoryRebuild
from worker.records import stored_object
from worker.runs import save_checkpoint

NOW = datetime(2024, 6, 1, tzinfo=UTC)

SUMMER = {
    "id": "SUMMER15",
    "object": "coupon",
    "percent_off": 15,
    "amount_off": None,
    "duration": "forever",
    "applies_to": None,
}


def discount(discount_id: str, coupon: Any) -> dict[str, Any]:
    return {"id": discount_id, "object": "discount", "start": 0, "end": None, "source": {"coupon": coupon}}


def subscription(*discounts: Any) -> dict[str, Any]:
    return {"id": "sub_1", "object": "subscription", "customer": "cus_1", "discounts": list(discounts), "items": {}}


def invoice(*, discounts: list[Any], line_discounts: Sequence[str] = ()) -> dict[str, Any]:
    line = {"id": "il_1", "discounts": list(line_discounts), "discount_amounts": []}
    return {"id": "in_1", "status": "paid", "discounts": discounts, "lines": {"data": [line], "has_more": False}}


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeStripe(mock)


@pytest.fixture
def history(db: Database, settings: Settings, redis: Redis) -> HistoryRebuild:
    config = dataclasses.replace(settings, stripe_api_key="sk_test_subledger", stripe_api_base=BASE)
    return HistoryRebuild(db, config, "backfill_1", NOW)


def as_invoiced(
    history: HistoryRebuild, db: Database, sub: dict[str, Any], invoices: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[str]]:
    notes: list[str] = []
    with db.transaction() as session:
        found = history.discounts.find(session, "sub_1", sub, invoices, notes)
    return found, notes


def test_a_coupon_stripe_still_has_is_read_and_stored(
    history: HistoryRebuild, db: Database, stripe: FakeStripe
) -> None:
    stripe.add("coupons", SUMMER)
    found, notes = as_invoiced(history, db, subscription(discount("di_1", "SUMMER15")), [])
    assert (found, notes) == ({}, [])
    assert len(stripe.calls("/v1/coupons/SUMMER15")) == 1
    with db.session() as session:
        assert stored_object(session, "SUMMER15", "coupon") is not None


def test_a_coupon_stripe_deleted_is_valued_as_invoiced_once_per_process(
    history: HistoryRebuild, db: Database, stripe: FakeStripe
) -> None:
    """A 404: the discount is valued from its invoices; Stripe is asked once, whatever the subscriptions."""
    gone = discount("di_1", "SUMMER15")
    for _ in range(2):
        found, notes = as_invoiced(history, db, subscription(), [invoice(discounts=[gone])])
        assert found == {"di_1": {"id": "SUMMER15", "object": "coupon", "deleted": True}}
        assert notes == [
            "subscription sub_1: discount di_1 valued as invoiced (Stripe has deleted its coupon SUMMER15)"
        ]
    assert len(stripe.calls("/v1/coupons/SUMMER15")) == 1


def test_a_coupon_stored_whole_is_not_asked_for(history: HistoryRebuild, db: Database, stripe: FakeStripe) -> None:
    with db.transaction() as session:
        record_object(session, SUMMER, observed_at=NOW, deleted=True)  # its coupon.deleted carried it whole
    found, notes = as_invoiced(history, db, subscription(discount("di_1", "SUMMER15")), [])
    assert (found, notes, stripe.requests) == ({}, [], [])


def test_a_discount_named_by_id_and_nowhere_stored_is_valued_as_invoiced(
    history: HistoryRebuild, db: Database, stripe: FakeStripe
) -> None:
    """A line's discount removed since: no object anywhere, and discounts have no endpoint."""
    found, notes = as_invoiced(history, db, subscription(), [invoice(discounts=[], line_discounts=["di_gone"])])
    assert found == {"di_gone": {}}
    assert notes == ["subscription sub_1: discount di_gone valued as invoiced (Stripe no longer has it)"]
    assert stripe.requests == []


def test_a_discount_carrying_its_coupon_whole_needs_nothing(
    history: HistoryRebuild, db: Database, stripe: FakeStripe
) -> None:
    """A 2020-shaped discount holds its coupon: deleted or not, it values the discount."""
    whole = {"id": "di_1", "object": "discount", "coupon": SUMMER}
    assert as_invoiced(history, db, subscription(whole), [invoice(discounts=[whole])]) == ({}, [])
    assert stripe.requests == []


def test_notes_are_kept_beside_the_errors_and_read_back_apart(db: Database) -> None:
    progress = HistoryProgress()
    progress.add(2, Counter({"subscription versions": 3}), ["subscription sub_2: broken"], ["valued as invoiced"])
    with db.transaction() as session:
        save_checkpoint(session, "backfill_1", HISTORY_STREAM, cursor=None, objects=0)
        progress.save(session, "backfill_1")
    loaded = HistoryProgress.load(db, "backfill_1")
    assert (loaded.errors, loaded.notes) == (["subscription sub_2: broken"], ["valued as invoiced"])
    assert loaded.counts == Counter({"subscription versions": 3, "errors": 1}), "a note is no error"
