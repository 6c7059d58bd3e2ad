"""Reconciliation (docs/mrr-rules.md §9): the ledger against Stripe's current state, on
the real database, with Stripe's HTTP API simulated by `responses`."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import responses
from flask.testing import FlaskClient
from redis import Redis
from rq import SimpleWorker
from rq.job import Job
from rq.registry import ScheduledJobRegistry
from sqlalchemy import func, select, text, update

from ledger.db import Database, utcnow
from ledger.intake import QUEUE_NAME, REPAIR_QUEUE_NAME, store_event
from ledger.models import DriftItem, Movement, RunStatus, StripeObject, SubscriptionSnapshot, SyncRun, WaitingCustomer
from ledger.settings import ENV_VARIABLES, Settings
from ledger.state import RANK_EVENT, RANK_HISTORY, RANK_RECONCILE, record_object
from ledger.timeline import Snapshot
from tests.ledger.subscription_payloads import item, price, repeating_discount, subscription, ts, utc
from tests.stripe_payloads import current_event
from tests.worker.stripe_http import FakeStripe
from tests.worker.test_backfill import PRO, customer, deleted_coupon_account, discount, invoice, line, product
from tests.worker.test_pipeline import deliver
from worker import processing
from worker.cli import main
from worker.defaults import REPAIR_BATCH
from worker.jobs import queue_repair, repair_subscriptions
from worker.queues import repair_queue, worker_queues
from worker.recompute import after_apply_for
from worker.reconcile import contradicted_by_invoices, mrr_steps, observed_before, reconcile
from worker.runs import RunRefused, start_run
from worker.stripe_api import StripeAPI

BASE = "https://stripe.test"
GOLD = price(10000, price_id="price_gold")


@pytest.fixture
def stripe_settings(settings: Settings) -> Settings:
    return replace(settings, stripe_api_key="sk_test_subledger", stripe_api_base=BASE)


@pytest.fixture
def api(stripe_settings: Settings) -> StripeAPI:
    return StripeAPI(stripe_settings, sleep=lambda _: None)


def ledger_has(db: Database, settings: Settings, *events: dict[str, Any]) -> None:
    """Events received by webhook and processed by a worker."""
    with db.transaction() as session:
        for event in events:
            store_event(session, event, received_via="webhook", now=utcnow())
    report = processing.drain(db, None, budget_s=60, after_apply=after_apply_for(settings))
    assert report.processed == len(events), report.errors


def sub_event(event_id: str, kind: str, payload: dict[str, Any], at) -> dict[str, Any]:
    return current_event(f"customer.subscription.{kind}", payload, event_id=event_id, created=ts(at))


def stripe_lists(
    *subscriptions: dict[str, Any],
    has_more: bool = False,
    invoices: tuple[dict[str, Any], ...] = (),
    invoice_items: tuple[dict[str, Any], ...] = (),
) -> None:
    """The next answer of GET /v1/subscriptions (repeated while it is the last one registered), and the
    records every subscription has: `invoices` and pending `invoice_items`, none by default; no events."""
    for path, data, more in (
        ("/v1/events", (), False),
        ("/v1/subscriptions", subscriptions, has_more),
        ("/v1/invoices", invoices, False),
        ("/v1/invoiceitems", invoice_items, False),
    ):
        responses.get(f"{BASE}{path}", json={"object": "list", "url": path, "data": list(data), "has_more": more})


def calls_to(path: str) -> list[Any]:
    """The requests to `path` and below it (`/v1/coupons` takes in `/v1/coupons/HALF`)."""
    return [call for call in responses.calls if call.request.url.removeprefix(BASE).split("?")[0].startswith(path)]


def movements(db: Database) -> list[tuple[Any, ...]]:
    with db.session() as session:
        rows = session.scalars(select(Movement).order_by(Movement.customer_id, Movement.day, Movement.type))
        return [(m.customer_id, m.day.isoformat(), m.type, m.amount, tuple(m.sources)) for m in rows]


def drift(db: Database, run_id: str) -> list[tuple[Any, ...]]:
    with db.session() as session:
        rows = session.scalars(select(DriftItem).where(DriftItem.run_id == run_id).order_by(DriftItem.subscription_id))
        return [
            (d.subscription_id, d.customer_id, d.currency, d.ledger_mrr, d.stripe_mrr, d.difference, d.effective_at)
            for d in rows
        ]


def gold_since_january(**fields: Any) -> dict[str, Any]:
    return subscription(item(GOLD, quantity=fields.pop("quantity", 1)), start=utc(1, 10), **fields)


@responses.activate
def test_a_cancellation_the_ledger_missed_is_churn_dated_ended_at(
    db: Database, settings: Settings, stripe_settings: Settings, api: StripeAPI
) -> None:
    ledger_has(db, settings, sub_event("evt_created", "created", gold_since_january(), utc(1, 10)))
    stripe_lists(gold_since_january(status="canceled", canceled_at=utc(3, 1), ended_at=utc(3, 5)))

    report = reconcile(db, stripe_settings, api=api)

    assert report.status is RunStatus.OK
    source = f"reconcile:{report.run_id}"
    assert movements(db) == [
        ("cus_1", "2024-01-10", "new", 10000, ("evt_created",)),
        ("cus_1", "2024-03-05", "churn", -10000, (source,)),
    ]
    assert drift(db, report.run_id) == [("sub_1", "cus_1", "usd", 10000, 0, -10000, utc(3, 5))]
    assert dict(report.counts) == {
        "events_caught_up": 0,
        "subscriptions_checked": 1,
        "drifted": 1,
        "corrected": 1,
        "customers_recomputed": 1,
        "skipped_in_flight": 0,
    }
    [listing] = calls_to("/v1/subscriptions")
    assert "status=all" in listing.request.url
    assert "expand%5B0%5D=data.discounts&expand%5B1%5D=data.items.data.discounts" in listing.request.url
    with db.session() as session:
        # Stripe's own record dates it (`ended_at`): stored as history, not as the state the run read.
        [correction] = session.scalars(select(SubscriptionSnapshot).where(SubscriptionSnapshot.source == source))
        assert correction.rank == RANK_HISTORY
        run = session.get(SyncRun, report.run_id)
        assert run is not None and (run.status, run.counts["corrected"]) == ("ok", 1)


@responses.activate
def test_a_quantity_change_the_webhooks_missed_takes_effect_at_the_run(
    db: Database, settings: Settings, stripe_settings: Settings, api: StripeAPI
) -> None:
    ledger_has(db, settings, sub_event("evt_created", "created", gold_since_january(), utc(1, 10)))
    stripe_lists(gold_since_january(quantity=3))

    before = utcnow()
    report = reconcile(db, stripe_settings, api=api)
    after = utcnow()

    [(_, _, _, ledger_mrr, stripe_mrr, difference, effective_at)] = drift(db, report.run_id)
    assert (ledger_mrr, stripe_mrr, difference) == (10000, 30000, 20000)
    assert observed_before(before) <= effective_at <= after
    with db.session() as session:
        assert session.scalars(select(DriftItem.dated_by)).all() == ["run"]  # no invoice bills the change
    assert movements(db)[-1] == (
        "cus_1",
        effective_at.date().isoformat(),
        "expansion",
        20000,
        (f"reconcile:{report.run_id}",),
    )


PLATINUM = price(30000, price_id="price_plat", product="prod_plat")


def upgraded_on_february_20() -> tuple[dict[str, Any], tuple[dict[str, Any], ...]]:
    """Gold from Jan 10, platinum from Feb 20 (prorated: a `subscription_update` invoice), and its invoices."""
    current = subscription(item(PLATINUM), start=utc(1, 10), current_period_start=utc(3, 10))
    upgrade = invoice(
        "in_3",
        utc(2, 20),
        [
            line("il_3a", GOLD, utc(2, 20), utc(3, 10), proration=True, amount=-6207),
            line("il_3b", PLATINUM, utc(2, 20), utc(3, 10), proration=True, amount=18621),
        ],
    )
    upgrade["billing_reason"] = "subscription_update"
    invoices = (
        invoice("in_1", utc(1, 10), [line("il_1", GOLD, utc(1, 10), utc(2, 10))]),
        invoice("in_2", utc(2, 10), [line("il_2", GOLD, utc(2, 10), utc(3, 10))]),
        upgrade,
        invoice("in_4", utc(3, 10), [line("il_4", PLATINUM, utc(3, 10), utc(4, 10))]),
    )
    return current, invoices


@responses.activate
def test_a_lost_prorated_upgrade_is_dated_by_its_proration_lines(
    db: Database, settings: Settings, stripe_settings: Settings, api: StripeAPI
) -> None:
    ledger_has(db, settings, sub_event("evt_created", "created", gold_since_january(), utc(1, 10)))
    current, invoices = upgraded_on_february_20()
    stripe_lists(current, invoices=invoices)
    responses.get(f"{BASE}/v1/prices/price_gold", json=GOLD)  # the lines name it by id; no event brought it

    report = reconcile(db, stripe_settings, api=api)

    assert report.status is RunStatus.OK, report.errors
    source = f"reconcile:{report.run_id}"
    assert movements(db) == [
        ("cus_1", "2024-01-10", "new", 10000, ("evt_created",)),
        ("cus_1", "2024-02-20", "expansion", 20000, (source,)),
    ]
    assert drift(db, report.run_id) == [("sub_1", "cus_1", "usd", 10000, 30000, 20000, utc(2, 20))]
    with db.session() as session:
        [item_] = session.scalars(select(DriftItem))
    assert item_.dated_by == "records"
    assert item_.action.endswith("effective 2024-02-20T00:00:00Z, dated by Stripe's records")
    [listed] = calls_to("/v1/invoices")
    assert "subscription=sub_1" in listed.request.url

    second = reconcile(db, stripe_settings, api=api)
    assert (second.counts["drifted"], drift(db, second.run_id)) == (0, [])


@responses.activate
def test_a_version_kept_before_a_trial_ended_moves_the_conversion_and_is_followed_by_one_dating_it(
    db: Database, settings: Settings, stripe_settings: Settings, api: StripeAPI
) -> None:
    """Gold after a trial (Jan 3–10), platinum from Feb 20, gold again from Mar 15, both prorated; the ledger
    saw the trial and an unrelated update on Apr 1, and a backfill stored the invoices.

    The Apr 1 version values the converted trial right (gold), but once the Feb 20 version is kept the trial
    converts into platinum, so the conversion must be kept too: else the ledger is worth platinum from
    Jan 10, and every later run finds the same drift."""
    trial = {"start": utc(1, 3), "trial_start": utc(1, 3), "trial_end": utc(1, 10)}
    trialing = subscription(item(GOLD), status="trialing", **trial)
    ledger_has(
        db,
        settings,
        sub_event("evt_created", "created", trialing, utc(1, 3)),
        sub_event("evt_renamed", "updated", subscription(item(GOLD), **trial), utc(4, 1)),
    )
    _, upgraded = upgraded_on_february_20()  # its invoices; the subscription differs by the trial
    downgrade = invoice(
        "in_5",
        utc(3, 15),
        [
            line("il_5a", PLATINUM, utc(3, 15), utc(4, 10), proration=True, amount=-25161),
            line("il_5b", GOLD, utc(3, 15), utc(4, 10), proration=True, amount=8387),
        ],
    )
    downgrade["billing_reason"] = "subscription_update"
    invoices = (*upgraded, downgrade, invoice("in_6", utc(4, 10), [line("il_6", GOLD, utc(4, 10), utc(5, 10))]))
    with db.transaction() as session:  # as a backfill stores them
        for paid in invoices:
            record_object(session, paid, observed_at=utc(4, 10))
    stripe_lists(subscription(item(GOLD), current_period_start=utc(4, 10), **trial), invoices=invoices)
    responses.get(f"{BASE}/v1/prices/price_plat", json=PLATINUM)  # only the lines name it

    first = reconcile(db, stripe_settings, api=api)

    assert first.status is RunStatus.OK, first.errors
    assert [(day, kind, amount) for _, day, kind, amount, _ in movements(db)] == [
        ("2024-01-10", "new", 10000),
        ("2024-02-20", "expansion", 20000),
        ("2024-03-15", "contraction", -20000),
    ]
    second = reconcile(db, stripe_settings, api=api)
    assert (second.counts["drifted"], drift(db, second.run_id)) == (0, [])


@responses.activate
def test_a_lost_upgrade_a_later_event_repaired_is_redated_by_the_invoices_that_arrived(
    db: Database, settings: Settings, stripe_settings: Settings, api: StripeAPI
) -> None:
    # The upgrade's own event was lost; its invoice's events and the renewal's came. Today's MRR is right,
    # the month before it is not: the stored invoice shows it, and the run rebuilds from Stripe's records.
    current, invoices = upgraded_on_february_20()
    ledger_has(
        db,
        settings,
        sub_event("evt_created", "created", gold_since_january(), utc(1, 10)),
        current_event("invoice.paid", invoices[2], event_id="evt_upgrade_paid", created=ts(utc(2, 20))),
        sub_event("evt_renewed", "updated", current, utc(3, 10)),
    )
    assert [m[1:4] for m in movements(db)] == [("2024-01-10", "new", 10000), ("2024-03-10", "expansion", 20000)]
    stripe_lists(current, invoices=invoices)
    responses.get(f"{BASE}/v1/prices/price_gold", json=GOLD)

    report = reconcile(db, stripe_settings, api=api)

    assert report.status is RunStatus.OK, report.errors
    assert [m[1:4] for m in movements(db)] == [("2024-01-10", "new", 10000), ("2024-02-20", "expansion", 20000)]
    assert drift(db, report.run_id) == [("sub_1", "cus_1", "usd", 30000, 30000, 0, utc(2, 20))]
    # Only the drifting subscription's records are read.
    assert len(calls_to("/v1/invoices")) == 1


def tiered_price() -> dict[str, Any]:
    rate = price(0, price_id="price_seats", product="prod_seats")
    rate.update(billing_scheme="tiered", tiers_mode="volume", unit_amount=None, unit_amount_decimal=None, tiers=None)
    return rate


@responses.activate
def test_a_subscription_the_ledger_never_saw_is_drift_with_its_prices_and_coupons_fetched(
    db: Database, stripe_settings: Settings, api: StripeAPI
) -> None:
    # A list read cannot expand tiers or an item discount's coupon: both come as they would.
    unseen = subscription(item(tiered_price(), quantity=5), start=utc(2, 1), sub_id="sub_2", customer="cus_2")
    unseen["discounts"] = [
        {
            "id": "di_half",
            "object": "discount",
            "start": ts(utc(2, 1)),
            "end": None,
            "customer": "cus_2",
            "subscription": "sub_2",
            "source": {"type": "coupon", "coupon": "HALF"},
        }
    ]
    stripe_lists(unseen)
    with_tiers = {**tiered_price(), "tiers": [{"up_to": None, "unit_amount": 1000, "flat_amount": None}]}
    responses.get(f"{BASE}/v1/prices/price_seats", json=with_tiers)
    half = {"id": "HALF", "object": "coupon", "percent_off": 50, "amount_off": None, "duration": "forever"}
    responses.get(f"{BASE}/v1/coupons/HALF", json=half)

    report = reconcile(db, stripe_settings, api=api)

    assert report.status is RunStatus.OK
    assert drift(db, report.run_id) == [("sub_2", "cus_2", "usd", 0, 2500, 2500, utc(2, 1))]
    assert movements(db) == [("cus_2", "2024-02-01", "new", 2500, (f"reconcile:{report.run_id}",))]
    with db.session() as session:
        assert set(session.scalars(select(StripeObject.id))) == {"price_seats", "HALF"}
        [action] = session.scalars(select(DriftItem.action))
    assert action.startswith("added a subscription the ledger had never seen (active), effective 2024-02-01T00")
    fetched = sorted(call.request.url.removeprefix(BASE) for call in calls_to("/v1/coupons") + calls_to("/v1/prices"))
    assert fetched == ["/v1/coupons/HALF?expand%5B0%5D=applies_to", "/v1/prices/price_seats?expand%5B0%5D=tiers"]


def ledger_state(db: Database) -> tuple[Any, ...]:
    with db.session() as session:
        ids = sorted(session.scalars(select(Movement.id)))
        snapshots = session.scalar(select(func.count()).select_from(SubscriptionSnapshot))
    return ids, movements(db), snapshots


@responses.activate
def test_a_second_run_in_a_row_changes_nothing(
    db: Database, settings: Settings, stripe_settings: Settings, api: StripeAPI
) -> None:
    ledger_has(
        db,
        settings,
        sub_event("evt_1", "created", gold_since_january(), utc(1, 10)),
        sub_event("evt_2", "created", gold_since_january(sub_id="sub_2", customer="cus_2"), utc(1, 10)),
    )
    stripe_lists(
        gold_since_january(status="canceled", canceled_at=utc(3, 5), ended_at=utc(3, 5)),
        gold_since_january(sub_id="sub_2", customer="cus_2", quantity=2),
        subscription(item(GOLD), start=utc(2, 1), sub_id="sub_3", customer="cus_3"),
    )
    first = reconcile(db, stripe_settings, api=api)
    assert (first.counts["drifted"], first.counts["corrected"]) == (3, 3)
    state = ledger_state(db)

    second = reconcile(db, stripe_settings, api=api)

    assert second.status is RunStatus.OK
    assert drift(db, second.run_id) == []
    assert (second.counts["subscriptions_checked"], second.counts["drifted"]) == (3, 0)
    assert second.counts["customers_recomputed"] == 0
    assert ledger_state(db) == state


@responses.activate
def test_the_run_records_the_api_version_its_requests_named(db: Database, stripe_settings: Settings) -> None:
    chosen = replace(stripe_settings, stripe_api_version="2024-09-30.acacia")
    stripe_lists(gold_since_january())
    report = reconcile(db, chosen, api=StripeAPI(chosen, sleep=lambda _: None))
    assert report.status is RunStatus.OK, report.errors
    assert {call.request.headers["Stripe-Version"] for call in responses.calls} == {"2024-09-30.acacia"}
    with db.session() as session:
        assert session.get_one(SyncRun, report.run_id).stripe_api_version == "2024-09-30.acacia"


def test_a_correction_never_overrides_an_event_stamped_with_the_second_of_the_question(settings: Settings) -> None:
    asked_at = utc(3, 1, 12).replace(microsecond=400_000)
    one, two = gold_since_january(), gold_since_january(quantity=2)
    # The quantity changed just after Stripe answered, within the same second.
    event = Snapshot("sub_1", "cus_1", asked_at.replace(microsecond=0), RANK_EVENT, "evt_2", two)
    correction = Snapshot("sub_1", "cus_1", observed_before(asked_at), RANK_RECONCILE, "reconcile:r", one)
    steps = mrr_steps([event, correction], settings.rules, until=asked_at)
    assert steps[-1][1:] == ("usd", 20000)


@responses.activate
def test_one_unreadable_subscription_makes_the_run_partial_and_the_others_are_corrected(
    db: Database, stripe_settings: Settings, api: StripeAPI
) -> None:
    broken = subscription(item(tiered_price()), start=utc(2, 1), sub_id="sub_bad", customer="cus_bad")
    stripe_lists(broken, subscription(item(GOLD), start=utc(2, 1), sub_id="sub_ok", customer="cus_ok"))
    missing = {"error": {"type": "invalid_request_error", "message": "No such price: 'price_seats'"}}
    responses.get(f"{BASE}/v1/prices/price_seats", status=404, json=missing)

    report = reconcile(db, stripe_settings, api=api)

    assert report.status is RunStatus.PARTIAL
    [error] = report.errors
    assert error.startswith("sub_bad: price price_seats is tiered but carries no tiers")
    assert "/v1/prices/price_seats" in error
    assert [row[0] for row in drift(db, report.run_id)] == ["sub_ok"]
    with db.session() as session:
        run = session.get(SyncRun, report.run_id)
        assert run is not None and (run.status, run.errors) == ("partial", [error])


@responses.activate
def test_a_live_subscription_missing_from_the_list_is_read_on_its_own(
    db: Database, settings: Settings, stripe_settings: Settings, api: StripeAPI
) -> None:
    ledger_has(db, settings, sub_event("evt_created", "created", gold_since_january(), utc(1, 10)))
    stripe_lists()
    ended = gold_since_january(status="canceled", canceled_at=utc(4, 1), ended_at=utc(4, 1))
    responses.get(f"{BASE}/v1/subscriptions/sub_1", json=ended)

    report = reconcile(db, stripe_settings, api=api)

    assert report.status is RunStatus.OK
    assert drift(db, report.run_id) == [("sub_1", "cus_1", "usd", 10000, 0, -10000, utc(4, 1))]


@responses.activate
def test_a_customer_whose_events_are_queued_has_them_applied_before_the_comparison(
    db: Database, settings: Settings, stripe_settings: Settings, api: StripeAPI
) -> None:
    ledger_has(db, settings, sub_event("evt_1", "created", gold_since_january(), utc(1, 10)))
    upgraded = gold_since_january(quantity=2)
    with db.transaction() as session:
        store_event(session, sub_event("evt_2", "updated", upgraded, utc(2, 1)), received_via="webhook", now=utcnow())
    stripe_lists(upgraded)

    report = reconcile(db, stripe_settings, api=api)

    # The run applies the queued event as a worker would (§9: events first), then finds nothing to correct.
    assert (report.status, report.counts["skipped_in_flight"], report.counts["drifted"]) == (RunStatus.OK, 0, 0)
    assert movements(db)[-1] == ("cus_1", "2024-02-01", "expansion", 10000, ("evt_2",))


@responses.activate
def test_a_customer_a_worker_is_processing_is_skipped_without_waiting(
    db: Database, settings: Settings, stripe_settings: Settings, api: StripeAPI
) -> None:
    if db.engine.dialect.name != "postgresql":
        pytest.skip("SQLite serialises writers through its single write lock: no partition lock to hold")
    ledger_has(db, settings, sub_event("evt_1", "created", gold_since_january(), utc(1, 10)))
    stripe_lists(gold_since_january(quantity=2))
    with db.engine.connect() as worker:
        worker.execute(text("SELECT pg_advisory_lock(hashtextextended('cus_1', 0))"))
        try:
            report = reconcile(db, stripe_settings, api=api)
        finally:
            worker.execute(text("SELECT pg_advisory_unlock(hashtextextended('cus_1', 0))"))
    assert (report.status, report.counts["skipped_in_flight"], report.counts["drifted"]) == (RunStatus.OK, 1, 0)
    assert reconcile(db, stripe_settings, api=api).counts["corrected"] == 1


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, stripe_settings: Settings) -> None:
    for variable in ENV_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", stripe_settings.database_url)
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_subledger")
    monkeypatch.setenv("STRIPE_API_BASE", BASE)


@responses.activate
def test_a_stripe_error_while_listing_fails_the_run_with_one_line_and_status_1(
    db: Database, settings: Settings, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    ledger_has(db, settings, sub_event("evt_created", "created", gold_since_january(), utc(1, 10)))
    canceled = gold_since_january(status="canceled", canceled_at=utc(3, 5), ended_at=utc(3, 5))
    stripe_lists(canceled, has_more=True)
    failure = {"error": {"type": "api_error", "message": "An unknown error occurred"}}
    responses.get(f"{BASE}/v1/subscriptions", status=500, json=failure, headers={"Stripe-Should-Retry": "false"})

    assert main(["reconcile"]) == 1

    captured = capsys.readouterr()
    [line] = captured.err.splitlines()
    assert line == (
        "subledger: reconcile failed: reading subscriptions from Stripe: "
        "Stripe error on GET /v1/subscriptions: APIError"
    )
    assert captured.out.startswith("reconcile reconcile_")
    assert " failed: 1 corrected, " in captured.out
    assert "starting_after=sub_1" in calls_to("/v1/subscriptions")[1].request.url
    with db.session() as session:
        [run] = session.scalars(select(SyncRun).where(SyncRun.kind == "reconcile"))
        assert (run.status, len(run.errors), run.finished_at is not None) == ("failed", 1, True)
    # What the first page corrected stays corrected.
    assert [m[2] for m in movements(db)] == ["new", "churn"]


@responses.activate
def test_a_second_reconcile_is_refused_while_one_runs(
    db: Database, stripe_settings: Settings, api: StripeAPI, cli_env: None, capsys: pytest.CaptureFixture[str]
) -> None:
    running = start_run(db, "reconcile", parameters={})
    with pytest.raises(RunRefused, match=f"a reconcile is already running \\(run {running.run_id}"):
        reconcile(db, stripe_settings, api=api)
    assert main(["reconcile"]) == 1
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("subledger: a reconcile is already running")
    assert len(responses.calls) == 0


@responses.activate
def test_a_reconcile_that_died_does_not_block_the_next(db: Database, stripe_settings: Settings, api: StripeAPI) -> None:
    dead = start_run(db, "reconcile", parameters={})
    with db.transaction() as session:
        session.execute(update(SyncRun).values(heartbeat_at=utcnow() - timedelta(minutes=11)))
    stripe_lists()
    report = reconcile(db, stripe_settings, api=api)
    assert report.run_id != dead.run_id
    assert report.status is RunStatus.OK


def test_a_ledger_waiting_for_a_deleted_coupon_is_valued_as_its_invoices_value_it(
    db: Database, settings: Settings
) -> None:
    """The event naming SUMMER15's discount by id was received, the coupon's were lost and Stripe answers
    404 for it: the ledger waits. The run reads the subscription's invoices, stores the coupon as they
    value it (15% off) and recomputes the customer, who no longer waits."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        stripe = FakeStripe(mock)
        deleted_coupon_account(stripe)
        config = replace(settings, stripe_api_key="sk_test_subledger", stripe_api_base=stripe.base)
        [summer] = [s for s in stripe.objects["subscriptions"].values() if s["id"] == "sub_1"]
        with db.transaction() as session:
            event = sub_event("evt_summer", "updated", summer, utc(3, 15))
            store_event(session, event, received_via="webhook", now=utcnow())
        processing.drain(db, None, budget_s=30, after_apply=after_apply_for(config))
        with db.session() as session:
            assert session.get(WaitingCustomer, "cus_1") is not None

        report = reconcile(db, config, api=StripeAPI(config, sleep=lambda _: None))

    assert report.status is RunStatus.OK, report.errors
    with db.session() as session:
        assert session.get(WaitingCustomer, "cus_1") is None
        coupon = session.get(StripeObject, "SUMMER15")
    assert coupon is not None and (coupon.payload["percent_off"], coupon.deleted) == (15, True)
    assert [m[2:4] for m in movements(db) if m[0] == "cus_1"][-1] == ("contraction", -450)


def scheduled_repairs(redis: Redis) -> list[Job]:
    registry = ScheduledJobRegistry(queue=repair_queue(redis))
    return [Job.fetch(job_id, connection=redis) for job_id in registry.get_job_ids()]


def run_worker(redis: Redis) -> None:
    """An RQ worker in burst mode, in this process (so `responses` answers its Stripe calls)."""
    SimpleWorker(worker_queues(redis), connection=redis).work(burst=True)


@responses.activate
def test_a_paid_invoice_that_contradicts_the_ledger_has_the_worker_repair_it_before_the_night(
    client: FlaskClient, db: Database, redis: Redis, worker_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The upgrade's event was lost; its invoice and the renewal's came as webhooks. The worker finds that
    what they billed is not what the ledger says, and queues a repair that rebuilds the subscription
    from Stripe's records: the upgrade is dated February 20, as its proration lines say."""
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_subledger")
    monkeypatch.setenv("STRIPE_API_BASE", BASE)
    current, invoices = upgraded_on_february_20()
    stripe_lists(current, invoices=invoices)
    responses.get(f"{BASE}/v1/subscriptions/sub_1", json=current)
    responses.get(f"{BASE}/v1/prices/price_gold", json=GOLD)
    paid = [current_event("invoice.paid", i, event_id=f"evt_{i['id']}", created=i["created"]) for i in invoices]

    deliver(client, sub_event("evt_created", "created", gold_since_january(), utc(1, 10)), *paid[:2])
    run_worker(redis)
    assert scheduled_repairs(redis) == []  # January and February billed what the ledger says

    deliver(client, *paid[2:])
    run_worker(redis)
    assert [m[1:4] for m in movements(db)] == [("2024-01-10", "new", 10000)]
    [job] = scheduled_repairs(redis)
    assert job.args == (["sub_1"], 1)
    ScheduledJobRegistry(queue=repair_queue(redis)).remove(job)
    repair_queue(redis).enqueue_job(job)  # due now rather than in REPAIR_DELAY_S
    run_worker(redis)

    assert [m[1:4] for m in movements(db)] == [("2024-01-10", "new", 10000), ("2024-02-20", "expansion", 20000)]
    with db.session() as session:
        run = session.scalars(select(SyncRun).where(SyncRun.kind == "repair")).one()
        [item_] = session.scalars(select(DriftItem).where(DriftItem.run_id == run.id))
    assert (run.status, run.parameters) == ("ok", {"subscriptions": ["sub_1"], "trigger": "paid invoice"})
    assert (item_.ledger_mrr, item_.stripe_mrr, item_.effective_at, item_.dated_by) == (
        10000,
        30000,
        utc(2, 20),
        "records",
    )
    assert "subscription=sub_1" in calls_to("/v1/invoices")[0].request.url
    assert calls_to("/v1/events") == []  # a repair reads no events: the webhooks are flowing
    # The repaired ledger agrees with the invoices: the next one queues nothing.
    renewal = invoice("in_5", utc(4, 10), [line("il_5", PLATINUM, utc(4, 10), utc(5, 10))])
    deliver(client, current_event("invoice.paid", renewal, event_id="evt_in_5", created=renewal["created"]))
    run_worker(redis)
    assert scheduled_repairs(redis) == []


def test_a_customer_whose_invoices_took_nothing_off_a_deleted_coupon_is_valued_by_another_customers(
    db: Database, settings: Settings
) -> None:
    """cus_0 is trialing with SUMMER15 too: its only invoice took 0 off, which says nothing of the coupon.
    cus_0 comes first; the run tries it again once cus_1's invoices have valued the coupon (15% off)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        stripe = FakeStripe(mock)
        deleted_coupon_account(stripe)
        zero = {**discount("di_zero", "SUMMER15", utc(3, 15), "sub_0"), "customer": "cus_0"}
        trialing = subscription(
            item(PRO), start=utc(3, 15), sub_id="sub_0", customer="cus_0", status="trialing", discounts=[zero]
        )
        trialing.update(trial_start=ts(utc(3, 15)), trial_end=ts(utc(4, 15)))
        trial_line = line("il_0", PRO, utc(3, 15), utc(4, 15), sub_id="sub_0", amount=0)
        trial_line["discount_amounts"] = [{"amount": 0, "discount": "di_zero"}]
        stripe.add("customers", customer("cus_0", utc(3, 15)))
        stripe.add("subscriptions", trialing)
        stripe.add(
            "invoices", invoice("in_0", utc(3, 15), [trial_line], sub_id="sub_0", customer_id="cus_0", discounts=[zero])
        )
        config = replace(settings, stripe_api_key="sk_test_subledger", stripe_api_base=stripe.base)
        [summer] = [s for s in stripe.objects["subscriptions"].values() if s["id"] == "sub_1"]
        with db.transaction() as session:
            for event in (
                sub_event("evt_trial", "created", trialing, utc(3, 15)),
                sub_event("evt_summer", "updated", summer, utc(3, 15)),
            ):
                store_event(session, event, received_via="webhook", now=utcnow())
        processing.drain(db, None, budget_s=30, after_apply=after_apply_for(config))
        with db.session() as session:
            assert sorted(session.scalars(select(WaitingCustomer.customer_id))) == ["cus_0", "cus_1"]

        report = reconcile(db, config, api=StripeAPI(config, sleep=lambda _: None))

    assert report.status is RunStatus.OK, report.errors
    with db.session() as session:
        assert session.scalars(select(WaitingCustomer)).all() == []


YEARLY = price(120000, "year", price_id="price_support", product="prod_support")


def paid(*invoices: dict[str, Any]) -> list[dict[str, Any]]:
    return [current_event("invoice.paid", i, event_id=f"evt_{i['id']}", created=i["created"]) for i in invoices]


def contradicted(db: Database, settings: Settings, *invoices: dict[str, Any]) -> list[str]:
    with db.session() as session:
        return contradicted_by_invoices(session, settings.rules, [i["id"] for i in invoices])


def test_paid_invoices_that_bill_what_the_ledger_says_contradict_nothing(db: Database, settings: Settings) -> None:
    """Two seats of gold monthly beside a yearly support item, the renewal's event stamped half a minute
    after the period its invoice bills starts, and a coupon that ended: the invoices agree."""
    ended = repeating_discount(20, utc(1, 10), utc(2, 10))
    first = subscription(item(GOLD, 2), item(YEARLY, item_id="si_2"), start=utc(1, 10), discounts=[ended])
    renewed = subscription(item(GOLD, 2), item(YEARLY, item_id="si_2"), start=utc(1, 10), discounts=[ended])
    january = invoice("in_1", utc(1, 10), [line("il_1", GOLD, utc(1, 10), utc(2, 10), quantity=2)])
    support = line("il_1b", YEARLY, utc(1, 10), utc(1, 10) + timedelta(days=366))
    support["parent"]["subscription_item_details"]["subscription_item"] = "si_2"
    january["lines"]["data"].append(support)
    february = invoice("in_2", utc(2, 10), [line("il_2", GOLD, utc(2, 10), utc(3, 10), quantity=2)])
    for billed in january["lines"]["data"]:
        billed["discount_amounts"] = [{"amount": billed["amount"] // 5, "discount": "di_1"}]
    january["discounts"] = ["di_1"]
    ledger_has(
        db,
        settings,
        sub_event("evt_created", "created", first, utc(1, 10)),
        sub_event("evt_renewed", "updated", renewed, utc(2, 10) + timedelta(seconds=30)),
        *paid(january, february),
    )
    assert contradicted(db, settings, january, february) == []


@pytest.mark.parametrize("lost", ["a quantity change", "a discount's removal", "a new item"])
def test_a_paid_invoice_after_a_lost_change_contradicts_the_ledger(db: Database, settings: Settings, lost: str) -> None:
    half_off = {**repeating_discount(50, utc(1, 10), utc(12, 10)), "end": None}
    before, after = {
        "a quantity change": (item(GOLD, 2), item(GOLD, 3)),
        "a discount's removal": (item(GOLD), item(GOLD)),
        "a new item": (item(GOLD), item(GOLD)),
    }[lost]
    first = subscription(before, start=utc(1, 10), discounts=[half_off] if lost == "a discount's removal" else [])
    lines = [line("il_2", GOLD, utc(2, 10), utc(3, 10), quantity=after["quantity"])]
    if lost == "a new item":
        lines.append(line("il_2b", PLATINUM, utc(2, 10), utc(3, 10)))
    february = invoice("in_2", utc(2, 10), lines)
    ledger_has(db, settings, sub_event("evt_created", "created", first, utc(1, 10)), *paid(february))
    with db.transaction() as session:  # the new price came with a catalog event
        record_object(session, PLATINUM, observed_at=utc(1, 1))

    assert contradicted(db, settings, february) == ["sub_1"]


@responses.activate
def test_a_repair_of_a_customer_with_events_in_flight_is_queued_again_later(
    db: Database, redis: Redis, worker_env: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_API_KEY", "sk_test_subledger")
    monkeypatch.setenv("STRIPE_API_BASE", BASE)
    responses.get(f"{BASE}/v1/subscriptions/sub_1", json=gold_since_january(quantity=2))
    with db.transaction() as session:  # received, no worker has tried it yet
        event = sub_event("evt_more_seats", "updated", gold_since_january(quantity=2), utc(2, 1))
        store_event(session, event, received_via="webhook", now=utcnow())
    repair_queue(redis).enqueue(repair_subscriptions, ["sub_1"], 1)

    run_worker(redis)

    [again] = scheduled_repairs(redis)
    assert again.args == (["sub_1"], 2)
    with db.session() as session:
        run = session.scalars(select(SyncRun).where(SyncRun.kind == "repair")).one()
    assert (run.status, run.counts["skipped_in_flight"], run.counts["corrected"]) == ("ok", 1, 0)


def pro_since_january(stripe: FakeStripe) -> None:
    """cus_1 on pro since Jan 1, no discount now; the test adds the invoices."""
    stripe.add("products", product("prod_pro"))
    stripe.add("prices", dict(PRO, created=ts(utc(1, 1)), livemode=False))
    stripe.add("customers", customer("cus_1", utc(1, 1)))
    stripe.add("subscriptions", subscription(item(PRO), start=utc(1, 1)))


def test_a_ledger_waiting_for_a_discount_stripe_no_longer_has_is_valued_as_its_invoices_value_it(
    db: Database, settings: Settings
) -> None:
    """`customer.discount.created` for di_gone was lost, and the discount was removed on Mar 1: Stripe's
    subscription no longer names it and Stripe has no reading a discount by id, so the February version,
    which names it by id, waits. The run values it as the invoice it reduced says (15% off)."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        stripe = FakeStripe(mock)
        pro_since_january(stripe)
        discounted = line("il_2", PRO, utc(2, 1), utc(3, 1))
        discounted["discount_amounts"] = [{"amount": 450, "discount": "di_gone"}]
        stripe.add(
            "invoices",
            invoice("in_1", utc(1, 1), [line("il_1", PRO, utc(1, 1), utc(2, 1))]),
            invoice("in_2", utc(2, 1), [discounted], discounts=["di_gone"]),
            invoice("in_3", utc(3, 1), [line("il_3", PRO, utc(3, 1), utc(4, 1))]),
        )
        config = replace(settings, stripe_api_key="sk_test_subledger", stripe_api_base=stripe.base)
        ledger_has(
            db,
            config,
            sub_event("evt_created", "created", subscription(item(PRO), start=utc(1, 1)), utc(1, 1)),
            sub_event("evt_off", "updated", subscription(item(PRO), start=utc(1, 1), discounts=["di_gone"]), utc(2, 1)),
            sub_event("evt_on", "updated", subscription(item(PRO), start=utc(1, 1)), utc(3, 1)),
        )
        with db.session() as session:
            assert session.get(WaitingCustomer, "cus_1") is not None

        report = reconcile(db, config, api=StripeAPI(config, sleep=lambda _: None))

    assert report.status is RunStatus.OK, report.errors
    with db.session() as session:
        assert session.get(WaitingCustomer, "cus_1") is None
        gone = session.get(StripeObject, "di_gone")
    assert gone is not None and gone.deleted
    assert [m[1:4] for m in movements(db)] == [
        ("2024-01-01", "new", 3000),
        ("2024-02-01", "contraction", -450),
        ("2024-03-01", "expansion", 450),
    ]


def test_a_discount_a_lost_event_named_that_no_record_shows_is_valued_at_nothing_with_a_note(
    db: Database, settings: Settings
) -> None:
    """di_unseen was added on Feb 5 and removed on Feb 20, between two invoices, and its own event was
    lost: nothing says what it took off. The customer does not wait for it for ever: it is worth nothing,
    and the run says so."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        stripe = FakeStripe(mock)
        pro_since_january(stripe)
        stripe.add(
            "invoices",
            *(invoice(f"in_{m}", utc(m, 1), [line(f"il_{m}", PRO, utc(m, 1), utc(m + 1, 1))]) for m in (1, 2, 3)),
        )
        config = replace(settings, stripe_api_key="sk_test_subledger", stripe_api_base=stripe.base)
        ledger_has(
            db,
            config,
            sub_event("evt_created", "created", subscription(item(PRO), start=utc(1, 1)), utc(1, 1)),
            sub_event(
                "evt_on", "updated", subscription(item(PRO), start=utc(1, 1), discounts=["di_unseen"]), utc(2, 5)
            ),
            sub_event("evt_off", "updated", subscription(item(PRO), start=utc(1, 1)), utc(2, 20)),
        )

        report = reconcile(db, config, api=StripeAPI(config, sleep=lambda _: None))

    assert report.status is RunStatus.OK, report.errors
    assert report.notes == [
        "discount di_unseen of sub_1 valued at nothing: a lost event named it, no invoice shows it "
        "and Stripe no longer has it"
    ]
    with db.session() as session:
        assert session.get(WaitingCustomer, "cus_1") is None
    assert [m[1:4] for m in movements(db)] == [("2024-01-01", "new", 3000)]


def test_repairs_are_queued_in_small_batches_behind_the_events(redis: Redis) -> None:
    """A worker takes a repair only when no drain job waits, and each repair reads a few subscriptions:
    repairs never hold the events back for long."""
    queue_repair(redis, [f"sub_{n:02d}" for n in range(2 * REPAIR_BATCH + 5)], attempt=1)

    batches = sorted((job.args for job in scheduled_repairs(redis)), key=lambda args: args[0][0])
    assert [(len(ids), attempt) for ids, attempt in batches] == [(REPAIR_BATCH, 1), (REPAIR_BATCH, 1), (5, 1)]
    assert [q.name for q in worker_queues(redis)] == [QUEUE_NAME, REPAIR_QUEUE_NAME]
