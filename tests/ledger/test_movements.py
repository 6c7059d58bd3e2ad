"""ledger.movements against docs/mrr-rules.md §6, and the whole path from snapshots to movements."""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger.movements import (
    Movement,
    MovementType,
    classify_movement,
    customer_movements,
    customer_mrr_series,
)
from ledger.settings import RuleSettings
from ledger.timeline import Change, Snapshot, subscription_changes
from tests.ledger.subscription_payloads import item, price, repeating_discount, snapshot, subscription, utc

DAY = RuleSettings()
NONE = RuleSettings(netting="none")
REQUEST = RuleSettings(churn_recognition="request")
WINDOW_30 = RuleSettings(reactivation_window_days=30)
UNTIL = utc(12, 31)


def change(at: datetime, net: int, *, sub: str = "sub_1", currency: str = "usd", source: str = "") -> Change:
    return Change(
        at=at,
        subscription_id=sub,
        customer_id="cus_1",
        currency=currency,
        gross=net,
        net=net,
        sources=(source or f"evt_{sub}_{at:%m%d%H%M}",),
        scheduled_churn=False,
    )


def summary(movements: list[Movement]) -> list[tuple[date, str, int]]:
    return [(m.day, m.type.value, m.amount) for m in movements]


# --- §6's table ----------------------------------------------------------------------------

CLASSIFY_ROWS = [
    pytest.param(0, 5000, False, None, DAY, MovementType.NEW, id="new | prev = 0, cur > 0, never paid before"),
    pytest.param(
        0, 5000, True, 400, DAY, MovementType.REACTIVATION, id="reactivation | prev = 0, cur > 0, paid before (any gap)"
    ),
    pytest.param(
        0, 5000, True, 30, WINDOW_30, MovementType.REACTIVATION, id="reactivation | gap within REACTIVATION_WINDOW_DAYS"
    ),
    pytest.param(0, 5000, True, 31, WINDOW_30, MovementType.NEW, id="reactivation | a longer gap is new"),
    pytest.param(
        0, 5000, True, 0, WINDOW_30, MovementType.REACTIVATION, id="reactivation | still paying in another currency"
    ),
    pytest.param(5000, 8000, True, 0, DAY, MovementType.EXPANSION, id="expansion | 0 < prev < cur"),
    pytest.param(8000, 5000, True, 0, DAY, MovementType.CONTRACTION, id="contraction | 0 < cur < prev"),
    pytest.param(8000, 0, True, 0, DAY, MovementType.CHURN, id="churn | prev > 0, cur = 0"),
    pytest.param(8000, 8000, True, 0, DAY, None, id="no movement | prev = cur"),
    pytest.param(0, 0, True, 3, DAY, None, id="no movement | 0 stays 0"),
]


@pytest.mark.parametrize(("prev", "cur", "paid_before", "gap_days", "rules", "expected"), CLASSIFY_ROWS)
def test_classify_movement(
    prev: int,
    cur: int,
    paid_before: bool,
    gap_days: int | None,
    rules: RuleSettings,
    expected: MovementType | None,
) -> None:
    assert classify_movement(prev, cur, paid_before=paid_before, gap_days=gap_days, rules=rules) is expected


def test_negative_mrr_is_refused() -> None:
    with pytest.raises(ValueError, match="never negative"):
        classify_movement(-1, 5, paid_before=False, gap_days=None, rules=DAY)


MOVEMENT_ROWS = [
    pytest.param(
        [change(utc(1, 5, 9), 5000)],
        [(date(2024, 1, 5), "new", 5000)],
        id="new | amount cur",
    ),
    pytest.param(
        [change(utc(1, 5, 9), 5000), change(utc(2, 1, 9), 5000, sub="sub_2")],
        [(date(2024, 1, 5), "new", 5000), (date(2024, 2, 1), "expansion", 5000)],
        id="expansion | a second subscription is expansion",
    ),
    pytest.param(
        [change(utc(1, 5, 9), 5000), change(utc(1, 6, 9), 3000, sub="sub_2"), change(utc(2, 1, 9), 0, sub="sub_2")],
        [
            (date(2024, 1, 5), "new", 5000),
            (date(2024, 1, 6), "expansion", 3000),
            (date(2024, 2, 1), "contraction", -3000),
        ],
        id="contraction | cancelling one of two is contraction",
    ),
    pytest.param(
        [change(utc(1, 5, 9), 5000), change(utc(2, 1, 9), 0)],
        [(date(2024, 1, 5), "new", 5000), (date(2024, 2, 1), "churn", -5000)],
        id="churn | amount −prev",
    ),
    pytest.param(
        [change(utc(1, 5, 9), 5000), change(utc(2, 1, 9), 0), change(utc(6, 1, 9), 7000, sub="sub_2")],
        [(date(2024, 1, 5), "new", 5000), (date(2024, 2, 1), "churn", -5000), (date(2024, 6, 1), "reactivation", 7000)],
        id="reactivation | customer paid before, any gap",
    ),
    pytest.param(
        [change(utc(1, 5, 9), 5000), change(utc(1, 5, 17), 0)],
        [],
        id="join and leave on the same day | no movement",
    ),
    pytest.param(
        [change(utc(1, 5, 9), 5000), change(utc(1, 5, 12), 8000), change(utc(1, 5, 17), 6000)],
        [(date(2024, 1, 5), "new", 6000)],
        id="several changes on one day net into one movement",
    ),
    pytest.param(
        [change(utc(1, 5, 9), 5000), change(utc(2, 1, 9), 0), change(utc(1, 5, 9), 0, sub="sub_0")],
        [(date(2024, 1, 5), "new", 5000), (date(2024, 2, 1), "churn", -5000)],
        id="a subscription worth nothing moves nothing",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), MOVEMENT_ROWS)
def test_customer_movements(changes: list[Change], expected: list[tuple[date, str, int]]) -> None:
    assert summary(customer_movements(changes, DAY)) == expected


def test_join_and_leave_on_the_same_day_with_netting_none_is_two_movements() -> None:
    movements = customer_movements([change(utc(1, 5, 9), 5000), change(utc(1, 5, 17), 0)], NONE)
    assert [(m.at, m.type, m.amount) for m in movements] == [
        (utc(1, 5, 9), MovementType.NEW, 5000),
        (utc(1, 5, 17), MovementType.CHURN, -5000),
    ]


@pytest.mark.parametrize(
    ("returns_on", "expected"),
    [
        pytest.param(utc(3, 2, 9), "reactivation", id="back 30 days after the churn day | reactivation"),
        pytest.param(utc(3, 3, 9), "new", id="back 31 days after the churn day | new"),
    ],
)
def test_reactivation_window(returns_on: datetime, expected: str) -> None:
    changes = [change(utc(1, 5, 9), 5000), change(utc(2, 1, 9), 0), change(returns_on, 5000, sub="sub_2")]
    for rules in (WINDOW_30, RuleSettings(reactivation_window_days=30, netting="none")):
        assert customer_movements(changes, rules)[-1].type.value == expected


def test_paid_before_is_per_customer_across_currencies() -> None:
    changes = [
        change(utc(1, 5, 9), 5000),
        change(utc(2, 1, 9), 0),
        change(utc(2, 1, 9), 4500, sub="sub_eur", currency="eur"),
    ]
    assert [(m.currency, m.type.value) for m in customer_movements(changes, WINDOW_30)] == [
        ("usd", "new"),
        ("eur", "reactivation"),
        ("usd", "churn"),
    ]


def test_movements_record_the_day_midnight_and_their_sources() -> None:
    changes = [change(utc(1, 5, 9), 5000, source="evt_b"), change(utc(1, 5, 12), 6000, source="evt_a")]
    (movement,) = customer_movements(changes, DAY)
    assert movement.at == datetime(2024, 1, 5, tzinfo=UTC)
    assert (movement.mrr_before, movement.mrr_after) == (0, 6000)
    assert movement.sources == ("evt_a", "evt_b")


def test_since_keeps_the_state_before_it() -> None:
    changes = [change(utc(1, 5, 9), 5000), change(utc(2, 1, 9), 8000), change(utc(3, 1, 9), 0)]
    later = customer_movements(changes, DAY, since=date(2024, 2, 1))
    assert summary(later) == [(date(2024, 2, 1), "expansion", 3000), (date(2024, 3, 1), "churn", -8000)]


def test_customer_mrr_series_is_end_of_day_mrr_where_it_changed() -> None:
    changes = [
        change(utc(1, 5, 9), 5000),
        change(utc(1, 6, 9), 0),
        change(utc(1, 6, 10), 5000),  # back the same day: end of day unchanged
        change(utc(1, 7, 9), 2000, sub="sub_eur", currency="eur"),
    ]
    assert customer_mrr_series(changes) == {"usd": [(date(2024, 1, 5), 5000)], "eur": [(date(2024, 1, 7), 2000)]}


# --- docs/mrr-rules.md worked examples, from snapshots ---------------------------------------

START = utc(1, 10, 9)
GOLD_YEARLY = price(50000, "year", price_id="price_gold_yearly", product="prod_gold")
SILVER = price(3000, price_id="price_silver", product="prod_silver")
BRONZE = price(5000, price_id="price_bronze", product="prod_bronze")


def movements_from(snapshots: list[Snapshot], rules: RuleSettings = DAY) -> list[Movement]:
    return customer_movements(subscription_changes(snapshots, rules, until=UNTIL), rules)


def test_worked_example_3_upgrade_is_an_expansion() -> None:
    upgraded = utc(2, 3, 10)
    snapshots = [
        snapshot(subscription(item(price(10000)), start=START), START),
        snapshot(subscription(item(price(15000, price_id="price_big")), start=START), upgraded),
    ]
    assert summary(movements_from(snapshots))[-1] == (date(2024, 2, 3), "expansion", 5000)


def _example_4() -> list[Snapshot]:
    gold: dict[str, Any] = {"sub_id": "sub_gold", "start": START}
    silver: dict[str, Any] = {"sub_id": "sub_silver", "start": utc(2, 1, 9)}
    gold_ends, silver_ends = utc(7, 1, 9), utc(4, 1, 9)
    back: dict[str, Any] = {"sub_id": "sub_bronze", "start": utc(9, 1, 9)}
    return [
        snapshot(subscription(item(GOLD_YEARLY, 4), **gold), START),
        snapshot(subscription(item(SILVER, 2), **silver), utc(2, 1, 9)),
        snapshot(
            subscription(item(SILVER, 2), status="canceled", canceled_at=silver_ends, ended_at=silver_ends, **silver),
            silver_ends,
        ),
        snapshot(
            subscription(item(GOLD_YEARLY, 4), status="canceled", canceled_at=gold_ends, ended_at=gold_ends, **gold),
            gold_ends,
        ),
        snapshot(subscription(item(BRONZE, 3), **back), utc(9, 1, 9)),
    ]


def test_worked_example_4_the_full_sequence() -> None:
    assert summary(movements_from(_example_4())) == [
        (date(2024, 1, 10), "new", 16667),
        (date(2024, 2, 1), "expansion", 6000),
        (date(2024, 4, 1), "contraction", -6000),
        (date(2024, 7, 1), "churn", -16667),
        (date(2024, 9, 1), "reactivation", 15000),
    ]


def test_worked_example_6_the_discount_ending_is_an_expansion() -> None:
    ends = utc(4, 10, 9)  # 3 months after the start
    payload = subscription(item(price(1000)), start=START, discounts=[repeating_discount(10, START, ends)])
    assert summary(movements_from([snapshot(payload, START)])) == [
        (date(2024, 1, 10), "new", 900),
        (date(2024, 4, 10), "expansion", 100),
    ]


@pytest.mark.parametrize(
    ("rules", "churn_day"),
    [
        pytest.param(DAY, date(2024, 3, 15), id="churn dated the 15th (CHURN_RECOGNITION=ended)"),
        pytest.param(REQUEST, date(2024, 3, 10), id="churn dated the 10th (CHURN_RECOGNITION=request)"),
    ],
)
def test_worked_example_12_cancel_at_period_end(rules: RuleSettings, churn_day: date) -> None:
    requested, period_end = utc(3, 10, 14), utc(3, 15)
    snapshots = [
        snapshot(subscription(start=START), START),
        snapshot(subscription(start=START, cancel_at_period_end=True, canceled_at=requested), requested),
        snapshot(subscription(start=START, status="canceled", canceled_at=requested, ended_at=period_end), period_end),
    ]
    # Setting the cancellation moves nothing: only the new business and the churn.
    assert summary(movements_from(snapshots, rules)) == [
        (date(2024, 1, 10), "new", 10000),
        (churn_day, "churn", -10000),
    ]


# --- Properties ------------------------------------------------------------------------------

EPOCH = utc(1, 1)
STATUSES = ["active", "active", "past_due", "trialing", "incomplete", "unpaid", "paused", "canceled"]
PRICES = [price(1000), price(12000, "year", price_id="price_y"), price(2500, price_id="price_b")]


@st.composite
def histories(draw: st.DrawFn) -> list[Snapshot]:
    """Snapshots of 1–3 subscriptions of one customer: statuses, plans, quantities, cancellations, trials."""
    snapshots: list[Snapshot] = []
    for index in range(draw(st.integers(1, 3))):
        currency = draw(st.sampled_from(["usd", "usd", "eur"]))
        start = EPOCH + timedelta(hours=draw(st.integers(0, 24 * 20)))
        trial = draw(st.none() | st.integers(1, 24 * 10))
        fields: dict[str, Any] = {"sub_id": f"sub_{index}", "start": start, "currency": currency}
        if trial is not None:
            fields["trial_end"] = start + timedelta(hours=trial)
        observed = start
        for _ in range(draw(st.integers(1, 6))):
            # Small steps in minutes make same-day and same-second versions common.
            observed += timedelta(minutes=draw(st.sampled_from([0, 1, 90, 24 * 60, 5 * 24 * 60, 40 * 24 * 60])))
            status = draw(st.sampled_from(STATUSES))
            extra: dict[str, Any] = {}
            if status == "canceled":
                ended = observed - timedelta(minutes=draw(st.integers(0, 3000)))
                extra = {"canceled_at": ended - timedelta(days=draw(st.integers(0, 3))), "ended_at": ended}
            elif draw(st.booleans()) and status in ("active", "past_due"):
                extra = draw(
                    st.sampled_from(
                        [
                            {"cancel_at_period_end": True, "canceled_at": observed},
                            {"pause_collection": {"behavior": "void", "resumes_at": None}},
                            {"current_period_start": observed - timedelta(days=2)},
                        ]
                    )
                )
            rate = dict(draw(st.sampled_from(PRICES)), currency=currency)
            payload = subscription(item(rate, draw(st.integers(0, 3))), status=status, **fields, **extra)
            snapshots.append(snapshot(payload, observed, rank=draw(st.sampled_from([0, 0, 1, 2]))))
    return sorted(snapshots, key=lambda s: s.observed_at)


RULES = st.builds(
    RuleSettings,
    churn_recognition=st.sampled_from(["ended", "request"]),
    past_due_grace_days=st.none() | st.integers(0, 10),
    reactivation_window_days=st.none() | st.integers(0, 60),
    netting=st.sampled_from(["day", "none"]),
)


def _day_totals(movements: list[Movement]) -> dict[str, dict[date, int]]:
    """Per currency: cumulative sum of movements at the end of each day with a movement."""
    totals: dict[str, dict[date, int]] = defaultdict(dict)
    running: dict[str, int] = defaultdict(int)
    for movement in sorted(movements, key=lambda m: (m.at, m.currency)):
        running[movement.currency] += movement.amount
        totals[movement.currency][movement.day] = running[movement.currency]
    return totals


def _end_of_day(points: dict[date, int], day: date) -> int:
    earlier = [value for d, value in sorted(points.items()) if d <= day]
    return earlier[-1] if earlier else 0


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), RULES, st.randoms(use_true_random=False), st.data())
def test_any_arrival_order_and_duplicates_give_the_same_movements(
    history: list[Snapshot], rules: RuleSettings, shuffler: random.Random, data: st.DataObject
) -> None:
    in_order = subscription_changes(history, rules, until=UNTIL)
    duplicates = data.draw(st.lists(st.sampled_from(history), max_size=4))
    delivered = history + duplicates
    shuffler.shuffle(delivered)
    shuffled = subscription_changes(delivered, rules, until=UNTIL)
    assert shuffled == in_order
    assert customer_movements(shuffled, rules) == customer_movements(in_order, rules)


def _oracle_end_of_day(changes: list[Change], day: date) -> dict[str, int]:
    """MRR per currency at the end of `day`, straight from the changes."""
    midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    latest: dict[str, Change] = {}
    for each in changes:
        if each.at < midnight:
            latest[each.subscription_id] = each
    totals: dict[str, int] = defaultdict(int)
    for each in latest.values():
        totals[each.currency] += each.net
    return totals


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories(), RULES)
def test_end_of_day_mrr_is_the_sum_of_movements_and_netting_modes_agree(
    history: list[Snapshot], rules: RuleSettings
) -> None:
    changes = subscription_changes(history, rules, until=UNTIL)
    series = customer_mrr_series(changes)
    by_day = _day_totals(customer_movements(changes, replace(rules, netting="day")))
    by_change = _day_totals(customer_movements(changes, replace(rules, netting="none")))
    days = {each.at.date() for each in changes}
    currencies = {each.currency for each in changes}
    for day in days:
        oracle = _oracle_end_of_day(changes, day)
        for currency in currencies:
            expected = oracle.get(currency, 0)
            assert expected >= 0
            assert _end_of_day(dict(series.get(currency, [])), day) == expected
            assert _end_of_day(by_day.get(currency, {}), day) == expected
            assert _end_of_day(by_change.get(currency, {}), day) == expected
