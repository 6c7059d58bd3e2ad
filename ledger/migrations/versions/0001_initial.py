"""events, customers, subscriptions and their snapshots

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("email", sa.String(length=512), nullable=True),
        sa.Column("name", sa.String(length=512), nullable=True),
        sa.Column("created", sa.DateTime(timezone=True), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customers")),
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=255), nullable=False),
        sa.Column("api_version", sa.String(length=64), nullable=True),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("created", sa.DateTime(timezone=True), nullable=False),
        sa.Column("payload", JSON_DOCUMENT, nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("received_via", sa.String(length=16), nullable=False),
        sa.Column("partition", sa.String(length=255), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.create_index("ix_stripe_events_created", ["created"], unique=False)
        batch_op.create_index("ix_stripe_events_due", ["status", "shard", "next_attempt_at"], unique=False)
        batch_op.create_index("ix_stripe_events_partition", ["partition", "status"], unique=False)

    op.create_table(
        "stripe_objects",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("object", sa.String(length=64), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("payload", JSON_DOCUMENT, nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_objects")),
    )
    with op.batch_alter_table("stripe_objects", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_stripe_objects_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_stripe_objects_object"), ["object"], unique=False)

    op.create_table(
        "subscription_snapshots",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("subscription_id", sa.String(length=255), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("source", sa.String(length=255), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("payload", JSON_DOCUMENT, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscription_snapshots")),
        sa.UniqueConstraint(
            "subscription_id",
            "observed_at",
            "rank",
            "content_hash",
            name=op.f("uq_subscription_snapshots_subscription_id"),
        ),
    )
    with op.batch_alter_table("subscription_snapshots", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subscription_snapshots_customer_id"), ["customer_id"], unique=False)
        batch_op.create_index(
            "ix_subscription_snapshots_subscription", ["subscription_id", "observed_at"], unique=False
        )

    op.create_table(
        "subscriptions",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(length=32), nullable=False),
        sa.Column("payload", JSON_DOCUMENT, nullable=False),
        sa.Column("observed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriptions")),
    )
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_subscriptions_customer_id"), ["customer_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_subscriptions_customer_id"))

    op.drop_table("subscriptions")
    with op.batch_alter_table("subscription_snapshots", schema=None) as batch_op:
        batch_op.drop_index("ix_subscription_snapshots_subscription")
        batch_op.drop_index(batch_op.f("ix_subscription_snapshots_customer_id"))

    op.drop_table("subscription_snapshots")
    with op.batch_alter_table("stripe_objects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_stripe_objects_object"))
        batch_op.drop_index(batch_op.f("ix_stripe_objects_customer_id"))

    op.drop_table("stripe_objects")
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_index("ix_stripe_events_partition")
        batch_op.drop_index("ix_stripe_events_due")
        batch_op.drop_index("ix_stripe_events_created")

    op.drop_table("stripe_events")
    op.drop_table("customers")
