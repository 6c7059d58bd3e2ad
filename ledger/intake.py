"""The durable intake of Stripe events: what a valid event is, which ones are used,
and how each one is stored exactly once before anything else happens.

The events table is the queue of record. A queue message only says "shard N has
work"; losing one delays processing (the sweeper re-sends it) but never loses an
event, and sending one twice costs nothing.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from ledger.db import from_timestamp, insert_unless_present
from ledger.errors import SubledgerError
from ledger.models import EventStatus, StripeEvent

SHARD_COUNT = 16
"""Events are spread over this many drain jobs; one customer always lands in the same one."""

QUEUE_NAME = "subledger"

REPAIR_QUEUE_NAME = "subledger-repairs"
"""Repairs a paid invoice asked for: a worker takes a job from it only when the main queue is empty."""
"""The RQ queue every subledger job goes through."""

DRAIN_JOB = "worker.jobs.drain_shard"
"""Dotted path of the job that processes a shard's pending events."""

WAKE_KEY = "subledger:wake:{shard}"
"""Redis key set while a drain job for the shard is queued and not yet started."""

WAKE_TTL_S = 600
"""A wake key outlives a lost queue message by at most this long."""

DRAIN_JOB_OPTIONS: dict[str, Any] = {
    "job_timeout": 900,
    "result_ttl": 300,
    "failure_ttl": 7 * 24 * 3600,
}
"""RQ options of a drain job, the same whoever queues it. A job killed by its
timeout leaves its events pending; the sweeper queues them again."""

DRAIN_JOB_RETRY_INTERVALS_S = (10, 60, 300)
"""RQ-level retries of a drain job that crashed (database or Redis briefly down)."""

SUBSCRIPTION_EVENTS = frozenset(
    f"customer.subscription.{action}"
    for action in (
        "created",
        "updated",
        "deleted",
        "paused",
        "resumed",
        "pending_update_applied",
        "pending_update_expired",
        "trial_will_end",
    )
)
CUSTOMER_EVENTS = frozenset({"customer.created", "customer.updated", "customer.deleted"})
DISCOUNT_EVENTS = frozenset(f"customer.discount.{a}" for a in ("created", "updated", "deleted"))
INVOICE_EVENTS = frozenset(
    f"invoice.{action}"
    for action in (
        "created",
        "finalized",
        "updated",
        "paid",
        "payment_failed",
        "payment_succeeded",
        "voided",
        "marked_uncollectible",
        "deleted",
    )
) | frozenset(f"invoiceitem.{action}" for action in ("created", "updated", "deleted"))
"""Invoices and invoice items: Stripe's records of what was billed, and when (mrr-rules.md §10)."""
CATALOG_EVENTS = frozenset(
    f"{kind}.{action}"
    for kind in ("price", "plan", "product", "coupon")
    for action in ("created", "updated", "deleted")
)
USED_EVENT_TYPES = SUBSCRIPTION_EVENTS | CUSTOMER_EVENTS | DISCOUNT_EVENTS | INVOICE_EVENTS | CATALOG_EVENTS
"""Every event type subledger reads; the README lists them for the webhook endpoint."""


class NotAnEvent(SubledgerError, ValueError):
    """The body is JSON but not a Stripe event; the message says what is wrong."""


@dataclass(frozen=True)
class StoreResult:
    stored: bool
    """False when the event id was already stored (a redelivery)."""
    status: EventStatus
    shard: int


def validate_event(document: Any) -> Mapping[str, Any]:
    """`document` if it has the shape of a Stripe event, else NotAnEvent."""
    if not isinstance(document, Mapping):
        raise NotAnEvent("body is not a JSON object")
    if document.get("object") != "event":
        raise NotAnEvent('"object" is not "event"')
    if not isinstance(document.get("type"), str) or not document["type"]:
        raise NotAnEvent('"type" is missing')
    event_id = document.get("id")
    if event_id is not None and (not isinstance(event_id, str) or not event_id or len(event_id) > 255):
        raise NotAnEvent('"id" is not a Stripe id')
    created = document.get("created")
    if not isinstance(created, int) or isinstance(created, bool) or not 0 < created < 2**33:
        raise NotAnEvent('"created" is not a Unix timestamp')
    if not isinstance(document.get("livemode"), bool):
        raise NotAnEvent('"livemode" is not a boolean')
    data = document.get("data")
    if not isinstance(data, Mapping) or not isinstance(data.get("object"), Mapping):
        raise NotAnEvent('"data.object" is missing')
    return document


def partition_of(event: Mapping[str, Any]) -> str:
    """What the event must be processed in order with: its customer, else its own object."""
    obj = event["data"]["object"]
    if obj.get("object") == "customer" and isinstance(obj.get("id"), str):
        return str(obj["id"])
    customer = obj.get("customer")
    if isinstance(customer, Mapping):
        customer = customer.get("id")
    if isinstance(customer, str) and customer:
        return customer
    object_id = obj.get("id")
    return str(object_id) if isinstance(object_id, str) and object_id else str(event.get("id"))


def shard_of(partition: str) -> int:
    """The drain shard of a partition (stable across processes and releases)."""
    return zlib.crc32(partition.encode()) % SHARD_COUNT


def store_event(session: Session, event: Mapping[str, Any], *, received_via: str, now: datetime) -> StoreResult:
    """Insert the event unless its id is already stored. The caller commits.

    The insert ignores a conflicting id in the database itself, so two
    deliveries of one event racing each other still store it once.
    """
    status = EventStatus.PENDING if event["type"] in USED_EVENT_TYPES else EventStatus.IGNORED
    partition = partition_of(event)
    shard = shard_of(partition)
    values = {
        "id": event["id"],
        "type": event["type"],
        "api_version": event.get("api_version") if isinstance(event.get("api_version"), str) else None,
        "livemode": event["livemode"],
        "created": from_timestamp(event["created"]),
        "payload": dict(event),
        "received_at": now,
        "received_via": received_via,
        "partition": partition,
        "shard": shard,
        "status": status.value,
        "attempts": 0,
        "next_attempt_at": now if status is EventStatus.PENDING else None,
    }
    stored = insert_unless_present(session, StripeEvent, values, key=["id"])
    return StoreResult(stored=stored, status=status, shard=shard)
