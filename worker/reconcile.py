"""`subledger reconcile`: compare every subscription with Stripe now, correct the
ledger where it differs, and list the drift (mrr-rules.md §9).

A subscription *drifts* when recording Stripe's current version would change its
MRR timeline in the ledger: its net MRR now, or a past change the ledger never
heard of (a subscription it never saw, a trial that converted and later ended).
The correction is that version, stored as a snapshot like any other
(`reconcile:<run>`, rank RANK_RECONCILE, observed just before it was asked
for); the §5 rules date its effect — `ended_at` for a cancellation,
`trial_end` for a conversion, otherwise the read. The customer's movements
are then recomputed. Because drift is defined as "this version would change
the ledger", a second run right after the first finds nothing.
docs/reconciliation.md tells the whole story.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ledger.db import Database, utcnow
from ledger.engine import customer_snapshots
from ledger.models import (
    DriftItem,
    EventStatus,
    RunStatus,
    StripeEvent,
    StripeObject,
    Subscription,
)
from ledger.mrr import UnresolvedStripeObject
from ledger.resolve import applies_to_read, resolve_subscription
from ledger.settings import RuleSettings, Settings
from ledger.state import RANK_RECONCILE, record_object, record_subscription
from ledger.timeline import PAYING_STATUSES, Snapshot, subscription_changes
from worker.defaults import STUCK_AFTER_S
from worker.processing import lock_partition
from worker.recompute import MAX_FETCHES_PER_CUSTOMER, MissingStripeObject, fetch_missing, recompute
from worker.runs import RunReport, finish_run, heartbeat, record_stop, start_run
from worker.stripe_api import StripeAPI, StripeUnavailable

log = logging.getLogger("subledger.reconcile")

LIST_EXPANSIONS = ("data.discounts", "data.items.data.discounts")
"""What the list read expands. Stripe allows four levels, so tiers
(`data.items.data.price.tiers`) and coupons inside item discounts are filled in apart."""

COUNTS = ("subscriptions_checked", "drifted", "corrected", "customers_recomputed", "skipped_in_flight")
"""Counts every reconcile run stores, zero included."""


class CorrectionDidNotTake(RuntimeError):
    """The ledger still differs from Stripe after the correcting version was stored."""


Step = tuple[datetime, str, int]
"""From `at` on, net MRR `amount` in `currency` ("" when the amount is 0: zero is zero in any currency)."""


def mrr_steps(snapshots: Sequence[Snapshot], rules: RuleSettings, *, until: datetime) -> tuple[Step, ...]:
    """A subscription's net MRR over time up to `until`, one step per change of amount."""
    steps: list[Step] = []
    current: tuple[str, int] = ("", 0)
    for change in subscription_changes(snapshots, rules, until=until):
        worth = (change.currency if change.net else "", change.net)
        if worth != current:
            steps.append((change.at, *worth))
            current = worth
    return tuple(steps)


def _mrr_at_end(steps: Sequence[Step]) -> int:
    return steps[-1][2] if steps else 0


def _diverges_at(ledger: Sequence[Step], stripe: Sequence[Step]) -> datetime:
    """The first instant at which two differing step lists disagree."""
    for mine, theirs in zip(ledger, stripe, strict=False):
        if mine != theirs:
            return min(mine[0], theirs[0])
    longer = ledger if len(ledger) > len(stripe) else stripe
    return longer[min(len(ledger), len(stripe))][0]


def iso(instant: datetime) -> str:
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


# --- What the list read leaves as ids --------------------------------------------------


def _discounts(subscription: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from (d for d in subscription.get("discounts") or [] if isinstance(d, Mapping))
    if isinstance(subscription.get("discount"), Mapping):
        yield subscription["discount"]
    for item in (subscription.get("items") or {}).get("data") or []:
        yield from (d for d in item.get("discounts") or [] if isinstance(d, Mapping))


def _references(subscription: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(kind, id) of the tiered prices without tiers and the coupons named by id or not read whole."""
    for item in (subscription.get("items") or {}).get("data") or []:
        price = item.get("price")
        if isinstance(price, Mapping) and price.get("billing_scheme") == "tiered" and price.get("tiers") is None:
            yield "price", str(price.get("id"))
    for discount in _discounts(subscription):
        source = discount.get("source")
        coupon = discount.get("coupon") or (source.get("coupon") if isinstance(source, Mapping) else None)
        if isinstance(coupon, str):
            yield "coupon", coupon
        elif isinstance(coupon, Mapping) and not applies_to_read(coupon) and isinstance(coupon.get("id"), str):
            yield "coupon", coupon["id"]


class _Catalog:
    """Prices (with tiers) and coupons: stored ones first, the rest fetched once per run.

    Fetches happen before the page's write transaction, so a SQLite writer
    is never held up by a call to Stripe.
    """

    def __init__(self, api: StripeAPI) -> None:
        self.api = api
        self.known: dict[str, Mapping[str, Any]] = {}
        self.unavailable: dict[str, str] = {}
        self.fetched: list[Mapping[str, Any]] = []

    def prepare(self, session: Session, subscriptions: Iterable[Mapping[str, Any]]) -> None:
        wanted = {
            object_id: kind
            for subscription in subscriptions
            for kind, object_id in _references(subscription)
            if object_id not in self.known and object_id not in self.unavailable
        }
        if not wanted:
            return
        for row in session.scalars(select(StripeObject).where(StripeObject.id.in_(wanted))):
            # A stored price from a webhook has no tiers, a stored coupon no applies_to: only a read
            # one will do (or a deleted coupon, which Stripe no longer answers for).
            if wanted[row.id] == "coupon":
                if applies_to_read(row.payload) or row.deleted:
                    self.known[row.id] = row.payload
            elif row.payload.get("tiers") is not None:
                self.known[row.id] = row.payload
        for object_id, kind in sorted(wanted.items()):
            if object_id in self.known:
                continue
            try:
                found = self.api.price(object_id) if kind == "price" else self.api.coupon(object_id)
            except StripeUnavailable as exc:
                self.unavailable[object_id] = str(exc)
                continue
            self.known[object_id] = found
            self.fetched.append(found)

    def lookup(self, object_id: str) -> Mapping[str, Any] | None:
        return self.known.get(object_id)

    def store_fetched(self, session: Session, observed_at: datetime) -> None:
        """Keep what was fetched: later webhook versions name the same objects."""
        for found in self.fetched:
            record_object(session, found, observed_at=observed_at)
        self.fetched = []

    def why_unresolved(self, exc: UnresolvedStripeObject) -> str:
        reason = self.unavailable.get(exc.object_id)
        return f"{exc} ({reason})" if reason else str(exc)


# --- One page of subscriptions -------------------------------------------------------------


@dataclass(frozen=True)
class _Read:
    """A page of subscriptions as Stripe gave it."""

    subscriptions: Sequence[Mapping[str, Any]]
    observed_at: datetime
    """The whole second before Stripe was asked. Event times are whole seconds: an
    event stamped with an earlier second happened before the question and sorts
    before the correction; one stamped with the second of the question or later
    may be newer than the answer, and sorts after it, so it is never overridden."""


def observed_before(asked_at: datetime) -> datetime:
    return asked_at.replace(microsecond=0) - timedelta(seconds=1)


@dataclass(frozen=True)
class _Drift:
    subscription: dict[str, Any]
    subscription_id: str
    customer_id: str
    ledger: tuple[Step, ...]
    stripe: tuple[Step, ...]
    never_seen: bool


class _Reconciler:
    def __init__(self, db: Database, settings: Settings, api: StripeAPI, report: RunReport) -> None:
        self.db = db
        self.settings = settings
        self.rules = settings.rules
        self.api = api
        self.report = report
        self.source = f"reconcile:{report.run_id}"
        self.catalog = _Catalog(api)
        self.seen: set[str] = set()

    def page(self, read: _Read) -> None:
        by_customer: dict[str, list[Mapping[str, Any]]] = {}
        for subscription in read.subscriptions:
            customer = subscription.get("customer")
            customer_id = customer.get("id") if isinstance(customer, Mapping) else customer
            if not isinstance(subscription.get("id"), str) or not isinstance(customer_id, str):
                self.report.error(f"{subscription.get('id')}: Stripe sent a subscription without id or customer")
                continue
            self.seen.add(subscription["id"])
            by_customer.setdefault(customer_id, []).append(subscription)
        with self.db.session() as session:
            self.catalog.prepare(session, read.subscriptions)
        with self.db.transaction() as session:
            self.catalog.store_fetched(session, read.observed_at)
        with self.db.transaction() as session:
            for customer_id, subscriptions in sorted(by_customer.items()):
                self.customer(session, customer_id, subscriptions, read)

    def customer(self, session: Session, customer_id: str, subscriptions: list[Mapping[str, Any]], read: _Read) -> None:
        counts = self.report.counts
        counts["subscriptions_checked"] += len(subscriptions)
        try:
            with session.begin_nested():
                if not lock_partition(session, customer_id) or _in_flight(session, customer_id, now=utcnow()):
                    counts["skipped_in_flight"] += len(subscriptions)
                    return
                stored = self.stored_snapshots(session, customer_id)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            self.report.error(f"{customer_id}: {exc}")
            return
        except Exception as exc:  # one customer must not hold back the others
            self.report.error(f"{customer_id}: {exc}")
            return
        drifts: list[_Drift] = []
        for subscription in subscriptions:
            try:
                drift = self.compare(subscription, customer_id, stored.get(subscription["id"], []), read)
            except Exception as exc:  # nor one subscription the others
                self.report.error(f"{subscription['id']}: {exc}")
                continue
            if drift is not None:
                drifts.append(drift)
        if not drifts:
            return
        counts["drifted"] += len(drifts)
        try:
            with session.begin_nested():
                self.correct(session, customer_id, drifts, read)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            self._not_corrected(drifts, exc)
        except Exception as exc:
            self._not_corrected(drifts, exc)
        else:
            counts["corrected"] += len(drifts)
            counts["customers_recomputed"] += 1

    def _not_corrected(self, drifts: Sequence[_Drift], exc: Exception) -> None:
        for drift in drifts:
            self.report.error(f"{drift.subscription_id}: drift not corrected: {exc}")

    def stored_snapshots(self, session: Session, customer_id: str) -> dict[str, list[Snapshot]]:
        """The ledger's versions of the customer's subscriptions, fetching what they name and lack."""
        tried: set[str] = set()
        while True:
            try:
                snapshots = customer_snapshots(session, [customer_id])[customer_id]
                break
            except UnresolvedStripeObject as exc:
                key = f"{exc.object_id}/{exc.missing}"
                if key in tried or len(tried) >= MAX_FETCHES_PER_CUSTOMER:
                    raise MissingStripeObject(f"a stored version: {exc}") from None
                tried.add(key)
                fetch_missing(session, self.api, customer_id, exc)
        by_subscription: dict[str, list[Snapshot]] = {}
        for snapshot in snapshots:
            by_subscription.setdefault(snapshot.subscription_id, []).append(snapshot)
        return by_subscription

    def compare(
        self, subscription: Mapping[str, Any], customer_id: str, stored: list[Snapshot], read: _Read
    ) -> _Drift | None:
        subscription_id: str = subscription["id"]
        resolved = resolve_subscription(subscription, self.catalog.lookup)
        candidate = Snapshot(subscription_id, customer_id, read.observed_at, RANK_RECONCILE, self.source, resolved)
        try:
            ledger = mrr_steps(stored, self.rules, until=read.observed_at)
            stripe = mrr_steps([*stored, candidate], self.rules, until=read.observed_at)
        except UnresolvedStripeObject as exc:
            raise MissingStripeObject(self.catalog.why_unresolved(exc)) from None
        if ledger == stripe:
            return None
        return _Drift(dict(resolved), subscription_id, customer_id, ledger, stripe, never_seen=not stored)

    def correct(self, session: Session, customer_id: str, drifts: Sequence[_Drift], read: _Read) -> None:
        for drift in drifts:
            record_subscription(
                session, drift.subscription, observed_at=read.observed_at, source=self.source, rank=RANK_RECONCILE
            )
        recompute(session, customer_id, self.settings, self.api)
        # The ledger reads the stored versions back through its own lookups: make sure it now agrees.
        stored = self.stored_snapshots(session, customer_id)
        for drift in drifts:
            now_says = mrr_steps(stored[drift.subscription_id], self.rules, until=read.observed_at)
            if now_says != drift.stripe:
                raise CorrectionDidNotTake(
                    f"after the correction the ledger's MRR history still differs from Stripe's "
                    f"(ledger {_mrr_at_end(now_says)}, Stripe {_mrr_at_end(drift.stripe)})"
                )
        session.add_all(self.drift_item(drift) for drift in drifts)

    def drift_item(self, drift: _Drift) -> DriftItem:
        ledger_mrr, stripe_mrr = _mrr_at_end(drift.ledger), _mrr_at_end(drift.stripe)
        effective_at = _diverges_at(drift.ledger, drift.stripe)
        currency = next(
            (c for _, c, _ in reversed(drift.ledger + drift.stripe) if c),
            str(drift.subscription.get("currency") or "").lower(),
        )
        status = drift.subscription.get("status")
        action = (
            f"added a subscription the ledger had never seen ({status}), effective {iso(effective_at)}"
            if drift.never_seen
            else f"recorded Stripe's state ({status}), effective {iso(effective_at)}"
        )
        return DriftItem(
            run_id=self.report.run_id,
            subscription_id=drift.subscription_id,
            customer_id=drift.customer_id,
            currency=currency,
            ledger_mrr=ledger_mrr,
            stripe_mrr=stripe_mrr,
            difference=stripe_mrr - ledger_mrr,
            action=action,
            effective_at=effective_at,
        )

    def ledger_only(self) -> Iterator[str]:
        """Subscriptions the ledger counts as live that the list did not return."""
        with self.db.session() as session:
            query = select(Subscription.id).where(Subscription.status.in_(PAYING_STATUSES))
            if self.settings.livemode is not None:
                query = query.where(Subscription.livemode == self.settings.livemode)
            live = list(session.scalars(query.order_by(Subscription.id)))
        return (subscription_id for subscription_id in live if subscription_id not in self.seen)


def _in_flight(session: Session, customer_id: str, *, now: datetime) -> bool:
    """Whether the customer has events a worker has not tried yet, received lately.

    The worker is about to bring the ledger up to date: correcting it first
    would report drift that is only a queue. Events pending for longer than the
    sweeper waits (or failing) are stuck, and reconciliation corrects around them.
    """
    recent = now - timedelta(seconds=STUCK_AFTER_S)
    waiting = session.scalar(
        select(StripeEvent.id)
        .where(
            StripeEvent.partition == customer_id,
            StripeEvent.status == EventStatus.PENDING.value,
            StripeEvent.attempts == 0,
            StripeEvent.received_at >= recent,
        )
        .limit(1)
    )
    return waiting is not None


def _pages(api: StripeAPI) -> Iterator[_Read]:
    pages = api.pages("/v1/subscriptions", status="all", expand=list(LIST_EXPANSIONS))
    while True:
        observed_at = observed_before(utcnow())
        page = next(pages, None)
        if page is None:
            return
        # Stripe embeds a subscription's first 20 items: the rest are paged now, under the same read.
        yield _Read([api.with_every_item(subscription) for subscription in page], observed_at)


def reconcile(db: Database, settings: Settings, *, api: StripeAPI | None = None) -> RunReport:
    """Compare every Stripe subscription with the ledger now; correct and report the drift.

    Raises RunRefused when another reconcile is running, StripeUnavailable
    without an API key. A Stripe error while listing ends the run `failed`
    (what was corrected before it stays); errors on single subscriptions end
    it `partial`, each one listed.
    """
    api = api or StripeAPI(settings)
    report = start_run(
        db, "reconcile", parameters={}, livemode=settings.livemode, stripe_api_version=api.api_version, exclusive=True
    )
    report.counts.update(dict.fromkeys(COUNTS, 0))
    reconciler = _Reconciler(db, settings, api, report)
    try:
        for read in _pages(api):
            reconciler.page(read)
            heartbeat(db, report)
        for subscription_id in reconciler.ledger_only():
            observed_at = observed_before(utcnow())
            try:
                found = api.subscription(subscription_id)
            except StripeUnavailable as exc:
                report.error(f"{subscription_id}: the ledger counts it, Stripe's list does not have it ({exc})")
                continue
            reconciler.page(_Read([found], observed_at))
            heartbeat(db, report)
    except StripeUnavailable as exc:
        report.error(f"reading subscriptions from Stripe: {exc}")
        return finish_run(db, report, RunStatus.FAILED)
    except BaseException as exc:
        record_stop(db, report, exc)
        raise
    log.info("reconcile finished", extra={"run": report.run_id, "counts": dict(report.counts)})
    return finish_run(db, report)
