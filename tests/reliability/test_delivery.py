"""How Stripe really delivers: three times each, in any order, several events
stamped with the same second, some while the database is down. Each run ends
with the ledger of a clean in-order run of the same events."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from flask import Flask
from redis import Redis
from rq import Worker

from ledger.db import Database
from ledger.settings import Settings
from tests.reliability.scenario import clean_run, ledger, many_customers, same_second_events, statuses, stored_ids
from tests.stripe_payloads import signed
from worker.queues import queue

MakeApp = Callable[[Settings], Flask]


def mixed_events() -> list[dict]:
    return many_customers(12) + same_second_events(4)


def post(client, event: dict) -> int:
    body, headers = signed(event)
    return client.post("/webhooks/stripe", data=body, headers=headers).status_code


def drain(redis: Redis) -> None:
    Worker([queue(redis)], connection=redis).work(burst=True)


@pytest.mark.parametrize("seed", [1, 2])
def test_each_event_three_times_shuffled_gives_the_in_order_ledger(
    client, db: Database, redis: Redis, settings: Settings, worker_env, seed: int
) -> None:
    events = mixed_events()
    deliveries = events * 3
    random.Random(seed).shuffle(deliveries)
    for start in range(0, len(deliveries), 40):
        # Workers run between bursts of deliveries, so late and repeated events
        # arrive after their customer's ledger was already computed.
        assert {post(client, event) for event in deliveries[start : start + 40]} == {200}
        drain(redis)
    assert sorted(stored_ids(db)) == sorted(event["id"] for event in events)
    assert statuses(db) == {"processed": len(events)}
    assert ledger(db) == clean_run(db, settings, events)


def unreachable_database(settings: Settings, tmp_path: Path) -> str:
    if settings.database_url.startswith("postgresql"):
        return "postgresql://postgres@127.0.0.1:1/subledger"  # nothing listens on port 1
    return f"sqlite:///{tmp_path / 'no such directory' / 'subledger.db'}"


def test_deliveries_while_the_database_is_down_get_503_and_their_redelivery_is_stored(
    make_app: MakeApp, db: Database, redis: Redis, settings: Settings, worker_env, tmp_path: Path
) -> None:
    events = mixed_events()
    down = make_app(replace(settings, database_url=unreachable_database(settings, tmp_path))).test_client()
    up = make_app(settings).test_client()

    failed = [event for event in events[::2] if post(down, event) == 503]
    assert len(failed) == len(events[::2]), "every delivery must get 503 while the database is down"
    assert down.get("/healthz").status_code == 503
    assert stored_ids(db) == []
    assert {post(up, event) for event in events[1::2]} == {200}  # the database is back
    drain(redis)

    # Stripe retries the failed deliveries later, in its own order.
    random.Random(7).shuffle(failed)
    assert {post(up, event) for event in failed} == {200}
    drain(redis)
    assert statuses(db) == {"processed": len(events)}
    assert ledger(db) == clean_run(db, settings, events)
