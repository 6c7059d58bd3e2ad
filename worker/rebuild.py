"""`subledger rebuild`: recompute every customer's ledger from stored state.

Run it after a rule setting changed: no Stripe import is needed, and running it
twice changes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ledger.db import Database
from ledger.engine import customers_with_snapshots
from ledger.settings import Settings
from worker.recompute import MissingStripeObject, recompute
from worker.stripe_api import StripeAPI


@dataclass
class RebuildReport:
    customers: int = 0
    movements_added: int = 0
    movements_removed: int = 0
    problems: list[str] = field(default_factory=list)


def rebuild(db: Database, settings: Settings, *, progress: Callable[[int, int], None] | None = None) -> RebuildReport:
    """Recompute each customer in its own transaction; report what changed."""
    api = StripeAPI(settings) if settings.stripe_api_key else None
    with db.session() as session:
        customers = list(customers_with_snapshots(session))
    report = RebuildReport()
    for done, customer_id in enumerate(customers, start=1):
        try:
            with db.transaction() as session:
                result = recompute(session, customer_id, settings, api)
            report.movements_added += result.movements_added
            report.movements_removed += result.movements_removed
        except MissingStripeObject as exc:
            report.problems.append(f"{customer_id}: {exc}")
        report.customers += 1
        if progress is not None:
            progress(done, len(customers))
    return report
