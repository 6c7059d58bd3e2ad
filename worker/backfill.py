"""`subledger backfill`: import an account's history from the Stripe API.

Two processes, both resumable, at the same time:

1. **Read** (this process). Products, prices (with tiers), coupons (with
   `applies_to`), customers, subscriptions (every status, discounts expanded,
   every item: the embedded list stops at 20) and invoices (discounts
   expanded, every line: the embedded list stops at 10) are listed page by
   page into `stripe_objects` / `customers`. The big lists are cut into
   `created` windows (`worker.streams`), each listing's read newest first by
   its own few threads, each with its own client; every
   request draws from the rate limit all processes share (`worker.ratelimit`).
   Each page is committed with its checkpoint, so an interrupted run starts
   again after the last page it stored.
2. **History** (`worker.history`, a child process). As soon as every window
   from a customer's `created` on is read, the customer's subscription
   histories are reconstructed from its invoices and its ledger recomputed by
   the engine the webhooks use. Memory holds one page, or one batch, at a time.

The run row (`worker.runs`) ends `ok`, `partial` (some objects could not be
used: its errors say which) or `failed` (Stripe or the database stopped it; a
new `subledger backfill` with the same `--since` resumes it). Ctrl-C leaves it
failed, hence resumable.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ledger.db import Database, commit_without_waiting_for_disk, insert_all_unless_present, retrying_deadlocks, utcnow
from ledger.errors import SubledgerError
from ledger.models import BackfillCustomer, RunStatus, SyncCheckpoint, SyncRun
from ledger.settings import Settings
from ledger.state import UnusableEvent, customer_of, record_customers, record_named_customers, record_objects
from worker.history import HISTORY_STREAM, POLL_S, HistoryFailed, HistoryProcess, HistoryProgress, HistoryRebuild
from worker.progress import NoProgress, ProgressReporter
from worker.ratelimit import RateLimiter, stripe_limiter
from worker.records import with_every_line
from worker.runs import MAX_ERRORS_KEPT, RunReport, finish_run, heartbeat, one_line, save_checkpoint, start_run
from worker.streams import CUSTOMERS, FIRST_DAY, LISTINGS, WINDOWS, Listing, Stream, windows
from worker.stripe_api import PAGE_SIZE, ParameterRefused, StripeAPI, StripeUnavailable

log = logging.getLogger("subledger.backfill")

THREADS = 8
"""Windows of one listing read at once. A page costs Stripe's 100 ms plus storing it and any
invoice lines past 10: 8 readers keep an endpoint at its budget (20 requests/s) even with pages of
400 ms. The shared rate limit, not this, bounds the request rate; splitting keeps the readers on
the newest windows."""

SPLIT_PAGES = 4
"""A window is split only with more than this many pages left: each half holds two at least,
and the split's cost, one more partial page, stays small beside them."""

SPLIT_POLL_S = 0.05
"""How often idle readers are given work while reading."""

HEARTBEAT_S = 15.0
"""Seconds between two heartbeats of the run row."""

DAY_S = 86_400
"""The precision to which the oldest customer is found."""

MALLOC_ARENAS = 2
"""glibc's malloc arenas for this process (`mallopt(M_ARENA_MAX)`): by default up to 8 per core, and the
reading threads' freed pages stay in their own; with 2 they are reused, about 25 MB less at the peak."""

STOPPED = "stopped: "
"""Prefix of the error that says why a run stopped; not an object's error, dropped on resume."""


class BackfillFailed(SubledgerError, RuntimeError):
    """The backfill stopped; the message says why in one line, and that it resumes."""


def _discounts(holder: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The discounts a subscription (and its items) or an invoice (and its lines) carries expanded.

    An invoice's are often the only copy left of a discount removed from its subscription since,
    which an event naming it by id still needs.
    """
    found = [d for d in holder.get("discounts") or [] if isinstance(d, Mapping)]
    for part in (holder.get("items") or holder.get("lines") or {}).get("data") or []:
        found.extend(d for d in part.get("discounts") or [] if isinstance(d, Mapping))
    return found


@dataclass
class _Reading:
    """A window being read, newest first, which may be asked to hand over its older half."""

    stream: Stream
    reached: int | None = None
    """`created` of the oldest object read so far."""
    page_span: int = 0
    """Seconds of `created` the last page covered."""
    split_wanted: bool = False

    def passed(self, page: Sequence[Mapping[str, Any]]) -> None:
        newest, oldest = int(page[0].get("created") or 0), int(page[-1].get("created") or 0)
        self.reached, self.page_span = oldest, max(newest - oldest, 0)

    def left(self) -> int:
        """Seconds of the window still to read."""
        if self.reached is None or self.stream.created_gte is None:
            return 0
        return self.reached - self.stream.created_gte

    def worth_splitting(self) -> bool:
        """More than `SPLIT_PAGES` pages' worth is left, at the density read so far."""
        return self.left() > SPLIT_PAGES * max(self.page_span, 1)

    def split(self) -> Stream | None:
        """Keep the newer half of what is left, return the older half (None when not worth it)."""
        low, high = self.stream.created_gte, self.stream.created_lt
        if low is None or high is None or self.reached is None or not self.worth_splitting():
            return None
        middle = (low + self.reached) // 2
        self.stream = Stream(self.stream.listing, middle, high)
        return Stream(self.stream.listing, low, middle)


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
        self.stopping = threading.Event()
        self.handed_over: queue.SimpleQueue[Stream] = queue.SimpleQueue()
        """Older halves of windows split while being read, for the pool to start."""
        self._lock = threading.Lock()
        self._local = threading.local()
        self._beat_at = time.monotonic()
        self._probed: dict[tuple[str, int, int], bool] = {}
        """Whether a listing has objects created in [start, end): asked once."""
        with db.session() as session:
            run = session.get(SyncRun, report.run_id)
            assert run is not None
            self.started_at = run.started_at
            previous_errors = list(run.errors) if report.resumed else []
        self.bounds = (int(FIRST_DAY.timestamp()), int(self.started_at.timestamp()) + 1)
        """`created` from `--since` to the run's start: what the windows cover (`plan` sets it)."""
        # What was read is counted from the checkpoints and what history did from its own, exactly:
        # the run row's counts may lag. The readers' errors are kept, not why the run stopped.
        self.history = HistoryProgress.begin(db, report.run_id)
        report.counts, report.errors = Counter(), []
        for message in previous_errors:
            if not message.startswith(STOPPED) and message not in self.history.errors:
                report.error(message)

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

    def beat(self) -> None:
        if time.monotonic() - self._beat_at < HEARTBEAT_S:
            return
        with self._lock:
            counts = self.report.counts + self.history.counts
        heartbeat(self.db, RunReport(self.report.run_id, self.report.kind, counts=counts))
        self._beat_at = time.monotonic()

    # --- phase 1: reading -------------------------------------------------------------------

    def plan(self, *, since: datetime | None) -> list[Stream]:
        """Every stream of the run: as planned before when resuming, else planned and recorded now.

        The big lists' windows spread from the oldest customer on (found by a
        binary search, no object is older than its customer), so each holds a
        share of the account's life rather than of the years before it.
        """
        start = int((since or FIRST_DAY).timestamp())
        end = int(self.started_at.timestamp()) + 1
        self.bounds = (start, end)
        with self.db.session() as session:
            planned = set(
                session.scalars(select(SyncCheckpoint.stream).where(SyncCheckpoint.run_id == self.report.run_id)).all()
            )
        streams: list[Stream] = []
        dense_from: int | None = None
        probed = False
        for listing in LISTINGS.values():
            names = [name for name in planned if name.partition(":")[0] == listing.stream]
            if names:
                streams.extend(Stream.from_name(name) for name in names)
            elif not listing.windowed or not self.accepts_windows(listing, start, end):
                streams.append(Stream(listing))
            else:
                if not probed:
                    windowed = self.accepts_windows(CUSTOMERS, start, end)
                    dense_from, probed = self.oldest(CUSTOMERS, start, end) if windowed else None, True
                streams.extend(
                    Stream(listing, low, high) for low, high in windows(start, end, WINDOWS, dense_from=dense_from)
                )
        with self.db.transaction() as session:
            for stream in streams:
                if stream.name not in planned:
                    save_checkpoint(session, self.report.run_id, stream.name, cursor=None, objects=0)
        return streams

    def any_created(self, listing: Listing, start: int, end: int) -> bool:
        """Whether the listing has an object created in [start, end): a one-object page, asked once."""
        key = (listing.path, start, end)
        if key not in self._probed:
            page = self.api().get(listing.path, **dict(listing.params, limit=1, created={"gte": start, "lt": end}))
            self._probed[key] = bool(page.get("data"))
        return self._probed[key]

    def accepts_windows(self, listing: Listing, start: int, end: int) -> bool:
        """Whether Stripe lists the listing by `created`; some stand-ins for it (localstripe) refuse to.

        A listing refused its windows is read whole, in one stream (never split), and
        keeps what the windows would have held: slower, but every object is read.
        """
        try:
            self.any_created(listing, start, end)
        except ParameterRefused as exc:
            if exc.param != "created":
                raise
            log.warning("%s: Stripe refuses `created` windows (%s); reading the list whole", listing.stream, exc)
            return False
        return True

    def oldest(self, listing: Listing, start: int, end: int) -> int | None:
        """When the listing's oldest object in [start, end) was created, to the day; None when it is empty."""
        if not self.any_created(listing, start, end):
            return None
        low, high = start, end  # nothing in [start, low), something in [start, high)
        while high - low > DAY_S:
            middle = (low + high) // 2
            low, high = (low, middle) if self.any_created(listing, start, middle) else (middle, high)
        return low

    def read(self, streams: Sequence[Stream]) -> None:
        """Read the streams on thread pools while the history process rebuilds what is read whole.

        The first failure, of a reader or of the history process, stops everything and is raised.
        """
        unread_kinds = dict.fromkeys(stream.listing.kind for stream in streams)
        for kind in unread_kinds:
            self.progress.stream(kind)
        self.progress.stream(HISTORY_STREAM)
        self.progress.advance(HISTORY_STREAM, self.history.customers)
        history = HistoryProcess(self.settings, self.report.run_id, self.started_at)
        # One pool a listing: each endpoint's budget goes to its newest windows, split so that
        # every reader works near the newest end; those windows finish first, and their
        # customers' history is rebuilt while older ones are read.
        pools = {
            listing: ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix=f"backfill-{listing}")
            for listing in dict.fromkeys(stream.listing.stream for stream in streams)
        }
        waiting: dict[str, list[Stream]] = {listing: [] for listing in pools}
        for stream in sorted(streams, key=lambda stream: stream.created_gte or 0):
            waiting[stream.listing.stream].append(stream)  # popped from the end: newest first
        pending: dict[Future[None], _Reading] = {}
        followed_at = 0.0
        try:
            while pending or any(waiting.values()) or not self.handed_over.empty():
                self.start_readers(pools, waiting, pending)
                finished, _ = wait(pending, timeout=SPLIT_POLL_S, return_when=FIRST_EXCEPTION)
                for future in finished:
                    future.result()
                    del pending[future]
                if self.handed_over.empty():
                    left = {reading.stream.listing.kind for reading in pending.values()}
                    left.update(stream.listing.kind for own in waiting.values() for stream in own)
                    for kind in [kind for kind in unread_kinds if kind not in left]:
                        self.progress.finish(kind)
                        del unread_kinds[kind]
                if time.monotonic() - followed_at >= POLL_S:
                    history.check()
                    self.follow_history()
                    followed_at = time.monotonic()
            for pool in pools.values():
                pool.shutdown(wait=True)
            # Everything is read: this process's core rebuilds customers too, beside the history process.
            helper = HistoryRebuild(self.db, self.settings, self.report.run_id, self.started_at)
            while helper.shares_work and helper.rebuild_batch(None):
                history.check()
                self.follow_history()
            with self.db.transaction() as session:  # a row for the customers only invoices name
                record_named_customers(session, "invoice", observed_since=self.started_at)
            while not history.wait(POLL_S):
                self.follow_history()
            self.follow_history()
            if not self.history.done:  # it exited 0 all the same: interrupted on its own
                raise HistoryFailed("history process stopped before every customer was rebuilt")
            self.progress.finish(HISTORY_STREAM)
        except BaseException:
            # Threads finish (and commit) the page in hand, then stop: their checkpoints stay exact.
            self.stopping.set()
            history.stop()
            for pool in pools.values():
                pool.shutdown(wait=True, cancel_futures=True)
            raise

    def start_readers(
        self,
        pools: Mapping[str, ThreadPoolExecutor],
        waiting: Mapping[str, list[Stream]],
        pending: dict[Future[None], _Reading],
    ) -> None:
        """Give each listing's idle threads work, newest first.

        A half handed over by a split starts at once; else the listing's newest window
        worth splitting is asked for its older half; else its newest waiting window starts,
        one at a time: each reads a page before the next decision.
        """

        def start(stream: Stream) -> None:
            reading = _Reading(stream)
            pending[pools[stream.listing.stream].submit(self.read_stream, reading)] = reading

        while not self.handed_over.empty():
            start(self.handed_over.get())
        running: dict[str, list[_Reading]] = {listing: [] for listing in pools}
        for reading in pending.values():
            running[reading.stream.listing.stream].append(reading)
        for listing, own in running.items():
            # Until a window's first page says how dense it is, an older window could take the
            # thread its own older half would better use.
            if len(own) >= self.threads or any(reading.split_wanted or reading.reached is None for reading in own):
                continue
            splittable = [reading for reading in own if reading.worth_splitting()]
            if splittable:
                max(splittable, key=lambda reading: reading.stream.created_gte or 0).split_wanted = True
            elif waiting[listing]:
                start(waiting[listing].pop())

    def follow_history(self) -> None:
        """Show the history process's progress and keep the run row's counts current."""
        done_before = self.history.customers
        self.history = HistoryProgress.load(self.db, self.report.run_id)
        self.progress.advance(HISTORY_STREAM, self.history.customers - done_before)
        self.beat()

    def close(self, status: RunStatus | None = None) -> RunReport:
        """Record the run's end, with what the history process did (as its checkpoint says now)."""
        self.history = HistoryProgress.load(self.db, self.report.run_id)
        self.report.counts.update(self.history.counts)
        room = MAX_ERRORS_KEPT - len(self.report.errors)
        self.report.errors.extend(self.history.errors[: max(room, 0)])
        self.report.notes = list(self.history.notes)  # not errors: the run is ok with them
        return finish_run(self.db, self.report, status)

    def read_stream(self, reading: _Reading) -> None:
        """Read a stream page by page from its checkpoint; hand over its older half when asked."""
        if self.stopping.is_set():
            return
        stream = reading.stream
        kind = stream.listing.kind
        with self.db.session() as session:
            row = session.get(SyncCheckpoint, (self.report.run_id, stream.name))
            cursor, objects, done = (row.cursor, row.objects, row.done) if row is not None else (None, 0, False)
        self.count(kind, objects)
        self.progress.advance(kind, objects)
        if done:
            return
        api = self.api()
        while not done:
            older: Stream | None = None
            query = dict(stream.params(), limit=PAGE_SIZE)
            if cursor is not None:
                query["starting_after"] = cursor
            answer = api.get(stream.listing.path, **query)
            listed: list[dict[str, Any]] = answer.get("data") or []
            done = not listed or not answer.get("has_more")
            page = self.within_bounds(stream, listed)
            read_at = utcnow()
            errors: list[str] = []
            usable = [
                obj
                for obj in page
                if (kind != "invoices" or self.complete_lines(api, obj, errors))
                and (kind != "subscriptions" or self.complete_items(api, obj, errors))
            ]
            with self.db.transaction() as session:
                commit_without_waiting_for_disk(session)
                self.store(session, kind, usable, read_at, errors)
                objects += len(page)
                cursor = str(listed[-1]["id"]) if listed else cursor
                if not done:
                    reading.passed(listed)
                    if reading.split_wanted:
                        older = reading.split()
                    if older is not None:
                        # The window now starts where its older half does: one commit, no gap, no overlap.
                        session.execute(
                            delete(SyncCheckpoint).where(
                                SyncCheckpoint.run_id == self.report.run_id, SyncCheckpoint.stream == stream.name
                            )
                        )
                        save_checkpoint(session, self.report.run_id, older.name, cursor=None, objects=0)
                        stream = reading.stream
                save_checkpoint(
                    session,
                    self.report.run_id,
                    stream.name,
                    cursor=cursor,
                    objects=objects,
                    done=done,
                    reached=reading.reached,
                )
            reading.split_wanted = False
            if older is not None:
                self.handed_over.put(older)
            # Counted once committed: a page that did not commit is read again on resume.
            self.count(kind, len(page))
            for message in errors:
                self.error(message)
            self.progress.advance(kind, len(page))
            if self.stopping.is_set():
                return

    def within_bounds(self, stream: Stream, listed: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The page as windows would have held it: a list read whole keeps what `--since` and the run's start allow."""
        if not stream.read_whole:
            return listed
        low, high = self.bounds
        return [obj for obj in listed if low <= int(obj.get("created") or 0) < high]

    def complete_items(self, api: StripeAPI, subscription: dict[str, Any], errors: list[str]) -> bool:
        """Put every item in the subscription (Stripe embeds the first 20); False when they cannot be read."""
        try:
            api.with_every_item(subscription)
        except StripeUnavailable as exc:
            errors.append(f"subscription {subscription.get('id')}: its items could not be read: {exc}")
            return False
        return True

    @staticmethod
    def complete_lines(api: StripeAPI, invoice: dict[str, Any], errors: list[str]) -> bool:
        """Put every line in the invoice (Stripe embeds the first 10); False when they cannot be read."""
        try:
            with_every_line(api, invoice)
        except StripeUnavailable as exc:
            errors.append(f"invoice {invoice.get('id')}: its lines could not be read: {exc}")
            return False
        return True

    def store(
        self, session: Session, kind: str, page: Sequence[Mapping[str, Any]], read_at: datetime, errors: list[str]
    ) -> None:
        """Store a page with a few set-based statements; one by one if the page holds an unusable object."""
        try:
            retrying_deadlocks(session, lambda: self._store_page(session, kind, page, read_at))
            return
        except UnusableEvent:
            pass
        for obj in page:
            try:
                retrying_deadlocks(session, partial(self._store_page, session, kind, [obj], read_at))
            except UnusableEvent as exc:
                errors.append(f"{kind} {obj.get('id', '?')}: {exc}")

    def _store_page(self, session: Session, kind: str, page: Sequence[Mapping[str, Any]], read_at: datetime) -> None:
        if kind == "customers":
            record_customers(session, page, observed_at=read_at)
            return
        # Subscriptions and invoices keep the discounts they carry whole, so a webhook naming one by id finds it.
        discounts = [d for obj in page for d in _discounts(obj)] if kind in ("subscriptions", "invoices") else []
        # The customers invoices name are stored once every page is read (`read`), not page by page;
        # a pending invoice item matters only to a customer with a subscription, stored with it.
        named = kind not in ("invoices", "invoiceitems")
        record_objects(session, [*page, *discounts], observed_at=read_at, customers=named)
        if kind != "subscriptions":
            return
        # Their customers' histories are to be rebuilt (worker.history), once read whole.
        customers = {customer for customer in map(customer_of, page) if customer is not None}
        insert_all_unless_present(
            session,
            BackfillCustomer,
            [{"run_id": self.report.run_id, "customer_id": customer, "rebuilt": False} for customer in customers],
            key=["run_id", "customer_id"],
        )


def _few_malloc_arenas() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not glibc: its own allocator
        ctypes.CDLL(None).mallopt(-8, MALLOC_ARENAS)  # -8 is M_ARENA_MAX


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
    _few_malloc_arenas()
    parameters = {"since": since.isoformat() if since is not None else None}
    report = start_run(
        db,
        "backfill",
        parameters=parameters,
        livemode=settings.livemode,
        stripe_api_version=settings.stripe_api_version,
        resumable=True,
    )
    if report.resumed:
        log.info("resuming backfill %s", report.run_id)
    run = _Backfill(db, settings, report, progress=progress or NoProgress(), limiter=limiter, threads=threads)
    try:
        run.read(run.plan(since=since))
    except KeyboardInterrupt:
        report.error(f"{STOPPED}interrupted; run `subledger backfill` again to resume")
        run.close(RunStatus.FAILED)
        raise
    except (StripeUnavailable, SQLAlchemyError) as exc:
        report.error(f"{STOPPED}{exc if isinstance(exc, StripeUnavailable) else one_line(exc)}")
        run.close(RunStatus.FAILED)
        raise
    except Exception as exc:
        log.debug("backfill %s failed", report.run_id, exc_info=True)
        report.error(f"{STOPPED}{one_line(exc)}")
        run.close(RunStatus.FAILED)
        raise BackfillFailed(f"backfill {report.run_id} failed ({one_line(exc)}); run it again to resume") from exc
    return run.close()
