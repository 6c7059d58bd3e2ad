"""backfill customers: each backfill run's customers to rebuild, shared by its history workers

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


def downgrade() -> None:
    op.drop_table("backfill_customers")
