"""`subledger backfill`: import an account's history from the Stripe API.

Two phases, both resumable:

1. **Read.** Products, prices (with tiers), coupons (with `applies_to`),
   customers, subscriptions (every status, discounts expanded) and invoices
   (discounts expanded, every line: the embedded list stops at 10) are listed
   page by page into `stripe_objects` / `customers`. The big lists are split
   into `created` windows read by a pool of threads, each with its own client;
   every request draws from the rate limit all processes share
   (`worker.ratelimit`). Each page is committed with its checkpoint, so an
   interrupted run starts again after the last page it stored.
2. **History.** Customers are walked in id order, a batch at a time: their
   subscriptions and invoices are loaded from `stripe_objects`, each
   subscription's past versions are reconstructed from its invoices
   (`ledger.history.reconstruct`) and stored as snapshots with the source
   `backfill:<run id>`, and the batch's ledgers are recomputed by the same
   engine the webhooks use. Memory holds one page, or one batch, at a time.

The run row (`worker.runs`) ends `ok`, `partial` (some objects could not be
used: its errors say which) or `failed` (Stripe or the database stopped it; a
new `subledger backfill` with the same `--since` resumes it). Ctrl-C leaves it
failed, hence resumable.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ledger.db import Database, utcnow
from ledger.engine import recompute_customers
from ledger.history import reconstruct
from ledger.models import Customer, RunStatus, StripeObject, SyncCheckpoint, SyncRun
from ledger.mrr import UnresolvedStripeObject
from ledger.settings import Settings
from ledger.state import SubscriptionVersion, UnusableEvent, record_customers, record_objects, record_subscriptions
from worker.progress import NoProgress, ProgressReporter
from worker.ratelimit import RateLimiter, stripe_limiter
from worker.recompute import MissingStripeObject, recompute
from worker.runs import RunReport, finish_run, heartbeat, save_checkpoint, start_run
from worker.stripe_api import StripeAPI, StripeUnavailable

log = logging.getLogger("subledger.backfill")

WINDOWS = 32
"""`created` windows each big list (customers, subscriptions, invoices) is split into: enough
that the threads stay busy to the end, and that customers, read before anything says where the
account's data starts, still spread over the threads when they hold only the last few years."""

THREADS = 12
"""Windows read at once; the shared rate limit, not this, bounds the request rate."""

HISTORY_BATCH = 200
"""Customers whose history is rebuilt per transaction."""

HEARTBEAT_S = 15.0
"""Seconds between two heartbeats of the run row."""

FIRST_DAY = datetime(2010, 1, 1, tzinfo=UTC)
"""Before any Stripe object: the start of the first window without `--since`."""

HISTORY_STREAM = "history"
"""Checkpoint of the history phase: the last customer whose ledger was rebuilt."""

STOPPED = "stopped: "
"""Prefix of the error that says why a run stopped; not an object's error, dropped on resume."""


class BackfillFailed(RuntimeError):
    """The backfill stopped; the message says why in one line, and that it resumes."""


@dataclass(frozen=True)
class Listing:
    """One Stripe list endpoint and how to read it."""

    kind: str
    path: str
    params: Mapping[str, Any] = field(default_factory=dict)
    windowed: bool = False
    """Split into `created` windows and limited by `--since` (the catalog is read whole)."""
    name: str = ""
    """What its streams are called, when not `kind`."""

    @property
    def stream(self) -> str:
        return self.name or self.kind


# Stripe lists only active products and prices unless asked for the archived ones,
# and old invoices bill archived prices.
CATALOG = (
    Listing("products", "/v1/products", {"active": "true"}),
    Listing("products", "/v1/products", {"active": "false"}, name="products-archived"),
    Listing("prices", "/v1/prices", {"active": "true", "expand": ["data.tiers"]}),
    Listing("prices", "/v1/prices", {"active": "false", "expand": ["data.tiers"]}, name="prices-archived"),
    Listing("coupons", "/v1/coupons", {"expand": ["data.applies_to"]}),
)
CUSTOMERS = Listing("customers", "/v1/customers", windowed=True)
# Stripe expands four levels at most: `data.items.data.price.tiers` is five, so
# tiers come from the stored prices; coupons come from the stored coupons.
SUBSCRIPTIONS = Listing(
    "subscriptions",
    "/v1/subscriptions",
    {"status": "all", "expand": ["data.discounts", "data.items.data.discounts"]},
    windowed=True,
)
INVOICES = Listing("invoices", "/v1/invoices", {"expand": ["data.discounts"]}, windowed=True)
LISTINGS = {listing.stream: listing for listing in (*CATALOG, CUSTOMERS, SUBSCRIPTIONS, INVOICES)}
KINDS = frozenset(listing.kind for listing in LISTINGS.values())


@dataclass(frozen=True)
class Stream:
    """One checkpointed read: a listing, within a `created` window for the windowed ones."""

    listing: Listing
    created_gte: int | None = None
    created_lt: int | None = None

    @property
    def name(self) -> str:
        if self.created_gte is None or self.created_lt is None:
            return self.listing.stream
        return f"{self.listing.stream}:{_iso(self.created_gte)}..{_iso(self.created_lt)}"

    @classmethod
    def from_name(cls, name: str) -> Stream:
        kind, _, window = name.partition(":")
        if not window:
            return cls(LISTINGS[kind])
        start, end = window.split("..")
        return cls(LISTINGS[kind], _timestamp(start), _timestamp(end))

    def params(self) -> dict[str, Any]:
        params = dict(self.listing.params)
        if self.created_gte is not None and self.created_lt is not None:
            params["created"] = {"gte": self.created_gte, "lt": self.created_lt}
        return params


def _iso(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _timestamp(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp())


def windows(start: int, end: int, count: int, *, dense_from: int | None = None) -> list[tuple[int, int]]:
    """[start, end) cut into `count` windows of equal length from `dense_from` on.

    `dense_from` is where the data starts (the oldest customer): windows spread
    over an account's actual life, not over the years before it; the first
    window still reaches back to `start`.
    """
    spread_from = max(start, dense_from) if dense_from is not None else start
    if count <= 1 or end - spread_from < count:
        return [(start, end)]
    step = (end - spread_from) / count
    bounds = [start, *(spread_from + round(step * i) for i in range(1, count)), end]
    return [(low, high) for low, high in itertools.pairwise(bounds) if high > low]


def invoice_subscription(invoice: Mapping[str, Any]) -> str | None:
    """The subscription an invoice bills: `parent.subscription_details` (2025 API) or `subscription`."""
    parent = invoice.get("parent")
    details = parent.get("subscription_details") if isinstance(parent, Mapping) else None
    found = details.get("subscription") if isinstance(details, Mapping) else None
    found = found or invoice.get("subscription")
    if isinstance(found, Mapping):
        found = found.get("id")
    return found if isinstance(found, str) and found else None


def _discounts(subscription: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    found = [d for d in subscription.get("discounts") or [] if isinstance(d, Mapping)]
    for item in (subscription.get("items") or {}).get("data") or []:
        found.extend(d for d in item.get("discounts") or [] if isinstance(d, Mapping))
    return found


class _Backfill:
    """One run's state shared by its threads."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        report: RunReport,
        *,
        progress: ProgressReporter,
        limiter: RateLimiter,
        threads: int,
    ) -> None:
        self.db = db
        self.settings = settings
        self.report = report
        self.progress = progress
        self.limiter = limiter
        self.threads = threads
        self.source = f"backfill:{report.run_id}"
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._local = threading.local()
        self._beat_at = time.monotonic()
        self._prices: dict[str, Mapping[str, Any]] = {}
        """Stored prices the history phase has read: a run reads each once."""
        with db.session() as session:
            run = session.get(SyncRun, report.run_id)
            assert run is not None
            self.started_at = run.started_at
            previous_errors = list(run.errors) if report.resumed else []
        if report.resumed:
            kept = [error for error in previous_errors if not error.startswith(STOPPED)]
            report.errors = kept
            report.counts["errors"] = len(kept)
            if not kept:
                del report.counts["errors"]

    # --- bookkeeping, safe from any thread --------------------------------------------------

    def api(self) -> StripeAPI:
        """This thread's client (and requests session)."""
        api: StripeAPI | None = getattr(self._local, "api", None)
        if api is None:
            api = self._local.api = StripeAPI(self.settings, throttle=self.limiter)
        return api

    def error(self, message: str) -> None:
        with self._lock:
            self.report.error(message)
        log.warning("backfill: %s", message)

    def count(self, kind: str, n: int) -> None:
        with self._lock:
            self.report.counts[kind] += n

    def beat(self, *, force: bool = False) -> None:
        if not force and time.monotonic() - self._beat_at < HEARTBEAT_S:
            return
        with self._lock:
            counts = Counter(self.report.counts)
        heartbeat(self.db, RunReport(self.report.run_id, self.report.kind, counts=counts))
        self._beat_at = time.monotonic()

    # --- phase 1: reading -------------------------------------------------------------------

    def plan(self, listing: Listing, *, since: datetime | None) -> list[Stream]:
        """The run's streams of a listing: as planned before when resuming, else planned and recorded now."""
        with self.db.transaction() as session:
            names = session.scalars(
                select(SyncCheckpoint.stream).where(
                    SyncCheckpoint.run_id == self.report.run_id,
                    (SyncCheckpoint.stream == listing.stream) | SyncCheckpoint.stream.like(f"{listing.stream}:%"),
                )
            ).all()
            if names:
                return sorted((Stream.from_name(name) for name in names), key=lambda s: s.created_gte or 0)
            if not listing.windowed:
                streams = [Stream(listing)]
            else:
                start = int((since or FIRST_DAY).timestamp())
                end = int(self.started_at.timestamp()) + 1
                oldest = None
                if listing is not CUSTOMERS:
                    oldest = session.scalar(
                        select(func.min(Customer.created)).where(Customer.created >= datetime.fromtimestamp(start, UTC))
                    )
                dense_from = int(oldest.timestamp()) if oldest is not None else None
                streams = [
                    Stream(listing, low, high) for low, high in windows(start, end, WINDOWS, dense_from=dense_from)
                ]
            for stream in streams:
                save_checkpoint(session, self.report.run_id, stream.name, cursor=None, objects=0)
            return streams

    def read(self, streams: Sequence[Stream]) -> None:
        """Read the streams on the thread pool; the first failure stops them all and is raised."""
        for kind in dict.fromkeys(stream.listing.kind for stream in streams):
            self.progress.stream(kind)
        pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="backfill")
        # Newest windows first: an account grows, so they hold the most pages, and a
        # small old window, not a big new one, is what the last thread is left with.
        ordered = sorted(streams, key=lambda stream: -(stream.created_gte or 0))
        pending: set[Future[None]] = {pool.submit(self.read_stream, stream) for stream in ordered}
        try:
            while pending:
                finished, pending = wait(pending, timeout=HEARTBEAT_S, return_when=FIRST_EXCEPTION)
                for future in finished:
                    future.result()
                self.beat()
        except BaseException:
            # Threads finish (and commit) the page in hand, then stop: their checkpoints stay exact.
            self.stopping.set()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        pool.shutdown(wait=True)
        for kind in dict.fromkeys(stream.listing.kind for stream in streams):
            self.progress.finish(kind)

    def read_stream(self, stream: Stream) -> None:
        if self.stopping.is_set():
            return
        kind = stream.listing.kind
        with self.db.session() as session:
            row = session.get(SyncCheckpoint, (self.report.run_id, stream.name))
            cursor, objects, done = (row.cursor, row.objects, row.done) if row is not None else (None, 0, False)
        self.count(kind, objects)
        self.progress.advance(kind, objects)
        if done:
            return
        api = self.api()
        for page in api.pages(stream.listing.path, starting_after=cursor, **stream.params()):
            read_at = utcnow()
            errors: list[str] = []
            usable = [obj for obj in page if kind != "invoices" or self.complete_lines(api, obj, errors)]
            with self.db.transaction() as session:
                self.store(session, kind, usable, read_at, errors)
                objects += len(page)
                cursor = str(page[-1]["id"])
                save_checkpoint(session, self.report.run_id, stream.name, cursor=cursor, objects=objects)
            # Counted once committed: a page that did not commit is read again on resume.
            self.count(kind, len(page))
            for message in errors:
                self.error(message)
            self.progress.advance(kind, len(page))
            if self.stopping.is_set():
                return
        with self.db.transaction() as session:
            save_checkpoint(session, self.report.run_id, stream.name, cursor=cursor, objects=objects, done=True)

    def complete_lines(self, api: StripeAPI, invoice: dict[str, Any], errors: list[str]) -> bool:
        """Put every line in the invoice (Stripe embeds the first 10); False when they cannot be read."""
        lines = invoice.get("lines")
        if not isinstance(lines, Mapping) or not lines.get("has_more"):
            return True
        data = list(lines.get("data") or [])
        last = str(data[-1]["id"]) if data else None
        try:
            for page in api.pages(f"/v1/invoices/{invoice['id']}/lines", starting_after=last):
                data.extend(page)
        except StripeUnavailable as exc:
            errors.append(f"invoice {invoice.get('id')}: its lines could not be read: {exc}")
            return False
        invoice["lines"] = dict(lines, data=data, has_more=False)
        return True

    def store(
        self, session: Session, kind: str, page: Sequence[Mapping[str, Any]], read_at: datetime, errors: list[str]
    ) -> None:
        """Store a page with a few set-based statements; one by one if the page holds an unusable object."""
        try:
            with session.begin_nested():
                self._store_page(session, kind, page, read_at)
            return
        except UnusableEvent:
            pass
        for obj in page:
            try:
                with session.begin_nested():
                    self._store_page(session, kind, [obj], read_at)
            except UnusableEvent as exc:
                errors.append(f"{kind} {obj.get('id', '?')}: {exc}")

    @staticmethod
    def _store_page(session: Session, kind: str, page: Sequence[Mapping[str, Any]], read_at: datetime) -> None:
        if kind == "customers":
            record_customers(session, page, observed_at=read_at)
            return
        # Subscriptions keep the discounts they carry whole, so a webhook naming one by id finds it.
        discounts = [d for obj in page for d in _discounts(obj)] if kind == "subscriptions" else []
        record_objects(session, [*page, *discounts], observed_at=read_at)

    # --- phase 2: history -------------------------------------------------------------------

    def _customers_with_subscriptions(self) -> Any:
        return select(StripeObject.customer_id).where(
            StripeObject.object == "subscription",
            StripeObject.customer_id.is_not(None),
            StripeObject.observed_at >= self.started_at,
        )

    def rebuild_history(self) -> None:
        """Reconstruct and store every subscription's history, recompute the ledgers: a batch at a time."""
        with self.db.session() as session:
            row = session.get(SyncCheckpoint, (self.report.run_id, HISTORY_STREAM))
            after, done = (row.cursor, row.done) if row is not None else (None, False)
            total = session.scalar(
                select(func.count()).select_from(self._customers_with_subscriptions().distinct().subquery())
            )
            before = (
                session.scalar(
                    select(func.count()).select_from(
                        self._customers_with_subscriptions()
                        .where(StripeObject.customer_id <= after)
                        .distinct()
                        .subquery()
                    )
                )
                if after is not None
                else 0
            )
        self.progress.stream(HISTORY_STREAM, total=total or 0)
        self.progress.advance(HISTORY_STREAM, before or 0)
        if done:
            self.progress.finish(HISTORY_STREAM)
            return
        api = self.api()
        customers_done = before or 0
        while True:
            with self.db.session() as session:
                query = self._customers_with_subscriptions().distinct().order_by(StripeObject.customer_id)
                if after is not None:
                    query = query.where(StripeObject.customer_id > after)
                batch = [customer_id for customer_id in session.scalars(query.limit(HISTORY_BATCH)) if customer_id]
            if not batch:
                break
            done_now = Counter[str]()
            errors: list[str] = []
            with self.db.transaction() as session:
                self.history_of(session, batch, api, done_now, errors)
                customers_done += len(batch)
                save_checkpoint(session, self.report.run_id, HISTORY_STREAM, cursor=batch[-1], objects=customers_done)
                # This phase's counts are committed with its checkpoint, so a resume reports them exactly.
                run = session.get(SyncRun, self.report.run_id)
                if run is not None:
                    run.counts = dict(self.report.counts + done_now)
            for kind, n in done_now.items():
                self.count(kind, n)
            for message in errors:
                self.error(message)
            after = batch[-1]
            self.progress.advance(HISTORY_STREAM, len(batch))
            self.beat()
        with self.db.transaction() as session:
            save_checkpoint(
                session, self.report.run_id, HISTORY_STREAM, cursor=after, objects=customers_done, done=True
            )
        self.progress.finish(HISTORY_STREAM)

    def history_of(
        self, session: Session, customers: Sequence[str], api: StripeAPI, counts: Counter[str], errors: list[str]
    ) -> None:
        """Store the batch's subscription histories and recompute its customers' ledgers."""
        subscriptions = session.scalars(
            self._stored("subscription", customers).where(StripeObject.observed_at >= self.started_at)
        ).all()
        invoices: dict[str, list[Mapping[str, Any]]] = {}
        for invoice in session.scalars(self._stored("invoice", customers)):
            subscription_id = invoice_subscription(invoice.payload)
            if subscription_id is not None:
                invoices.setdefault(subscription_id, []).append(invoice.payload)
        prices = self._price_lookup(session)
        histories: dict[str, list[SubscriptionVersion]] = {}
        for row in subscriptions:
            own = sorted(invoices.get(row.id, []), key=lambda invoice: (invoice.get("created") or 0, invoice["id"]))
            try:
                history = reconstruct(row.payload, own, prices=prices, read_at=row.observed_at)
            except (ValueError, KeyError, TypeError) as exc:  # UnresolvedStripeObject too
                errors.append(f"subscription {row.id}: its history could not be reconstructed: {exc}")
                continue
            histories[row.id] = [
                SubscriptionVersion(v.subscription, v.observed_at, source=self.source) for v in history
            ]
        try:
            with session.begin_nested():
                record_subscriptions(session, [v for versions in histories.values() for v in versions])
        except UnusableEvent:
            # Checked before anything is written: store them one by one to name the unusable ones.
            for subscription_id, versions in list(histories.items()):
                try:
                    with session.begin_nested():
                        record_subscriptions(session, versions)
                except UnusableEvent as exc:
                    errors.append(f"subscription {subscription_id}: its history could not be stored: {exc}")
                    del histories[subscription_id]
        counts["subscription versions"] += sum(len(versions) for versions in histories.values())
        results = []
        try:
            with session.begin_nested():
                results = recompute_customers(session, customers, self.settings.rules, now=utcnow())
        except UnresolvedStripeObject:
            # Some subscription names an object not stored: one customer at a time, fetching it.
            for customer_id in customers:
                try:
                    with session.begin_nested():
                        results.append(recompute(session, customer_id, self.settings, api))
                except MissingStripeObject as exc:
                    errors.append(f"customer {customer_id}: ledger not recomputed: {exc}")
        counts["ledgers recomputed"] += len(results)
        counts["movements added"] += sum(result.movements_added for result in results)

    @staticmethod
    def _stored(kind: str, customers: Sequence[str]) -> Any:
        return select(StripeObject).where(StripeObject.object == kind, StripeObject.customer_id.in_(customers))

    def _price_lookup(self, session: Session) -> Callable[[str], Mapping[str, Any] | None]:
        def price(price_id: str) -> Mapping[str, Any] | None:
            if price_id not in self._prices:
                row = session.get(StripeObject, price_id)
                if row is None or row.object not in ("price", "plan"):
                    return None  # not kept: a later batch may find it stored
                self._prices[price_id] = row.payload
            return self._prices[price_id]

        return price


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def backfill(
    db: Database,
    settings: Settings,
    *,
    since: datetime | None = None,
    progress: ProgressReporter | None = None,
    threads: int = THREADS,
) -> RunReport:
    """Import history from Stripe (objects created from `since` on, the catalog whole); resume an unfinished run."""
    limiter = stripe_limiter(settings)
    StripeAPI(settings, throttle=limiter)  # no key, no run: refused before a run row is written
    parameters = {"since": since.isoformat() if since is not None else None}
    report = start_run(db, "backfill", parameters=parameters, livemode=settings.livemode, resumable=True)
    if report.resumed:
        log.info("resuming backfill %s", report.run_id)
    run = _Backfill(db, settings, report, progress=progress or NoProgress(), limiter=limiter, threads=threads)
    # What was read is counted from the checkpoints, exactly: the run row's counts may lag.
    report.counts = Counter({key: value for key, value in report.counts.items() if key not in KINDS})
    try:
        first = [Stream(listing) for listing in CATALOG] + run.plan(CUSTOMERS, since=since)
        run.read(first)
        run.read(run.plan(SUBSCRIPTIONS, since=since) + run.plan(INVOICES, since=since))
        run.rebuild_history()
    except KeyboardInterrupt:
        report.error(f"{STOPPED}interrupted; run `subledger backfill` again to resume")
        finish_run(db, report, RunStatus.FAILED)
        raise
    except (StripeUnavailable, SQLAlchemyError) as exc:
        report.error(f"{STOPPED}{exc if isinstance(exc, StripeUnavailable) else _one_line(exc)}")
        finish_run(db, report, RunStatus.FAILED)
        raise
    except Exception as exc:
        log.debug("backfill %s failed", report.run_id, exc_info=True)
        report.error(f"{STOPPED}{_one_line(exc)}")
        finish_run(db, report, RunStatus.FAILED)
        raise BackfillFailed(f"backfill {report.run_id} failed ({_one_line(exc)}); run it again to resume") from exc
    return finish_run(db, report)
