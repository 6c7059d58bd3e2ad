"""run api version: the Stripe-Version each backfill, reconcile and catch-up read with

Runs recorded before stay without one (null): they read with whatever version
the installed SDK defaulted to.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sync_runs") as table:
        table.add_column(sa.Column("stripe_api_version", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_runs") as table:
        table.drop_column("stripe_api_version")
