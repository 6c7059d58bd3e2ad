"""5,000 signed events sent by 16 concurrent clients to the receiver under
gunicorn: no 5xx, every event stored once, the workers drain, the ledger is
the one worked out by hand — and /metrics, summed across gunicorn's
processes through Redis, counts every delivery."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from redis import Redis

from ledger.db import Database
from ledger.settings import Settings
from tests.reliability.scenario import (
    expected_movements,
    gunicorn,
    kill_hard,
    many_customers,
    process_env,
    start_worker,
    statuses,
    stored_ids,
)
from tests.stripe_payloads import signed
from tests.worker.test_pipeline import movements

pytestmark = pytest.mark.slow

CLIENTS = 16
TOKEN = "load-token"


def customers_for(database_url: str) -> int:
    """2,000 customers are 5,000 events. SQLite has one writer at a time: a fifth of that.

    SUBLEDGER_LOAD_CUSTOMERS sets another count, for a longer soak (docs/operations.md).
    """
    configured = os.environ.get("SUBLEDGER_LOAD_CUSTOMERS")
    if configured:
        return int(configured)
    return 2000 if database_url.startswith("postgresql") else 400


@pytest.fixture
def receiver(settings: Settings, tmp_path: Path) -> Iterator[str]:
    with gunicorn(settings, tmp_path / "gunicorn.log", SUBLEDGER_API_TOKEN=TOKEN) as url:
        yield url


def send_all(url: str, deliveries: list[tuple[bytes, dict[str, str]]]) -> Counter[int]:
    answers: Counter[int] = Counter()
    lock = threading.Lock()

    def client(share: list[tuple[bytes, dict[str, str]]]) -> None:
        seen: Counter[int] = Counter()
        with requests.Session() as session:
            for body, headers in share:
                try:
                    answer = session.post(f"{url}/webhooks/stripe", data=body, headers=headers, timeout=30)
                    seen[answer.status_code] += 1
                except requests.RequestException:
                    seen[0] += 1  # no answer at all counts as a failure too
        with lock:
            answers.update(seen)

    threads = [threading.Thread(target=client, args=(deliveries[n::CLIENTS],)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(300, len(deliveries) / 10))
    assert not any(thread.is_alive() for thread in threads), "a client is still sending"
    return answers


def metric(text: str, name: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[-1])


def test_5000_events_from_16_clients_are_stored_once_and_booked_right(
    receiver: str, db: Database, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    count = customers_for(settings.database_url)
    events = many_customers(count)
    deliveries = [signed(event) for event in events]

    started = time.monotonic()
    answers = send_all(receiver, deliveries)
    elapsed = time.monotonic() - started
    print(f"\n{len(events)} webhooks in {elapsed:.1f}s: {len(events) / elapsed:.0f}/s, answers {dict(answers)}")

    assert answers == {200: len(events)}
    ids = stored_ids(db)
    assert len(ids) == len(set(ids)) == len(events)
    scraped = requests.get(f"{receiver}/metrics", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10).text
    assert metric(scraped, 'subledger_webhooks_total{outcome="received"}') == len(events)
    assert metric(scraped, 'subledger_webhooks_total{outcome="stored"}') == len(events)
    assert metric(scraped, 'subledger_events{status="pending"}') + metric(
        scraped, 'subledger_events{status="processed"}'
    ) == len(events)

    log = tmp_path / "workers.log"
    workers = [start_worker(process_env(settings), log, burst=True) for _ in range(2)]
    try:
        timeout = max(240, len(events) / 20)
        assert [worker.wait(timeout=timeout) for worker in workers] == [0, 0], log.read_text()[-2000:]
    finally:
        for worker in workers:
            if worker.poll() is None:
                kill_hard(worker)
    assert statuses(db) == {"processed": len(events)}
    assert movements(db) == expected_movements(count)
