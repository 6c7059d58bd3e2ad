"""`subledger backfill` against a Stripe account simulated at the HTTP level.

What is read (every list, every page, every invoice line, the expansions), how
Stripe's refusals are waited out, how an interrupted run resumes, and what the
history it rebuilds is worth in movements.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import responses
from redis import Redis
from sqlalchemy import delete, func, select, text, update

from ledger.db import Database, utcnow
from ledger.intake import store_event
from ledger.models import (
    BackfillCustomer,
    Base,
    Customer,
    Movement,
    RunStatus,
    StripeObject,
    SubscriptionSnapshot,
    SyncCheckpoint,
    SyncRun,
    WaitingCustomer,
)
from ledger.settings import ENV_VARIABLES, Settings
from tests.ledger.subscription_payloads import item, many_items, price, subscription, ts, utc
from tests.worker.stripe_http import BASE, FakeStripe
from worker.backfill import BackfillFailed, windows
from worker.backfill import backfill as run_backfill
from worker.cli import main
from worker.history import HISTORY_STREAM, HistoryFailed, HistoryProcess, HistoryProgress, HistoryRebuild
from worker.processing import drain
from worker.progress import LogProgress
from worker.recompute import after_apply_for
from worker.streams import CATALOG, CUSTOMERS, INVOICES, SUBSCRIPTIONS, Stream, ready_from
from worker.stripe_api import StripeUnavailable

# --- a small account --------------------------------------------------------------------------

BASIC = price(1000, price_id="price_basic", product="prod_basic")
PRO = price(3000, price_id="price_pro", product="prod_pro")
HALF = {
    "id": "HALF",
    "object": "coupon",
    "percent_off": 50,
    "amount_off": None,
    "currency": None,
    "duration": "forever",
    "duration_in_months": None,
    "applies_to": None,
    "created": ts(utc(1, 1)),
    "livemode": False,
}


def product(product_id: str) -> dict[str, Any]:
    return {"id": product_id, "object": "product", "name": product_id, "created": ts(utc(1, 1)), "livemode": False}


def customer(customer_id: str, created: datetime) -> dict[str, Any]:
    return {
        "id": customer_id,
        "object": "customer",
        "email": f"{customer_id}@example.com",
        "name": customer_id,
        "created": ts(created),
        "livemode": False,
    }


def discount(discount_id: str, coupon_id: str, start: datetime, sub_id: str) -> dict[str, Any]:
    return {
        "id": discount_id,
        "object": "discount",
        "customer": "cus_1",
        "subscription": sub_id,
        "start": ts(start),
        "end": None,
        "source": {"type": "coupon", "coupon": coupon_id},
    }


def line(
    line_id: str,
    rate: dict[str, Any],
    start: datetime,
    end: datetime,
    *,
    sub_id: str = "sub_1",
    quantity: int = 1,
    proration: bool = False,
    amount: int | None = None,
) -> dict[str, Any]:
    return {
        "id": line_id,
        "object": "line_item",
        "amount": rate["unit_amount"] * quantity if amount is None else amount,
        "currency": "usd",
        "period": {"start": ts(start), "end": ts(end)},
        "quantity": quantity,
        "discounts": [],
        "discount_amounts": [],
        "parent": {
            "type": "subscription_item_details",
            "subscription_item_details": {
                "subscription": sub_id,
                "subscription_item": "si_1",
                "proration": proration,
                "invoice_item": None,
            },
        },
        "pricing": {"type": "price_details", "price_details": {"price": rate["id"], "product": rate["product"]}},
    }


def invoice(
    invoice_id: str,
    created: datetime,
    lines: list[dict[str, Any]],
    *,
    sub_id: str = "sub_1",
    customer_id: str = "cus_1",
    discounts: list[Any] | None = None,
) -> dict[str, Any]:
    return {
        "id": invoice_id,
        "object": "invoice",
        "customer": customer_id,
        "created": ts(created),
        "status": "paid",
        "currency": "usd",
        "livemode": False,
        "billing_reason": "subscription_cycle",
        "discounts": discounts or [],
        "parent": {"type": "subscription_details", "subscription_details": {"subscription": sub_id}},
        "lines": {"object": "list", "data": lines, "has_more": False, "url": f"/v1/invoices/{invoice_id}/lines"},
    }


def history_account(stripe: FakeStripe) -> None:
    """cus_1: basic from Jan 1, upgraded to pro on Jan 15 (prorated), two seats (Mar 1), half off (from
    Mar 20, first billed Apr 1), canceled May 15; back on basic with a second subscription on Jul 1."""
    half_off = discount("di_half", "HALF", utc(3, 20), "sub_1")
    stripe.add("products", product("prod_basic"), product("prod_pro"))
    # Basic is archived: listed only when asked for inactive prices.
    stripe.add(
        "prices",
        dict(BASIC, created=ts(utc(1, 1)), livemode=False, active=False),
        dict(PRO, created=ts(utc(1, 1)), livemode=False, active=True),
    )
    stripe.add("coupons", HALF)
    stripe.add("customers", customer("cus_1", utc(1, 1)))
    canceled = subscription(
        item(PRO, 2),
        start=utc(1, 1),
        status="canceled",
        canceled_at=utc(5, 15),
        ended_at=utc(5, 15),
        discounts=[half_off],
    )
    stripe.add("subscriptions", canceled, subscription(item(BASIC), start=utc(7, 1), sub_id="sub_2"))
    stripe.add(
        "invoices",
        invoice("in_1", utc(1, 1), [line("il_1", BASIC, utc(1, 1), utc(2, 1))]),
        # The upgrade on 15 January, invoiced at once: its proration pair dates it.
        invoice(
            "in_1p",
            utc(1, 15),
            [
                line("il_1c", BASIC, utc(1, 15), utc(2, 1), proration=True, amount=-548),
                line("il_1p", PRO, utc(1, 15), utc(2, 1), proration=True, amount=1645),
            ],
        ),
        invoice("in_2", utc(2, 1), [line("il_2", PRO, utc(2, 1), utc(3, 1))]),
        invoice("in_3", utc(3, 1), [line("il_3", PRO, utc(3, 1), utc(4, 1), quantity=2)]),
        invoice("in_4", utc(4, 1), [line("il_4", PRO, utc(4, 1), utc(5, 1), quantity=2)], discounts=[half_off]),
        invoice("in_5", utc(5, 1), [line("il_5", PRO, utc(5, 1), utc(6, 1), quantity=2)], discounts=[half_off]),
        invoice("in_6", utc(7, 1), [line("il_6", BASIC, utc(7, 1), utc(8, 1), sub_id="sub_2")], sub_id="sub_2"),
    )


def pending_item(item_id: str, rate: dict[str, Any], start: datetime, end: datetime, amount: int) -> dict[str, Any]:
    """A proration of sub_1's item not invoiced yet (`proration_behavior=create_prorations`)."""
    return {
        "id": item_id,
        "object": "invoiceitem",
        "amount": amount,
        "currency": "usd",
        "customer": "cus_1",
        "date": ts(start),
        "invoice": None,
        "livemode": False,
        "parent": {
            "type": "subscription_details",
            "subscription_details": {"subscription": "sub_1", "subscription_item": "si_1"},
        },
        "period": {"start": ts(start), "end": ts(end)},
        "pricing": {"type": "price_details", "price_details": {"price": rate["id"], "product": rate["product"]}},
        "proration": True,
        "quantity": 1,
    }


def test_a_change_only_pending_invoice_items_show_is_dated_by_them(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    """docs/mrr-rules.md §10: upgraded on 20 January with its prorations left for the next invoice, which
    is not out yet. The pending invoice items are the only record of when; the ones billed already
    are their invoices' lines, so only pending ones are listed."""
    stripe.add("products", product("prod_basic"), product("prod_pro"))
    stripe.add("prices", dict(BASIC, created=ts(utc(1, 1)), livemode=False), dict(PRO, created=ts(utc(1, 1))))
    stripe.add("customers", customer("cus_1", utc(1, 1)))
    stripe.add("subscriptions", subscription(item(PRO), start=utc(1, 1)))
    stripe.add("invoices", invoice("in_1", utc(1, 1), [line("il_1", BASIC, utc(1, 1), utc(2, 1))]))
    stripe.add(
        "invoiceitems",
        pending_item("ii_credit", BASIC, utc(1, 20), utc(2, 1), -387),
        pending_item("ii_charge", PRO, utc(1, 20), utc(2, 1), 1161),
        dict(pending_item("ii_billed", PRO, utc(1, 1), utc(2, 1), 500), invoice="in_0"),
    )
    report = run_backfill(db, config)
    assert report.status is RunStatus.OK, report.errors
    source = [f"backfill:{report.run_id}"]
    assert movements(db) == [("new", 1000, "2024-01-01", source), ("expansion", 2000, "2024-01-20", source)]
    assert [query.get("pending") for query in stripe.calls("/v1/invoiceitems")] == ["true"]
    assert set(stored(db, "invoiceitem")) == {"ii_credit", "ii_charge"}


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
def stripe() -> Iterator[FakeStripe]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield FakeStripe(mock)


@pytest.fixture
def config(settings: Settings, redis: Redis) -> Settings:
    """Test-mode key, Stripe at the fake's address, a fresh rate-limit bucket in Redis."""
    return dataclasses.replace(settings, stripe_api_key="sk_test_subledger", stripe_api_base=BASE)


def movements(db: Database, customer_id: str = "cus_1") -> list[tuple[str, int, str, list[str]]]:
    with db.session() as session:
        rows = session.scalars(select(Movement).where(Movement.customer_id == customer_id).order_by(Movement.at))
        return [(row.type, row.amount, row.day.isoformat(), row.sources) for row in rows]


def stored(db: Database, kind: str) -> dict[str, dict[str, Any]]:
    with db.session() as session:
        return {row.id: row.payload for row in session.scalars(select(StripeObject).where(StripeObject.object == kind))}


def empty(db: Database) -> None:
    with db.engine.begin() as connection:
        tables = [table.name for table in reversed(Base.metadata.sorted_tables)]
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"TRUNCATE {', '.join(tables)} CASCADE"))
        else:
            for table in tables:
                connection.execute(text(f"DELETE FROM {table}"))


def outcome(db: Database, run_id: str) -> dict[str, Any]:
    """Everything a backfill leaves behind, with its run id and read times left out."""

    def plain(sources: list[str]) -> list[str]:
        return [source.replace(run_id, "RUN") for source in sources]

    with db.session() as session:
        return {
            "objects": sorted((row.id, row.object, row.customer_id) for row in session.scalars(select(StripeObject))),
            "payloads": {row.id: row.payload for row in session.scalars(select(StripeObject))},
            "customers": sorted((row.id, row.email, row.created) for row in session.scalars(select(Customer))),
            "snapshots": sorted(
                (row.subscription_id, row.observed_at, row.content_hash, plain([row.source])[0])
                for row in session.scalars(select(SubscriptionSnapshot))
            ),
            "movements": sorted(
                (row.customer_id, row.day, row.type, row.amount, tuple(plain(row.sources)))
                for row in session.scalars(select(Movement))
            ),
        }


def customers(count: int) -> list[dict[str, Any]]:
    """`count` customers who joined on Feb 1."""
    return [customer(f"cus_{n:04d}", utc(2, 1)) for n in range(count)]


# --- the history ------------------------------------------------------------------------------


def test_history_from_invoices_becomes_the_movements_webhooks_would_have_made(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    history_account(stripe)
    report = run_backfill(db, config)
    assert report.status is RunStatus.OK, report.errors
    source = [f"backfill:{report.run_id}"]
    assert movements(db) == [
        ("new", 1000, "2024-01-01", source),
        ("expansion", 2000, "2024-01-15", source),  # the upgrade, dated by its prorations
        ("expansion", 3000, "2024-03-01", source),  # a second seat
        ("contraction", -3000, "2024-03-20", source),  # half off, from the discount's start
        ("churn", -3000, "2024-05-15", source),
        ("reactivation", 1000, "2024-07-01", source),  # a second subscription
    ]
    # Everything came from the lists, the archived price too: nothing was fetched one by one.
    assert {path for path, _ in stripe.requests} == {
        "/v1/products",
        "/v1/prices",
        "/v1/coupons",
        "/v1/customers",
        "/v1/subscriptions",
        "/v1/invoices",
        "/v1/invoiceitems",
    }
    assert report.counts["prices"] == 2
    assert report.counts["customers"] == 1
    assert report.counts["subscriptions"] == 2
    assert report.counts["invoices"] == 7
    assert report.counts["ledgers recomputed"] == 1
    assert report.counts["movements added"] == 6
    with db.session() as session:
        run = session.get(SyncRun, report.run_id)
        assert run is not None
        assert (run.status, run.counts) == ("ok", dict(report.counts))


def test_every_list_is_read_with_what_the_mrr_rules_need_expanded(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    history_account(stripe)
    run_backfill(db, config)
    expansions = {
        path: sorted(
            {value for query in stripe.calls(path) for key, value in query.items() if key.startswith("expand")}
        )
        for path in ("/v1/prices", "/v1/coupons", "/v1/subscriptions", "/v1/invoices")
    }
    assert expansions == {
        "/v1/prices": ["data.tiers"],
        "/v1/coupons": ["data.applies_to"],
        "/v1/subscriptions": ["data.discounts", "data.items.data.discounts"],
        "/v1/invoices": ["data.discounts", "data.lines.data.discounts"],
    }
    assert all(len(value.split(".")) <= 4 for values in expansions.values() for value in values), "Stripe's depth limit"
    assert {query["status"] for query in stripe.calls("/v1/subscriptions")} == {"all"}
    # Pages of 100, but for the one-object pages that find when the oldest customer was created
    # and whether each big list takes `created` windows.
    probes = [query for path, query in stripe.requests if query["limit"] == "1"]
    assert probes and all("starting_after" not in query for query in probes)
    assert {path for path, query in stripe.requests if query["limit"] == "1"} == {
        "/v1/customers",
        "/v1/subscriptions",
        "/v1/invoices",
    }
    assert all(query["limit"] == "100" for _, query in stripe.requests if query not in probes)
    # Canceled subscriptions are read too (status=all), and kept with their discounts.
    assert set(stored(db, "subscription")) == {"sub_1", "sub_2"}
    assert set(stored(db, "discount")) == {"di_half"}


def test_a_discount_only_invoices_still_carry_is_stored(db: Database, config: Settings, stripe: FakeStripe) -> None:
    """Removed from its subscription since, a discount is left only on the invoices that applied it (on
    the invoice, or on a line), expanded there; stored, an event naming it by id finds it."""
    stripe.add("products", product("prod_basic"))
    stripe.add("prices", dict(BASIC, created=ts(utc(1, 1)), livemode=False))
    stripe.add("coupons", HALF)
    stripe.add("customers", customer("cus_1", utc(1, 1)))
    stripe.add("subscriptions", subscription(item(BASIC), start=utc(1, 1)))
    on_line = line("il_2", BASIC, utc(2, 1), utc(3, 1))
    on_line["discounts"] = [discount("di_line", "HALF", utc(1, 20), "sub_1")]
    stripe.add(
        "invoices",
        invoice(
            "in_1",
            utc(1, 1),
            [line("il_1", BASIC, utc(1, 1), utc(2, 1))],
            discounts=[discount("di_whole", "HALF", utc(1, 1), "sub_1")],
        ),
        invoice("in_2", utc(2, 1), [on_line]),
    )
    report = run_backfill(db, config)
    assert report.status is RunStatus.OK, report.errors
    assert set(stored(db, "discount")) == {"di_whole", "di_line"}


def deleted_coupon_account(stripe: FakeStripe, taken: int = 450) -> None:
    """cus_1 on pro since Jan 1 with SUMMER15 (15% off forever, applied Feb 10), a campaign coupon Stripe
    has deleted since (its discount names it by id, as from 2025-09-30.clover on; GET answers 404);
    a second subscription, from Mar 1, with a coupon Stripe still has."""
    summer = discount("di_summer", "SUMMER15", utc(2, 10), "sub_1")
    half_off = discount("di_half", "HALF", utc(3, 1), "sub_2")
    stripe.add("products", product("prod_basic"), product("prod_pro"))
    stripe.add(
        "prices", dict(BASIC, created=ts(utc(1, 1)), livemode=False), dict(PRO, created=ts(utc(1, 1)), livemode=False)
    )
    stripe.add("coupons", HALF)
    stripe.add("customers", customer("cus_1", utc(1, 1)))
    stripe.add(
        "subscriptions",
        subscription(item(PRO), start=utc(1, 1), discounts=[summer]),
        subscription(item(BASIC), start=utc(3, 1), sub_id="sub_2", discounts=[half_off]),
    )

    def discounted(line_id: str, rate: dict[str, Any], month: int, taken: int, discount_id: str, **fields: Any):
        billed = line(line_id, rate, utc(month, 1), utc(month + 1, 1), **fields)
        billed["discount_amounts"] = [{"amount": taken, "discount": discount_id}]
        return billed

    stripe.add(
        "invoices",
        invoice("in_1", utc(1, 1), [line("il_1", PRO, utc(1, 1), utc(2, 1))]),
        invoice("in_2", utc(2, 1), [line("il_2", PRO, utc(2, 1), utc(3, 1))]),
        *(
            invoice(
                f"in_{month}",
                utc(month, 1),
                [discounted(f"il_{month}", PRO, month, taken, "di_summer")],
                discounts=[summer],
            )
            for month in (3, 4)
        ),
        invoice(
            "in_b3",
            utc(3, 1),
            [discounted("il_b3", BASIC, 3, 500, "di_half", sub_id="sub_2")],
            sub_id="sub_2",
            discounts=[half_off],
        ),
    )


class InlineHistory:
    """The history process as a thread of this process: `responses` fakes Stripe in this process only, and
    the history asks Stripe for the coupons it needs."""

    def __init__(self, settings: Settings, run_id: str, started_at: datetime) -> None:
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self.run, args=(settings, run_id, started_at), daemon=True)
        self.thread.start()

    def run(self, settings: Settings, run_id: str, started_at: datetime) -> None:
        history_db = Database(settings.database_url)
        try:
            HistoryRebuild(history_db, settings, run_id, started_at).run()
        except BaseException as exc:  # reported by check(), as the process's exit status would be
            self.failure = exc
        finally:
            history_db.dispose()

    def check(self) -> None:
        if self.failure is not None:
            raise HistoryFailed(f"history thread stopped: {self.failure!r}")

    def wait(self, timeout: float) -> bool:
        self.thread.join(timeout)
        self.check()
        return not self.thread.is_alive()

    def stop(self) -> None:
        self.thread.join()


@pytest.mark.parametrize(("taken", "valued"), [(450, (15, None)), (1000, (None, 1000))], ids=["15% off", "10.00 off"])
def test_a_ledger_waiting_for_a_deleted_coupon_is_valued_as_its_invoices_value_it(
    db: Database,
    config: Settings,
    stripe: FakeStripe,
    monkeypatch: pytest.MonkeyPatch,
    taken: int,
    valued: tuple[int | None, int | None],
) -> None:
    """A webhook naming the discount by id needs SUMMER15, which Stripe answers 404 for: the event is
    applied, the customer's ledger waits. The backfill stores the coupon as the invoices value it
    (a percentage, or an amount off), and the ledger no longer waits; a later event of the customer
    is valued with it."""
    deleted_coupon_account(stripe, taken)

    def updated(event_id: str, day: int) -> dict[str, Any]:
        return {
            "id": event_id,
            "object": "event",
            "type": "customer.subscription.updated",
            "created": ts(utc(3, day)),
            "livemode": False,
            "data": {"object": subscription(item(PRO), start=utc(1, 1), discounts=["di_summer"])},
        }

    def waiting() -> WaitingCustomer | None:
        with db.session() as session:
            return session.get(WaitingCustomer, "cus_1")

    with db.transaction() as session:
        store_event(session, updated("evt_summer", 15), received_via="webhook", now=utcnow())
    after_apply = after_apply_for(config)
    assert drain(db, None, budget_s=30, after_apply=after_apply).processed == 1
    found = waiting()
    assert found is not None and found.object_id == "SUMMER15"
    monkeypatch.setattr("worker.backfill.HistoryProcess", InlineHistory)
    report = run_backfill(db, config)
    assert report.status is RunStatus.OK, report.errors
    coupon = stored(db, "coupon")["SUMMER15"]
    assert (coupon["percent_off"], coupon["amount_off"], coupon["deleted"]) == (*valued, True)
    assert coupon["as_invoiced"], "marked as valued from invoices"
    assert waiting() is None
    with db.transaction() as session:
        store_event(session, updated("evt_later", 20), received_via="webhook", now=utcnow())
    assert drain(db, None, budget_s=30, after_apply=after_apply).processed == 1
    assert waiting() is None


def test_a_coupon_stripe_deleted_is_valued_as_invoiced_and_noted_once(
    db: Database, config: Settings, stripe: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 404 for a coupon is no error of the run: the discount is worth what the invoices say it took
    (4.50 a month off 30.00), dated at its own start, and the run's report notes it once."""
    deleted_coupon_account(stripe)
    monkeypatch.setattr("worker.backfill.HistoryProcess", InlineHistory)
    report = run_backfill(db, config)
    assert report.status is RunStatus.OK, report.errors
    assert report.errors == []
    note = "subscription sub_1: discount di_summer valued as invoiced (Stripe has deleted its coupon SUMMER15)"
    assert report.notes == [note]
    assert report.counts["discounts valued as invoiced"] == 1
    assert note in report.summary
    assert len(stripe.calls("/v1/coupons/SUMMER15")) == 1, "asked once"
    source = [f"backfill:{report.run_id}"]
    assert movements(db) == [
        ("new", 3000, "2024-01-01", source),
        ("contraction", -450, "2024-02-10", source),  # the discount's start, first invoiced on Mar 1
        ("expansion", 500, "2024-03-01", source),  # sub_2, half off a coupon Stripe still has
    ]
    with db.session() as session:
        run = session.get(SyncRun, report.run_id)
        assert run is not None and run.status == "ok"


def test_a_customer_only_an_invoice_names_is_stored_by_id(db: Database, config: Settings, stripe: FakeStripe) -> None:
    """A deleted customer is not listed; its one-off invoice still names it, as a webhook would."""
    history_account(stripe)
    stripe.add("invoices", invoice("in_gone", utc(3, 3), [], sub_id="", customer_id="cus_gone"))
    run_backfill(db, config)
    with db.session() as session:
        known = {row.id: (row.email, row.livemode) for row in session.scalars(select(Customer))}
    assert known == {"cus_1": ("cus_1@example.com", False), "cus_gone": (None, False)}


def test_pages_are_followed_while_has_more(db: Database, config: Settings, stripe: FakeStripe) -> None:
    stripe.add("customers", *customers(150))
    report = run_backfill(db, config)
    assert report.counts["customers"] == 150
    with db.session() as session:
        assert len(session.scalars(select(Customer)).all()) == 150
    cursors = [query.get("starting_after") for query in stripe.calls("/v1/customers") if query.get("starting_after")]
    assert cursors == ["cus_0050"]  # newest first: the first page ends with the 100th newest


def test_invoice_lines_past_the_first_10_are_read_from_the_lines_endpoint(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    lines = [line(f"il_{n:02d}", BASIC, utc(1, 1), utc(2, 1)) for n in range(12)]
    stripe.add("invoices", invoice("in_x", utc(1, 1), lines))
    report = run_backfill(db, config)
    assert report.status is RunStatus.OK
    assert stripe.calls("/v1/invoices/in_x/lines") == [
        {"limit": "100", "starting_after": "il_09", "expand[0]": "data.discounts"}
    ]
    kept = stored(db, "invoice")["in_x"]["lines"]
    assert [entry["id"] for entry in kept["data"]] == [entry["id"] for entry in lines]
    assert kept["has_more"] is False


def test_a_429_is_waited_out_and_the_page_read_again(db: Database, config: Settings, stripe: FakeStripe) -> None:
    stripe.add("customers", *customers(3))
    limited = {"error": {"type": "rate_limit_error", "message": "Too many requests"}}
    stripe.fail("/v1/customers", status=429, body=limited, headers={"Retry-After": "0"})
    report = run_backfill(db, config)
    assert report.status is RunStatus.OK
    assert report.counts["customers"] == 3
    [(_, refused)] = stripe.faulted
    assert stripe.calls("/v1/customers").count(refused) == 2


def test_a_500_is_retried(db: Database, config: Settings, stripe: FakeStripe) -> None:
    stripe.add("coupons", HALF)
    stripe.fail("/v1/coupons", status=500)
    report = run_backfill(db, config)
    assert report.status is RunStatus.OK
    assert len(stripe.faulted) == 1
    assert len(stripe.calls("/v1/coupons")) == 2
    assert set(stored(db, "coupon")) == {"HALF"}


def test_a_network_error_is_retried(db: Database, config: Settings, stripe: FakeStripe) -> None:
    stripe.add("products", product("prod_basic"))
    stripe.fail("/v1/products", exception=requests.ConnectionError("connection reset"))
    report = run_backfill(db, config)
    assert report.status is RunStatus.OK
    assert set(stored(db, "product")) == {"prod_basic"}


def test_the_newest_windows_are_read_first(db: Database, config: Settings, stripe: FakeStripe) -> None:
    history_account(stripe)
    report = run_backfill(db, config, threads=1)
    assert report.status is RunStatus.OK, report.errors
    pages = [query for path, query in stripe.requests if path == "/v1/invoices" and query["limit"] == "100"]
    starts = [int(query["created[gte]"]) for query in pages]
    assert len(starts) > 1
    assert starts == sorted(starts, reverse=True)


def test_since_reads_objects_created_from_that_day_and_the_whole_catalog(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    history_account(stripe)
    since = datetime(2024, 6, 1, tzinfo=UTC)
    report = run_backfill(db, config, since=since)
    for path in ("/v1/customers", "/v1/subscriptions", "/v1/invoices"):
        assert {query["created[gte]"] for query in stripe.calls(path)} >= {str(ts(since))}
        assert min(int(query["created[gte]"]) for query in stripe.calls(path)) == ts(since)
    assert all("created[gte]" not in query for query in stripe.calls("/v1/prices"))
    assert set(stored(db, "price")) == {"price_basic", "price_pro"}
    assert set(stored(db, "subscription")) == {"sub_2"}
    assert set(stored(db, "invoice")) == {"in_6"}
    # Without the earlier history, the customer's return looks like a first start.
    assert movements(db) == [("new", 1000, "2024-07-01", [f"backfill:{report.run_id}"])]


def window_checkpoints(db: Database, listing: str) -> list[tuple[int, int, bool]]:
    """(created[gte], created[lt], done) of a listing's windows, oldest first."""
    with db.session() as session:
        rows = session.scalars(select(SyncCheckpoint).where(SyncCheckpoint.stream.like(f"{listing}:%"))).all()
    found = []
    for row in rows:
        start, end = row.stream.split(":", 1)[1].split("..")
        found.append((ts(datetime.fromisoformat(start)), ts(datetime.fromisoformat(end)), row.done))
    return sorted(found)


def test_windows_start_from_the_oldest_customer(db: Database, config: Settings, stripe: FakeStripe) -> None:
    history_account(stripe)  # its only customer joined on 2024-01-01
    run_backfill(db, config)
    for listing in ("customers", "subscriptions", "invoices"):
        bounds = window_checkpoints(db, listing)
        assert bounds[0][0] == ts(datetime(2010, 1, 1, tzinfo=UTC)), "the first window reaches back to 2010"
        # Found to the day by a binary search: no other window begins before that day.
        assert ts(utc(1, 1)) - 86_400 <= bounds[1][0] <= ts(utc(1, 1)) + 86_400 * 500


def test_a_dense_window_hands_its_older_half_to_an_idle_thread(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    recent = [customer(f"cus_r{n:04d}", now - timedelta(minutes=3 * n + 1)) for n in range(700)]
    stripe.add("customers", customer("cus_old", utc(1, 1)), *recent)
    report = run_backfill(db, config)
    assert report.status is RunStatus.OK, report.errors
    assert report.counts["customers"] == 701
    bounds = window_checkpoints(db, "customers")
    assert len(bounds) > 8, "the window holding the 700 recent customers was split"
    assert all(done for _, _, done in bounds)
    assert all(end == following for (_, end, _), (following, _, _) in itertools.pairwise(bounds)), (
        "the windows tile the range: no gap, no overlap"
    )
    pages = [(path, tuple(sorted(query.items()))) for path, query in stripe.requests]
    assert len(pages) == len(set(pages)), "no page was asked for twice"
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(Customer)) == 701


def recent_customer(stripe: FakeStripe) -> datetime:
    """cus_new, who joined 20 days ago on pro: its history can be rebuilt once the newest windows are read."""
    joined = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)
    stripe.add("customers", customer("cus_new", joined))
    stripe.add("subscriptions", subscription(item(PRO), start=joined, sub_id="sub_new", customer="cus_new"))
    billed = line("il_new", PRO, joined, joined + timedelta(days=30), sub_id="sub_new")
    stripe.add("invoices", invoice("in_new", joined, [billed], sub_id="sub_new", customer_id="cus_new"))
    return joined


def hold_the_2024_invoices_until_history_moves(db: Database, stripe: FakeStripe) -> list[int]:
    """Hold the request for 2024's invoices until the history checkpoint counts a customer (60 s at most).

    The list returned gets the count seen when the request went on (0: none within 60 s).
    """
    rebuilt_meanwhile: list[int] = []

    def hold(path: str, query: dict[str, str]) -> None:
        window = int(query.get("created[gte]", 0)), int(query.get("created[lt]", 0))
        probe = query.get("limit") == "1"  # asked while planning, before any history
        if path != "/v1/invoices" or probe or rebuilt_meanwhile or not window[0] <= ts(utc(3, 1)) < window[1]:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with db.session() as session:
                rebuilt = session.scalar(select(SyncCheckpoint.objects).where(SyncCheckpoint.stream == "history"))
            if rebuilt:
                rebuilt_meanwhile.append(rebuilt)
                return
            time.sleep(0.2)
        rebuilt_meanwhile.append(0)

    stripe.hooks.append(hold)
    return rebuilt_meanwhile


def test_history_is_rebuilt_while_older_windows_are_still_read(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    history_account(stripe)  # cus_1, from 2024
    joined = recent_customer(stripe)
    rebuilt_meanwhile = hold_the_2024_invoices_until_history_moves(db, stripe)
    report = run_backfill(db, config)
    assert report.status is RunStatus.OK, report.errors
    assert rebuilt_meanwhile == [1], "cus_new was rebuilt while 2024's invoices were still unread"
    assert movements(db, "cus_new") == [("new", 3000, joined.date().isoformat(), [f"backfill:{report.run_id}"])]
    assert [movement[0] for movement in movements(db)] == [
        "new",
        "expansion",
        "expansion",
        "contraction",
        "churn",
        "reactivation",
    ]


# --- stopping and resuming --------------------------------------------------------------------


def test_an_interrupted_backfill_resumes_after_its_last_page_and_ends_as_an_uninterrupted_one(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    history_account(stripe)
    stripe.add("customers", *customers(250))
    # Newest first: page 1 ends with cus_0150, page 2 with cus_0050; page 3 fails hard, once.
    stripe.fail(
        "/v1/customers",
        exception=RuntimeError("the network cable was pulled"),
        when=lambda query: query.get("starting_after") == "cus_0050",
    )
    with pytest.raises(StripeUnavailable):
        run_backfill(db, config)
    with db.session() as session:
        [run] = session.scalars(select(SyncRun)).all()
        assert run.status == "failed"
        assert run.errors and run.errors[-1].startswith("stopped: ")
        stopped_at = session.scalars(
            select(SyncCheckpoint).where(
                SyncCheckpoint.stream.like("customers:%"), SyncCheckpoint.objects > 0, SyncCheckpoint.done.is_(False)
            )
        ).one()
        assert (stopped_at.cursor, stopped_at.objects, stopped_at.done) == ("cus_0050", 200, False)
        assert stopped_at.reached == int(utc(2, 1).timestamp()), "created of the oldest customer committed"
        first_run = run.id
    answered = {
        (path, tuple(sorted(query.items())))
        for path, query in stripe.requests
        if not (path == "/v1/customers" and query.get("starting_after") == "cus_0050")
    }
    stripe.requests.clear()

    resumed = run_backfill(db, config)

    assert (resumed.run_id, resumed.resumed, resumed.status) == (first_run, True, RunStatus.OK)
    asked_again = {(path, tuple(sorted(query.items()))) for path, query in stripe.requests}
    assert not answered & asked_again, "a page committed before the interruption was read again"
    assert [query.get("starting_after") for query in stripe.calls("/v1/customers") if "starting_after" in query] == [
        "cus_0050"
    ]
    interrupted = outcome(db, first_run)
    counts = dict(resumed.counts)

    empty(db)
    uninterrupted = run_backfill(db, config)
    assert outcome(db, uninterrupted.run_id) == interrupted
    assert dict(uninterrupted.counts) == counts
    assert counts["customers"] == 251
    with db.session() as session:
        assert session.scalars(select(SyncCheckpoint.reached).where(SyncCheckpoint.done)).all() == [None] * len(
            session.scalars(select(SyncCheckpoint).where(SyncCheckpoint.done)).all()
        ), "a window read to its end holds nothing back"


def test_ctrl_c_leaves_the_run_resumable(db: Database, config: Settings, stripe: FakeStripe) -> None:
    stripe.add("customers", *customers(150))
    stripe.fail("/v1/customers", exception=KeyboardInterrupt(), when=lambda query: "starting_after" in query)
    with pytest.raises(KeyboardInterrupt):
        run_backfill(db, config)
    with db.session() as session:
        [run] = session.scalars(select(SyncRun)).all()
        assert (run.status, run.errors) == (
            "failed",
            ["stopped: interrupted; run `subledger backfill` again to resume"],
        )
    resumed = run_backfill(db, config)
    assert (resumed.run_id, resumed.status, resumed.errors) == (run.id, RunStatus.OK, [])
    assert resumed.counts["customers"] == 150


def test_a_killed_history_process_fails_the_run_which_then_resumes(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    history_account(stripe)
    stripe.add("customers", *customers(150))

    def kill_the_history_process(path: str, query: dict[str, str]) -> None:
        if path == "/v1/invoices":
            for child in multiprocessing.active_children():
                if child.name == "subledger-history":
                    os.kill(child.pid or 0, signal.SIGKILL)
                    child.join()

    stripe.hooks.append(kill_the_history_process)
    with pytest.raises(BackfillFailed) as raised:
        run_backfill(db, config)
    [message] = str(raised.value).splitlines()
    assert "history process stopped: exit status -9" in message
    with db.session() as session:
        [run] = session.scalars(select(SyncRun)).all()
        assert run.status == "failed"
        assert run.errors[-1] == "stopped: HistoryFailed: history process stopped: exit status -9"
    stripe.hooks.clear()
    resumed = run_backfill(db, config)
    assert (resumed.run_id, resumed.status, resumed.errors) == (run.id, RunStatus.OK, [])
    interrupted = outcome(db, run.id)
    counts = dict(resumed.counts)
    empty(db)
    uninterrupted = run_backfill(db, config)
    assert outcome(db, uninterrupted.run_id) == interrupted
    assert dict(uninterrupted.counts) == counts


def rebuilt(db: Database) -> list[str]:
    with db.session() as session:
        return sorted(session.scalars(select(BackfillCustomer.customer_id).where(BackfillCustomer.rebuilt)))


def test_two_history_workers_never_take_the_same_customer(db: Database, config: Settings, stripe: FakeStripe) -> None:
    """What the reading process does once everything is read: rebuild beside the history process."""
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers through its single write lock: one history worker")
    history_account(stripe)
    stripe.add("customers", *customers(12))
    stripe.add(
        "subscriptions",
        *(
            subscription(item(BASIC), start=utc(2, 1), sub_id=f"sub_{n:04d}", customer=f"cus_{n:04d}")
            for n in range(12)
        ),
    )
    run = run_backfill(db, config)
    expected = outcome(db, run.run_id)
    with db.transaction() as session:  # as when the history process starts: nothing rebuilt yet
        session.execute(update(BackfillCustomer).values(rebuilt=False))
        session.execute(delete(SyncCheckpoint).where(SyncCheckpoint.stream == HISTORY_STREAM))
    with db.transaction() as session:
        HistoryProgress().save(session, run.run_id)
        started = session.get_one(SyncRun, run.run_id).started_at
    history = HistoryRebuild(db, config, run.run_id, started)

    other = db.engine.connect()  # another worker's open batch: it holds cus_1
    other.execute(text("BEGIN"))
    other.execute(select(BackfillCustomer).where(BackfillCustomer.customer_id == "cus_1").with_for_update())
    try:
        while history.rebuild_batch(None):
            pass
        assert rebuilt(db) == [f"cus_{n:04d}" for n in range(12)]
        assert not history.finish(), "cus_1 is still being rebuilt"
    finally:
        other.rollback()
        other.close()
    assert history.rebuild_batch(None)
    assert history.finish()
    assert sorted(rebuilt(db)) == sorted(["cus_1", *(f"cus_{n:04d}" for n in range(12))])
    progress = HistoryProgress.load(db, run.run_id)
    assert (progress.customers, progress.done) == (13, True)
    assert outcome(db, run.run_id) == expected


def test_a_history_process_interrupted_on_its_own_fails_the_run(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    history_account(stripe)
    recent_customer(stripe)
    rebuilt_meanwhile = hold_the_2024_invoices_until_history_moves(db, stripe)
    interrupted: list[int] = []
    once = threading.Lock()

    def interrupt_the_history_process(path: str, query: dict[str, str]) -> None:
        # Once it has rebuilt cus_new, while 2024's invoices are unread: one Ctrl-C, for it alone.
        with once:
            if not rebuilt_meanwhile or interrupted:
                return
            for child in multiprocessing.active_children():
                if child.name == "subledger-history":
                    os.kill(child.pid or 0, signal.SIGINT)
                    child.join()
                    interrupted.append(child.exitcode or 0)

    stripe.hooks.append(interrupt_the_history_process)
    with pytest.raises(BackfillFailed) as raised:
        run_backfill(db, config)
    assert rebuilt_meanwhile == [1]
    assert interrupted == [0], "the process ended as if it had finished"
    assert "history process stopped before every customer was rebuilt" in str(raised.value)
    with db.session() as session:
        [run] = session.scalars(select(SyncRun)).all()
        assert run.status == "failed"
    stripe.hooks.clear()
    assert run_backfill(db, config).status is RunStatus.OK


def test_a_history_process_that_cannot_work_says_why_in_one_line(config: Settings, tmp_path: Path) -> None:
    nowhere = dataclasses.replace(config, database_url=f"sqlite:///{tmp_path / 'missing' / 'subledger.db'}")
    process = HistoryProcess(nowhere, "backfill_nowhere", datetime.now(UTC))
    with pytest.raises(HistoryFailed) as raised:
        deadline = time.monotonic() + 60
        while not process.wait(0.5) and time.monotonic() < deadline:
            pass
    [message] = str(raised.value).splitlines()
    assert message.startswith("history process stopped: OperationalError: ")


def test_an_unexpected_failure_is_recorded_and_raised_as_one_line(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    stripe.fail("/v1/coupons", status=200, body={"object": "list", "data": [{"object": "coupon"}], "has_more": True})
    with pytest.raises(BackfillFailed) as raised:
        run_backfill(db, config)
    [message] = str(raised.value).splitlines()
    assert message.endswith("failed (KeyError: 'id'); run it again to resume")
    with db.session() as session:
        [run] = session.scalars(select(SyncRun)).all()
        assert (run.status, run.errors) == ("failed", ["stopped: KeyError: 'id'"])


def test_a_stripe_outage_fails_the_run_and_says_so(db: Database, config: Settings, stripe: FakeStripe) -> None:
    denied = {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}}
    stripe.fail("/v1/products", status=401, body=denied)
    with pytest.raises(StripeUnavailable, match="rejected STRIPE_API_KEY"):
        run_backfill(db, config)
    with db.session() as session:
        [run] = session.scalars(select(SyncRun)).all()
        assert run.status == "failed"
        assert run.errors == ["stopped: Stripe rejected STRIPE_API_KEY"]


def test_unreadable_invoice_lines_make_a_partial_run_naming_the_invoice(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    lines = [line(f"il_{n:02d}", BASIC, utc(1, 1), utc(2, 1)) for n in range(11)]
    stripe.add("invoices", invoice("in_x", utc(1, 1), lines), invoice("in_y", utc(1, 2), lines[:1]))
    stripe.fail("/v1/invoices/in_x/lines", status=404, body={"error": {"type": "invalid_request_error"}})
    report = run_backfill(db, config)
    assert report.status is RunStatus.PARTIAL
    assert len(report.errors) == 1
    assert report.errors[0].startswith("invoice in_x: its lines could not be read")
    assert set(stored(db, "invoice")) == {"in_y"}


def test_requests_draw_from_the_buckets_shared_in_redis(
    db: Database, config: Settings, stripe: FakeStripe, redis: Redis
) -> None:
    history_account(stripe)
    run_backfill(db, config)
    keys = {key.decode() for key in redis.keys("subledger:stripe:*")}
    assert {"subledger:stripe:test:global", "subledger:stripe:test:/v1/invoices"} <= keys


# --- what a user sees -------------------------------------------------------------------------


@pytest.fixture
def cli_env(config: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Settings:
    for variable in ENV_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", config.database_url)
    monkeypatch.setenv("REDIS_URL", config.redis_url or "")
    monkeypatch.setenv("STRIPE_API_KEY", config.stripe_api_key or "")
    monkeypatch.setenv("STRIPE_API_BASE", BASE)
    return config


def test_the_command_prints_the_summary_and_exits_0(
    cli_env: Settings, stripe: FakeStripe, capsys: pytest.CaptureFixture[str]
) -> None:
    history_account(stripe)
    assert main(["backfill"]) == 0
    out, err = capsys.readouterr()
    [summary] = out.splitlines()
    assert summary.startswith("backfill backfill_") and " ok: " in summary
    assert "1 customers" in summary and "7 invoices" in summary and "6 movements added" in summary
    assert err == ""


def test_a_partial_run_exits_1_with_one_line_on_stderr(
    cli_env: Settings, stripe: FakeStripe, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = [line(f"il_{n:02d}", BASIC, utc(1, 1), utc(2, 1)) for n in range(11)]
    stripe.add("invoices", invoice("in_x", utc(1, 1), lines))
    stripe.fail("/v1/invoices/in_x/lines", status=404, body={"error": {"type": "invalid_request_error"}})
    assert main(["backfill"]) == 1
    out, err = capsys.readouterr()
    assert " partial: " in out
    [problem] = err.splitlines()
    assert problem.startswith("subledger: backfill partial: invoice in_x: its lines could not be read")


def test_without_a_terminal_progress_is_a_log_line_per_stream_every_10_seconds(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    progress = LogProgress(clock=lambda: now[0])
    progress.stream("invoices")
    for _ in range(25):
        now[0] += 1.0
        progress.advance("invoices", 100)
    progress.finish("invoices")
    lines = [record.getMessage() for record in caplog.records if record.name == "subledger.progress"]
    assert lines == [
        "invoices: 1,000 running, 100.0/s, 10s elapsed",
        "invoices: 2,000 running, 100.0/s, 20s elapsed",
        "invoices: 2,500 done, 100.0/s, 25s elapsed",
    ]


# --- windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "count", "dense_from", "expected"),
    [
        pytest.param(0, 800, 4, None, [(0, 200), (200, 400), (400, 600), (600, 800)], id="even"),
        pytest.param(0, 800, 4, 400, [(0, 500), (500, 600), (600, 700), (700, 800)], id="spread over the data"),
        pytest.param(0, 3, 8, None, [(0, 3)], id="too short to split"),
        pytest.param(0, 800, 1, None, [(0, 800)], id="one window"),
    ],
)
def test_windows_cover_the_range_without_gaps(
    start: int, end: int, count: int, dense_from: int | None, expected: list[tuple[int, int]]
) -> None:
    assert windows(start, end, count, dense_from=dense_from) == expected


# --- the Stripe API version -------------------------------------------------------------------


def test_every_request_names_stripe_api_version_and_the_run_records_it(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    history_account(stripe)
    chosen = dataclasses.replace(config, stripe_api_version="2025-10-29.clover")
    report = run_backfill(db, chosen)
    assert report.status is RunStatus.OK, report.errors
    assert stripe.versions and set(stripe.versions) == {"2025-10-29.clover"}
    with db.session() as session:
        assert session.get_one(SyncRun, report.run_id).stripe_api_version == "2025-10-29.clover"


def test_a_run_is_resumed_only_with_the_api_version_it_read_with(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    stripe.add("customers", *customers(150))
    stripe.fail("/v1/customers", exception=KeyboardInterrupt(), when=lambda query: "starting_after" in query)
    with pytest.raises(KeyboardInterrupt):
        run_backfill(db, config)
    other = run_backfill(db, dataclasses.replace(config, stripe_api_version="2024-09-30.acacia"))
    assert not other.resumed, "its objects would be read in two shapes"
    assert other.status is RunStatus.OK
    with db.session() as session:
        runs = {run.id: (run.status, run.stripe_api_version) for run in session.scalars(select(SyncRun))}
    assert sorted(runs.values()) == [("failed", config.stripe_api_version), ("ok", "2024-09-30.acacia")]


# --- a stand-in for Stripe without `created` filters (localstripe) ----------------------------

UNEXPECTED_CREATED = {"error": {"message": "Unexpected created", "type": "invalid_request_error"}}


def refuse_created_filters(stripe: FakeStripe) -> None:
    """Every request with a `created[…]` filter is answered 400, as localstripe answers it."""
    for path in ("/v1/customers", "/v1/subscriptions", "/v1/invoices"):
        stripe.fail(
            path,
            status=400,
            body=UNEXPECTED_CREATED,
            when=lambda query: any(key.startswith("created[") for key in query),
            times=1_000_000,
        )


def test_a_list_refused_its_created_windows_is_read_whole_with_every_object(
    db: Database, config: Settings, stripe: FakeStripe, caplog: pytest.LogCaptureFixture
) -> None:
    history_account(stripe)
    stripe.add("customers", *customers(150))
    windowed = run_backfill(db, config)
    assert windowed.status is RunStatus.OK, windowed.errors
    expected = outcome(db, windowed.run_id)
    empty(db)
    refuse_created_filters(stripe)
    caplog.set_level(logging.WARNING, logger="subledger.backfill")

    report = run_backfill(db, config)

    assert report.status is RunStatus.OK, report.errors
    assert (report.counts["customers"], report.counts["subscriptions"], report.counts["invoices"]) == (151, 2, 7)
    assert outcome(db, report.run_id) == expected, "the same objects, histories and movements as with windows"
    said = [record.getMessage() for record in caplog.records if "refuses `created` windows" in record.getMessage()]
    assert [message.split(":")[0] for message in said] == ["customers", "subscriptions", "invoices"]
    assert all("Unexpected created" in message for message in said)
    with db.session() as session:
        streams = {row.stream: row.done for row in session.scalars(select(SyncCheckpoint))}
    big = {
        name: done for name, done in streams.items() if name.split(":")[0] in {"customers", "subscriptions", "invoices"}
    }
    assert big == {"customers": True, "subscriptions": True, "invoices": True}, "one stream each, read whole"


def test_a_list_read_whole_keeps_only_what_since_asks_for(db: Database, config: Settings, stripe: FakeStripe) -> None:
    history_account(stripe)
    refuse_created_filters(stripe)
    report = run_backfill(db, config, since=datetime(2024, 6, 1, tzinfo=UTC))
    assert report.status is RunStatus.OK, report.errors
    assert set(stored(db, "subscription")) == {"sub_2"}
    assert set(stored(db, "invoice")) == {"in_6"}
    assert movements(db) == [("new", 1000, "2024-07-01", [f"backfill:{report.run_id}"])]


def test_history_waits_for_a_list_read_whole_then_follows_the_windowed_ones() -> None:
    catalog = [Stream(listing) for listing in CATALOG]
    subscriptions = [Stream(SUBSCRIPTIONS, 0, 100), Stream(SUBSCRIPTIONS, 100, 200)]
    invoices = [Stream(INVOICES, 0, 100), Stream(INVOICES, 100, 200)]
    streams = [*catalog, Stream(CUSTOMERS), *subscriptions, *invoices]
    read = {stream.name for stream in catalog} | {subscriptions[1].name, invoices[1].name}
    assert ready_from(streams, read) is None, "a customer may still be anywhere in the list"
    assert ready_from(streams, read | {"customers"}) == datetime.fromtimestamp(100, UTC)


def test_history_follows_a_window_still_being_read_newest_first_one_second_behind_its_oldest_object() -> None:
    subscriptions = [Stream(SUBSCRIPTIONS, 0, 100), Stream(SUBSCRIPTIONS, 100, 200)]
    invoices = [Stream(INVOICES, 0, 100), Stream(INVOICES, 100, 200)]
    streams = [*(Stream(listing) for listing in CATALOG), Stream(CUSTOMERS, 0, 200), *subscriptions, *invoices]
    read = {stream.name for stream in streams} - {invoices[0].name, invoices[1].name}

    def frontier(reached: dict[str, int]) -> int | None:
        found = ready_from(streams, read, reached)
        return None if found is None else int(found.timestamp())

    # Objects of the second 150 may still be on the next page: only from 151 on is everything stored.
    assert frontier({invoices[1].name: 150}) == 151
    assert frontier({invoices[1].name: 150, invoices[0].name: 40}) == 151, "an older window waits for the newer"
    assert frontier({invoices[1].name: 199}) is None, "nothing of the window is known whole yet"
    assert frontier({}) is None
    read.add(invoices[1].name)
    assert frontier({invoices[0].name: 40}) == 41
    assert frontier({}) == 100


# --- more items than Stripe embeds ------------------------------------------------------------


def test_a_subscription_with_more_items_than_stripe_embeds_is_valued_with_every_item(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    """25 items, 20 embedded in the subscriptions list: the rest are paged before the page is stored."""
    items = many_items(25)
    stripe.add("prices", *(dict(entry["price"], created=ts(utc(1, 1)), livemode=False) for entry in items))
    stripe.add("customers", customer("cus_1", utc(1, 1)))
    stripe.add("subscriptions", subscription(*items, start=utc(1, 1)))
    lines = [line(f"il_{n:02d}", entry["price"], utc(1, 1), utc(2, 1)) for n, entry in enumerate(items)]
    for billed, entry in zip(lines, items, strict=True):
        billed["parent"]["subscription_item_details"]["subscription_item"] = entry["id"]
    stripe.add("invoices", invoice("in_1", utc(1, 1), lines))

    report = run_backfill(db, config)

    assert report.status is RunStatus.OK, report.errors
    [paged] = stripe.calls("/v1/subscription_items")
    assert (paged["subscription"], paged["limit"], paged["starting_after"]) == ("sub_1", "100", "si_19")
    kept = stored(db, "subscription")["sub_1"]["items"]
    assert ([entry["id"] for entry in kept["data"]], kept["has_more"]) == ([entry["id"] for entry in items], False)
    assert movements(db) == [("new", 100 * sum(range(1, 26)), "2024-01-01", [f"backfill:{report.run_id}"])]


def test_unreadable_subscription_items_make_a_partial_run_naming_the_subscription(
    db: Database, config: Settings, stripe: FakeStripe
) -> None:
    stripe.add("customers", customer("cus_1", utc(1, 1)))
    stripe.add("subscriptions", subscription(*many_items(21), start=utc(1, 1)))
    stripe.fail("/v1/subscription_items", status=404, body={"error": {"type": "invalid_request_error"}})
    report = run_backfill(db, config)
    assert report.status is RunStatus.PARTIAL
    assert report.errors[0].startswith("subscription sub_1: its items could not be read")
    assert stored(db, "subscription") == {}, "never kept with a cut list"
