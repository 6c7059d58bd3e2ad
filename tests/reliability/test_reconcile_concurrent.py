"""A reconciliation running while worker processes drain webhooks: it applies
the due events itself first, beside the workers (the partition locks keep them
apart), and skips the customers whose events are still in flight instead of
"correcting" a ledger that is only behind, so the ledger ends as a clean run
leaves it.

Only half the shards are woken before the reconciliation starts: the workers
drain those while it runs, and the run itself applies the other half."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import responses
from redis import Redis

from ledger.db import Database
from ledger.intake import SHARD_COUNT, partition_of, shard_of
from ledger.models import RunStatus
from ledger.settings import Settings
from tests.processes import wait_for
from tests.reliability.scenario import (
    age_pending_events,
    clean_run,
    kill_hard,
    ledger,
    many_customers,
    process_env,
    queued_sweep,
    start_worker,
    statuses,
    store,
)
from worker.queues import wake_shard
from worker.reconcile import reconcile
from worker.stripe_api import StripeAPI

pytestmark = pytest.mark.slow

BASE = "https://stripe.test"
CUSTOMERS = 300


def stripe_now(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each subscription as Stripe has it now: the object of its last event."""
    latest: dict[str, dict[str, Any]] = {}
    for event in sorted(events, key=lambda event: event["created"]):
        latest[event["data"]["object"]["id"]] = event["data"]["object"]
    return list(latest.values())


def test_reconcile_while_workers_drain_changes_nothing_the_workers_will_book(
    db: Database, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    events = many_customers(CUSTOMERS)
    store(db, events)  # just received: in flight
    woken = range(SHARD_COUNT // 2)
    for shard in woken:
        wake_shard(redis, shard)
    asleep = {partition_of(event) for event in events if shard_of(partition_of(event)) not in woken}
    log = tmp_path / "workers.log"
    workers = [start_worker(process_env(settings), log, burst=True) for _ in range(2)]
    stripe_settings = replace(settings, stripe_api_key="sk_test_subledger", stripe_api_base=BASE)
    try:
        assert wait_for(lambda: statuses(db)["processed"] > 0, timeout=60), log.read_text()[-2000:]
        with responses.RequestsMock(assert_all_requests_are_fired=False) as stripe_api:
            page = {"object": "list", "url": "/v1/subscriptions", "data": stripe_now(events), "has_more": False}
            stripe_api.get(f"{BASE}/v1/subscriptions", json=page)
            stripe_api.get(f"{BASE}/v1/events", json={"object": "list", "data": [], "has_more": False})
            report = reconcile(db, stripe_settings, api=StripeAPI(stripe_settings, sleep=lambda _: None))
        assert [worker.wait(timeout=180) for worker in workers] == [0, 0], log.read_text()[-2000:]
        # The shards nobody woke, and on PostgreSQL the customers a drain skipped while a
        # reconcile page held their locks, wait for the clock's sweeper; two minutes on, it
        # runs, and one more worker drains what it queued:
        age_pending_events(db)
        queued_sweep(redis)
        workers.append(start_worker(process_env(settings), log, burst=True))
        assert workers[-1].wait(timeout=180) == 0, log.read_text()[-2000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                kill_hard(worker)

    assert report.status is RunStatus.OK, report.errors
    assert report.counts["subscriptions_checked"] == CUSTOMERS
    # The run applies due events first (§9), beside the workers: the shards nobody woke included.
    assert asleep
    assert (report.counts["drifted"], report.counts["corrected"]) == (0, 0)
    assert statuses(db) == {"processed": len(events)}
    assert ledger(db) == clean_run(db, settings, events)
