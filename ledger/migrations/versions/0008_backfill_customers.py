"""backfill customers: each backfill run's customers to rebuild, shared by its history workers

A backfill left unfinished (running or failed, hence resumable) by an earlier
version gets its list here: every customer of the subscriptions it read. Its
history checkpoint kept a cursor, which the resumed run ignores, so those
customers are all rebuilt (again, for some: harmless).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "backfill_customers",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("customer_id", sa.String(255), primary_key=True),
        sa.Column("rebuilt", sa.Boolean(), nullable=False),
    )
    op.execute(
        """
        INSERT INTO backfill_customers (run_id, customer_id, rebuilt)
        SELECT DISTINCT runs.id, objects.customer_id, false
        FROM sync_runs AS runs
        JOIN stripe_objects AS objects
          ON objects.object = 'subscription'
         AND objects.customer_id IS NOT NULL
         AND objects.observed_at >= runs.started_at
        WHERE runs.kind = 'backfill' AND runs.status IN ('running', 'failed')
        """
    )


def downgrade() -> None:
    op.drop_table("backfill_customers")
