"""The webhook acceptance matrix: what Stripe (or anyone else) can send, and what comes back."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis import Redis
from sqlalchemy import func, select, update

from ledger.db import Database, utcnow
from ledger.intake import WAKE_KEY
from ledger.models import StripeEvent
from ledger.settings import Settings
from tests.stripe_payloads import WEBHOOK_SECRET, current_event, event_2020, resource, signature_header, signed
from worker.queues import queue

URL = "/webhooks/stripe"
MakeApp = Callable[[Settings], Flask]


def post(client: FlaskClient, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, object]]:
    response = client.post(URL, data=body, headers=headers)
    return response.status_code, response.get_json(silent=True) or {}


def stored(db: Database) -> list[StripeEvent]:
    with db.session() as session:
        return list(session.scalars(select(StripeEvent).order_by(StripeEvent.id)))


def test_valid_event_is_stored_pending_and_queued(client: FlaskClient, db: Database, redis: Redis) -> None:
    event = event_2020("subscription_created")
    status, answer = post(client, *signed(event))
    assert (status, answer) == (200, {"received": True})
    [row] = stored(db)
    assert (row.id, row.type, row.status, row.livemode) == (event["id"], event["type"], "pending", False)
    assert row.api_version == "2020-03-02"
    assert row.partition == event["data"]["object"]["customer"]
    assert row.payload == event
    assert queue(redis).count == 1


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        pytest.param(lambda body, headers: (body, {}), "missing Stripe-Signature header", id="no signature"),
        pytest.param(
            lambda body, headers: (body, {"Stripe-Signature": signature_header(body, "whsec_other")}),
            "signature does not match",
            id="wrong secret",
        ),
        pytest.param(
            lambda body, headers: (body.replace(b"active", b"canceled"), headers),
            "signature does not match",
            id="body altered after signing",
        ),
        pytest.param(
            lambda body, headers: (
                body,
                {"Stripe-Signature": signature_header(body, timestamp=int(time.time()) - 301)},
            ),
            "signature timestamp outside the tolerance zone",
            id="expired timestamp (replayed old signature)",
        ),
        pytest.param(
            lambda body, headers: (body, {"Stripe-Signature": "garbage"}),
            "malformed Stripe-Signature header",
            id="malformed header",
        ),
    ],
)
def test_bad_signatures_are_rejected_and_nothing_is_stored(
    client: FlaskClient, db: Database, redis: Redis, mangle, reason: str
) -> None:
    body, headers = mangle(*signed(event_2020("subscription_updated")))
    status, answer = post(client, body, headers)
    assert (status, answer) == (400, {"error": reason})
    assert stored(db) == []
    assert queue(redis).count == 0


def test_any_configured_secret_is_accepted_during_rotation(
    settings: Settings, db: Database, redis: Redis, make_app: MakeApp
) -> None:
    rotated = replace(settings, webhook_secrets=("whsec_old_secret", WEBHOOK_SECRET))
    client = make_app(rotated).test_client()
    old = event_2020("customer_updated")
    new = event_2020("subscription_updated")
    assert post(client, *signed(old, "whsec_old_secret"))[0] == 200
    assert post(client, *signed(new, WEBHOOK_SECRET))[0] == 200
    assert post(client, *signed(event_2020("invoice_paid"), "whsec_unknown"))[0] == 400
    assert [row.id for row in stored(db)] == sorted([old["id"], new["id"]])


def test_stripe_rotation_header_with_two_signatures_is_accepted(client: FlaskClient, db: Database) -> None:
    body, _headers = signed(event_2020("subscription_created"))
    timestamp = int(time.time())
    other = signature_header(body, "whsec_previous", timestamp).split(",")[1]
    ours = signature_header(body, WEBHOOK_SECRET, timestamp).split(",")[1]
    assert post(client, body, {"Stripe-Signature": f"t={timestamp},{other},{ours}"})[0] == 200


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"{not json", "not a Stripe event: body is not JSON", id="malformed JSON"),
        pytest.param(b"[1, 2]", "not a Stripe event: body is not a JSON object", id="JSON array"),
        pytest.param(b'{"object": "charge"}', 'not a Stripe event: "object" is not "event"', id="not an event"),
        pytest.param(
            b'{"object": "event", "id": "evt_1", "type": "x", "created": 1, "livemode": false}',
            'not a Stripe event: "data.object" is missing',
            id="event without data",
        ),
        pytest.param(
            b'{"object": "event", "id": 5, "type": "x", "created": 1, "livemode": false, "data": {"object": {}}}',
            'not a Stripe event: "id" is not a Stripe id',
            id="numeric id",
        ),
        pytest.param("\u00ff".encode("latin-1"), "body is not UTF-8", id="not UTF-8"),
    ],
)
def test_signed_garbage_is_a_400_not_a_500(client: FlaskClient, db: Database, body: bytes, reason: str) -> None:
    headers = {"Stripe-Signature": signature_header(body)}
    assert post(client, body, headers) == (400, {"error": reason})
    assert stored(db) == []


def test_oversized_body_is_413(client: FlaskClient, db: Database) -> None:
    event = event_2020("customer_updated")
    event["data"]["object"]["metadata"] = {"padding": "x" * (1024 * 1024)}
    status, answer = post(client, *signed(event))
    assert status == 413
    assert "error" in answer
    assert stored(db) == []


def test_duplicate_delivery_is_acknowledged_and_queues_nothing(client: FlaskClient, db: Database, redis: Redis) -> None:
    event = event_2020("subscription_updated")
    assert post(client, *signed(event))[0] == 200
    # The first delivery's job has run: the queue is empty and the wake key gone.
    queue(redis).empty()
    redis.delete(*redis.keys(WAKE_KEY.format(shard="*")))
    assert post(client, *signed(event)) == (200, {"received": True})
    assert len(stored(db)) == 1
    assert queue(redis).count == 0


def test_unused_type_is_stored_as_ignored(client: FlaskClient, db: Database, redis: Redis) -> None:
    event = event_2020("charge_refunded")
    assert post(client, *signed(event)) == (200, {"received": True})
    [row] = stored(db)
    assert (row.id, row.status, row.next_attempt_at) == (event["id"], "ignored", None)
    assert queue(redis).count == 0


def test_event_without_id_is_acknowledged_not_stored(client: FlaskClient, db: Database, redis: Redis) -> None:
    preview = {
        "object": "event",
        "type": "invoice.upcoming",
        "created": int(time.time()),
        "livemode": False,
        "data": {"object": {"object": "invoice", "customer": "cus_1"}},
    }
    assert post(client, *signed(preview)) == (200, {"received": True})
    assert stored(db) == []
    assert queue(redis).count == 0


def test_events_of_another_api_version_are_stored_with_one_warning_per_version(
    client: FlaskClient, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="subledger.web")
    events = [event_2020(name) for name in ("subscription_created", "subscription_updated", "customer_updated")]
    current = current_event("customer.updated", resource("customer"), event_id="evt_current", created=int(time.time()))
    for event in [*events, current]:
        assert post(client, *signed(event)) == (200, {"received": True})
    assert {row.id: row.api_version for row in stored(db)} == {
        **{event["id"]: "2020-03-02" for event in events},
        "evt_current": "2025-10-29.clover",
    }
    warnings = [record.getMessage() for record in caplog.records if "API version" in record.getMessage()]
    assert warnings == [
        "webhook events arrive with Stripe API version 2020-03-02, not STRIPE_API_VERSION 2025-10-29.clover: "
        "both are read, but webhooks and backfill/reconcile see different shapes; "
        "give the endpoint version 2025-10-29.clover in Stripe"
    ]


def test_test_and_live_mode_events_are_kept_apart(client: FlaskClient, db: Database) -> None:
    test_event = event_2020("customer_updated")
    live_event = json.loads(json.dumps(test_event).replace('"livemode": false', '"livemode": true'))
    live_event["id"] = "evt_live_1"
    post(client, *signed(test_event))
    post(client, *signed(live_event))
    modes = {row.id: row.livemode for row in stored(db)}
    assert modes == {test_event["id"]: False, "evt_live_1": True}


def test_database_down_is_503_so_stripe_retries(settings: Settings, redis: Redis, make_app: MakeApp) -> None:
    unreachable = replace(settings, database_url="postgresql+psycopg://postgres@127.0.0.1:9/none?connect_timeout=1")
    client = make_app(unreachable).test_client()
    status, answer = post(client, *signed(event_2020("subscription_updated")))
    assert status == 503
    assert answer == {"error": "event could not be stored; retry later"}
    assert queue(redis).count == 0


def test_webhooks_refused_without_a_configured_secret(settings: Settings, db: Database, make_app: MakeApp) -> None:
    client = make_app(replace(settings, webhook_secrets=())).test_client()
    status, answer = post(client, *signed(event_2020("subscription_updated")))
    assert (status, answer) == (503, {"error": "STRIPE_WEBHOOK_SECRET is not configured"})
    assert stored(db) == []


def test_queue_down_still_stores_and_the_sweeper_picks_it_up_later(
    settings: Settings, db: Database, redis: Redis, worker_env: Settings, make_app: MakeApp
) -> None:
    from rq import SimpleWorker

    no_queue = make_app(replace(settings, redis_url="redis://127.0.0.1:9/0")).test_client()
    event = event_2020("subscription_created")
    assert post(no_queue, *signed(event)) == (200, {"received": True})
    [row] = stored(db)
    assert row.status == "pending"
    assert queue(redis).count == 0

    # Minutes later the clock's sweeper finds the event still pending.
    with db.transaction() as session:
        session.execute(update(StripeEvent).values(received_at=utcnow() - timedelta(minutes=5)))
    sweep = queue(redis).enqueue("worker.jobs.sweep")
    SimpleWorker([queue(redis)], connection=redis).work(burst=True)
    assert sweep.return_value() == {"requeued_shards": [row.shard], "waiting_valued": 0, "still_waiting": 0}
    [row] = stored(db)
    assert row.status == "processed"


def test_get_is_405_json(client: FlaskClient) -> None:
    response = client.get(URL)
    assert response.status_code == 405
    assert "error" in response.get_json()


def test_healthz_names_what_is_down(client: FlaskClient, settings: Settings, db: Database, make_app: MakeApp) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok", "database": "ok", "redis": "ok"}
    broken = make_app(replace(settings, redis_url="redis://127.0.0.1:9/0")).test_client()
    response = broken.get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["database"] == "ok"
    assert response.get_json()["redis"].startswith("unavailable")


def test_count_of_stored_rows_matches_deliveries(client: FlaskClient, db: Database) -> None:
    for name in ("subscription_created", "subscription_updated", "subscription_deleted", "invoice_paid"):
        post(client, *signed(event_2020(name)))
    with db.session() as session:
        assert session.scalar(select(func.count()).select_from(StripeEvent)) == 4
