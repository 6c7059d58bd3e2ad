"""daily totals of movements per type

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "daily_totals",
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("amount", sa.BigInteger(), nullable=False),
        sa.Column("movements", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("livemode", "currency", "day", "type", name=op.f("pk_daily_totals")),
    )


def downgrade() -> None:
    op.drop_table("daily_totals")
