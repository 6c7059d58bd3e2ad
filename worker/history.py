"""The backfill's history phase: a process of its own, beside the reading.

Reading is bound by Stripe's rate limit, rebuilding history by the CPU, so
history runs in a child process (another core, not the readers' interpreter)
while the reading threads go on. It works from the database alone:

* The readers' checkpoints say which `created` windows are stored
  (`worker.streams.ready_from`). Nothing a customer has (subscription,
  invoice) is older than the customer, so once every window from a
  customer's `created` on is read, its history is whole.
* Customers are taken newest first (`created`, then id), a batch per
  transaction: their subscriptions, invoices and stored proration invoice
  items are loaded from `stripe_objects`, each subscription's past versions are
  reconstructed from them (`ledger.history.reconstruct`) and stored as
  snapshots with the source `backfill:<run id>`, and the batch's ledgers are
  recomputed by the same engine the webhooks use.
* A discount the history names whose coupon Stripe has deleted (it answers
  404: `GET /v1/coupons/{id}`), or that Stripe no longer has at all, is valued
  as invoiced (`reconstruct(as_invoiced=…)`): not an error, but a note of the
  run, one per discount.
* The customers to rebuild are listed in `backfill_customers`, with the
  subscription page that names them. Each batch marks its customers rebuilt
  and adds its counts and errors to the `history` checkpoint, in its own
  commit: a resumed run rebuilds only the customers not marked, and the
  reading process reports the checkpoint as the run's.
* Once everything is read, the reading process has nothing left to do and
  rebuilds customers too. On PostgreSQL a batch claims its customers' rows
  (`FOR UPDATE SKIP LOCKED`), so the two never take the same customer; SQLite
  has one writer at a time, and one worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from multiprocessing.connection import Connection
from typing import Any

from redis import Redis, RedisError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from ledger.db import Database, commit_without_waiting_for_disk, retrying_deadlocks, utcnow
from ledger.engine import recompute_customers
from ledger.errors import SubledgerError
from ledger.history import (
    coupons_as_invoiced,
    invoice_fields,
    invoice_item_subscription,
    invoice_subscription,
    reconstruct,
)
from ledger.logs import configure_logging
from ledger.models import BackfillCustomer, Customer, EventStatus, StripeEvent, StripeObject, SyncCheckpoint
from ledger.mrr import UnresolvedStripeObject
from ledger.settings import Settings
from ledger.state import (
    RANK_HISTORY,
    SubscriptionVersion,
    UnusableEvent,
    record_subscriptions,
)
from worker.queues import wake_shard
from worker.recompute import (
    MissingStripeObject,
    fetch_references,
    no_longer_waiting,
    unread_applies_to,
    wait_for,
)
from worker.records import InvoicedDiscounts, stored_prices
from worker.runs import MAX_ERRORS_KEPT, one_line, save_checkpoint
from worker.streams import Stream, ready_from
from worker.stripe_api import StripeAPI

log = logging.getLogger("subledger.backfill")

HISTORY_STREAM = "history"
"""Checkpoint of the history phase: the last customer whose ledger was rebuilt."""

HISTORY_BATCH = 100
"""Customers whose history is rebuilt per transaction."""

POLL_S = 0.5
"""How often the history process looks for newly read windows, and the reading process at its progress."""

CLAIM_WAIT_S = 0.1
"""How often the history process looks again while only the reading process's open batch is left."""

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
"""Where a customer with no stored `created` sorts: last, once everything is read."""

NOTE = "note: "
"""Prefix of a note among the checkpoint's errors: something the run did that a person should know, no error."""

AS_INVOICED = "discounts valued as invoiced"
"""The count of the history's discounts valued from the invoices that applied them."""


class HistoryFailed(SubledgerError, RuntimeError):
    """The history process stopped; the message is its one-line reason."""


@dataclass
class HistoryProgress:
    """What the `history` checkpoint holds: the sums of every batch committed so far."""

    customers: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    done: bool = False
    notes: list[str] = field(default_factory=list)
    """What the run did that is no error but worth knowing (a discount valued as invoiced), each once."""

    @classmethod
    def load(cls, db: Database, run_id: str) -> HistoryProgress:
        with db.session() as session:
            return cls.of(session.get(SyncCheckpoint, (run_id, HISTORY_STREAM)))

    @classmethod
    def begin(cls, db: Database, run_id: str) -> HistoryProgress:
        """The checkpoint as it stands, written if there is none yet: each batch adds to it, row locked."""
        with db.transaction() as session:
            progress = cls.of(session.get(SyncCheckpoint, (run_id, HISTORY_STREAM)))
            progress.save(session, run_id)
        return progress

    @classmethod
    def of(cls, row: SyncCheckpoint | None) -> HistoryProgress:
        if row is None or row.cursor is not None:
            # None yet, or a layout that kept a cursor: its customers are rebuilt again, which is harmless.
            return cls()
        # Notes share the errors' column, told apart by their prefix: one commit keeps both exact.
        kept = list(row.errors or [])
        errors = [message for message in kept if not message.startswith(NOTE)]
        notes = [message.removeprefix(NOTE) for message in kept if message.startswith(NOTE)]
        return cls(row.objects, Counter(row.counts or {}), errors, row.done, notes)

    def add(self, customers: int, counts: Counter[str], errors: Sequence[str], notes: Sequence[str] = ()) -> None:
        self.customers += customers
        self.counts.update(counts)
        for message in errors:
            self.counts["errors"] += 1
            if len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.append(message)
        self.notes.extend(notes[: max(MAX_ERRORS_KEPT - len(self.notes), 0)])

    def save(self, session: Session, run_id: str) -> None:
        save_checkpoint(
            session,
            run_id,
            HISTORY_STREAM,
            cursor=None,
            objects=self.customers,
            done=self.done,
            counts=dict(self.counts),
            errors=self.errors + [NOTE + note for note in self.notes],
        )


class HistoryRebuild:
    """A history worker: rebuild customers as their windows are read, until all are.

    The history process `run`s one from the start. Once everything is read, the
    reading process calls `rebuild_batch` of its own, where `shares_work`.
    """

    def __init__(self, db: Database, settings: Settings, run_id: str, started_at: datetime) -> None:
        self.db = db
        self.settings = settings
        self.run_id = run_id
        self.started_at = started_at
        self.source = f"backfill:{run_id}"
        self._api: StripeAPI | None = None
        self._prices: dict[str, Mapping[str, Any]] = {}
        """Stored prices read so far: a run reads each once."""
        self.discounts = InvoicedDiscounts(self.api)

    @property
    def shares_work(self) -> bool:
        """Whether a second worker may rebuild beside this one (PostgreSQL: batches claim rows)."""
        return self.db.engine.dialect.name == "postgresql"

    def run(self, *, reading: Callable[[], bool] = lambda: True) -> None:
        """The history process: rebuild every customer, then record the end.

        `reading()` false means the reading process is gone: stop.
        """
        while self._rebuild_ready(going_on=reading):
            if self.finish():
                return
            time.sleep(CLAIM_WAIT_S)  # the reading process holds the last customers

    def _rebuild_ready(self, *, going_on: Callable[[], bool]) -> bool:
        """Rebuild customers as their windows are read; True once everything is read and no customer is left
        to take, False as soon as `going_on()` is false."""
        exhausted: datetime | None = None
        while going_on():
            streams, read, reached = self._planned()
            everything = bool(streams) and len(read) == len(streams)
            frontier = None if everything else ready_from(streams, read, reached)
            # Nothing new is ready until another window is read: the customers are not asked again.
            if (everything or frontier not in (None, exhausted)) and self.rebuild_batch(frontier):
                continue
            if everything:
                return True
            exhausted = frontier
            time.sleep(POLL_S)
        return False

    def _planned(self) -> tuple[list[Stream], set[str], dict[str, int]]:
        """The run's reading streams, the names of those read to the end, and how far back the others got."""
        with self.db.session() as session:
            rows = session.execute(
                select(SyncCheckpoint.stream, SyncCheckpoint.done, SyncCheckpoint.reached).where(
                    SyncCheckpoint.run_id == self.run_id, SyncCheckpoint.stream != HISTORY_STREAM
                )
            ).all()
        return (
            [Stream.from_name(name) for name, _, _ in rows],
            {name for name, done, _ in rows if done},
            {name: reached for name, done, reached in rows if not done and reached is not None},
        )

    def _waiting(self, frontier: datetime | None) -> Any:
        """The run's customers not rebuilt yet, created from `frontier` on (None: any), newest first."""
        created = func.coalesce(Customer.created, EPOCH)
        query = (
            select(BackfillCustomer.customer_id)
            .outerjoin(Customer, Customer.id == BackfillCustomer.customer_id)
            .where(BackfillCustomer.run_id == self.run_id, BackfillCustomer.rebuilt.is_(False))
            .order_by(created.desc(), BackfillCustomer.customer_id.desc())
        )
        return query if frontier is None else query.where(created >= frontier)

    def rebuild_batch(self, frontier: datetime | None) -> bool:
        """Rebuild the next customers, newest first, created from `frontier` on (None: any); False if none is left.

        Customers another worker is rebuilding are skipped, not waited for; one it
        has just rebuilt is seen as rebuilt (PostgreSQL reads a locked row again).
        """
        with self.db.transaction() as session:
            commit_without_waiting_for_disk(session)
            claim = self._waiting(frontier).limit(HISTORY_BATCH).with_for_update(of=BackfillCustomer, skip_locked=True)
            batch = list(session.scalars(claim))
            if not batch:
                return False

            def rebuild() -> tuple[Counter[str], list[str], list[str]]:
                counts, errors, notes = Counter[str](), list[str](), list[str]()
                self.history_of(session, batch, counts, errors, notes)
                return counts, errors, notes

            counts, errors, notes = retrying_deadlocks(session, rebuild)
            session.execute(
                update(BackfillCustomer)
                .where(BackfillCustomer.run_id == self.run_id, BackfillCustomer.customer_id.in_(batch))
                .values(rebuilt=True)
            )
            due = self.retry_waiting(session, batch)
            for message in errors:
                log.warning("backfill: %s", message)
            for message in notes:
                log.info("backfill: %s", message)
            # Locked last and briefly: the other worker adds its own batch after this commit.
            progress = HistoryProgress.of(
                session.get(SyncCheckpoint, (self.run_id, HISTORY_STREAM), with_for_update=True)
            )
            progress.add(len(batch), counts, errors, notes)
            progress.save(session, self.run_id)
        self.wake(due)
        return True

    @staticmethod
    def retry_waiting(session: Session, customers: Sequence[str]) -> set[int]:
        """Make the customers' events waiting for a retry due now; their shards.

        What they waited for (an object Stripe no longer answers for, a coupon only
        invoices value) may be what the batch has just stored.
        """
        shards = session.scalars(
            update(StripeEvent)
            .where(
                StripeEvent.status == EventStatus.PENDING.value,
                StripeEvent.attempts > 0,
                StripeEvent.partition.in_(customers),
            )
            .values(next_attempt_at=utcnow())
            .returning(StripeEvent.shard)
        )
        return set(shards)

    def wake(self, shards: set[int]) -> None:
        """Queue the shards' drain jobs; without Redis, the sweeper finds the events due."""
        if not shards or not self.settings.redis_url:
            return
        try:
            connection = Redis.from_url(self.settings.redis_url)
            for shard in sorted(shards):
                wake_shard(connection, shard)
        except RedisError as exc:
            log.warning("backfill: waiting events left to the sweeper: %s", exc)

    def finish(self) -> bool:
        """Record the end once no customer is left, taken or not; False while another worker's batch is open."""
        with self.db.transaction() as session:
            row = session.get(SyncCheckpoint, (self.run_id, HISTORY_STREAM), with_for_update=True)
            if session.execute(self._waiting(None).limit(1)).first() is not None:
                return False
            progress = HistoryProgress.of(row)
            progress.done = True
            progress.save(session, self.run_id)
        return True

    def history_of(
        self,
        session: Session,
        customers: Sequence[str],
        counts: Counter[str],
        errors: list[str],
        notes: list[str] | None = None,
    ) -> None:
        """Store the batch's subscription histories and recompute its customers' ledgers."""
        notes = [] if notes is None else notes
        subscriptions = session.execute(
            self._stored("subscription", customers).where(StripeObject.observed_at >= self.started_at)
        ).all()
        invoices: dict[str, list[Mapping[str, Any]]] = {}
        for _, invoice, _ in session.execute(self._stored("invoice", customers)):
            subscription_id = invoice_subscription(invoice)
            if subscription_id is not None:  # the rest is dropped at once: a batch holds thousands
                invoices.setdefault(subscription_id, []).append(invoice_fields(invoice))
        pending: dict[str, list[Mapping[str, Any]]] = {}
        for _, invoice_item, _ in session.execute(self._stored("invoiceitem", customers)):
            subscription_id = invoice_item_subscription(invoice_item)
            if subscription_id is not None and invoice_item.get("proration"):
                pending.setdefault(subscription_id, []).append(invoice_item)
        prices = stored_prices(session, self._prices)
        histories: dict[str, list[SubscriptionVersion]] = {}
        valued: dict[str, dict[str, Any]] = {}
        for subscription_id, payload, observed_at in subscriptions:
            own = sorted(
                invoices.get(subscription_id, []), key=lambda invoice: (invoice.get("created") or 0, invoice["id"])
            )
            try:
                as_invoiced = self.discounts.find(session, subscription_id, payload, own, notes)
                history = reconstruct(
                    payload,
                    own,
                    prices=prices,
                    read_at=observed_at,
                    invoice_items=pending.get(subscription_id, ()),
                    as_invoiced=as_invoiced,
                )
            except (ValueError, KeyError, TypeError) as exc:  # UnresolvedStripeObject too
                errors.append(f"subscription {subscription_id}: its history could not be reconstructed: {exc}")
                continue
            if as_invoiced:
                counts[AS_INVOICED] += len(as_invoiced)
                valued.update(coupons_as_invoiced(history))
            histories[subscription_id] = [
                SubscriptionVersion(v.subscription, v.observed_at, self.source, RANK_HISTORY) for v in history
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
        self.discounts.store_valued(session, valued)
        results = []
        try:
            with session.begin_nested():
                results = recompute_customers(session, customers, self.settings.rules, now=utcnow())
        except UnresolvedStripeObject:
            # Some subscription names an object not stored: fetch it customer by customer (which writes
            # no ledger row), then recompute those that can be valued together. Every customer adds to
            # the same account_months and daily_totals rows: added to once per transaction, in key
            # order, the history and the workers never lock them crosswise.
            now, fetched, waiting = utcnow(), list[str](), dict[str, MissingStripeObject]()
            for customer_id in customers:
                try:
                    with session.begin_nested():
                        fetch_references(session, customer_id, self.settings, self.api(), now=now)
                    fetched.append(customer_id)
                except MissingStripeObject as exc:
                    errors.append(f"customer {customer_id}: ledger not recomputed: {exc}")
                    waiting[customer_id] = exc
            wait_for(session, waiting, now=now)  # the sweeper tries again, /metrics counts them
            results = recompute_customers(
                session, fetched, self.settings.rules, now=now, unread_applies_to=unread_applies_to(self.api())
            )
        no_longer_waiting(session, [result.customer_id for result in results])
        counts["ledgers recomputed"] += len(results)
        counts["movements added"] += sum(result.movements_added for result in results)

    def api(self) -> StripeAPI:
        if self._api is None:
            self._api = StripeAPI(self.settings)
        return self._api

    @staticmethod
    def _stored(kind: str, customers: Sequence[str]) -> Any:
        """Only the columns used: a batch holds thousands of invoices, no ORM objects are needed."""
        return select(StripeObject.id, StripeObject.payload, StripeObject.observed_at).where(
            StripeObject.object == kind, StripeObject.customer_id.in_(customers)
        )


def _history_process(settings: Settings, run_id: str, started_at: datetime, failures: Connection) -> None:
    """The history process's entry point: rebuild, and say in one line why if it cannot."""
    configure_logging()
    parent = os.getppid()
    try:
        HistoryRebuild(Database(settings.database_url), settings, run_id, started_at).run(
            reading=lambda: os.getppid() == parent
        )
    except KeyboardInterrupt:
        return  # Ctrl-C reached the whole process group: the reading process records the stop
    except BaseException as exc:
        failures.send(one_line(exc))
        raise SystemExit(1) from None


class HistoryProcess:
    """The reading process's handle on the history process."""

    def __init__(self, settings: Settings, run_id: str, started_at: datetime) -> None:
        # Spawned, not forked: the reading process has threads, connections and locks a fork would copy.
        context = multiprocessing.get_context("spawn")
        self._failures, sender = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_history_process,
            args=(settings, run_id, started_at, sender),
            name="subledger-history",
            daemon=True,
        )
        self._process.start()
        sender.close()

    def check(self) -> None:
        """Raise `HistoryFailed` if the process stopped on an error."""
        code = self._process.exitcode
        if code is None or code == 0:
            return
        reason = f"exit status {code}"
        try:
            if self._failures.poll():
                reason = self._failures.recv()
        except EOFError:  # it died without a word (killed)
            pass
        raise HistoryFailed(f"history process stopped: {reason}")

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds; True once the process has finished its work."""
        self._process.join(timeout)
        self.check()
        return self._process.exitcode is not None

    def stop(self) -> None:
        """Stop it now: its batch in progress is rolled back, its committed checkpoint stays exact."""
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
