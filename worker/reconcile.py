"""`subledger reconcile`: apply the events Stripe still keeps, compare every
subscription with Stripe now, correct the ledger where it differs, and list
the drift (mrr-rules.md §9).

A subscription *drifts* when recording Stripe's current version would change its
MRR timeline in the ledger (its net MRR now, or a past change the ledger never
heard of: a subscription it never saw, a trial that converted and later ended),
or when the invoices the ledger stored date a change its versions lack. The
correction is the subscription's history rebuilt from Stripe's records (its
invoices and proration items, §10), laid over the ledger's versions where they
differ (`reconcile:<run>`, rank RANK_HISTORY); what no record dates is
Stripe's current version (rank RANK_RECONCILE, observed just before it was
asked for), whose effect the §5 rules date. The customer's movements are then
recomputed. Because drift is defined as "these versions would change the
ledger", a second run right after the first finds nothing.
docs/reconciliation.md tells the whole story.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ledger.db import Database, utcnow
from ledger.engine import customer_snapshots
from ledger.errors import SubledgerError
from ledger.history import (
    CURRENT_SOURCE,
    Billed,
    HistoricalVersion,
    billed_items,
    coupons_as_invoiced,
    discounts_carried,
    invoice_fields,
    invoice_item_subscription,
    invoice_subscription,
    item_prices,
    named_discounts,
    version_items,
)
from ledger.models import (
    DriftItem,
    EventStatus,
    RunStatus,
    StripeEvent,
    StripeObject,
    Subscription,
    SubscriptionSnapshot,
)
from ledger.mrr import UnresolvedStripeObject
from ledger.resolve import applies_to_read, resolve_subscription
from ledger.settings import RuleSettings, Settings
from ledger.state import RANK_HISTORY, RANK_RECONCILE, SubscriptionVersion, record_object, record_subscriptions
from ledger.timeline import PAYING_STATUSES, Snapshot, subscription_changes
from worker.catchup import catch_up
from worker.defaults import STUCK_AFTER_S
from worker.processing import drain, lock_partition
from worker.recompute import (
    COUPON_MISSING,
    DISCOUNT_MISSING,
    MAX_FETCHES_PER_CUSTOMER,
    PRICE_MISSING,
    MissingStripeObject,
    after_apply_for,
    fetch_missing,
    no_longer_waiting,
    recompute,
)
from worker.records import InvoicedDiscounts, Records, read_records, stored_object, stored_payload, stored_prices
from worker.runs import RunRefused, RunReport, finish_run, heartbeat, record_stop, start_run
from worker.stripe_api import NoSuchObject, StripeAPI, StripeUnavailable

log = logging.getLogger("subledger.reconcile")

LIST_EXPANSIONS = ("data.discounts", "data.items.data.discounts")
"""What the list read expands. Stripe allows four levels, so tiers
(`data.items.data.price.tiers`) and coupons inside item discounts are filled in apart."""

COUNTS = (
    "events_caught_up",
    "subscriptions_checked",
    "drifted",
    "corrected",
    "customers_recomputed",
    "skipped_in_flight",
)
"""Counts every reconcile run stores, zero included."""


class _OnlyInvoicesValue(NoSuchObject):
    """Stripe's state names a coupon Stripe has deleted (404) and the ledger does not hold, or the
    ledger's versions name a discount Stripe no longer has (there is no reading one by id)."""


class CorrectionDidNotTake(SubledgerError, RuntimeError):
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

    def fetch(self, missing: UnresolvedStripeObject) -> bool:
        """Fetch the price or coupon `missing` names, once; whether it is known now."""
        object_id = missing.object_id
        if object_id in self.known:
            return True
        if object_id in self.unavailable or missing.missing not in PRICE_MISSING | COUPON_MISSING:
            return False
        try:
            found = self.api.price(object_id) if missing.missing in PRICE_MISSING else self.api.coupon(object_id)
        except StripeUnavailable as exc:
            self.unavailable[object_id] = str(exc)
            return False
        self.known[object_id] = found
        self.fetched.append(found)
        return True

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
    candidate: Snapshot
    """Stripe's state as read, dated at the run: the correction when no record dates it."""

    @property
    def now(self) -> bool:
        """Whether recording Stripe's state as read would change the ledger's MRR history."""
        return self.ledger != self.stripe


@dataclass(frozen=True)
class _Correction:
    """The versions that make the ledger agree with Stripe, and how they were dated."""

    versions: list[Snapshot]
    steps: tuple[Step, ...]
    """The subscription's MRR over time once they are stored."""
    dated_by: str


Worth = tuple[str, int]


def _worth_at(steps: Sequence[Step], instant: datetime) -> Worth:
    worth: Worth = ("", 0)
    for at, currency, amount in steps:
        if at > instant:
            break
        worth = (currency, amount)
    return worth


def missing_versions(
    own: Sequence[Snapshot],
    history: Sequence[HistoricalVersion],
    lookup: Callable[[str], Mapping[str, Any] | None],
    rules: RuleSettings,
    customer_id: str,
    *,
    source: str,
    until: datetime,
    ledger: tuple[Step, ...] | None = None,
) -> list[Snapshot]:
    """The rebuilt versions (before `until`) the ledger's versions `own` lack: kept, oldest first, where
    the ledger with the ones kept before is worth something else at its instant than the records say.

    `ledger`: the versions' MRR steps up to `until`, when the caller has them. Raises
    UnresolvedStripeObject for an object a version names that `lookup` lacks.
    """
    snapshots = [
        Snapshot(
            str(version.subscription["id"]),
            customer_id,
            version.observed_at,
            RANK_HISTORY,
            source,
            resolve_subscription(version.subscription, lookup),
        )
        for version in history
        if version.observed_at < until  # Stripe's state as read is the caller's
    ]
    truth = mrr_steps(snapshots, rules, until=until)
    added: list[Snapshot] = []
    ledger = ledger if ledger is not None else mrr_steps(own, rules, until=until)
    # A version kept can change what the ledger is worth *before* it (a trial that ended with no version
    # showing it is valued as the next version stands), so the instants are checked again until none differs.
    while True:
        differing = next(
            (
                snapshot
                for snapshot in snapshots
                if not any(snapshot is kept for kept in added)
                and _worth_at(ledger, snapshot.observed_at) != _worth_at(truth, snapshot.observed_at)
            ),
            None,
        )
        if differing is None:
            return sorted(added, key=lambda snapshot: snapshot.observed_at)
        added.append(differing)
        ledger = mrr_steps([*own, *added], rules, until=until)


class _Reconciler:
    def __init__(self, db: Database, settings: Settings, api: StripeAPI, report: RunReport) -> None:
        self.db = db
        self.settings = settings
        self.rules = settings.rules
        self.api = api
        self.report = report
        self.source = f"reconcile:{report.run_id}"
        self.catalog = _Catalog(api)
        self.discounts = InvoicedDiscounts(lambda: api)
        self.prices: dict[str, Mapping[str, Any]] = {}
        self.seen: set[str] = set()
        self.deferred: list[tuple[str, list[Mapping[str, Any]], dict[str, Records], _Read]] = []
        self.skipped: list[str] = []

    def page(self, read: _Read) -> None:
        """Compare a page of subscriptions; read the records of those that drift; correct them.

        The records are read from Stripe outside any write transaction, so a
        SQLite writer is not held up by them: the comparison only reads, the
        records are read, then each drifting customer is compared again and
        corrected under its partition lock.
        """
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
        drifting: dict[str, list[Mapping[str, Any]]] = {}
        with self.db.session() as session:
            kept = stored_records(session, sorted(by_customer))
            for customer_id, subscriptions in sorted(by_customer.items()):
                self.report.counts["subscriptions_checked"] += len(subscriptions)
                found = self.drifting(session, customer_id, subscriptions, kept, read)
                if found:
                    drifting[customer_id] = found
        records: dict[str, Records] = {}
        for customer_id, subscriptions in drifting.items():
            for subscription in subscriptions:
                try:
                    records[subscription["id"]] = read_records(self.api, subscription["id"], customer_id)
                except StripeUnavailable as exc:
                    log.warning(
                        "records not read; the correction is dated at the run",
                        extra={"subscription": subscription["id"], "error": str(exc)},
                    )
        with self.db.transaction() as session:
            self.catalog.store_fetched(session, read.observed_at)
            for customer_id, subscriptions in drifting.items():
                if not self.customer(session, customer_id, subscriptions, records, read, last_try=False):
                    self.deferred.append((customer_id, subscriptions, records, read))

    def one(self, subscription_id: str, *, unread: str) -> None:
        """Read one subscription from Stripe and treat it as a page; an error saying `unread` if Stripe
        does not give it."""
        observed_at = observed_before(utcnow())
        try:
            found = self.api.subscription(subscription_id)
        except StripeUnavailable as exc:
            self.report.error(f"{subscription_id}: {unread} ({exc})")
            return
        self.page(_Read([found], observed_at))

    def skip(self, subscriptions: Sequence[Mapping[str, Any]]) -> None:
        """Leave the subscriptions of a customer in flight to the next run."""
        self.report.counts["skipped_in_flight"] += len(subscriptions)
        self.skipped.extend(str(subscription["id"]) for subscription in subscriptions)

    def last_tries(self) -> None:
        """The customers left for a deleted coupon their own invoices do not value: another customer's may
        have valued it since (`value_as_invoiced`)."""
        deferred, self.deferred = self.deferred, []
        for customer_id, subscriptions, records, read in deferred:
            with self.db.transaction() as session:
                self.customer(session, customer_id, subscriptions, records, read, revalued=True)

    def drifting(
        self,
        session: Session,
        customer_id: str,
        subscriptions: list[Mapping[str, Any]],
        kept: Mapping[str, Records],
        read: _Read,
    ) -> list[Mapping[str, Any]]:
        """The customer's subscriptions whose ledger differs from Stripe's state, or from what the stored
        invoices say of their past (read only)."""
        try:
            if _in_flight(session, customer_id, now=utcnow()):
                self.skip(subscriptions)
                return []
            stored = self.stored_snapshots(session, customer_id)
        except NoSuchObject:
            return list(subscriptions)  # a deleted coupon still named: their invoices value it (`customer`)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            self.report.error(f"{customer_id}: {exc}")
            return []
        except Exception as exc:  # one customer must not hold back the others
            self.report.error(f"{customer_id}: {exc}")
            return []
        found = []
        for subscription in subscriptions:
            try:
                own = stored.get(subscription["id"], [])
                drift = self.compare(subscription, customer_id, own, read)
                records = kept.get(drift.subscription_id, Records([], []))
                if drift.now or self.rebuilt(session, drift, own, records, read, quiet=True):
                    found.append(subscription)
            except _OnlyInvoicesValue:
                found.append(subscription)  # its invoices value the coupon (`customer`)
            except Exception as exc:  # nor one subscription the others
                self.report.error(f"{subscription['id']}: {exc}")
        return found

    def customer(
        self,
        session: Session,
        customer_id: str,
        subscriptions: list[Mapping[str, Any]],
        records: Mapping[str, Records],
        read: _Read,
        *,
        last_try: bool = True,
        revalued: bool = False,
    ) -> bool:
        """Compare the drifting subscriptions again under the customer's lock, and correct them.

        False, and nothing done, when a coupon Stripe deleted is named that no invoice valued yet and this
        is not the `last_try`. `revalued`: the customer is recomputed even if nothing drifts (it waited
        for such a coupon).
        """
        counts = self.report.counts
        try:
            with session.begin_nested():
                if not lock_partition(session, customer_id) or _in_flight(session, customer_id, now=utcnow()):
                    self.skip(subscriptions)
                    return True
                try:
                    stored = self.stored_snapshots(session, customer_id)
                except NoSuchObject:
                    # A coupon Stripe has deleted is still named: valued as the invoices it reduced say.
                    revalued = self.value_as_invoiced(session, subscriptions, records, read)
                    try:
                        stored = self.stored_snapshots(session, customer_id)
                    except NoSuchObject:
                        if not last_try:
                            return False
                        raise
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            self.report.error(f"{customer_id}: {exc}")
            return True
        except Exception as exc:
            self.report.error(f"{customer_id}: {exc}")
            return True
        corrections: list[tuple[_Drift, _Correction]] = []
        for subscription in subscriptions:
            try:
                try:
                    drift = self.compare(subscription, customer_id, stored.get(subscription["id"], []), read)
                except _OnlyInvoicesValue:
                    if not self.value_as_invoiced(session, [subscription], records, read):
                        raise
                    revalued = True
                    stored = self.stored_snapshots(session, customer_id)
                    drift = self.compare(subscription, customer_id, stored.get(subscription["id"], []), read)
                correction = self.correction(session, drift, stored, records.get(drift.subscription_id), read)
                if correction.versions:
                    corrections.append((drift, correction))
            except Exception as exc:
                self.report.error(f"{subscription['id']}: {exc}")
        if not corrections:
            if revalued:  # the ledger could not value the customer until now
                self.correct(session, customer_id, [])
                counts["customers_recomputed"] += 1
            return True
        counts["drifted"] += len(corrections)
        try:
            with session.begin_nested():
                self.correct(session, customer_id, corrections)
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            self._not_corrected([drift for drift, _ in corrections], exc)
        except Exception as exc:
            self._not_corrected([drift for drift, _ in corrections], exc)
        else:
            counts["corrected"] += len(corrections)
            counts["customers_recomputed"] += 1
        return True

    def value_as_invoiced(
        self, session: Session, subscriptions: Sequence[Mapping[str, Any]], records: Mapping[str, Records], read: _Read
    ) -> bool:
        """Store what the invoices say of the deleted coupons the subscriptions' discounts still name, and
        the discounts the rebuilt history carries that the ledger lacks (`worker.records.InvoicedDiscounts`);
        a discount the ledger's versions name that no record shows and Stripe no longer has is stored
        valued at nothing (`unseen_discount`), with a note. Whether anything was stored."""
        valued: dict[str, dict[str, Any]] = {}
        discounts: dict[str, dict[str, Any]] = {}
        for subscription in subscriptions:
            found = records.get(subscription["id"])
            if found is None:
                continue
            notes: list[str] = []
            try:
                history = found.rebuild(
                    session,
                    subscription,
                    prices=self.prices_in(session),
                    discounts=self.discounts,
                    read_at=read.observed_at,
                    notes=notes,
                )
            except (ValueError, KeyError, TypeError):
                continue
            valued.update(coupons_as_invoiced(history))
            discounts.update(discounts_carried(history))
            for note in notes:
                log.info("reconcile: %s", note)
            for discount_id in _named_by_ledger(session, subscription["id"]):
                if discount_id not in discounts and stored_object(session, discount_id, "discount") is None:
                    discounts[discount_id] = unseen_discount(discount_id, subscription)
                    self.report.note(
                        f"discount {discount_id} of {subscription['id']} valued at nothing: a lost event named it, "
                        "no invoice shows it and Stripe no longer has it"
                    )
        self.discounts.store_valued(session, valued)
        stored_discounts = self.discounts.store_discounts(session, discounts)
        for coupon_id, coupon in valued.items():  # what the run's own comparisons read coupons from
            self.catalog.known[coupon_id] = coupon
            self.catalog.unavailable.pop(coupon_id, None)
        return bool(valued) or stored_discounts

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

    def compare(self, subscription: Mapping[str, Any], customer_id: str, stored: list[Snapshot], read: _Read) -> _Drift:
        subscription_id: str = subscription["id"]
        resolved = resolve_subscription(subscription, self.catalog.lookup)
        candidate = Snapshot(subscription_id, customer_id, read.observed_at, RANK_RECONCILE, self.source, resolved)
        try:
            ledger = mrr_steps(stored, self.rules, until=read.observed_at)
            stripe = mrr_steps([*stored, candidate], self.rules, until=read.observed_at)
        except UnresolvedStripeObject as exc:
            if exc.missing in COUPON_MISSING and exc.object_id in self.catalog.unavailable:
                raise _OnlyInvoicesValue(self.catalog.why_unresolved(exc)) from None
            if exc.missing == DISCOUNT_MISSING:
                raise _OnlyInvoicesValue(str(exc)) from None
            raise MissingStripeObject(self.catalog.why_unresolved(exc)) from None
        return _Drift(dict(resolved), subscription_id, customer_id, ledger, stripe, not stored, candidate)

    def correction(
        self,
        session: Session,
        drift: _Drift,
        stored: Mapping[str, list[Snapshot]],
        records: Records | None,
        read: _Read,
    ) -> _Correction:
        """The versions to store: the subscription's history rebuilt from Stripe's records (§9–§10).

        A rebuilt version is kept where the ledger, with the versions kept
        before it, is worth something else at its instant than the records say:
        a change a lost event would have brought. The event versions the
        ledger holds stay, so a change no record shows (a hand-removed coupon)
        keeps its event's date. Whatever still differs from Stripe's state
        afterwards is dated at the run.
        """
        own = stored.get(drift.subscription_id, [])
        added: list[Snapshot] = []
        if records is not None:
            added = self.rebuilt(session, drift, own, records, read)
        dated_by = ["records"] if added else []
        steps = mrr_steps([*own, *added], self.rules, until=read.observed_at)
        with_stripe = mrr_steps([*own, *added, drift.candidate], self.rules, until=read.observed_at)
        if steps != with_stripe:
            added.append(drift.candidate)
            dated_by.append("run")
            steps = with_stripe
        return _Correction(added, steps, ", ".join(dated_by) or "run")

    def rebuilt(
        self,
        session: Session,
        drift: _Drift,
        own: Sequence[Snapshot],
        records: Records,
        read: _Read,
        *,
        quiet: bool = False,
    ) -> list[Snapshot]:
        """The versions rebuilt from `records` that the ledger lacks (see `correction`)."""
        notes: list[str] = []
        try:
            history = records.rebuild(
                session,
                drift.subscription,
                prices=self.prices_in(session),
                discounts=self.discounts,
                read_at=read.observed_at,
                notes=notes,
            )
        except (ValueError, KeyError, TypeError) as exc:  # UnresolvedStripeObject too
            if not quiet:
                self.report.error(f"{drift.subscription_id}: its history could not be rebuilt from its records: {exc}")
            return []
        for note in notes if not quiet else ():
            log.info("reconcile: %s", note)
        lookup = self.lookup(session)
        while True:
            try:
                return missing_versions(
                    own,
                    history,
                    lookup,
                    self.rules,
                    drift.customer_id,
                    source=self.source,
                    until=read.observed_at,
                    ledger=drift.ledger,
                )
            except UnresolvedStripeObject as exc:  # a price no event brought: the records name it by id
                if not self.catalog.fetch(exc):
                    raise MissingStripeObject(self.catalog.why_unresolved(exc)) from None

    def prices_in(self, session: Session) -> Callable[[str], Mapping[str, Any] | None]:
        stored = stored_prices(session, self.prices)
        return lambda price_id: self.catalog.lookup(price_id) or stored(price_id)

    def lookup(self, session: Session) -> Callable[[str], Mapping[str, Any] | None]:
        def find(object_id: str) -> Mapping[str, Any] | None:
            known = self.catalog.lookup(object_id)
            return known if known is not None else stored_payload(session, object_id)

        return find

    def correct(self, session: Session, customer_id: str, corrections: Sequence[tuple[_Drift, _Correction]]) -> None:
        """Store the corrections' versions and recompute the customer (no longer waiting for anything)."""
        record_subscriptions(
            session,
            [
                SubscriptionVersion(version.subscription, version.observed_at, self.source, version.rank)
                for _, correction in corrections
                for version in correction.versions
            ],
        )
        recompute(session, customer_id, self.settings, self.api)
        no_longer_waiting(session, [customer_id])
        # The ledger reads the stored versions back through its own lookups: make sure it now agrees.
        stored = self.stored_snapshots(session, customer_id)
        for drift, correction in corrections:
            now_says = mrr_steps(stored[drift.subscription_id], self.rules, until=drift.candidate.observed_at)
            if now_says != correction.steps:
                raise CorrectionDidNotTake(
                    f"after the correction the ledger's MRR history still differs from Stripe's records "
                    f"(ledger {_mrr_at_end(now_says)}, Stripe {_mrr_at_end(drift.stripe)})"
                )
        session.add_all(self.drift_item(drift, correction) for drift, correction in corrections)

    def drift_item(self, drift: _Drift, correction: _Correction) -> DriftItem:
        ledger_mrr, stripe_mrr = _mrr_at_end(drift.ledger), _mrr_at_end(correction.steps)
        effective_at = _diverges_at(drift.ledger, correction.steps)
        currency = next(
            (c for _, c, _ in reversed(drift.ledger + correction.steps) if c),
            str(drift.subscription.get("currency") or "").lower(),
        )
        status = drift.subscription.get("status")
        dated = {
            "records": "dated by Stripe's records",
            "run": "dated at the run",
            "records, run": "dated by Stripe's records, the rest at the run",
        }[correction.dated_by]
        action = (
            f"added a subscription the ledger had never seen ({status}), effective {iso(effective_at)}, {dated}"
            if drift.never_seen
            else f"recorded Stripe's state ({status}), effective {iso(effective_at)}, {dated}"
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
            dated_by=correction.dated_by,
        )

    def ledger_only(self) -> Iterator[str]:
        """Subscriptions the ledger counts as live that the list did not return."""
        with self.db.session() as session:
            query = select(Subscription.id).where(Subscription.status.in_(PAYING_STATUSES))
            if self.settings.livemode is not None:
                query = query.where(Subscription.livemode == self.settings.livemode)
            live = list(session.scalars(query.order_by(Subscription.id)))
        return (subscription_id for subscription_id in live if subscription_id not in self.seen)


def stored_records(session: Session, customer_ids: Sequence[str]) -> dict[str, Records]:
    """The invoices and pending proration items stored for the customers (from their events), by the
    subscription they bill."""
    invoices: dict[str, list[dict[str, Any]]] = {}
    items: dict[str, list[dict[str, Any]]] = {}
    for kind, payload in session.execute(
        select(StripeObject.object, StripeObject.payload).where(
            StripeObject.object.in_(["invoice", "invoiceitem"]),
            StripeObject.customer_id.in_(customer_ids),
            StripeObject.deleted.is_(False),
        )
    ):
        if kind == "invoice":
            subscription_id = invoice_subscription(payload)
            if subscription_id is not None:
                invoices.setdefault(subscription_id, []).append(invoice_fields(payload))
        elif payload.get("proration") and not payload.get("invoice"):
            subscription_id = invoice_item_subscription(payload)
            if subscription_id is not None:
                items.setdefault(subscription_id, []).append(payload)
    return {
        subscription_id: Records(invoices.get(subscription_id, []), items.get(subscription_id, []))
        for subscription_id in invoices.keys() | items.keys()
    }


AGREEING_WITHIN = timedelta(minutes=1)
"""A renewal's event may be stamped a little after the period its invoice bills starts: a version
observed this soon after an invoice's period start may be the one it bills."""


def contradicted_by_invoices(session: Session, rules: RuleSettings, invoice_ids: Iterable[str]) -> list[str]:
    """The subscriptions that paid invoices bill whose ledger they contradict (§10).

    First what each invoice billed is set beside the ledger's version for
    that period (`_bills_as_ledger`: prices, quantities, items, discounts that
    took something); only a subscription where they differ is rebuilt from
    its stored records (`contradicted_by_records`), which decides.
    """
    suspects: set[str] = set()
    for invoice_id in sorted(set(invoice_ids)):
        invoice = stored_object(session, invoice_id, "invoice") or {}
        subscription_id = invoice_subscription(invoice)
        if subscription_id is not None and not _bills_as_ledger(session, subscription_id, billed_items(invoice)):
            suspects.add(subscription_id)
    return contradicted_by_records(session, rules, suspects) if suspects else []


def _bills_as_ledger(session: Session, subscription_id: str, billed: Sequence[Billed]) -> bool:
    """Whether every period the invoice bills agrees with a version of the ledger in force then."""
    versions = [
        (observed_at, payload)
        for observed_at, payload in session.execute(
            select(SubscriptionSnapshot.observed_at, SubscriptionSnapshot.payload)
            .where(SubscriptionSnapshot.subscription_id == subscription_id)
            .order_by(SubscriptionSnapshot.observed_at, SubscriptionSnapshot.rank)
        )
    ]
    lookup = partial(stored_payload, session)
    for entry in billed:
        in_force = [payload for observed_at, payload in versions if observed_at <= entry.at][-1:]
        soon_after = [
            payload for observed_at, payload in versions if entry.at < observed_at <= entry.at + AGREEING_WITHIN
        ]
        if not any(_says(payload, entry, lookup) for payload in in_force + soon_after):
            return False
    return True


def _says(subscription: Mapping[str, Any], billed: Billed, lookup: Callable[[str], Mapping[str, Any] | None]) -> bool:
    """Whether the version has the items the lines bill (a metered item: any quantity), only those when
    the lines are a regular period's, names every discount that took something off them and no lasting
    discount the invoice does not name, and is not in a trial when the lines bill something."""
    items = version_items(subscription)
    for price_id, quantity in billed.items:
        if not any(item.price_id == price_id and item.quantity in (None, quantity) for item in items):
            return False
    # A regular period bills every item renewing with it: those of its interval (a yearly item beside
    # monthly ones is billed on its own invoices).
    prices = {price_id for price_id, _ in billed.items}
    intervals = {item.interval for item in items if item.price_id in prices}
    if billed.regular and any(
        item.quantity is not None and item.interval in intervals and item.price_id not in prices for item in items
    ):
        return False
    named = named_discounts(subscription, ())
    if not billed.discounts <= named.keys():
        return False
    if any(
        _lasting(named[discount_id] or lookup(discount_id), billed.at, lookup)
        for discount_id in named.keys() - billed.named
    ):
        return False
    return not (billed.regular and billed.amount > 0 and subscription.get("status") == "trialing")


def _lasting(
    discount: Mapping[str, Any] | None, at: datetime, lookup: Callable[[str], Mapping[str, Any] | None]
) -> bool:
    """Whether the discount still reduces invoices at `at`: not ended, its coupon not a `once` one (one
    not known counts as lasting)."""
    discount = discount or {}
    end = discount.get("end")
    if isinstance(end, int) and end <= at.timestamp():
        return False
    coupon = discount.get("coupon") or (discount.get("source") or {}).get("coupon")
    if isinstance(coupon, str):
        coupon = lookup(coupon)
    return not (isinstance(coupon, Mapping) and coupon.get("duration") == "once")


def _embedded_rates(snapshots: Sequence[Snapshot]) -> dict[str, Mapping[str, Any]]:
    """The prices (and legacy plans) the versions carry whole, by id: a price seen only inside a
    subscription is not stored on its own."""
    found: dict[str, Mapping[str, Any]] = {}
    for snapshot in snapshots:
        for price_id, rate in item_prices(snapshot.subscription).items():
            found.setdefault(price_id, rate)
    return found


def contradicted_by_records(session: Session, rules: RuleSettings, subscription_ids: Iterable[str]) -> list[str]:
    """Of the subscriptions, those whose stored records date a change the ledger's versions lack.

    The worker asks it of the subscriptions a paid invoice it just applied
    bills (§10): rebuilt from the invoices and proration items the ledger
    stored, the subscription's history is worth something else at some
    record's instant than the ledger says: an event never came. Read only, no
    Stripe call; the subscription's latest version stands for its current
    state, and only versions a record dates are compared. A subscription whose
    versions or records name an object not stored counts as contradicted:
    `repair` reads it from Stripe.
    """
    owners: dict[str, str] = {
        subscription_id: customer_id
        for subscription_id, customer_id in session.execute(
            select(Subscription.id, Subscription.customer_id).where(Subscription.id.in_(subscription_ids))
        )
    }
    kept = stored_records(session, sorted(set(owners.values())))
    versions: dict[str, list[Snapshot]] = {}  # by customer, each read once
    found: list[str] = []
    for subscription_id, customer_id in sorted(owners.items()):
        records = kept.get(subscription_id)
        if records is None:
            continue
        try:
            if customer_id not in versions:
                versions[customer_id] = customer_snapshots(session, [customer_id])[customer_id]
            own = [s for s in versions[customer_id] if s.subscription_id == subscription_id]
            if not own or _lacks_records(session, rules, own, records):
                found.append(subscription_id)
        except UnresolvedStripeObject:
            found.append(subscription_id)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("records not compared", extra={"subscription": subscription_id, "error": str(exc)})
    return found


def _lacks_records(session: Session, rules: RuleSettings, own: Sequence[Snapshot], records: Records) -> bool:
    """Whether the versions lack a change the records date (`contradicted_by_records`)."""
    latest = max(own, key=lambda snapshot: (snapshot.observed_at, snapshot.rank))
    embedded = _embedded_rates(own)
    stored = stored_prices(session, {})

    def lookup(object_id: str) -> Mapping[str, Any] | None:
        return stored_payload(session, object_id) or embedded.get(object_id)

    history = records.rebuild(
        session,
        latest.subscription,
        prices=lambda price_id: stored(price_id) or embedded.get(price_id),
        discounts=InvoicedDiscounts(None),
        read_at=latest.observed_at,
        notes=[],
    )
    dated = [version for version in history if version.source != CURRENT_SOURCE]
    return bool(missing_versions(own, dated, lookup, rules, latest.customer_id, source="", until=utcnow()))


def _named_by_ledger(session: Session, subscription_id: str) -> set[str]:
    """The discounts the ledger's versions of the subscription name."""
    payloads = session.scalars(
        select(SubscriptionSnapshot.payload).where(SubscriptionSnapshot.subscription_id == subscription_id)
    )
    return {discount_id for payload in payloads for discount_id in named_discounts(payload, ())}


def unseen_discount(discount_id: str, subscription: Mapping[str, Any]) -> dict[str, Any]:
    """A discount a lost event named (by id) that no invoice shows and Stripe no longer has: worth nothing.

    No record says what it took off, and it is gone from the subscription, so
    it never reduced a payment; the ledger would otherwise wait for it for good,
    and count nothing of the customer.
    """
    return {
        "id": discount_id,
        "object": "discount",
        "subscription": subscription.get("id"),
        "start": None,
        "end": None,
        "source": {
            "type": "coupon",
            "coupon": {
                "id": f"{discount_id} (no record)",
                "object": "coupon",
                "percent_off": 0,
                "amount_off": None,
                "currency": None,
                "duration": "forever",
                "applies_to": None,
            },
        },
    }


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


CATCH_UP_DRAIN_S = 600.0
"""How long a run applies the events its catch-up stored before it compares (the workers do the rest)."""


def _catch_up_first(db: Database, settings: Settings, api: StripeAPI, report: RunReport) -> None:
    """§9: the events Stripe still keeps come first, through the webhooks' door, and are applied.

    The catch-up stores what no webhook brought (`worker.catchup`), then the
    run applies every due event as a worker would, under the same partition
    locks; a customer a worker holds meanwhile is left to it (and skipped as in
    flight). A catch-up already reading (the clock's) is left to finish.
    """
    try:
        caught = catch_up(db, settings, None, api=api)
    except RunRefused as exc:
        log.info("reconcile: events catch-up not run", extra={"reason": str(exc)})
    else:
        report.counts["events_caught_up"] = caught.counts["stored"]
        if caught.status is RunStatus.FAILED:
            report.error(f"events catch-up {caught.run_id} failed: {'; '.join(caught.errors)}")
    drain(db, None, budget_s=CATCH_UP_DRAIN_S, after_apply=after_apply_for(settings))


def reconcile(db: Database, settings: Settings, *, api: StripeAPI | None = None) -> RunReport:
    """Compare every Stripe subscription with the ledger now; correct and report the drift.

    Starts with the events catch-up (`_catch_up_first`). Raises RunRefused when
    another reconcile is running, StripeUnavailable without an API key. A
    Stripe error while listing ends the run `failed` (what was corrected before
    it stays); errors on single subscriptions end it `partial`, each one listed.
    """
    api = api or StripeAPI(settings)
    report = start_run(
        db, "reconcile", parameters={}, livemode=settings.livemode, stripe_api_version=api.api_version, exclusive=True
    )
    report.counts.update(dict.fromkeys(COUNTS, 0))
    reconciler = _Reconciler(db, settings, api, report)
    try:
        _catch_up_first(db, settings, api, report)
        for read in _pages(api):
            reconciler.page(read)
            heartbeat(db, report)
        for subscription_id in reconciler.ledger_only():
            reconciler.one(subscription_id, unread="the ledger counts it, Stripe's list does not have it")
            heartbeat(db, report)
        reconciler.last_tries()
    except StripeUnavailable as exc:
        report.error(f"reading subscriptions from Stripe: {exc}")
        return finish_run(db, report, RunStatus.FAILED)
    except BaseException as exc:
        record_stop(db, report, exc)
        raise
    log.info("reconcile finished", extra={"run": report.run_id, "counts": dict(report.counts)})
    return finish_run(db, report)


def repair(
    db: Database, settings: Settings, subscription_ids: Sequence[str], *, trigger: str, api: StripeAPI | None = None
) -> tuple[RunReport, list[str]]:
    """Reconcile these subscriptions now, as the nightly run would (a `repair` run, drift listed alike).

    The worker asks for it when a paid invoice contradicts the ledger
    (`contradicted_by_records`), so the ledger is not wrong until the night.
    No events catch-up (the webhooks are flowing); not exclusive (corrections
    take the customer's lock). A customer with events in flight is skipped:
    the run's report, and the subscriptions skipped, for the caller to try again later.
    """
    api = api or StripeAPI(settings)
    report = start_run(
        db,
        "repair",
        parameters={"subscriptions": sorted(subscription_ids), "trigger": trigger},
        livemode=settings.livemode,
        stripe_api_version=api.api_version,
        exclusive=False,
    )
    report.counts.update(dict.fromkeys(COUNTS[1:], 0))
    reconciler = _Reconciler(db, settings, api, report)
    try:
        for subscription_id in sorted(set(subscription_ids)):
            reconciler.one(subscription_id, unread="not read from Stripe")
        reconciler.last_tries()
    except BaseException as exc:
        record_stop(db, report, exc)
        raise
    log.info("repair finished", extra={"run": report.run_id, "trigger": trigger, "counts": dict(report.counts)})
    return finish_run(db, report), reconciler.skipped
