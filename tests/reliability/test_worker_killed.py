"""A `subledger worker` SIGKILLed in the middle of draining, again and again,
loses no event and counts none twice: a batch's effects and its `processed`
marks commit together, and the sweeper re-queues what a dead job left."""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path

import pytest
from redis import Redis

from ledger.db import Database, utcnow
from ledger.settings import Settings
from tests.processes import wait_for
from tests.reliability.scenario import (
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

pytestmark = pytest.mark.slow

CUSTOMERS = 600
"""1,500 events: enough that a drain takes several batches, so a kill lands mid-drain."""

KILLS = 3


def processed(db: Database) -> int:
    return statuses(db)["processed"]


def test_a_worker_killed_mid_drain_again_and_again_ends_with_the_clean_ledger(
    db: Database, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    events = many_customers(CUSTOMERS)
    # Stored ten minutes ago: what a dead job leaves is old enough for the sweeper.
    store(db, events, now=utcnow() - timedelta(minutes=10))
    env = process_env(settings)
    log = tmp_path / "worker.log"
    kills: list[int] = []
    for _ in range(KILLS):
        queued_sweep(redis)  # the clock, once a minute
        before = processed(db)
        worker = start_worker(env, log)
        try:
            assert wait_for(lambda: processed(db) > before, timeout=90), log.read_text()[-2000:]  # noqa: B023
            time.sleep(0.05 * len(kills))  # vary the moment: between batches or inside one
            done = processed(db)
            if done == len(events):
                break
            kill_hard(worker)
            kills.append(done)
        finally:
            if worker.poll() is None:
                kill_hard(worker)
    assert len(kills) >= 2, f"the drain finished before the worker could be killed twice: {kills}"
    assert 0 < kills[0] < len(events)

    queued_sweep(redis)
    final = start_worker(env, log, burst=True)
    try:
        assert final.wait(timeout=180) == 0, log.read_text()[-2000:]
    finally:
        if final.poll() is None:
            kill_hard(final)
    assert statuses(db) == {"processed": len(events)}
    after_kills = ledger(db)

    assert after_kills == clean_run(db, settings, events)
