"""waiting customers: ledgers waiting for an object their applied events name

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "waiting_customers",
        sa.Column("customer_id", sa.String(255), primary_key=True),
        sa.Column("object_id", sa.String(255), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("since", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index(op.f("ix_waiting_customers_object_id"), "waiting_customers", ["object_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_waiting_customers_object_id"), table_name="waiting_customers")
    op.drop_table("waiting_customers")
