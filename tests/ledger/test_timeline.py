"""ledger.timeline against docs/mrr-rules.md §2 (what counts) and §5 (when it takes effect)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from ledger.settings import RuleSettings
from ledger.timeline import Change, Snapshot, subscription_changes
from tests.ledger.subscription_payloads import (
    item,
    net_at,
    price,
    repeating_discount,
    snapshot,
    subscription,
    utc,
)

ENDED = RuleSettings()
REQUEST = RuleSettings(churn_recognition="request")
GRACE_7 = RuleSettings(past_due_grace_days=7)

START = utc(1, 1, 9)
UNTIL = utc(12, 31)


def changes_of(*snapshots: Snapshot, rules: RuleSettings = ENDED, until: datetime = UNTIL) -> list[Change]:
    return subscription_changes(list(snapshots), rules, until=until)


def moments(changes: list[Change]) -> list[tuple[datetime, int]]:
    return [(change.at, change.net) for change in changes]


def active(**fields: Any) -> dict[str, Any]:
    return subscription(start=START, **fields)


# --- §2 What counts ------------------------------------------------------------------------

SEEN = utc(2, 1, 12)
"""When the status under test is observed, after a month active since START."""

STATUS_ROWS = [
    pytest.param("active", {}, ENDED, 10000, id="active | counted"),
    pytest.param("past_due", {}, ENDED, 10000, id="past_due | counted (grace unset = never)"),
    pytest.param("past_due", {}, GRACE_7, 0, id="past_due | after PAST_DUE_GRACE_DAYS churned as delinquent"),
    pytest.param("trialing", {}, ENDED, 0, id="trialing | 0"),
    pytest.param("incomplete", {}, ENDED, 0, id="incomplete | 0"),
    pytest.param("incomplete_expired", {}, ENDED, 0, id="incomplete_expired | 0"),
    pytest.param("unpaid", {}, ENDED, 0, id="unpaid | 0"),
    pytest.param("paused", {}, ENDED, 0, id="paused status | 0 while paused"),
    pytest.param(
        "active",
        {"pause_collection": {"behavior": "void", "resumes_at": None}},
        ENDED,
        0,
        id="pause_collection set | 0 while paused",
    ),
    pytest.param("canceled", {"ended_at": SEEN, "canceled_at": SEEN}, ENDED, 0, id="canceled | 0 from ended_at"),
]


@pytest.mark.parametrize(("status", "fields", "rules", "expected"), STATUS_ROWS)
def test_what_counts(status: str, fields: dict[str, Any], rules: RuleSettings, expected: int) -> None:
    changes = changes_of(
        snapshot(active(), START),
        snapshot(active(status=status, **fields), SEEN),
        rules=rules,
    )
    assert net_at(changes, SEEN - timedelta(seconds=1)) == 10000
    assert net_at(changes, utc(3, 1)) == expected


def test_first_seen_trialing_is_worth_nothing() -> None:
    assert changes_of(snapshot(active(status="trialing", trial_end=utc(1, 15)), utc(1, 3))) == []


def test_past_due_churns_after_the_grace_measured_from_becoming_past_due() -> None:
    changes = changes_of(
        snapshot(active(), START),
        snapshot(active(status="past_due"), SEEN),
        snapshot(active(status="past_due"), SEEN + timedelta(days=3)),  # a retry: the grace runs on
        rules=GRACE_7,
    )
    assert moments(changes) == [(START, 10000), (SEEN + timedelta(days=7), 0)]


def test_past_due_paid_after_the_grace_comes_back() -> None:
    paid = utc(2, 20, 8)
    changes = changes_of(
        snapshot(active(), START),
        snapshot(active(status="past_due"), SEEN),
        snapshot(active(), paid),
        rules=GRACE_7,
    )
    assert moments(changes) == [(START, 10000), (SEEN + timedelta(days=7), 0), (paid, 10000)]


def test_first_seen_past_due_counts_its_grace_from_the_current_period_start() -> None:
    period_start = utc(3, 1)
    seen = utc(3, 4)
    payload = active(status="past_due", current_period_start=period_start)
    changes = changes_of(snapshot(payload, seen), rules=GRACE_7)
    assert moments(changes) == [(START, 10000), (period_start + timedelta(days=7), 0)]


def test_resuming_a_paused_collection_counts_again_from_the_event() -> None:
    resumed = utc(3, 5, 10)
    changes = changes_of(
        snapshot(active(), START),
        snapshot(active(pause_collection={"behavior": "void", "resumes_at": None}), SEEN),
        snapshot(active(), resumed),
    )
    assert moments(changes) == [(START, 10000), (SEEN, 0), (resumed, 10000)]


# --- §5 When a change takes effect ---------------------------------------------------------

PLAN_CHANGED = utc(2, 3, 10, 30)
TRIAL_END = utc(1, 15, 9)
BIGGER = price(15000, price_id="price_platinum", product="prod_platinum")


def _backfilled_active() -> list[Snapshot]:
    return [snapshot(active(), utc(6, 1), source="backfill:run1", rank=1)]


def _incomplete_then_active() -> list[Snapshot]:
    return [snapshot(active(status="incomplete"), START), snapshot(active(), START + timedelta(minutes=5))]


def _trial_converts(seen_after_trial_end: timedelta) -> list[Snapshot]:
    trial = {"trial_start": START, "trial_end": TRIAL_END}
    return [
        snapshot(active(status="trialing", **trial), START),
        snapshot(active(**trial), TRIAL_END + seen_after_trial_end),
    ]


def _then(payload: dict[str, Any], at: datetime = PLAN_CHANGED) -> list[Snapshot]:
    return [snapshot(active(), START), snapshot(payload, at)]


EFFECTIVE_ROWS = [
    pytest.param(_backfilled_active(), ENDED, [(START, 10000)], id="subscription starts paid | start_date"),
    pytest.param(
        _incomplete_then_active(),
        ENDED,
        [(START, 10000)],
        id="subscription starts paid (after incomplete) | start_date",
    ),
    pytest.param(_trial_converts(timedelta(0)), ENDED, [(TRIAL_END, 10000)], id="trial converts | trial_end"),
    pytest.param(
        _trial_converts(timedelta(days=3)),
        ENDED,
        [(TRIAL_END, 10000)],
        id="trial converts | trial_end (seen active days later)",
    ),
    pytest.param(
        _trial_converts(-timedelta(hours=1)),
        ENDED,
        [(TRIAL_END, 10000)],
        id="trial converts | trial_end (seen active before trial_end)",
    ),
    pytest.param(
        _then(subscription(item(BIGGER), start=START)),
        ENDED,
        [(START, 10000), (PLAN_CHANGED, 15000)],
        id="plan change | the Stripe event's created",
    ),
    pytest.param(
        _then(subscription(item(price(), 3), start=START)),
        ENDED,
        [(START, 10000), (PLAN_CHANGED, 30000)],
        id="quantity change | the Stripe event's created",
    ),
    pytest.param(
        _then(subscription(item(price()), item(BIGGER, item_id="si_2"), start=START)),
        ENDED,
        [(START, 10000), (PLAN_CHANGED, 25000)],
        id="item change | the Stripe event's created",
    ),
    pytest.param(
        _then(active(discounts=[repeating_discount(50, PLAN_CHANGED, utc(5, 3))])),
        ENDED,
        [(START, 10000), (PLAN_CHANGED, 5000), (utc(5, 3), 10000)],
        id="discount change | the Stripe event's created; repeating discount ends | discount.end",
    ),
    pytest.param(
        _then(active(status="canceled", canceled_at=utc(3, 10), ended_at=utc(3, 15)), utc(3, 15, 0, 1)),
        ENDED,
        [(START, 10000), (utc(3, 15), 0)],
        id="cancellation | ended_at (CHURN_RECOGNITION=ended)",
    ),
    pytest.param(
        _then(active(status="canceled", canceled_at=utc(3, 10), ended_at=utc(3, 15)), utc(3, 15, 0, 1)),
        REQUEST,
        [(START, 10000), (utc(3, 10), 0)],
        id="cancellation | canceled_at when request",
    ),
    pytest.param(
        _then(active(status="unpaid")),
        ENDED,
        [(START, 10000), (PLAN_CHANGED, 0)],
        id="becomes unpaid | the Stripe event's created",
    ),
    pytest.param(
        _then(active(status="paused")),
        ENDED,
        [(START, 10000), (PLAN_CHANGED, 0)],
        id="becomes paused | the Stripe event's created",
    ),
]


@pytest.mark.parametrize(("snapshots", "rules", "expected"), EFFECTIVE_ROWS)
def test_when_a_change_takes_effect(
    snapshots: list[Snapshot], rules: RuleSettings, expected: list[tuple[datetime, int]]
) -> None:
    assert moments(changes_of(*snapshots, rules=rules)) == expected


def test_scheduled_cancellation_moves_nothing_until_it_ends_and_is_flagged() -> None:
    requested, period_end = utc(3, 10, 14), utc(3, 15)
    scheduled = active(cancel_at_period_end=True, canceled_at=requested, cancel_at=period_end)
    changes = changes_of(
        snapshot(active(), START),
        snapshot(scheduled, requested),
        snapshot(active(status="canceled", canceled_at=requested, ended_at=period_end), period_end),
    )
    assert [(c.at, c.net, c.scheduled_churn) for c in changes] == [
        (START, 10000, False),
        (requested, 10000, True),
        (period_end, 0, False),
    ]


def test_worked_example_12_cancel_at_period_end() -> None:
    """Set on the 10th, period ends the 15th: churn the 15th (default), the 10th with request."""
    requested, period_end = utc(3, 10, 14), utc(3, 15)
    history = [
        snapshot(active(), START),
        snapshot(active(cancel_at_period_end=True, canceled_at=requested), requested),
        snapshot(active(status="canceled", canceled_at=requested, ended_at=period_end), period_end),
    ]
    assert moments(changes_of(*history))[-1] == (period_end, 0)
    assert moments(changes_of(*history, rules=REQUEST))[-1] == (requested, 0)
    assert moments(changes_of(*history[:2], rules=REQUEST))[-1] == (requested, 0)


def test_undoing_a_requested_cancellation_counts_again_from_the_event() -> None:
    requested, undone = utc(3, 10, 14), utc(3, 12, 8)
    changes = changes_of(
        snapshot(active(), START),
        snapshot(active(cancel_at_period_end=True, canceled_at=requested), requested),
        snapshot(active(), undone),
        rules=REQUEST,
    )
    assert moments(changes) == [(START, 10000), (requested, 0), (undone, 10000)]


# --- What a first snapshot implies -----------------------------------------------------------


def test_first_seen_canceled_after_a_paid_trial_was_worth_its_items_between_trial_end_and_ended_at() -> None:
    payload = active(status="canceled", trial_end=TRIAL_END, canceled_at=utc(4, 2), ended_at=utc(4, 30))
    changes = changes_of(snapshot(payload, utc(6, 1), source="backfill:run1", rank=1))
    assert moments(changes) == [(TRIAL_END, 10000), (utc(4, 30), 0)]


def test_first_seen_canceled_during_its_trial_was_never_worth_anything() -> None:
    payload = active(status="canceled", trial_end=utc(1, 31), canceled_at=utc(1, 10), ended_at=utc(1, 10))
    assert changes_of(snapshot(payload, utc(6, 1))) == []


def test_a_missed_conversion_is_dated_trial_end_even_when_the_next_snapshot_is_the_cancellation() -> None:
    trial = {"trial_end": TRIAL_END}
    changes = changes_of(
        snapshot(active(status="trialing", **trial), START),
        snapshot(active(status="canceled", canceled_at=utc(3, 1), ended_at=utc(3, 1), **trial), utc(3, 1)),
    )
    assert moments(changes) == [(TRIAL_END, 10000), (utc(3, 1), 0)]


def test_first_seen_unpaid_invents_no_history() -> None:
    assert changes_of(snapshot(active(status="unpaid"), utc(6, 1))) == []


# --- Order, duplicates, clamp, until ---------------------------------------------------------


def test_arrival_order_and_duplicates_do_not_matter() -> None:
    history = [
        snapshot(active(), START),
        snapshot(subscription(item(price(), 2), start=START), utc(2, 1)),
        snapshot(active(status="past_due"), utc(3, 1)),
        snapshot(active(status="canceled", canceled_at=utc(3, 9), ended_at=utc(3, 9)), utc(3, 9)),
    ]
    in_order = changes_of(*history)
    assert changes_of(*reversed(history)) == in_order
    assert changes_of(*history, *history[1:3]) == in_order


def test_duplicate_versions_merge_their_sources() -> None:
    first = snapshot(active(), START, source="evt_a")
    again = snapshot(active(), START, source="evt_b")
    (change,) = changes_of(again, first, first)
    assert change.sources == ("evt_a", "evt_b")


@pytest.mark.parametrize("refetch_first", [True, False], ids=["refetch listed first", "refetch listed last"])
def test_a_refetch_settles_a_same_second_tie(refetch_first: bool) -> None:
    tie = utc(2, 1, 12)
    event_a = snapshot(subscription(item(price(), 2), start=START), tie, source="evt_a")
    event_b = snapshot(subscription(item(price(), 5), start=START), tie, source="evt_b")
    refetch = snapshot(subscription(item(price(), 2), start=START), tie, source="refetch:evt_b", rank=1)
    ties = [refetch, event_a, event_b] if refetch_first else [event_a, event_b, refetch]
    changes = changes_of(snapshot(active(), START), *ties)
    assert moments(changes)[-1] == (tie, 20000)
    assert changes[-1].sources == ("refetch:evt_b",)


def test_a_same_second_cancellation_wins_over_an_update() -> None:
    tie = utc(3, 1, 12)
    update = snapshot(subscription(item(price(), 2), start=START), tie)
    cancel = snapshot(active(status="canceled", canceled_at=tie, ended_at=tie), tie)
    for ties in ([update, cancel], [cancel, update]):
        assert net_at(changes_of(snapshot(active(), START), *ties), tie) == 0


def test_a_later_snapshot_never_takes_effect_before_the_previous_change() -> None:
    """Clamp: a canceled version whose ended_at precedes the last plan change churns at that change."""
    changes = changes_of(
        snapshot(active(), START),
        snapshot(subscription(item(price(), 2), start=START), utc(3, 5)),
        snapshot(active(status="canceled", canceled_at=utc(3, 1), ended_at=utc(3, 1)), utc(3, 6)),
    )
    assert moments(changes) == [(START, 10000), (utc(3, 5), 0)]


def test_changes_after_until_are_left_out() -> None:
    payload = active(discounts=[repeating_discount(50, START, utc(4, 1))])
    assert moments(changes_of(snapshot(payload, START), until=utc(3, 31))) == [(START, 5000)]
    assert moments(changes_of(snapshot(payload, START), until=utc(4, 1))) == [
        (START, 5000),
        (utc(4, 1), 10000),
    ]


def test_changes_carry_customer_currency_and_gross() -> None:
    payload = subscription(
        item(price(2000, currency="eur")),
        start=START,
        currency="eur",
        customer="cus_9",
        discounts=[repeating_discount(25, START, utc(9, 1))],
    )
    (first, _) = changes_of(snapshot(payload, START))
    assert (first.customer_id, first.currency, first.gross, first.net) == ("cus_9", "eur", 2000, 1500)


def test_naive_times_are_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        changes_of(snapshot(active(), START), until=datetime(2024, 1, 1))
