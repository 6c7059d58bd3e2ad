"""What an operator watches: /metrics (token-protected, summed across processes
through Redis and the database, never a 500 when a source is down) and one
JSON log line per processed event."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis

from ledger.db import Database, utcnow
from ledger.logs import JsonFormatter
from ledger.models import SyncRun, WaitingCustomer
from ledger.settings import Settings
from tests.processes import free_port
from tests.reliability.scenario import age_pending_events, many_customers, process_env, start_worker, statuses, store
from tests.stripe_payloads import current_event, signature_header, signed
from webapp import MAX_BODY_BYTES

MakeApp = Callable[[Settings], Flask]
AUTH = {"Authorization": "Bearer test-token"}


def scrape(client: FlaskClient) -> dict[str, float]:
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    samples = {}
    for line in response.get_data(as_text=True).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def post(client: FlaskClient, body: bytes, headers: dict[str, str]) -> int:
    return client.post("/webhooks/stripe", data=body, headers=headers).status_code


def test_metrics_want_the_api_token(client: FlaskClient) -> None:
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_webhook_outcomes_are_counted_by_outcome_and_reason(client: FlaskClient, redis: Redis) -> None:
    first, second = many_customers(1)[:2]
    unused = current_event("charge.succeeded", {"id": "ch_1", "object": "charge"}, event_id="evt_charge", created=1)
    for event in (first, second, first, unused):
        assert post(client, *signed(event)) == 200
    assert post(client, *signed(first, secret="whsec_wrong")) == 400
    assert post(client, b"{}", {}) == 400
    assert post(client, b"not json", {"Stripe-Signature": signature_header(b"not json")}) == 400
    assert post(client, b"x" * (MAX_BODY_BYTES + 1), {}) == 413
    samples = scrape(client)
    assert {
        outcome: samples[f'subledger_webhooks_total{{outcome="{outcome}"}}']
        for outcome in ("received", "stored", "ignored", "duplicate", "failed")
    } == {"received": 8, "stored": 2, "ignored": 1, "duplicate": 1, "failed": 0}
    assert {
        reason: samples[f'subledger_webhooks_rejected_total{{reason="{reason}"}}']
        for reason in ("bad_signature", "no_signature", "not_an_event", "too_large")
    } == {"bad_signature": 1, "no_signature": 1, "not_an_event": 1, "too_large": 1}
    assert samples['subledger_events{status="pending"}'] == 2
    assert samples['subledger_events{status="ignored"}'] == 1
    assert samples["subledger_queue_depth"] >= 1
    assert samples['subledger_source_up{source="redis"}'] == samples['subledger_source_up{source="database"}'] == 1


def test_customers_waiting_for_an_object_are_counted(client: FlaskClient, db: Database) -> None:
    assert scrape(client)["subledger_customers_waiting"] == 0
    now = utcnow()
    with db.transaction() as session:
        session.add(WaitingCustomer(customer_id="cus_1", object_id="di_1", reason="missing", since=now, checked_at=now))
    assert scrape(client)["subledger_customers_waiting"] == 1


def test_lag_is_the_age_of_the_oldest_pending_event(client: FlaskClient, db: Database) -> None:
    assert scrape(client)["subledger_processing_lag_seconds"] == 0
    store(db, many_customers(2))
    age_pending_events(db, timedelta(minutes=5))
    assert 300 <= scrape(client)["subledger_processing_lag_seconds"] < 360


def test_last_success_ages_of_reconcile_and_backfill(client: FlaskClient, db: Database) -> None:
    samples = scrape(client)
    assert samples['subledger_last_success_age_seconds{kind="reconcile"}'] == float("inf")
    now = utcnow()
    with db.transaction() as session:
        for run_id, kind, status, hours in (
            ("r1", "reconcile", "ok", 30),
            ("r2", "reconcile", "ok", 2),
            ("r3", "reconcile", "failed", 1),  # a failure is no success
            ("b1", "backfill", "ok", 50),
        ):
            at = now - timedelta(hours=hours)
            session.add(
                SyncRun(id=run_id, kind=kind, livemode=False, started_at=at, heartbeat_at=at, finished_at=at,
                        status=status, parameters={}, counts={}, errors=[])
            )  # fmt: skip
    samples = scrape(client)
    assert 2 * 3600 <= samples['subledger_last_success_age_seconds{kind="reconcile"}'] < 2 * 3600 + 60
    assert 50 * 3600 <= samples['subledger_last_success_age_seconds{kind="backfill"}'] < 50 * 3600 + 60


def test_a_redis_that_does_not_answer_changes_no_webhook_answer_and_no_scrape(
    make_app: MakeApp, db: Database, settings: Settings
) -> None:
    client = make_app(replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")).test_client()
    [event] = many_customers(1)[:1]
    assert post(client, *signed(event)) == 200
    assert post(client, *signed(event)) == 200
    assert post(client, *signed(event, secret="whsec_wrong")) == 400
    samples = scrape(client)
    assert samples['subledger_source_up{source="redis"}'] == 0
    assert samples['subledger_events{status="pending"}'] == 1


def test_a_database_that_does_not_answer_is_reported_not_a_500(
    make_app: MakeApp, settings: Settings, tmp_path: Path
) -> None:
    client = make_app(replace(settings, database_url=f"sqlite:///{tmp_path / 'missing' / 'x.db'}")).test_client()
    samples = scrape(client)
    assert samples['subledger_source_up{source="database"}'] == 0
    assert samples['subledger_source_up{source="redis"}'] == 1


def test_the_json_formatter_keeps_extra_fields_and_tracebacks() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("subledger.test").makeRecord(
            "subledger.test", logging.ERROR, __file__, 1, "event %s", ("x",), sys.exc_info(),
            extra={"event_id": "evt_1", "batch_ms": 1.5, "when": utcnow()},
        )  # fmt: skip
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "event x"
    assert (line["level"], line["logger"]) == ("ERROR", "subledger.test")
    assert (line["event_id"], line["batch_ms"]) == ("evt_1", 1.5)
    assert "ValueError: boom" in line["exc"]
    assert isinstance(line["when"], str)


@pytest.mark.slow
def test_a_worker_writes_one_json_line_per_processed_event(
    db: Database, redis: Redis, settings: Settings, tmp_path: Path
) -> None:
    events = many_customers(5)
    store(db, events, now=utcnow() - timedelta(minutes=10))
    from worker.queues import wake_shard

    for shard in range(16):
        wake_shard(redis, shard)
    log = tmp_path / "worker.log"
    assert start_worker(process_env(settings), log, burst=True).wait(timeout=120) == 0
    assert statuses(db) == {"processed": len(events)}
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    processed = [line for line in lines if line["message"] == "event processed"]
    assert sorted(line["event_id"] for line in processed) == sorted(event["id"] for event in events)
    [created] = [line for line in processed if line["event_id"] == "evt_1_a"]
    assert created["customer"] == "cus_001"
    assert created["event_type"] == "customer.subscription.created"
    assert "new" in created["movements"]
    assert created["batch_ms"] > 0
    assert created["logger"] == "subledger.worker" and created["level"] == "INFO"
