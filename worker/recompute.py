"""After a customer's events are applied: settle same-second ties, fetch what the
MRR rules need and the payloads lack, and recompute the customer's ledger."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ledger.db import Database, utcnow
from ledger.engine import (
    Recomputed,
    customer_changes,
    recompute_customer,
    recompute_customers,
    settle_ties,
    tied_subscriptions,
)
from ledger.errors import SubledgerError
from ledger.models import StripeObject, Subscription, WaitingCustomer
from ledger.mrr import UnresolvedStripeObject
from ledger.resolve import UnreadAppliesTo
from ledger.settings import Settings
from ledger.state import NEVER_OBSERVED, Applied, record_object
from worker.processing import AfterApply, lock_partition
from worker.stripe_api import NoSuchObject, StripeAPI, StripeUnavailable
from worker.subscription_items import complete_stored_items

log = logging.getLogger("subledger.worker")

MAX_FETCHES_PER_CUSTOMER = 10
"""Distinct missing objects fetched for one customer before giving up."""

WAITING_RETRY_BATCH = 100
"""Waiting customers the sweeper recomputes in one pass."""


class MissingStripeObject(SubledgerError, RuntimeError):
    """A referenced object is neither stored nor fetchable: the customer's ledger waits for it."""

    def __init__(self, message: str, *, object_id: str | None = None) -> None:
        super().__init__(message)
        self.object_id = object_id or None


_UNREAD_LOGGED: set[str] = set()
"""Coupons this process said it values without their `applies_to`."""


def _valued_unread(coupon_id: str, why: str) -> None:
    if coupon_id not in _UNREAD_LOGGED:
        _UNREAD_LOGGED.add(coupon_id)
        log.warning(
            "coupon %s is valued as reducing every item: its applies_to was never read (%s)",
            coupon_id,
            why,
            extra={"coupon": coupon_id},
        )


def _without_key(coupon_id: str) -> None:
    """Without STRIPE_API_KEY an unread coupon must not hold the ledger back: it reduces every item."""
    _valued_unread(coupon_id, "set STRIPE_API_KEY so subledger can read it")


def unread_applies_to(api: StripeAPI | None) -> UnreadAppliesTo | None:
    """What the engine does with a coupon whose `applies_to` was never read: fetched first (None) when it can be."""
    return None if api is not None else _without_key


def _discounts_of(subscription: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = [d for d in subscription.get("discounts") or [] if isinstance(d, Mapping)]
    for item in (subscription.get("items") or {}).get("data") or []:
        found.extend(d for d in item.get("discounts") or [] if isinstance(d, Mapping))
    if isinstance(subscription.get("discount"), Mapping):
        found.append(subscription["discount"])
    return found


def _store_fetched_subscription(session: Session, subscription: Mapping[str, Any]) -> None:
    """Keep the discounts, coupons and tiered prices a fetched subscription carries.

    A coupon a discount names by id is left to the engine, which reads it from
    the store, from its queued event or from its own endpoint: Stripe still
    shows a discount whose coupon was deleted since, and answers 404 for the
    coupon, yet the discount still counts.
    """
    now = utcnow()
    for discount in _discounts_of(subscription):
        source: Mapping[str, Any] = discount["source"] if isinstance(discount.get("source"), Mapping) else {}
        coupon = discount.get("coupon") or source.get("coupon")
        if isinstance(coupon, Mapping):
            record_object(session, coupon, observed_at=now)
        record_object(session, discount, observed_at=now)
    for item in (subscription.get("items") or {}).get("data") or []:
        price = item.get("price")
        if isinstance(price, Mapping) and price.get("tiers") is not None:
            record_object(session, price, observed_at=now)


PRICE_MISSING = frozenset({"tiers", "price"})
"""What `ledger.mrr` names a price for: the price is read from its own endpoint."""

COUPON_MISSING = frozenset({"coupon object", "applies_to", "percent_off/amount_off"})
"""What `ledger.resolve` / `ledger.mrr` name a coupon for: the coupon is read from its own endpoint."""

DISCOUNT_MISSING = "discount object"
"""What a version lacks that names a discount by id, not stored: Stripe has no reading one by id."""


def fetch_missing(session: Session, api: StripeAPI, customer_id: str, missing: UnresolvedStripeObject) -> None:
    """Fetch the object `missing` names (or what carries it) and store it."""
    now = utcnow()
    if missing.missing in PRICE_MISSING:
        record_object(session, api.price(missing.object_id), observed_at=now)
        return
    if missing.missing in COUPON_MISSING:
        # Never through a subscription: the discount naming the coupon may be gone from it since.
        try:
            coupon = api.coupon(missing.object_id)
        except NoSuchObject:
            if missing.missing != "applies_to":
                raise
            # A deleted coupon still counts, but Stripe no longer answers for it: marked deleted
            # (as Stripe shows one), the engine values it as reducing every item.
            gone = {"id": missing.object_id, "object": "coupon", "deleted": True}
            record_object(session, gone, observed_at=NEVER_OBSERVED, deleted=True)
            _valued_unread(missing.object_id, "Stripe has deleted the coupon")
            return
        record_object(session, coupon, observed_at=now)
        return
    if missing.missing == "items":  # a subscription's item list cut at 20
        complete_stored_items(session, api, missing.object_id)
        return
    # A discount named by id (or holding no coupon): discounts have no endpoint of their own,
    # they come expanded on their subscription. One removed since is only known from its own
    # customer.discount.* events, which are stored as they arrive.
    for subscription_id in session.scalars(select(Subscription.id).where(Subscription.customer_id == customer_id)):
        _store_fetched_subscription(session, api.subscription(subscription_id))


def fetch_references(
    session: Session, customer_id: str, settings: Settings, api: StripeAPI | None, *, now: datetime
) -> None:
    """Fetch from Stripe, one by one, what the customer's stored versions name and nothing stored holds,
    until they all can be valued; writes nothing else. `MissingStripeObject` when one cannot be had."""
    tried: set[str] = set()
    while True:
        try:
            customer_changes(session, [customer_id], settings.rules, now=now, unread_applies_to=unread_applies_to(api))
            return
        except UnresolvedStripeObject as exc:
            key = f"{exc.object_id}/{exc.missing}"
            if api is None:
                raise MissingStripeObject(
                    f"{exc}; set STRIPE_API_KEY so subledger can fetch it", object_id=exc.object_id
                ) from None
            if key in tried or len(tried) >= MAX_FETCHES_PER_CUSTOMER:
                raise MissingStripeObject(
                    f"{exc}; fetching it from Stripe did not help", object_id=exc.object_id
                ) from None
            tried.add(key)
            try:
                fetch_missing(session, api, customer_id, exc)
            except StripeUnavailable as unavailable:
                raise MissingStripeObject(f"{exc}; {unavailable}", object_id=exc.object_id) from None


def recompute(session: Session, customer_id: str, settings: Settings, api: StripeAPI | None) -> Recomputed:
    """Recompute one customer, fetching missing objects from Stripe first as needed."""
    now = utcnow()
    fetch_references(session, customer_id, settings, api, now=now)
    return recompute_customer(session, customer_id, settings.rules, now=now, unread_applies_to=unread_applies_to(api))


def _summary(result: Recomputed) -> str:
    kinds = ", ".join(f"{m.type} {m.amount:+d} {m.currency}" for m in result.movements[-result.movements_added :])
    if not result.movements_added and not result.movements_removed:
        return "no change"
    return f"+{result.movements_added}/-{result.movements_removed} movements" + (f" (latest: {kinds})" if kinds else "")


def after_apply_for(settings: Settings, *, paid: set[str] | None = None) -> AfterApply:
    """The hook `worker.processing` calls once a batch of events is applied.

    `paid` collects the batch's paid invoices of subscriptions, for the caller to compare with what the
    ledger says of those subscriptions (`worker.reconcile.contradicted_by_invoices`).
    """
    api = StripeAPI(settings) if settings.stripe_api_key else None

    def current_state(subscription_id: str) -> Mapping[str, Any] | None:
        if api is None:
            return None
        try:
            return api.subscription(subscription_id)
        except StripeUnavailable as exc:
            log.warning("could not re-fetch a tied subscription", extra={"error": str(exc)})
            return None

    def after_apply(session: Session, applied: list[Applied]) -> dict[str, str]:
        if paid is not None:
            paid.update(a.paid_invoice for a in applied if a.paid_invoice)
        customers = sorted({a.customer_id for a in applied if a.customer_id})
        touched = {(a.subscription_id, a.observed_at) for a in applied if a.subscription_id}
        for subscription_id, observed_at in tied_subscriptions(session, customers):
            if (subscription_id, observed_at) in touched:
                settle_ties(session, subscription_id, observed_at, current_state)
        # Customers waiting for an object this batch (or anything since) stored are recomputed with it,
        # unless another worker holds one (it recomputes it).
        ready = [c for c in ready_to_value(session) if c in customers or lock_partition(session, c)]
        customers = sorted({*customers, *ready})
        summaries = recompute_or_wait(session, customers, settings, api)
        return {customer_id: summaries[customer_id] for customer_id in summaries}

    return after_apply


def recompute_or_wait(
    session: Session, customers: Sequence[str], settings: Settings, api: StripeAPI | None
) -> dict[str, str]:
    """Recompute the customers' ledgers; one that names an object neither stored nor fetchable waits for it.

    Its events stay applied: the ledger is a function of the stored versions,
    so recomputed once the object is there, it is what it would have been had
    the object come first. Every customer adds to the same account_months and
    daily_totals rows: added to once per transaction, in key order, two
    workers never lock them crosswise. A summary per customer.
    """
    now, unread = utcnow(), unread_applies_to(api)
    waiting: dict[str, MissingStripeObject] = {}
    try:
        with session.begin_nested():
            results = recompute_customers(session, customers, settings.rules, now=now, unread_applies_to=unread)
    except UnresolvedStripeObject:
        # Someone's subscription names an object not stored: fetch it customer by customer (which
        # writes no ledger row), then recompute those that can be valued together.
        valued = []
        for customer_id in customers:
            try:
                with session.begin_nested():
                    fetch_references(session, customer_id, settings, api, now=now)
                valued.append(customer_id)
            except MissingStripeObject as exc:
                waiting[customer_id] = exc
        results = recompute_customers(session, valued, settings.rules, now=now, unread_applies_to=unread)
    wait_for(session, waiting, now=now)
    summaries = {result.customer_id: _summary(result) for result in results}
    no_longer_waiting(session, list(summaries))
    for customer_id, missing in waiting.items():
        summaries[customer_id] = f"waiting: {missing}"
        log.warning("ledger waits for an object", extra={"customer": customer_id, "error": str(missing)})
    return summaries


def wait_for(session: Session, waiting: Mapping[str, MissingStripeObject], *, now: datetime) -> None:
    """Record (or refresh) what each customer's ledger waits for.

    An object stored already and still not enough (a coupon Stripe deleted, read without its terms)
    is no arrival to wait for: the row names none, and only the sweeper tries again, rather than
    every batch that follows.
    """
    for customer_id, missing in sorted(waiting.items()):
        awaited = missing.object_id
        if awaited is not None and session.get(StripeObject, awaited) is not None:
            awaited = None
        row = session.get(WaitingCustomer, customer_id)
        if row is None:
            row = WaitingCustomer(customer_id=customer_id, since=now)
            session.add(row)
        row.object_id, row.reason, row.checked_at = awaited, str(missing)[:2000], now
    session.flush()


def no_longer_waiting(session: Session, customers: Sequence[str]) -> None:
    """The customers' ledgers are recomputed: whatever they waited for, they have."""
    if customers:
        session.execute(delete(WaitingCustomer).where(WaitingCustomer.customer_id.in_(customers)))


def ready_to_value(session: Session) -> list[str]:
    """Waiting customers whose object is stored now."""
    return list(
        session.scalars(
            select(WaitingCustomer.customer_id).join(StripeObject, StripeObject.id == WaitingCustomer.object_id)
        )
    )


def retry_waiting(db: Database, settings: Settings, *, limit: int = WAITING_RETRY_BATCH) -> tuple[int, int]:
    """Recompute the customers waiting longest (the sweeper's pass), fetching what they lack anew:
    (valued now, still waiting). A customer whose events are being processed is left to that worker."""
    api = StripeAPI(settings) if settings.stripe_api_key else None
    with db.session() as session:
        customers = session.scalars(
            select(WaitingCustomer.customer_id).order_by(WaitingCustomer.checked_at).limit(limit)
        ).all()
    valued = still = 0
    for customer_id in customers:
        with db.transaction() as session:
            if not lock_partition(session, customer_id):
                continue
            summary = recompute_or_wait(session, [customer_id], settings, api)[customer_id]
        if summary.startswith("waiting: "):
            still += 1
        else:
            valued += 1
    return valued, still
