"""account months: the summed monthly rollup

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "account_months",
        sa.Column("livemode", sa.Boolean(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("mrr_start", sa.BigInteger(), nullable=False),
        sa.Column("mrr", sa.BigInteger(), nullable=False),
        sa.Column("new", sa.BigInteger(), nullable=False),
        sa.Column("expansion", sa.BigInteger(), nullable=False),
        sa.Column("contraction", sa.BigInteger(), nullable=False),
        sa.Column("churn", sa.BigInteger(), nullable=False),
        sa.Column("reactivation", sa.BigInteger(), nullable=False),
        sa.Column("customers_start", sa.Integer(), nullable=False),
        sa.Column("customers", sa.Integer(), nullable=False),
        sa.Column("new_customers", sa.Integer(), nullable=False),
        sa.Column("churned_customers", sa.Integer(), nullable=False),
        sa.Column("reactivated_customers", sa.Integer(), nullable=False),
        sa.Column("expanded_customers", sa.Integer(), nullable=False),
        sa.Column("nrr_numerator", sa.BigInteger(), nullable=False),
        sa.Column("grr_numerator", sa.BigInteger(), nullable=False),
        sa.Column("scheduled_churn", sa.BigInteger(), nullable=False),
        sa.Column("trials_ended", sa.Integer(), nullable=False),
        sa.Column("trials_converted", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("livemode", "currency", "month", name=op.f("pk_account_months")),
    )
    with op.batch_alter_table("customer_months", schema=None) as batch_op:
        batch_op.add_column(sa.Column("mrr_start", sa.BigInteger(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("customer_months", schema=None) as batch_op:
        batch_op.drop_column("mrr_start")

    op.drop_table("account_months")
