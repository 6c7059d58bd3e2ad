"""customer months rollup

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "customer_months",
        sa.Column("customer_id", sa.String(length=255), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("mrr", sa.BigInteger(), nullable=False),
        sa.Column("new", sa.BigInteger(), nullable=False),
        sa.Column("expansion", sa.BigInteger(), nullable=False),
        sa.Column("contraction", sa.BigInteger(), nullable=False),
        sa.Column("churn", sa.BigInteger(), nullable=False),
        sa.Column("reactivation", sa.BigInteger(), nullable=False),
        sa.Column("news", sa.Integer(), nullable=False),
        sa.Column("expansions", sa.Integer(), nullable=False),
        sa.Column("churns", sa.Integer(), nullable=False),
        sa.Column("reactivations", sa.Integer(), nullable=False),
        sa.Column("scheduled_churn", sa.BigInteger(), nullable=False),
        sa.Column("trials_ended", sa.Integer(), nullable=False),
        sa.Column("trials_converted", sa.Integer(), nullable=False),
        sa.Column("first_paid_month", sa.Date(), nullable=True),
        sa.PrimaryKeyConstraint("customer_id", "currency", "month", name=op.f("pk_customer_months")),
    )
    with op.batch_alter_table("customer_months", schema=None) as batch_op:
        batch_op.create_index("ix_customer_months_month", ["livemode", "month"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("customer_months", schema=None) as batch_op:
        batch_op.drop_index("ix_customer_months_month")

    op.drop_table("customer_months")
