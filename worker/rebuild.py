"""`subledger rebuild`: recompute every customer's ledger from stored state.

Run it after a rule setting changed: no Stripe import is needed, and running it
twice changes nothing the second time. It ends by re-summing the daily and
monthly account totals from the rows they sum. The clock also runs it daily, so changes
that happen with the passing of time alone (a past-due grace period running
out, a repeating discount ending) are booked on their day.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ledger.db import Database, utcnow
from ledger.engine import Recomputed, customers_with_snapshots, recompute_customers, resum_totals
from ledger.mrr import UnresolvedStripeObject
from ledger.resolve import UnreadAppliesTo
from ledger.settings import Settings
from worker.processing import lock_partition
from worker.recompute import MissingStripeObject, recompute, unread_applies_to
from worker.stripe_api import StripeAPI

BATCH = 200
"""Customers recomputed per transaction."""

BUSY_RETRY_S = 0.5
BUSY_WAIT_S = 120.0
"""A customer a worker holds is tried again every BUSY_RETRY_S, for at most BUSY_WAIT_S in all."""


@dataclass
class RebuildReport:
    customers: int = 0
    movements_added: int = 0
    movements_removed: int = 0
    problems: list[str] = field(default_factory=list)

    def add(self, result: Recomputed) -> None:
        self.movements_added += result.movements_added
        self.movements_removed += result.movements_removed


def rebuild(db: Database, settings: Settings, *, progress: Callable[[int, int], None] | None = None) -> RebuildReport:
    """Recompute every customer, a batch per transaction; report what changed."""
    api = StripeAPI(settings) if settings.stripe_api_key else None
    # Without a key, a coupon whose applies_to was never read is valued in its batch as the worker
    # values it (every item), rather than sending every batch holding one customer by customer.
    unread = unread_applies_to(api)
    with db.session() as session:
        customers = list(customers_with_snapshots(session))
    report = RebuildReport()
    busy: list[str] = []
    for start in range(0, len(customers), BATCH):
        batch = customers[start : start + BATCH]
        busy += _recompute_batch(db, settings, api, unread, batch, report)
        if progress is not None:
            progress(report.customers, len(customers))
    deadline = time.monotonic() + BUSY_WAIT_S
    while busy and time.monotonic() < deadline:
        time.sleep(BUSY_RETRY_S)
        busy = _recompute_batch(db, settings, api, unread, busy, report)
    report.problems += [f"{customer_id}: left to the worker processing its events" for customer_id in busy]
    with db.transaction() as session:
        resum_totals(session)
    return report


def _recompute_batch(
    db: Database,
    settings: Settings,
    api: StripeAPI | None,
    unread: UnreadAppliesTo | None,
    batch: list[str],
    report: RebuildReport,
) -> list[str]:
    """Recompute the batch's customers in one transaction, under their partition locks; those a worker
    holds (it is storing their events) are returned, to try again: recomputed from versions read before
    the worker commits, their ledger would overwrite the worker's with one that lacks its events."""
    busy: list[str] = []
    try:
        with db.transaction() as session:
            locked = [customer_id for customer_id in batch if lock_partition(session, customer_id)]
            busy = [customer_id for customer_id in batch if customer_id not in locked]
            for result in recompute_customers(session, locked, settings.rules, now=utcnow(), unread_applies_to=unread):
                report.add(result)
    except UnresolvedStripeObject:
        # Some subscription names an object not stored yet: one by one, fetching it.
        busy = []
        for customer_id in batch:
            try:
                with db.transaction() as session:
                    if not lock_partition(session, customer_id):
                        busy.append(customer_id)
                        continue
                    report.add(recompute(session, customer_id, settings, api))
            except MissingStripeObject as exc:
                report.problems.append(f"{customer_id}: {exc}")
    report.customers += len(batch) - len(busy)
    return busy
