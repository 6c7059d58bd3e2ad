"""`POST /webhooks/stripe`: verify, store, acknowledge, queue. Nothing else.

Stripe waits for the answer (and holds back invoice charges while it does), so
the request never calls Stripe and never processes the event: it commits the
raw event, answers, and leaves the work to the workers. The order matters:
the row is committed before the queue hears of it, so a fast worker never
looks for a row that is not there yet, and a queue that is down costs only a
delay (the sweeper finds the pending row later), never the event.
"""

from __future__ import annotations

import json
import logging

import stripe
from flask import Blueprint, Flask, jsonify, request
from flask.typing import ResponseReturnValue
from redis import Redis, RedisError
from rq import Queue, Retry
from sqlalchemy.exc import SQLAlchemyError

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

log = logging.getLogger("subledger.web")
bp = Blueprint("webhooks", __name__)


def _rejected(reason: str, status: int = 400) -> ResponseReturnValue:
    log.warning("webhook rejected", extra={"reason": reason})
    return jsonify(error=reason), status


def _signature_problem(payload: str, header: str | None, secrets: tuple[str, ...]) -> str | None:
    """None when one of the secrets signed the payload; otherwise what is wrong.

    Several secrets are tried so a rotation (old and new endpoint secret both
    configured) loses nothing.
    """
    if not header:
        return "missing Stripe-Signature header"
    problem = "signature does not match"
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(payload, header, secret, SIGNATURE_TOLERANCE_S)
            return None
        except stripe.SignatureVerificationError as exc:
            message = str(exc)
            if "tolerance" in message:
                problem = "signature timestamp outside the tolerance zone"
            elif "Unable to extract" in message or "expected scheme" in message:
                return "malformed Stripe-Signature header"
    return problem


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
        return _rejected("STRIPE_WEBHOOK_SECRET is not configured", 503)
    raw = request.get_data(cache=False)  # 413 past MAX_CONTENT_LENGTH
    try:
        payload = raw.decode("utf-8")
    except UnicodeDecodeError:
        return _rejected("body is not UTF-8")
    problem = _signature_problem(payload, request.headers.get("Stripe-Signature"), found.settings.webhook_secrets)
    if problem:
        return _rejected(problem)
    try:
        event = validate_event(json.loads(payload))
    except (ValueError, NotAnEvent) as exc:
        reason = str(exc) if isinstance(exc, NotAnEvent) else "body is not JSON"
        return _rejected(f"not a Stripe event: {reason}")
    if event.get("id") is None:
        # Previews such as invoice.upcoming carry no id: nothing to keep or dedupe.
        return jsonify(received=True)
    try:
        with found.database.transaction() as session:
            result = store_event(session, event, received_via="webhook", now=utcnow())
    except SQLAlchemyError as exc:
        log.error("event not stored", extra={"event_id": event["id"], "error": type(exc).__name__})
        return jsonify(error="event could not be stored; retry later"), 503
    if result.stored and result.status is EventStatus.PENDING and found.redis is not None:
        try:
            _notify_workers(found.redis, result.shard)
        except RedisError as exc:
            log.warning("queue unavailable; the sweeper will pick the event up", extra={"error": str(exc)})
    log.info(
        "webhook stored" if result.stored else "webhook duplicate",
        extra={"event_id": event["id"], "event_type": event["type"], "status": result.status.value},
    )
    return jsonify(received=True)


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
