"""`POST /webhooks/stripe`: verify, store, acknowledge, queue. Nothing else.

Stripe waits for the answer (and holds back invoice charges while it does), so
the request never calls Stripe and never processes the event: it commits the
raw event, answers, and leaves the work to the workers. The order matters:
the row is committed before the queue hears of it, so a fast worker never
looks for a row that is not there yet, and a queue that is down costs only a
delay (the sweeper finds the pending row later), never the event.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Mapping
from typing import Any

import stripe
from flask import Blueprint, Flask, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from redis import Redis, RedisError
from rq import Queue, Retry
from sqlalchemy.exc import DataError, SQLAlchemyError
from werkzeug.exceptions import RequestEntityTooLarge

from ledger.db import utcnow
from ledger.intake import (
    DRAIN_JOB,
    DRAIN_JOB_OPTIONS,
    DRAIN_JOB_RETRY_INTERVALS_S,
    QUEUE_NAME,
    WAKE_KEY,
    WAKE_TTL_S,
    NotAnEvent,
    store_event,
    validate_event,
)
from ledger.models import EventStatus
from webapp.services import services

SIGNATURE_TOLERANCE_S = 300
"""Stripe's default: a signature older than this is a replay."""

COUNTERS_KEY = "subledger:metrics:webhooks"
"""Redis hash of delivery counts by outcome, shared by every web process (webapp.metrics reads it).

`received` counts every delivery; each one also counts once under `stored`,
`ignored` (stored, or a preview without id, but not used), `duplicate`,
`rejected:<reason>` or `failed` (not stored: 503)."""

VERSIONS_WARNED = "subledger.webhook_api_versions_warned"
"""`app.extensions` key: the other API versions this process has warned about."""

log = logging.getLogger("subledger.web")
bp = Blueprint("webhooks", __name__)
_versions_lock = threading.Lock()


def _count(outcome: str) -> None:
    """Add one delivery to the shared counters; a Redis problem never changes the answer."""
    connection = services().redis
    if connection is None:
        return
    pipeline = connection.pipeline(transaction=False)
    pipeline.hincrby(COUNTERS_KEY, "received")
    pipeline.hincrby(COUNTERS_KEY, outcome)
    with contextlib.suppress(RedisError):
        pipeline.execute()


def _rejected(reason: str, status: int = 400, *, counted_as: str) -> ResponseReturnValue:
    log.warning("webhook rejected", extra={"reason": reason})
    _count(f"rejected:{counted_as}")
    return jsonify(error=reason), status


def _signature_problem(payload: str, header: str | None, secrets: tuple[str, ...]) -> tuple[str, str] | None:
    """None when one of the secrets signed the payload; otherwise what is wrong, and its counter name.

    Several secrets are tried so a rotation (old and new endpoint secret both
    configured) loses nothing.
    """
    if not header:
        return "missing Stripe-Signature header", "no_signature"
    problem = "signature does not match", "bad_signature"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, SIGNATURE_TOLERANCE_S)
            return None
        except stripe.SignatureVerificationError as exc:
            message = str(exc)
            if "tolerance" in message:
                problem = "signature timestamp outside the tolerance zone", "stale_signature"
            elif "Unable to extract" in message or "expected scheme" in message:
                return "malformed Stripe-Signature header", "malformed_signature"
    return problem


def _note_api_version(event: Mapping[str, Any], expected: str) -> None:
    """Warn, once per process and version, of events rendered in another API version than STRIPE_API_VERSION.

    Nothing is refused: the 2020-03-02 shapes and the current ones are both read.
    But the endpoint's version is set in Stripe, apart from the one backfill and
    reconcile read with, and a person should know the two differ.
    """
    version = event.get("api_version")
    if not isinstance(version, str) or version == expected:
        return
    warned: set[str] = current_app.extensions[VERSIONS_WARNED]
    with _versions_lock:
        if version in warned:
            return
        warned.add(version)
    log.warning(
        "webhook events arrive with Stripe API version %s, not STRIPE_API_VERSION %s: both are read, but "
        "webhooks and backfill/reconcile see different shapes; give the endpoint version %s in Stripe",
        version,
        expected,
        expected,
        extra={"api_version": version, "stripe_api_version": expected},
    )


def _notify_workers(connection: Redis, shard: int) -> None:
    """Queue a drain job for the shard unless one is already waiting (see ledger.intake)."""
    if connection.set(WAKE_KEY.format(shard=shard), "1", nx=True, ex=WAKE_TTL_S):
        retry = Retry(max=len(DRAIN_JOB_RETRY_INTERVALS_S), interval=list(DRAIN_JOB_RETRY_INTERVALS_S))
        Queue(QUEUE_NAME, connection=connection).enqueue(DRAIN_JOB, shard, retry=retry, **DRAIN_JOB_OPTIONS)


@bp.post("/webhooks/stripe")
def receive_stripe_event() -> ResponseReturnValue:
    found = services()
    if not found.settings.webhook_secrets:
        # 503, not 400: Stripe keeps retrying, so nothing is lost once the secret is set.
        return _rejected("STRIPE_WEBHOOK_SECRET is not configured", 503, counted_as="not_configured")
    try:
        raw = request.get_data(cache=False)  # 413 past MAX_CONTENT_LENGTH
    except RequestEntityTooLarge:
        _count("rejected:too_large")
        raise
    try:
        payload = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _rejected("body is not UTF-8", counted_as="not_utf8")
    problem = _signature_problem(payload, request.headers.get("Stripe-Signature"), found.settings.webhook_secrets)
    if problem:
        return _rejected(problem[0], counted_as=problem[1])
    try:
        event = validate_event(json.loads(payload))
    except (ValueError, RecursionError, NotAnEvent) as exc:  # RecursionError: nested too deep to parse
        reason = str(exc) if isinstance(exc, NotAnEvent) else "body is not JSON"
        return _rejected(f"not a Stripe event: {reason}", counted_as="not_an_event")
    if event.get("id") is None:
        # Previews such as invoice.upcoming carry no id: nothing to keep or dedupe.
        _count("ignored")
        return jsonify(received=True)
    try:
        with found.database.transaction() as session:
            result = store_event(session, event, received_via="webhook", now=utcnow())
    except DataError:
        # A value the database refuses (a NUL byte, NaN, an over-long type): retrying cannot help.
        return _rejected("not a Stripe event: a value cannot be stored", counted_as="not_an_event")
    except SQLAlchemyError as exc:
        log.error("event not stored", extra={"event_id": event["id"], "error": type(exc).__name__})
        _count("failed")
        return jsonify(error="event could not be stored; retry later"), 503
    _note_api_version(event, found.settings.stripe_api_version)
    if result.stored and result.status is EventStatus.PENDING and found.redis is not None:
        try:
            _notify_workers(found.redis, result.shard)
        except RedisError as exc:
            log.warning("queue unavailable; the sweeper will pick the event up", extra={"error": str(exc)})
    log.info(
        "webhook stored" if result.stored else "webhook duplicate",
        extra={"event_id": event["id"], "event_type": event["type"], "status": result.status.value},
    )
    if not result.stored:
        _count("duplicate")
    else:
        _count("stored" if result.status is EventStatus.PENDING else "ignored")
    return jsonify(received=True)


def init_app(app: Flask) -> None:
    app.extensions[VERSIONS_WARNED] = set()
    app.register_blueprint(bp)
