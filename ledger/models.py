"""The SQL schema: raw Stripe events, and the state the worker derives from them.

Events are kept whole and for ever: they are the evidence every number points
back to. The state tables hold what is needed to recompute movements at any
time (mrr-rules.md §5–§6) without asking Stripe again: every observed version
of every subscription (`subscription_snapshots`), the latest version of the
objects subscriptions refer to (`stripe_objects`: prices, coupons, discounts,
invoices, products), and one row per customer and per subscription with its
latest known state.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any, ClassVar

from sqlalchemy import JSON, BigInteger, Date, Index, Integer, MetaData, String, Text, UniqueConstraint
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ledger.db import UTCDateTime

JsonDocument = JSON().with_variant(JSONB(), "postgresql")
"""JSON on SQLite, JSONB on PostgreSQL."""

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime, dict[str, Any]: JsonDocument}


class EventStatus(enum.StrEnum):
    PENDING = "pending"
    """Stored, not yet applied to the ledger (or waiting for a retry)."""
    PROCESSED = "processed"
    """Applied to the ledger."""
    IGNORED = "ignored"
    """A type subledger does not use; kept for the record."""
    FAILED = "failed"
    """Gave up after the last retry; `last_error` says why. `subledger replay` retries it."""


class StripeEvent(Base):
    """One Stripe event exactly as received, and how far its processing got."""

    __tablename__ = "stripe_events"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(255))
    api_version: Mapped[str | None] = mapped_column(String(64))
    livemode: Mapped[bool]
    created: Mapped[datetime]
    payload: Mapped[dict[str, Any]]
    received_at: Mapped[datetime]
    received_via: Mapped[str] = mapped_column(String(16))
    """`webhook`, or `catchup` for events read back from Stripe's Events API."""
    partition: Mapped[str] = mapped_column(String(255))
    """What must be processed in order with this event: its customer, else its object."""
    shard: Mapped[int] = mapped_column(Integer)
    """Which drain job picks the event up (see ledger.intake)."""
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
    processed_at: Mapped[datetime | None]

    __table_args__ = (
        Index("ix_stripe_events_due", "status", "shard", "next_attempt_at"),
        Index("ix_stripe_events_partition", "partition", "status"),
        Index("ix_stripe_events_created", "created"),
    )


class Customer(Base):
    """A Stripe customer, as last seen."""

    __tablename__ = "customers"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    livemode: Mapped[bool]
    email: Mapped[str | None] = mapped_column(String(512))
    name: Mapped[str | None] = mapped_column(String(512))
    created: Mapped[datetime | None]
    deleted: Mapped[bool] = mapped_column(default=False)
    observed_at: Mapped[datetime]
    """Stripe time of the version stored here; an older event never overwrites a newer one."""


class Subscription(Base):
    """A Stripe subscription's latest known version (the full history is in snapshots)."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(255), index=True)
    livemode: Mapped[bool]
    status: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]]
    observed_at: Mapped[datetime]


class SubscriptionSnapshot(Base):
    """One observed version of a subscription, with where it came from.

    `rank` orders versions observed in the same second: event versions are
    ranked 0, 1, 2, … as ledger.ordering settles them, a reconciliation's
    correcting version ranks above them all. The same content seen twice is
    stored once.
    """

    __tablename__ = "subscription_snapshots"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    subscription_id: Mapped[str] = mapped_column(String(255))
    customer_id: Mapped[str] = mapped_column(String(255), index=True)
    livemode: Mapped[bool]
    observed_at: Mapped[datetime]
    rank: Mapped[int] = mapped_column(Integer, default=0)
    source: Mapped[str] = mapped_column(String(255))
    """`evt_…`, `backfill:<run>` or `reconcile:<run>`."""
    content_hash: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]]

    __table_args__ = (
        UniqueConstraint("subscription_id", "observed_at", "rank", "content_hash"),
        Index("ix_subscription_snapshots_subscription", "subscription_id", "observed_at"),
    )


class StripeObject(Base):
    """The latest known version of an object subscriptions refer to.

    Prices (with their tiers), coupons, discounts, products and invoices. Stripe
    webhooks name these by id; the MRR rules need them whole.
    """

    __tablename__ = "stripe_objects"

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    object: Mapped[str] = mapped_column(String(64), index=True)
    livemode: Mapped[bool]
    customer_id: Mapped[str | None] = mapped_column(String(255), index=True)
    deleted: Mapped[bool] = mapped_column(default=False)
    payload: Mapped[dict[str, Any]]
    observed_at: Mapped[datetime]


class SubscriptionChange(Base):
    """A subscription's MRR from `at` on (mrr-rules.md §5), derived from its snapshots.

    Kept so the customer page and scheduled churn read a table instead of
    re-running the rules; rebuilt with the movements.
    """

    __tablename__ = "subscription_changes"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    livemode: Mapped[bool]
    customer_id: Mapped[str] = mapped_column(String(255), index=True)
    subscription_id: Mapped[str] = mapped_column(String(255), index=True)
    at: Mapped[datetime]
    currency: Mapped[str] = mapped_column(String(3))
    gross: Mapped[int] = mapped_column(BigInteger)
    net: Mapped[int] = mapped_column(BigInteger)
    scheduled_churn: Mapped[bool]
    sources: Mapped[list[str]] = mapped_column(JsonDocument)


class Movement(Base):
    """One MRR movement of a customer (mrr-rules.md §6), with what caused it."""

    __tablename__ = "movements"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    livemode: Mapped[bool]
    customer_id: Mapped[str] = mapped_column(String(255))
    currency: Mapped[str] = mapped_column(String(3))
    day: Mapped[date] = mapped_column(Date)
    at: Mapped[datetime]
    type: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(BigInteger)
    mrr_before: Mapped[int] = mapped_column(BigInteger)
    mrr_after: Mapped[int] = mapped_column(BigInteger)
    sources: Mapped[list[str]] = mapped_column(JsonDocument)
    """Event ids (`evt_…`), or `backfill:<run>` / `reconcile:<run>`."""
    rules_version: Mapped[str] = mapped_column(String(128))
    computed_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_movements_day", "livemode", "day"),
        Index("ix_movements_customer", "customer_id", "day"),
    )


class RunStatus(enum.StrEnum):
    RUNNING = "running"
    OK = "ok"
    PARTIAL = "partial"
    """Finished, but some objects could not be read or applied; `errors` lists them."""
    FAILED = "failed"


class SyncRun(Base):
    """One backfill, reconciliation or events catch-up, and how it ended.

    A run is never reported as a success it was not: it ends `ok` only when
    every page was read and every object applied.
    """

    __tablename__ = "sync_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), index=True)
    """`backfill`, `reconcile` or `catchup`."""
    livemode: Mapped[bool | None]
    started_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime]
    """Refreshed while the run works; a `running` run without a recent heartbeat died."""
    status: Mapped[str] = mapped_column(String(16))
    parameters: Mapped[dict[str, Any]]
    counts: Mapped[dict[str, Any]]
    errors: Mapped[list[str]] = mapped_column(JsonDocument)
    stripe_api_version: Mapped[str | None] = mapped_column(String(64))
    """The `Stripe-Version` the run read with (STRIPE_API_VERSION); None for runs before it was recorded."""


class SyncCheckpoint(Base):
    """Where a paged read stopped: a resumed run starts after the last page it committed."""

    __tablename__ = "sync_checkpoints"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    stream: Mapped[str] = mapped_column(String(128), primary_key=True)
    """What is being read, e.g. `subscriptions:2023-01-01..2023-04-01`."""
    cursor: Mapped[str | None] = mapped_column(String(255))
    """The last object id committed (Stripe's `starting_after`); None before the first page."""
    done: Mapped[bool] = mapped_column(default=False)
    objects: Mapped[int] = mapped_column(Integer, default=0)
    reached: Mapped[int | None] = mapped_column(BigInteger)
    """A window read newest first, not done: `created` of the oldest object committed. Everything it holds
    from the next second on is stored (`worker.streams.ready_from`)."""
    updated_at: Mapped[datetime]
    counts: Mapped[dict[str, int] | None] = mapped_column(JsonDocument)
    """What the stream's process did so far (the backfill's history process), committed with its cursor."""
    errors: Mapped[list[str] | None] = mapped_column(JsonDocument)
    """The errors that process met so far, with the same commit."""


class BackfillCustomer(Base):
    """A customer whose history a backfill run rebuilds: the history workers' shared to-do list.

    Written with the subscription page that names the customer; `rebuilt` is
    set in the commit that stores its history.
    """

    __tablename__ = "backfill_customers"

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    customer_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    rebuilt: Mapped[bool] = mapped_column(default=False)


class WaitingCustomer(Base):
    """A customer whose ledger waits for an object its events name and nothing stored holds yet.

    Its events are applied (their versions are stored, they are facts); its
    ledger is recomputed once the object is stored (its own event, a backfill)
    or fetchable, and the row goes. Until then the ledger shows the customer
    as of its last recompute, and `/metrics` counts it.
    """

    __tablename__ = "waiting_customers"

    customer_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    object_id: Mapped[str | None] = mapped_column(String(255), index=True)
    """What it waits for (a discount, a coupon, a price), when one object is named."""
    reason: Mapped[str] = mapped_column(Text)
    since: Mapped[datetime]
    checked_at: Mapped[datetime]
    """When a recompute last found the object missing."""


class DriftItem(Base):
    """One subscription whose ledger MRR differed from Stripe's in a reconciliation."""

    __tablename__ = "drift_items"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    subscription_id: Mapped[str] = mapped_column(String(255))
    customer_id: Mapped[str] = mapped_column(String(255))
    currency: Mapped[str] = mapped_column(String(3))
    ledger_mrr: Mapped[int] = mapped_column(BigInteger)
    stripe_mrr: Mapped[int] = mapped_column(BigInteger)
    difference: Mapped[int] = mapped_column(BigInteger)
    """stripe_mrr − ledger_mrr."""
    action: Mapped[str] = mapped_column(Text)
    """What the run did about it, e.g. `recorded Stripe's state effective 2024-03-05T00:00:00Z`."""
    effective_at: Mapped[datetime]
    dated_by: Mapped[str] = mapped_column(String(16), server_default="run")
    """`records` (invoices, proration lines), `run` (no record dates it) or `records, run`."""


class CustomerMonthly(Base):
    """A customer's month in one currency, summed (ledger.rollup): what §8's metrics read."""

    __tablename__ = "customer_months"

    customer_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    livemode: Mapped[bool]
    mrr: Mapped[int] = mapped_column(BigInteger)
    mrr_start: Mapped[int] = mapped_column(BigInteger, default=0)
    """At the end of the previous month: NRR and GRR pair it with `mrr`."""
    new: Mapped[int] = mapped_column(BigInteger)
    expansion: Mapped[int] = mapped_column(BigInteger)
    contraction: Mapped[int] = mapped_column(BigInteger)
    churn: Mapped[int] = mapped_column(BigInteger)
    reactivation: Mapped[int] = mapped_column(BigInteger)
    news: Mapped[int] = mapped_column(Integer)
    expansions: Mapped[int] = mapped_column(Integer)
    churns: Mapped[int] = mapped_column(Integer)
    reactivations: Mapped[int] = mapped_column(Integer)
    scheduled_churn: Mapped[int] = mapped_column(BigInteger)
    trials_ended: Mapped[int] = mapped_column(Integer)
    trials_converted: Mapped[int] = mapped_column(Integer)
    first_paid_month: Mapped[date | None] = mapped_column(Date)
    """The customer's cohort: month of its first positive MRR."""

    __table_args__ = (Index("ix_customer_months_month", "livemode", "month"),)


class DailyTotal(Base):
    """All customers' movements of one type on one day, summed and counted.

    Kept by the engine as it replaces movements (add what is booked, subtract
    what is removed), so MRR over time reads a few thousand rows however many
    movements there are. `subledger rebuild` re-sums it from the movements.
    """

    __tablename__ = "daily_totals"

    livemode: Mapped[bool] = mapped_column(primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    type: Mapped[str] = mapped_column(String(16), primary_key=True)
    amount: Mapped[int] = mapped_column(BigInteger)
    movements: Mapped[int] = mapped_column(Integer)


class AccountMonth(Base):
    """The whole account's month in one currency: `customer_months` summed.

    Kept by the engine with the same add-the-difference updates as the daily
    totals, so a month's summary reads one row.
    """

    __tablename__ = "account_months"

    livemode: Mapped[bool] = mapped_column(primary_key=True)
    currency: Mapped[str] = mapped_column(String(3), primary_key=True)
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    mrr_start: Mapped[int] = mapped_column(BigInteger)
    mrr: Mapped[int] = mapped_column(BigInteger)
    new: Mapped[int] = mapped_column(BigInteger)
    expansion: Mapped[int] = mapped_column(BigInteger)
    contraction: Mapped[int] = mapped_column(BigInteger)
    churn: Mapped[int] = mapped_column(BigInteger)
    reactivation: Mapped[int] = mapped_column(BigInteger)
    customers_start: Mapped[int] = mapped_column(Integer)
    customers: Mapped[int] = mapped_column(Integer)
    new_customers: Mapped[int] = mapped_column(Integer)
    churned_customers: Mapped[int] = mapped_column(Integer)
    reactivated_customers: Mapped[int] = mapped_column(Integer)
    expanded_customers: Mapped[int] = mapped_column(Integer)
    nrr_numerator: Mapped[int] = mapped_column(BigInteger)
    """Σ end-of-month MRR of the customers paying at its start."""
    grr_numerator: Mapped[int] = mapped_column(BigInteger)
    """Σ min(end, start) MRR of the same customers."""
    scheduled_churn: Mapped[int] = mapped_column(BigInteger)
    trials_ended: Mapped[int] = mapped_column(Integer)
    trials_converted: Mapped[int] = mapped_column(Integer)
