"""Tunable constants of the worker side, each with what it is for."""

from __future__ import annotations

MAX_ATTEMPTS = 8
"""An event that failed this many times is marked failed (replay retries it)."""

RETRY_BASE_S = 30
"""First retry of a failed event after this long; doubles each attempt."""

RETRY_MAX_S = 3600
"""Retries of a failed event are never further apart than this."""

STUCK_AFTER_S = 120
"""The sweeper re-queues events still pending this long after they arrived."""

SWEEP_INTERVAL_S = 60
"""How often the clock process runs the sweeper."""

PARTITIONS_PER_PASS = 200
"""Customers a drain job claims per transaction (PostgreSQL)."""

SQLITE_PARTITIONS_PER_PASS = 200
"""The same on SQLite. Kept as large: a catalog object (a coupon) must land in the
same batch as, or before, the subscriptions naming it when no API key can fetch it."""

DRAIN_BUDGET_S = 120
"""A drain job hands over to a fresh job after this long, so no job runs unbounded."""

ROLL_FORWARD_CRON = "10 0 * * *"
"""Daily, just after midnight UTC: book the movements time alone causes (grace periods, discount ends)."""

CATCH_UP_INTERVAL_S = 300
"""How often the clock reads back recent events from Stripe's Events API."""

CATCH_UP_TIMEOUT_S = 3600
"""How long one catch-up may read. The first reads all 30 days Stripe keeps: on a large account that is
thousands of pages, far past RQ's default 180 s, and a run stopped short does not move the cursor."""

REPAIR_DELAY_S = 30
"""A paid invoice that contradicts the ledger has its subscription repaired this long after: the events
of the same moment (delivered out of order) are applied first."""

REPAIR_BATCH = 10
"""Subscriptions a repair job reads at most (three Stripe reads each): a job holds a worker briefly."""

REPAIR_ATTEMPTS = 4
"""A repair skipped for events in flight is tried again, each time twice as late, up to this many times."""
