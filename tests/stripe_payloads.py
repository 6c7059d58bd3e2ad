"""Real Stripe payloads from tests/fixtures/stripe, and a way to sign them."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
from functools import cache
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "stripe"
WEBHOOK_SECRET = "whsec_test_subledger_0123456789"


def event_2020(name: str) -> dict[str, Any]:
    """A whole webhook event as Stripe sent it with API version 2020-03-02."""
    event: dict[str, Any] = json.loads((FIXTURES / "events-api-2020" / f"{name}.json").read_text())
    return event


@cache
def _resources() -> dict[str, Any]:
    return json.loads((FIXTURES / "fixtures3.json").read_text())["resources"]


def resource(name: str) -> dict[str, Any]:
    """Stripe's example object of a resource, current API shape (placeholder values)."""
    return copy.deepcopy(_resources()[name])


def current_event(event_type: str, obj: dict[str, Any], *, event_id: str, created: int) -> dict[str, Any]:
    """An event envelope of the current API shape around `obj`."""
    envelope = resource("event")
    envelope.update(
        id=event_id,
        type=event_type,
        created=created,
        api_version="2025-10-29.clover",
        livemode=bool(obj.get("livemode", False)),
        data={"object": obj},
    )
    return envelope


def signature_header(payload: bytes, secret: str = WEBHOOK_SECRET, timestamp: int | None = None) -> str:
    """A Stripe-Signature header, computed as Stripe does."""
    timestamp = int(time.time()) if timestamp is None else timestamp
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def signed(
    event: dict[str, Any], secret: str = WEBHOOK_SECRET, timestamp: int | None = None
) -> tuple[bytes, dict[str, str]]:
    """Body and headers of a signed delivery of `event`."""
    body = json.dumps(event).encode()
    return body, {
        "Stripe-Signature": signature_header(body, secret, timestamp),
        "Content-Type": "application/json",
    }
